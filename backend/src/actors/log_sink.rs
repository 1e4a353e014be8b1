//! The `LogSink` actor: takes `job_event`s from sessions, writes them in chunks (one append
//! to the process's shared log segment and one row per flush: never a row per line, never a
//! file per attempt), acknowledges the highest stored sequence to the builder, drops resent
//! duplicates, cuts a log at its size limit with a marker, and fans stored lines out to live
//! viewers.
//!
//! A session registers itself once per attempt (`RegisterAttempts`, at assignment or resume)
//! as the recipient of that attempt's acknowledgements, and sends the events it read in one
//! go as one `AppendEvents` batch, so the per-event cost is one push onto a buffer.

use std::collections::HashMap;
use std::mem;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use buildfleet_protocol::{EventAck, JobEvent, ServerMessage};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::replica_bus::ReplicaBus;
use super::{CloseSession, Push};
use crate::logs::LogRecord;
use crate::metrics::Metrics;
use crate::storage::{LogChunkName, Storage};
use crate::store::{Attempt, JobId, NewLogChunk, Store, StoreError};
use buildfleet_protocol::ErrorCode;

/// Pending bytes of one attempt that trigger a flush before the timer does.
const FLUSH_BYTES: usize = 256 * 1024;
/// Per-viewer queue; a viewer that falls this far behind is dropped and resumes from its last
/// event id (`Last-Event-ID`), reading the stored log.
pub const SUBSCRIBER_QUEUE: usize = 1024;
/// Attempts without events for this long are forgotten (their state is in the database).
const IDLE_FORGET: Duration = Duration::from_secs(300);
/// Unstored bytes an attempt may hold, while storage fails or while it is slower than the
/// builder writes. Beyond this the sink lets the events go and closes the attempt's session
/// ([`LogSink::shed`]): they were never acknowledged, so the builder resends them.
const MAX_UNSTORED_BYTES: usize = 8 * 1024 * 1024;
/// First and longest wait before a failed chunk write is retried.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct LogLimits {
    pub max_bytes_per_attempt: u64,
    pub max_line_bytes: usize,
    pub flush_interval: Duration,
}

/// What is durably stored for an attempt; loaded from the database on first use.
#[derive(Debug, Clone, Copy)]
struct Stored {
    seq: u64,
    bytes: u64,
    truncated: bool,
}

#[derive(Default)]
struct AttemptLog {
    stored: Option<Stored>,
    /// Received and not yet stored: new events, and those of a write that failed.
    pending: Vec<JobEvent>,
    pending_bytes: usize,
    /// Bytes of the events the write in progress took; counted against the cap too.
    in_flight_bytes: usize,
    flushing: bool,
    /// `FlushAttempt` callers: told whether everything received before them is stored.
    waiters: Vec<oneshot::Sender<Result<(), FlushFailed>>>,
    last_activity: Option<Instant>,
    /// After a failed write: no new write before this instant, and the wait before the next.
    retry_at: Option<Instant>,
    backoff: Duration,
}

/// The attempt's events could not all be stored; they stay unacknowledged.
#[derive(Debug, Clone, thiserror::Error)]
#[error("storing the attempt's log failed: {0}")]
pub struct FlushFailed(pub String);

pub struct LogSink {
    store: Store,
    storage: Arc<dyn Storage>,
    metrics: Arc<Metrics>,
    limits: LogLimits,
    attempts: HashMap<(JobId, Attempt), AttemptLog>,
    subscribers: HashMap<JobId, Vec<mpsc::Sender<(Attempt, Bytes)>>>,
    /// Where each attempt's acknowledgements go: the session that holds it. Kept apart from
    /// `attempts`, whose entries are forgotten when idle while a quiet job runs on.
    registrations: HashMap<(JobId, Attempt), Registration>,
    /// Tells the other replicas that an attempt's lines were stored (disabled on SQLite).
    bus: ReplicaBus,
    /// Attempts logged through another replica whose job has viewers here.
    remote: HashMap<(JobId, Attempt), RemoteLog>,
}

/// Lines another replica stored, read from the store for this replica's viewers.
#[derive(Debug, Default, Clone, Copy)]
struct RemoteLog {
    /// The last sequence number read and sent to the viewers.
    sent: u64,
    /// The highest sequence number announced.
    wanted: u64,
    reading: bool,
}

/// The session that reports on an attempt.
struct Registration {
    session: u64,
    ack_to: Recipient<Push>,
    close: Recipient<CloseSession>,
}

impl LogSink {
    pub fn new(
        store: Store,
        storage: Arc<dyn Storage>,
        metrics: Arc<Metrics>,
        limits: LogLimits,
    ) -> Self {
        LogSink {
            store,
            storage,
            metrics,
            limits,
            attempts: HashMap::new(),
            subscribers: HashMap::new(),
            registrations: HashMap::new(),
            bus: ReplicaBus::disabled(),
            remote: HashMap::new(),
        }
    }

    /// Announces stored lines to the other replicas, for their live viewers.
    pub fn with_replica_bus(mut self, bus: ReplicaBus) -> Self {
        self.bus = bus;
        self
    }

    /// Tells the attempt's session that everything up to `seq` is stored.
    fn ack(&self, key: (JobId, Attempt), seq: u64) {
        if let Some(registration) = self.registrations.get(&key) {
            registration
                .ack_to
                .do_send(Push(ServerMessage::EventAck(EventAck {
                    job_id: key.0.into(),
                    attempt: key.1.into(),
                    acked_seq: seq,
                })));
        }
    }

    fn flush(&mut self, key: (JobId, Attempt), ctx: &mut Context<Self>) {
        let Some(log) = self.attempts.get_mut(&key) else {
            return;
        };
        if log.flushing {
            return;
        }
        if log.pending.is_empty() {
            for waiter in log.waiters.drain(..) {
                let _ = waiter.send(Ok(()));
            }
            return;
        }
        if log.retry_at.is_some_and(|at| Instant::now() < at) {
            return; // the timer retries once the back-off has passed
        }
        let lowest = log.pending.iter().map(|e| e.seq).min().unwrap_or(0);
        if let Some(stored) = log.stored.filter(|s| lowest > s.seq + 1) {
            // Only events past a gap: nothing can be written until a resend fills it.
            for waiter in log.waiters.drain(..) {
                let _ = waiter.send(Err(FlushFailed(format!(
                    "events {} to {} were never received",
                    stored.seq + 1,
                    lowest - 1
                ))));
            }
            return;
        }
        log.flushing = true;
        let events = mem::take(&mut log.pending);
        log.in_flight_bytes = mem::take(&mut log.pending_bytes);
        let stored = log.stored;
        let (store, storage, limits) = (
            self.store.clone(),
            self.storage.clone(),
            self.limits.clone(),
        );
        ctx.spawn(
            crate::offload::store(move || {
                let mut events = events;
                let outcome = write_events(&store, &*storage, &limits, key, stored, &mut events);
                (outcome, events)
            })
            .into_actor(self)
            .map(move |joined, this, ctx| {
                match joined {
                    Ok((outcome, unwritten)) => {
                        this.finish_flush(key, outcome, unwritten, false, ctx)
                    }
                    // The blocking task itself died and the events with it. They were never
                    // acknowledged: the session is closed and the builder resends them.
                    Err(e) => this.finish_flush(key, Err(e.into()), Vec::new(), true, ctx),
                }
            }),
        );
    }

    /// Takes the result of one chunk write. Success acknowledges the contiguous stored
    /// prefix; failure keeps every unstored event for the next try, never skips one.
    fn finish_flush(
        &mut self,
        key: (JobId, Attempt),
        outcome: Result<Written, anyhow::Error>,
        mut unwritten: Vec<JobEvent>,
        lost: bool,
        ctx: &mut Context<Self>,
    ) {
        let Some(log) = self.attempts.get_mut(&key) else {
            return;
        };
        log.flushing = false;
        log.in_flight_bytes = 0;
        // Events that arrived during the write join what is still unwritten.
        unwritten.append(&mut log.pending);
        log.pending_bytes = unwritten.iter().map(approximate_size).sum();
        log.pending = unwritten;
        match outcome {
            Ok(written) => {
                log.stored = Some(written.stored);
                log.retry_at = None;
                log.backoff = Duration::ZERO;
                self.ack(key, written.stored.seq);
                self.metrics
                    .log_bytes_stored
                    .fetch_add(written.bytes.len() as u64, Ordering::Relaxed);
                self.metrics
                    .log_lines_stored
                    .fetch_add(written.lines, Ordering::Relaxed);
                if !written.bytes.is_empty() {
                    self.fan_out(key, written.bytes);
                    self.bus
                        .announce(crate::store::notify::Notice::LogAppended {
                            job: key.0,
                            attempt: key.1,
                            seq: written.stored.seq,
                        });
                }
                self.flush(key, ctx);
            }
            Err(e) => {
                self.metrics
                    .log_store_failures
                    .fetch_add(1, Ordering::Relaxed);
                let message = e.to_string();
                log.backoff = (log.backoff * 2).clamp(RETRY_MIN, RETRY_MAX);
                log.retry_at = Some(Instant::now() + log.backoff);
                for waiter in log.waiters.drain(..) {
                    let _ = waiter.send(Err(FlushFailed(message.clone())));
                }
                let overflow = lost || log.pending_bytes > MAX_UNSTORED_BYTES;
                tracing::warn!(job = %key.0, attempt = %key.1, error = %message, kept = log.pending.len(), "storing log events failed; kept unacknowledged for a retry");
                if overflow {
                    // Nothing held here any more (or too much).
                    self.shed(
                        key,
                        "the backend could not store this job's log; reconnect and resend",
                    );
                }
            }
        }
    }

    /// Lets go of an attempt's unstored events and closes its session: none of them was
    /// acknowledged, so the builder still holds them and resends them after it reconnects.
    /// What bounds the memory an attempt can take here, whatever the store does.
    fn shed(&mut self, key: (JobId, Attempt), message: &str) {
        let Some(log) = self.attempts.get_mut(&key) else {
            return;
        };
        log.pending.clear();
        log.pending_bytes = 0;
        log.stored = None;
        for waiter in log.waiters.drain(..) {
            let _ = waiter.send(Err(FlushFailed(message.to_owned())));
        }
        self.metrics.log_sheds.fetch_add(1, Ordering::Relaxed);
        if let Some(registration) = self.registrations.get(&key) {
            registration.close.do_send(CloseSession {
                code: ErrorCode::Internal,
                message: message.to_owned(),
            });
        }
    }

    /// Sends stored lines to the job's viewers. A full queue drops its viewer (it reconnects
    /// with `Last-Event-ID` and re-reads the stored log), and so does a closed one.
    fn fan_out(&mut self, (job, attempt): (JobId, Attempt), bytes: Bytes) {
        if let Some(subscribers) = self.subscribers.get_mut(&job) {
            subscribers.retain(|tx| tx.try_send((attempt, bytes.clone())).is_ok());
            if subscribers.is_empty() {
                self.subscribers.remove(&job);
            }
            self.count_subscribers();
        }
    }

    /// Forgets viewers whose stream ended (the client went away, the job finished): a job
    /// that logs nothing more would otherwise keep them for the life of the process.
    fn drop_closed_subscribers(&mut self) {
        self.subscribers.retain(|_, subscribers| {
            subscribers.retain(|tx| !tx.is_closed());
            !subscribers.is_empty()
        });
        self.count_subscribers();
    }

    fn count_subscribers(&self) {
        let count: usize = self.subscribers.values().map(Vec::len).sum();
        self.metrics
            .log_subscribers
            .store(i64::try_from(count).unwrap_or(i64::MAX), Ordering::Relaxed);
    }
}

struct Written {
    stored: Stored,
    bytes: Bytes,
    lines: u64,
}

fn load_stored(store: &Store, key: (JobId, Attempt), limit: u64) -> Result<Stored, StoreError> {
    let seq = store.last_log_seq(key.0, key.1)?.unwrap_or(0);
    let bytes: i64 = store
        .log_chunks(key.0)?
        .iter()
        .filter(|c| c.attempt == key.1)
        .map(|c| c.length)
        .sum();
    let bytes = u64::try_from(bytes).unwrap_or(0);
    Ok(Stored {
        seq: u64::try_from(seq).unwrap_or(0),
        bytes,
        truncated: bytes >= limit,
    })
}

/// Filters duplicates, applies the size limit, appends one chunk and records its row.
///
/// Only a contiguous run from the stored sequence on is written: events beyond a gap stay in
/// `events` (a session refuses gaps, so they only wait for a resend to fill it), and so does
/// everything when the write fails. Acknowledging the returned sequence therefore never
/// covers an event that is not stored.
fn write_events(
    store: &Store,
    storage: &dyn Storage,
    limits: &LogLimits,
    key: (JobId, Attempt),
    stored: Option<Stored>,
    events: &mut Vec<JobEvent>,
) -> Result<Written, anyhow::Error> {
    let mut stored = match stored {
        Some(s) => s,
        None => load_stored(store, key, limits.max_bytes_per_attempt)?,
    };
    events.sort_by_key(|e| e.seq);
    let mut buffer = Vec::new();
    let mut first_seq = None;
    let mut last_seq = stored.seq;
    let mut lines = 0;
    let mut consumed = 0;
    let mut truncated = stored.truncated;
    for event in events.iter() {
        if event.seq <= last_seq {
            consumed += 1;
            continue; // a resent duplicate
        }
        if event.seq != last_seq + 1 {
            break; // a gap: nothing past it is stored before the gap is filled
        }
        consumed += 1;
        last_seq = event.seq;
        if truncated {
            continue; // acknowledged, but past the limit
        }
        let mut record = LogRecord::from_event(event, limits.max_line_bytes).to_jsonl();
        if stored.bytes + (buffer.len() + record.len()) as u64 > limits.max_bytes_per_attempt {
            record = LogRecord::truncation_marker(
                event.seq,
                event.timestamp_ms,
                limits.max_bytes_per_attempt,
            )
            .to_jsonl();
            truncated = true;
        }
        first_seq.get_or_insert(event.seq);
        buffer.extend_from_slice(&record);
        lines += 1;
    }
    if let Some(first_seq) = first_seq {
        // Bytes whose row is never committed (the insert fails, the process dies) stay in the
        // segment unreferenced: readers go by chunk rows only.
        let name = LogChunkName {
            job: key.0,
            attempt: key.1,
            first_seq,
            last_seq,
        };
        let span = storage.store_log_chunk(&name, &buffer)?;
        store.append_log_chunk(&NewLogChunk {
            job: key.0,
            attempt: key.1,
            first_seq: i64::try_from(first_seq)?,
            last_seq: i64::try_from(last_seq)?,
            location: span.key,
            byte_offset: i64::try_from(span.offset)?,
            length: i64::try_from(buffer.len())?,
        })?;
        stored.bytes += buffer.len() as u64;
    }
    // Only now, with the chunk row committed, do the written events leave the caller's hands.
    events.drain(..consumed);
    stored.seq = last_seq;
    stored.truncated = truncated;
    Ok(Written {
        stored,
        bytes: Bytes::from(buffer),
        lines,
    })
}

impl Actor for LogSink {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.limits.flush_interval, |this, ctx| {
            let due: Vec<_> = this
                .attempts
                .iter()
                .filter(|(_, log)| !log.pending.is_empty() && !log.flushing)
                .map(|(key, _)| *key)
                .collect();
            for key in due {
                this.flush(key, ctx);
            }
            this.attempts.retain(|_, log| {
                log.flushing
                    || !log.pending.is_empty()
                    || !log.waiters.is_empty()
                    || log.last_activity.is_some_and(|t| t.elapsed() < IDLE_FORGET)
            });
            // Sessions release their attempts when they end; this catches any that did not.
            this.registrations
                .retain(|_, registration| registration.ack_to.connected());
            this.drop_closed_subscribers();
            let subscribers = &this.subscribers;
            this.remote
                .retain(|(job, _), remote| remote.reading || subscribers.contains_key(job));
        });
    }
}

/// A session reports on these attempts from now on (they were assigned to it, or its
/// `resume` continued them): their acknowledgements go to `ack_to`. A newer registration of
/// the same attempt (a reconnect) replaces an older one.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RegisterAttempts {
    pub session: u64,
    pub ack_to: Recipient<Push>,
    /// Closes the session when its attempt's events cannot be kept (storage failing).
    pub close: Recipient<CloseSession>,
    pub attempts: Vec<(JobId, Attempt)>,
}

impl Handler<RegisterAttempts> for LogSink {
    type Result = ();

    fn handle(&mut self, msg: RegisterAttempts, _: &mut Self::Context) {
        for key in msg.attempts {
            self.registrations.insert(
                key,
                Registration {
                    session: msg.session,
                    ack_to: msg.ack_to.clone(),
                    close: msg.close.clone(),
                },
            );
        }
    }
}

/// A session no longer reports on these attempts (finished, rejected, superseded, or the
/// session ended). Registrations made by another session are left alone.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReleaseAttempts {
    pub session: u64,
    pub attempts: Vec<(JobId, Attempt)>,
}

impl Handler<ReleaseAttempts> for LogSink {
    type Result = ();

    fn handle(&mut self, msg: ReleaseAttempts, _: &mut Self::Context) {
        for key in msg.attempts {
            if self
                .registrations
                .get(&key)
                .is_some_and(|r| r.session == msg.session)
            {
                self.registrations.remove(&key);
            }
        }
    }
}

/// The events a session read in one go, in the order it read them, for attempts it holds
/// (and has registered with `RegisterAttempts`). Several attempts may be mixed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AppendEvents(pub Vec<JobEvent>);

impl Handler<AppendEvents> for LogSink {
    type Result = ();

    fn handle(&mut self, msg: AppendEvents, ctx: &mut Self::Context) {
        let now = Instant::now();
        // The attempts of this batch, and whether one of their events was already stored.
        let mut touched: Vec<((JobId, Attempt), bool)> = Vec::new();
        for event in msg.0 {
            let key = (JobId::from(event.job_id), Attempt::from(event.attempt));
            let index = match touched.iter().position(|(k, _)| *k == key) {
                Some(index) => index,
                None => {
                    touched.push((key, false));
                    touched.len() - 1
                }
            };
            let log = self.attempts.entry(key).or_default();
            log.last_activity = Some(now);
            if log.stored.is_some_and(|s| event.seq <= s.seq) {
                touched[index].1 = true;
                continue;
            }
            log.pending_bytes += approximate_size(&event);
            log.pending.push(event);
        }
        for (key, resent) in touched {
            let Some(log) = self.attempts.get(&key) else {
                continue;
            };
            // Already stored: acknowledge again so the builder can drop it.
            match log.stored {
                Some(stored) if resent => self.ack(key, stored.seq),
                _ => {}
            }
            if log.pending_bytes + log.in_flight_bytes > MAX_UNSTORED_BYTES {
                // The store is slower than the builder writes: shed rather than grow.
                self.shed(
                    key,
                    "the backend is behind storing this job's log; reconnect and resend",
                );
            } else if log.pending_bytes >= FLUSH_BYTES {
                self.flush(key, ctx);
            }
        }
    }
}

fn approximate_size(event: &JobEvent) -> usize {
    match &event.event {
        buildfleet_protocol::JobEventKind::Log { line, .. } => line.len() + 64,
        buildfleet_protocol::JobEventKind::Stage { .. } => 64,
    }
}

/// Resolves once everything received for the attempt so far is stored, or with the reason
/// it is not (a completion is then refused for the builder to resend).
#[derive(Message)]
#[rtype(result = "Result<(), FlushFailed>")]
pub struct FlushAttempt {
    pub job: JobId,
    pub attempt: Attempt,
}

impl Handler<FlushAttempt> for LogSink {
    type Result = ResponseFuture<Result<(), FlushFailed>>;

    fn handle(&mut self, msg: FlushAttempt, ctx: &mut Self::Context) -> Self::Result {
        let key = (msg.job, msg.attempt);
        let Some(log) = self.attempts.get_mut(&key) else {
            return Box::pin(async { Ok(()) });
        };
        let (tx, rx) = oneshot::channel();
        log.waiters.push(tx);
        self.flush(key, ctx);
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(FlushFailed("the log sink stopped".into())))
        })
    }
}

/// Live stored lines of a job, as JSONL bytes with their attempt, until the receiver is
/// dropped (noticed at the next flush tick) or falls behind. Only for jobs not yet finished:
/// a finished job's log is all stored.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    pub job: JobId,
    pub tx: mpsc::Sender<(Attempt, Bytes)>,
}

impl Handler<Subscribe> for LogSink {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _: &mut Self::Context) {
        if msg.tx.is_closed() {
            return; // the viewer left before it was registered
        }
        self.subscribers.entry(msg.job).or_default().push(msg.tx);
        self.count_subscribers();
    }
}

/// Another replica stored lines of an attempt up to `seq` (the replica bus): this replica's
/// viewers of the job get them from the store.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LogAppendedElsewhere {
    pub job: JobId,
    pub attempt: Attempt,
    pub seq: u64,
}

impl Handler<LogAppendedElsewhere> for LogSink {
    type Result = ();

    fn handle(&mut self, msg: LogAppendedElsewhere, ctx: &mut Self::Context) {
        if !self.subscribers.contains_key(&msg.job) {
            return; // nobody watches it here
        }
        let key = (msg.job, msg.attempt);
        let remote = self.remote.entry(key).or_default();
        remote.wanted = remote.wanted.max(msg.seq);
        self.read_remote(key, ctx);
    }
}

impl LogSink {
    /// Reads the stored lines of an attempt past those already sent and fans them out, one
    /// read at a time per attempt. The first read starts at the attempt's beginning; viewers
    /// drop records they already have (by sequence number).
    fn read_remote(&mut self, key: (JobId, Attempt), ctx: &mut Context<Self>) {
        let Some(remote) = self.remote.get_mut(&key) else {
            return;
        };
        if remote.reading || remote.wanted <= remote.sent {
            return;
        }
        remote.reading = true;
        let after = remote.sent;
        let (store, storage) = (self.store.clone(), self.storage.clone());
        ctx.spawn(
            crate::offload::store(move || {
                let chunks = store.log_chunks(key.0)?;
                let mine = || chunks.iter().filter(|c| c.attempt == key.1);
                let seq = |c: &crate::store::LogChunk| u64::try_from(c.last_seq).unwrap_or(0);
                let from: u64 = mine()
                    .filter(|c| seq(c) <= after)
                    .map(|c| u64::try_from(c.length).unwrap_or(0))
                    .sum();
                let last = mine().map(seq).max().unwrap_or(after);
                let (bytes, _) =
                    crate::logs::read_attempt_log(&*storage, &chunks, key.1, from, u64::MAX)?;
                Ok::<_, anyhow::Error>((bytes, last))
            })
            .into_actor(self)
            .map(move |read, this, ctx| {
                let Some(remote) = this.remote.get_mut(&key) else {
                    return;
                };
                remote.reading = false;
                match read {
                    Ok(Ok((bytes, last))) => {
                        let progressed = last > remote.sent;
                        remote.sent = remote.sent.max(last);
                        if !bytes.is_empty() {
                            this.fan_out(key, Bytes::from(bytes));
                        }
                        if progressed {
                            this.read_remote(key, ctx);
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(job = %key.0, attempt = %key.1, error = %e, "reading another replica's log lines for live viewers failed")
                    }
                    Err(e) => {
                        tracing::warn!(job = %key.0, attempt = %key.1, error = %e, "reading another replica's log lines for live viewers failed")
                    }
                }
            }),
        );
    }
}
