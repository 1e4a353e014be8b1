//! A job's log: whole or from an offset (JSONL or plain text), and live as server-sent
//! events.
//!
//! The live stream sends one event per stored record, its data the JSONL record and its id
//! `<attempt>:<seq>`, which only grows along a job's attempts; a reconnect with that id as
//! `Last-Event-ID` goes on right after it, so no line is sent twice or skipped. It follows the
//! job into later attempts (an `attempt` event, id `<attempt>:0`, starts each), and once the
//! job has ended sends an `end` event with the outcome and closes. A finished job's stream
//! reads only the stored log and never subscribes to the LogSink.

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse, Responder};
use actix_web_lab::sse;
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::actors::log_sink::{Subscribe, SUBSCRIBER_QUEUE};
use crate::error::{blocking, ApiError};
use crate::http::auth::Access;
use crate::http::events::{self, end_event, last_event_id, read_job, resolve, Gone, Next, Out};
use crate::http::jobs::parse_job_id;
use crate::http::AppState;
use crate::job_feed::JobChange;
use crate::logs::{read_attempt_log, LogRecord};
use crate::storage::Storage;
use crate::store::{Attempt, Job, JobId, JobState, Store};

/// Most bytes one `GET …/log` returns; clients page on with `offset`.
const MAX_READ_BYTES: u64 = 8 * 1024 * 1024;
/// Stored log read per step of a live stream's catch-up.
const STREAM_PAGE_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// Defaults to the job's current attempt.
    pub attempt: Option<i32>,
    /// Byte offset into the stored log of the attempt.
    #[serde(default)]
    pub offset: u64,
    /// `jsonl` (default) or `text`.
    pub format: Option<String>,
}

async fn read(
    state: &AppState,
    access: Access,
    job: JobId,
    attempt: Option<i32>,
    offset: u64,
) -> Result<(Attempt, Vec<u8>, u64, bool), ApiError> {
    let (store, storage) = (state.store.clone(), state.storage.clone());
    blocking(move || {
        let found = access.visible_job(store.job(job)?, job)?;
        let attempt = match attempt {
            Some(named) => checked_attempt(&store, &found, named)?,
            None => found.attempt,
        };
        let chunks = store.log_chunks(job)?;
        let (bytes, next) = read_attempt_log(&*storage, &chunks, attempt, offset, MAX_READ_BYTES)
            .map_err(ApiError::internal)?;
        let finished = found.state.is_terminal() || found.attempt != attempt;
        Ok((attempt, bytes, next, finished))
    })
    .await
}

/// Whether a job has (or will have) a log for `attempt`: an attempt a builder was assigned
/// (`recorded`), or the current attempt of a job that has not ended, whose log is still to
/// come.
pub fn attempt_exists(state: JobState, current: i32, recorded: &[i32], attempt: i32) -> bool {
    recorded.contains(&attempt) || (!state.is_terminal() && attempt == current)
}

/// What attempts a job has had, as said after `job 5 has no attempt 3: `: `it has had 2 so
/// far`, `it has not started yet (queued)`, `it never ran (cancelled)`. The CLI says the
/// same when it checks an attempt itself.
pub fn attempts_had(state: JobState, current: i32, recorded: &[i32]) -> String {
    let mut recorded = recorded.to_vec();
    recorded.sort_unstable();
    recorded.dedup();
    if recorded.is_empty() {
        return if state.is_terminal() {
            format!("it never ran ({state})")
        } else {
            format!("it has not started yet ({state})")
        };
    }
    let contiguous = recorded.iter().zip(1..).all(|(a, n)| *a == n);
    let had = if contiguous {
        format!("it has had {} so far", recorded.len())
    } else {
        let listed: Vec<String> = recorded.iter().map(i32::to_string).collect();
        format!("it has had attempts {}", listed.join(", "))
    };
    if !state.is_terminal() && !recorded.contains(&current) {
        format!("{had}, and attempt {current} has not started yet ({state})")
    } else {
        had
    }
}

/// The attempt a request names, if the job has it (see [`attempt_exists`]); else 404 with
/// what the job has had.
fn checked_attempt(store: &Store, job: &Job, named: i32) -> Result<Attempt, ApiError> {
    let recorded: Vec<i32> = store
        .job_attempts(job.id)?
        .iter()
        .map(|a| a.attempt.0)
        .collect();
    if attempt_exists(job.state, job.attempt.0, &recorded, named) {
        Ok(Attempt(named))
    } else {
        Err(ApiError::NotFoundExplained(format!(
            "job {} has no attempt {named}: {}",
            job.id,
            attempts_had(job.state, job.attempt.0, &recorded)
        )))
    }
}

fn render_text(jsonl: &[u8]) -> String {
    let mut out = String::with_capacity(jsonl.len());
    for line in jsonl.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<LogRecord>(line) {
            Ok(LogRecord {
                line: Some(text),
                stream,
                ..
            }) => {
                if stream.as_deref() == Some("stderr") {
                    out.push_str("[stderr] ");
                }
                out.push_str(&text);
                out.push('\n');
            }
            Ok(LogRecord {
                stage: Some(stage), ..
            }) => {
                out.push_str(&format!(
                    "--- stage: {}\n",
                    serde_json::to_string(&stage)
                        .unwrap_or_default()
                        .trim_matches('"')
                ));
            }
            _ => {}
        }
    }
    out
}

/// `GET /api/v1/jobs/{id}/log?attempt=&offset=&format=`. `X-Next-Offset` tells where to go on.
pub async fn whole(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<LogQuery>,
) -> Result<HttpResponse, ApiError> {
    let job = parse_job_id(&path)?;
    let access = Access::of(&req, &state).await?;
    let (attempt, bytes, next, finished) =
        read(&state, access, job, query.attempt, query.offset).await?;
    let mut response = HttpResponse::Ok();
    response
        .insert_header(("X-Next-Offset", next.to_string()))
        .insert_header(("X-Attempt", attempt.to_string()))
        .insert_header(("X-Log-Complete", finished.to_string()));
    match query.format.as_deref() {
        None | Some("jsonl") => Ok(response.content_type("application/x-ndjson").body(bytes)),
        Some("text") => Ok(response
            .content_type("text/plain; charset=utf-8")
            .body(render_text(&bytes))),
        Some(other) => Err(ApiError::BadRequest(format!(
            "format {other:?}: use jsonl or text"
        ))),
    }
}

/// The sequence number of a stored record. Records are written with `seq` first, so the
/// common case needs no full parse.
fn seq_of(line: &[u8]) -> Option<u64> {
    if let Some(rest) = line.strip_prefix(b"{\"seq\":") {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits > 0 && rest.get(digits).is_some_and(|b| matches!(b, b',' | b'}')) {
            return std::str::from_utf8(&rest[..digits]).ok()?.parse().ok();
        }
    }
    serde_json::from_slice::<LogRecord>(line)
        .ok()
        .map(|r| r.seq)
}

/// Parses a live log id, `<attempt>:<seq>`.
fn parse_log_id(raw: &str) -> Result<(Attempt, u64), ApiError> {
    let bad = || {
        ApiError::BadRequest(format!(
            "Last-Event-ID {raw:?}: expected <attempt>:<seq> as sent by this stream, e.g. 1:42"
        ))
    };
    let (attempt, seq) = raw.split_once(':').ok_or_else(bad)?;
    let attempt: i32 = attempt.parse().map_err(|_| bad())?;
    if attempt < 1 {
        return Err(bad());
    }
    Ok((Attempt(attempt), seq.parse().map_err(|_| bad())?))
}

/// Sends one job's log records, once each, in order, attempt after attempt.
struct LogFollower {
    store: Store,
    storage: Arc<dyn Storage>,
    job: JobId,
    out: Out,
    attempt: Attempt,
    /// The last sequence number sent of `attempt`.
    last: u64,
}

impl LogFollower {
    fn record(&self, line: &[u8], seq: u64) -> sse::Data {
        sse::Data::new(String::from_utf8_lossy(line).into_owned())
            .id(format!("{}:{seq}", self.attempt))
    }

    /// Sends records of the current attempt past `last` from a stored or live JSONL piece.
    async fn send_records(&mut self, jsonl: &[u8]) -> Result<(), Gone> {
        for line in jsonl.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            match seq_of(line) {
                Some(seq) if seq > self.last => {
                    self.out.send(self.record(line, seq)).await?;
                    self.last = seq;
                }
                Some(_) => {}
                None => {
                    tracing::warn!(job = %self.job, "a stored log record has no sequence number")
                }
            }
        }
        Ok(())
    }

    /// Sends what is stored of the current attempt past `last` (from byte `offset` if given).
    async fn catch_up(&mut self, offset: Option<u64>) -> Result<(), Gone> {
        let mut offset = offset;
        let mut page = STREAM_PAGE_BYTES;
        loop {
            let (store, storage) = (self.store.clone(), self.storage.clone());
            let (job, attempt, after) = (self.job, self.attempt, self.last);
            let read = crate::offload::store(move || {
                let chunks = store.log_chunks(job)?;
                // Start at the first chunk that may hold a record past `after`.
                let from = offset.unwrap_or_else(|| {
                    chunks
                        .iter()
                        .filter(|c| c.attempt == attempt)
                        .take_while(|c| u64::try_from(c.last_seq).unwrap_or(0) <= after)
                        .map(|c| u64::try_from(c.length).unwrap_or(0))
                        .sum()
                });
                let (bytes, _) = read_attempt_log(&*storage, &chunks, attempt, from, page)?;
                Ok::<_, anyhow::Error>((from, bytes))
            })
            .await;
            let (from, bytes) = match read {
                Ok(Ok(read)) => read,
                Ok(Err(e)) => {
                    tracing::warn!(job = %self.job, error = %e, "reading the stored log for a live stream failed");
                    return Err(Gone);
                }
                Err(_) => return Err(Gone),
            };
            if bytes.is_empty() {
                return Ok(());
            }
            // Whole records only: a page may end inside one.
            let Some(end) = bytes.iter().rposition(|&b| b == b'\n') else {
                if (bytes.len() as u64) < page {
                    return Ok(());
                }
                page *= 2; // one record larger than a page
                continue;
            };
            self.send_records(&bytes[..=end]).await?;
            offset = Some(from + end as u64 + 1);
            if (bytes.len() as u64) < page {
                return Ok(());
            }
        }
    }

    /// Finishes the current attempt from the stored log, then goes on to `to`.
    async fn advance_to(&mut self, to: Attempt) -> Result<(), Gone> {
        while self.attempt < to {
            self.catch_up(None).await?;
            self.attempt = Attempt(self.attempt.0 + 1);
            self.last = 0;
            let event = sse::Data::new(format!("{{\"attempt\":{}}}", self.attempt))
                .event("attempt")
                .id(format!("{}:0", self.attempt));
            self.out.send(event).await?;
        }
        Ok(())
    }

    /// The job has ended: the rest of its stored log (complete: the backend stores a log
    /// before it records the job's end), then `end`.
    async fn finish(&mut self, end: &JobChange) -> Result<(), Gone> {
        self.advance_to(end.attempt).await?;
        self.catch_up(None).await?;
        self.out.send(end_event(end)).await
    }
}

/// `GET /api/v1/jobs/{id}/log/stream?attempt=&offset=`: server-sent events, one per stored log
/// record, from the start of the attempt (the current one by default), from byte `offset` of
/// it, or right after the `Last-Event-ID` the client sends; then live ones; then `end`.
pub async fn stream(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<LogQuery>,
) -> Result<impl Responder, ApiError> {
    let access = Access::of(&req, &state).await?;
    let job = parse_job_id(&path)?;
    if query.format.is_some() {
        return Err(ApiError::BadRequest(
            "format applies to /log; the stream sends JSONL records".into(),
        ));
    }
    let resume = last_event_id(&req)?
        .map(|raw| parse_log_id(&raw))
        .transpose()?;
    let feed = state.job_feed.clone();
    // Before the read: an end committed after it is on the receiver.
    let mut changes = feed.subscribe();
    let found = read_job(&state, &access, job).await?;
    let (start, last, offset) = match (resume, query.attempt) {
        (Some((attempt, seq)), _) => {
            if attempt > found.attempt {
                return Err(ApiError::BadRequest(format!(
                    "Last-Event-ID \"{attempt}:{seq}\" was not sent by this stream: job {job} \
                     is at attempt {}",
                    found.attempt
                )));
            }
            (attempt, seq, None)
        }
        (None, named) => {
            let start = match named {
                Some(named) => {
                    let (store, job) = (state.store.clone(), found.clone());
                    blocking(move || checked_attempt(&store, &job, named)).await?
                }
                None => found.attempt,
            };
            (start, 0, (query.offset > 0).then_some(query.offset))
        }
    };
    // A finished job's log is all stored: no live subscription to leave behind.
    let mut live = if found.state.is_terminal() {
        None
    } else {
        let (tx, rx) = mpsc::channel::<(Attempt, Bytes)>(SUBSCRIBER_QUEUE);
        state
            .log_sink
            .send(Subscribe { job, tx })
            .await
            .map_err(|_| ApiError::Unavailable("log sink".into()))?;
        Some(rx)
    };
    let (store, storage) = (state.store.clone(), state.storage.clone());
    let task_feed = feed.clone();
    Ok(events::stream(feed, move |out| async move {
        let mut follower = LogFollower {
            store,
            storage,
            job,
            out,
            attempt: start,
            last,
        };
        follower.catch_up(offset).await?;
        let Some(live) = live.as_mut() else {
            return follower.finish(&JobChange::of(&found)).await;
        };
        follower.advance_to(found.attempt).await?;
        loop {
            tokio::select! {
                chunk = live.recv() => match chunk {
                    Some((attempt, bytes)) if attempt == follower.attempt => {
                        follower.send_records(&bytes).await?;
                    }
                    Some((attempt, _)) if attempt > follower.attempt => {
                        // A later attempt logs: its lines are stored, read them from there.
                        follower.advance_to(attempt).await?;
                        follower.catch_up(None).await?;
                    }
                    Some(_) => {}
                    // Dropped for falling behind: the client resumes from its last id.
                    None => return Ok(()),
                },
                // `recv` is cancel-safe; what it got is handled outside the `select!`.
                received = changes.recv() => match resolve(&task_feed, received, job).await {
                    Next::Change(change) if change.state.is_terminal() => {
                        return follower.finish(&change).await;
                    }
                    Next::Change(change) => follower.advance_to(change.attempt).await?,
                    Next::Other => {}
                    Next::Closed => return Ok(()),
                },
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_are_read_with_and_without_the_fast_path() {
        assert_eq!(seq_of(br#"{"seq":42,"ts":1,"line":"a"}"#), Some(42));
        assert_eq!(seq_of(br#"{"ts":1,"seq":7}"#), Some(7));
        assert_eq!(seq_of(br#"{"seq":"x"}"#), None);
        assert_eq!(seq_of(b"not json"), None);
    }

    #[test]
    fn missing_attempts_are_explained_by_what_the_job_had() {
        use JobState::{Cancelled, Queued, Running, Succeeded};
        assert!(attempt_exists(Running, 1, &[1], 1));
        assert!(
            attempt_exists(Queued, 1, &[], 1),
            "the log of a queued job is to come"
        );
        assert!(attempt_exists(Queued, 2, &[1], 1));
        assert!(!attempt_exists(Queued, 2, &[1], 3));
        assert!(
            !attempt_exists(Cancelled, 1, &[], 1),
            "a job that never ran has no log"
        );
        assert!(!attempt_exists(Succeeded, 1, &[1], 0));

        assert_eq!(attempts_had(Running, 1, &[1]), "it has had 1 so far");
        assert_eq!(
            attempts_had(Queued, 1, &[]),
            "it has not started yet (queued)"
        );
        assert_eq!(attempts_had(Cancelled, 1, &[]), "it never ran (cancelled)");
        assert_eq!(
            attempts_had(Queued, 2, &[1]),
            "it has had 1 so far, and attempt 2 has not started yet (queued)"
        );
        assert_eq!(
            attempts_had(Succeeded, 3, &[3, 1]),
            "it has had attempts 1, 3"
        );
    }

    #[test]
    fn log_ids_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_log_id("3:17").unwrap(), (Attempt(3), 17));
        assert_eq!(parse_log_id("1:0").unwrap(), (Attempt(1), 0));
        for bad in ["", "17", "0:5", "a:1", "1:b", "1:-2", "1:2:3"] {
            assert!(parse_log_id(bad).is_err(), "{bad:?}");
        }
    }
}
