//! Simulated builders: real WebSocket clients speaking the real protocol with real Ed25519
//! keys, many per process, running no-op jobs. Each is one task on the bench's actix
//! system; what happens to jobs is reported as [`Event`]s, what a suite wants done is sent
//! as [`Command`]s.
//!
//! The protocol client is the test kit's (`buildfleet_testkit::builder_client::connection`:
//! dialling, the handshake, frames, the signed completion), the one the backend's tests
//! script; this module is the many-session driver on top of it: one task per session, no
//! queue between the socket and the session, replies written in batches.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use awc::ws;
use buildfleet_protocol::signing;
use buildfleet_protocol::ssh_key::{Algorithm, LineEnding, PrivateKey};
use buildfleet_protocol::{
    ArtifactDigest, Capabilities, ClientMessage, CompletionResult, Fingerprint, Heartbeat,
    JobAssignment, JobEvent, JobEventKind, JobRef, JobRequest, LogStream, Outcome,
    RecipeCapability, ServerMessage, WorkAck, WorkDecision,
};
use buildfleet_testkit::builder_client::connection::{
    self, Connection, Credentials, Frame, Transport as _, WsSink, WsStream,
};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::mpsc;

use crate::api::Api;

/// How long one handshake step may take before the builder gives up.
const HANDSHAKE_STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// A builder's key and the id the backend admitted it under.
pub struct Identity {
    pub name: String,
    pub key: PrivateKey,
    pub fingerprint: Fingerprint,
    pub public_openssh: String,
    pub builder_id: i64,
}

impl Identity {
    pub fn generate(name: String) -> anyhow::Result<Identity> {
        let key = PrivateKey::random(&mut rand::rngs::OsRng, Algorithm::Ed25519)?;
        let public_openssh = key.public_key().to_openssh()?;
        Ok(Identity {
            fingerprint: signing::fingerprint(key.public_key()),
            name,
            key,
            public_openssh,
            builder_id: 0,
        })
    }

    /// The private key in OpenSSH format, for a real builder process.
    pub fn private_openssh(&self) -> anyhow::Result<String> {
        Ok(self.key.to_openssh(LineEnding::LF)?.to_string())
    }

    /// Who the simulated builder says it is: builder version `bench`.
    pub fn credentials(&self) -> Credentials<'_> {
        Credentials {
            name: &self.name,
            fingerprint: &self.fingerprint,
            key: &self.key,
            version: "bench",
        }
    }
}

/// Generates `n` keys and admits them through the API, `concurrency` calls at a time.
pub async fn admit_fleet(
    api: &Api,
    prefix: &str,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<Rc<Identity>>> {
    let identities = (0..n)
        .map(|i| Identity::generate(format!("{prefix}-{i}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let admitted: Vec<anyhow::Result<Identity>> = futures_util::stream::iter(identities)
        .map(|mut identity| async move {
            identity.builder_id = api
                .admit_builder(&identity.name, &identity.public_openssh)
                .await?;
            Ok(identity)
        })
        .buffered(concurrency)
        .collect()
        .await;
    admitted.into_iter().map(|r| r.map(Rc::new)).collect()
}

/// What a simulated builder does with the jobs it gets.
#[derive(Debug, Clone)]
pub struct Behaviour {
    pub recipe: String,
    /// `max_concurrent_jobs`, and the credits asked for once ready (0 asks for none).
    pub slots: u32,
    /// On assignment: accept, send `log_lines` lines, complete. Otherwise accept and wait
    /// for a [`Command`].
    pub auto_complete: bool,
    pub log_lines: u32,
    pub log_line: Arc<str>,
    /// Ask for one more job after each completion is acknowledged.
    pub refill: bool,
    /// Declare `accepts_every_assignment` and send no `work_ack`: the claim starts the job.
    pub accepts_every_assignment: bool,
}

impl Behaviour {
    pub fn noop(recipe: &str, slots: u32) -> Behaviour {
        Behaviour {
            recipe: recipe.into(),
            slots,
            auto_complete: true,
            log_lines: 0,
            log_line: Arc::from(""),
            refill: true,
            accepts_every_assignment: false,
        }
    }
}

/// What happened, for the suite to measure.
#[derive(Debug)]
pub enum Event {
    /// A `jobs` frame arrived; `at` is when its frame was read, before decoding.
    Assigned {
        builder: usize,
        job: Box<JobAssignment>,
        at: Instant,
    },
    /// A `completion_ack` arrived.
    Completed {
        job_id: i64,
        accepted: bool,
        at: Instant,
    },
    /// Every line of a [`Command::Stream`] was acknowledged as stored.
    StreamDone {
        job_id: i64,
        lines: u64,
        bytes: u64,
        at: Instant,
    },
    /// The connection ended or failed.
    Lost { builder: usize, reason: String },
}

#[derive(Debug)]
pub enum Command {
    /// Send `lines` log lines for the job, keeping at most `window_bytes` of line text
    /// unacknowledged (as a real builder's bounded buffer does), then complete it.
    Stream {
        job_id: i64,
        lines: u64,
        line: Arc<str>,
        window_bytes: usize,
    },
    /// Send the signed completion of the job, naming these uploaded artifacts.
    Complete {
        job_id: i64,
        artifacts: Vec<ArtifactDigest>,
    },
}

/// Counters shared by a fleet.
#[derive(Debug, Default)]
pub struct Counters {
    pub heartbeats_sent: Cell<u64>,
    pub pongs_sent: Cell<u64>,
}

/// A connected, authenticated builder. Dropping it closes the connection.
pub struct SimBuilder {
    pub index: usize,
    commands: mpsc::UnboundedSender<Command>,
    task: actix_rt::task::JoinHandle<()>,
}

impl SimBuilder {
    pub fn command(&self, command: Command) {
        let _ = self.commands.send(command);
    }
}

impl Drop for SimBuilder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Everything a fleet's builders share.
#[derive(Clone)]
pub struct FleetContext {
    pub client: awc::Client,
    pub ws_url: String,
    pub behaviour: Rc<Behaviour>,
    pub events: mpsc::UnboundedSender<Event>,
    pub counters: Rc<Counters>,
}

/// Connects and authenticates builder `index`, then runs it on its own task.
pub async fn connect(
    ctx: &FleetContext,
    index: usize,
    identity: Rc<Identity>,
) -> anyhow::Result<SimBuilder> {
    let mut connection = Connection::dial(&ctx.client, &ctx.ws_url, HANDSHAKE_STEP_TIMEOUT).await?;
    let capabilities = Capabilities {
        recipes: vec![RecipeCapability {
            name: ctx.behaviour.recipe.clone(),
            version: "1".into(),
        }],
        labels: Default::default(),
        max_concurrent_jobs: ctx.behaviour.slots.max(1),
        accepts_every_assignment: ctx.behaviour.accepts_every_assignment,
    };
    let (authenticated, _) = connection::handshake(
        &mut connection,
        identity.credentials(),
        capabilities,
        Vec::new(),
    )
    .await?;
    if ctx.behaviour.slots > 0 {
        connection
            .send(&ClientMessage::JobRequest(JobRequest {
                credits: ctx.behaviour.slots,
            }))
            .await?;
    }
    let heartbeat_interval = authenticated
        .heartbeat_interval()
        .max(Duration::from_millis(50));
    let (sink, stream) = connection.into_parts();
    let (commands, command_rx) = mpsc::unbounded_channel();
    let session = Session {
        index,
        identity,
        backend_id: authenticated.challenge.backend_id,
        behaviour: ctx.behaviour.clone(),
        events: ctx.events.clone(),
        counters: ctx.counters.clone(),
        held: HashMap::new(),
        outgoing: Vec::new(),
    };
    let task = actix_rt::spawn(session.run(sink, stream, command_rx, heartbeat_interval));
    Ok(SimBuilder {
        index,
        commands,
        task,
    })
}

struct Streaming {
    remaining: u64,
    line: Arc<str>,
    window_bytes: usize,
    /// Sent, not yet acknowledged: (seq, line bytes).
    unacked: VecDeque<(u64, usize)>,
    unacked_bytes: usize,
    lines: u64,
    bytes: u64,
}

struct Held {
    assignment: JobAssignment,
    next_seq: u64,
    streaming: Option<Streaming>,
}

struct Session {
    index: usize,
    identity: Rc<Identity>,
    backend_id: String,
    behaviour: Rc<Behaviour>,
    events: mpsc::UnboundedSender<Event>,
    counters: Rc<Counters>,
    held: HashMap<i64, Held>,
    /// Frames to write after handling the current input.
    outgoing: Vec<ws::Message>,
}

impl Session {
    async fn run(
        mut self,
        mut sink: WsSink,
        mut stream: WsStream,
        mut commands: mpsc::UnboundedReceiver<Command>,
        heartbeat_interval: Duration,
    ) {
        // Builders connect at different times; spread their heartbeats over the interval.
        let jitter = heartbeat_interval.mul_f64(rand::random::<f64>());
        let mut heartbeats =
            tokio::time::interval_at(tokio::time::Instant::now() + jitter, heartbeat_interval);
        heartbeats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let reason = loop {
            tokio::select! {
                frame = stream.next() => {
                    // Before decoding: the time the frame arrived.
                    let at = Instant::now();
                    match connection::read(frame) {
                        Frame::Message(message) => {
                            if let Err(e) = self.on_message(message, at) {
                                break e.to_string();
                            }
                        }
                        Frame::Ping(p) => {
                            self.counters.pongs_sent.set(self.counters.pongs_sent.get() + 1);
                            self.outgoing.push(ws::Message::Pong(p));
                        }
                        Frame::Other(_) => {}
                        Frame::Undecodable(text) => break format!("undecodable frame from the backend: {text}"),
                        Frame::Closed(reason) => break format!("closed by the backend: {reason:?}"),
                        Frame::Broken(reason) => break reason,
                    }
                }
                command = commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => break "stopped".into(),
                },
                _ = heartbeats.tick() => {
                    self.counters.heartbeats_sent.set(self.counters.heartbeats_sent.get() + 1);
                    let active_jobs = self.held.values().map(|h| JobRef { job_id: h.assignment.job_id, attempt: h.assignment.attempt }).collect();
                    self.push(&ClientMessage::Heartbeat(Heartbeat { active_jobs }));
                }
            }
            if !self.outgoing.is_empty() {
                if let Err(e) = self.flush(&mut sink).await {
                    break format!("sending: {e}");
                }
            }
        };
        let _ = self.events.send(Event::Lost {
            builder: self.index,
            reason,
        });
    }

    async fn flush(&mut self, sink: &mut WsSink) -> anyhow::Result<()> {
        for message in self.outgoing.drain(..) {
            sink.feed(message).await?;
        }
        sink.flush().await?;
        Ok(())
    }

    fn push(&mut self, message: &ClientMessage) {
        self.outgoing.push(connection::encode(message));
    }

    fn on_message(&mut self, message: ServerMessage, at: Instant) -> anyhow::Result<()> {
        match message {
            ServerMessage::Jobs(jobs) => {
                for job in jobs.jobs {
                    self.on_assignment(job, at);
                }
            }
            ServerMessage::EventAck(ack) => self.on_event_ack(ack.job_id.0, ack.acked_seq),
            ServerMessage::CompletionAck(ack) => {
                self.held.remove(&ack.job_id.0);
                let _ = self.events.send(Event::Completed {
                    job_id: ack.job_id.0,
                    accepted: matches!(ack.result, CompletionResult::Accepted),
                    at: Instant::now(),
                });
                if self.behaviour.refill {
                    self.push(&ClientMessage::JobRequest(JobRequest { credits: 1 }));
                }
            }
            ServerMessage::Error(e) => bail!("error from the backend: {:?}: {}", e.code, e.message),
            ServerMessage::Cancel(cancel) => {
                self.held.remove(&cancel.job_id.0);
            }
            _ => {}
        }
        Ok(())
    }

    fn on_assignment(&mut self, job: JobAssignment, at: Instant) {
        let job_id = job.job_id.0;
        if !self.behaviour.accepts_every_assignment {
            self.push(&ClientMessage::WorkAck(WorkAck {
                job_id: job.job_id,
                attempt: job.attempt,
                decision: WorkDecision::Accept,
            }));
        }
        let _ = self.events.send(Event::Assigned {
            builder: self.index,
            job: Box::new(job.clone()),
            at,
        });
        self.held.insert(
            job_id,
            Held {
                assignment: job,
                next_seq: 1,
                streaming: None,
            },
        );
        if self.behaviour.auto_complete {
            let line = self.behaviour.log_line.clone();
            for _ in 0..self.behaviour.log_lines {
                self.send_line(job_id, &line);
            }
            self.complete(job_id, Vec::new());
        }
    }

    fn send_line(&mut self, job_id: i64, line: &str) -> u64 {
        let Some(held) = self.held.get_mut(&job_id) else {
            return 0;
        };
        let seq = held.next_seq;
        held.next_seq += 1;
        let event = ClientMessage::JobEvent(JobEvent {
            job_id: held.assignment.job_id,
            attempt: held.assignment.attempt,
            seq,
            timestamp_ms: unix_ms(),
            event: JobEventKind::Log {
                stream: LogStream::Stdout,
                line: line.to_owned(),
            },
        });
        self.push(&event);
        seq
    }

    fn complete(&mut self, job_id: i64, artifacts: Vec<ArtifactDigest>) {
        let Some(held) = self.held.get(&job_id) else {
            return;
        };
        let response = connection::job_response(
            self.identity.credentials(),
            &self.backend_id,
            &held.assignment,
            Outcome::Succeeded,
            artifacts,
        );
        match response {
            Ok(response) => self.push(&ClientMessage::JobResponse(response)),
            Err(e) => {
                let _ = self.events.send(Event::Lost {
                    builder: self.index,
                    reason: e.to_string(),
                });
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Stream {
                job_id,
                lines,
                line,
                window_bytes,
            } => {
                if let Some(held) = self.held.get_mut(&job_id) {
                    held.streaming = Some(Streaming {
                        remaining: lines,
                        line,
                        window_bytes,
                        unacked: VecDeque::new(),
                        unacked_bytes: 0,
                        lines: 0,
                        bytes: 0,
                    });
                    self.pump(job_id);
                }
            }
            Command::Complete { job_id, artifacts } => self.complete(job_id, artifacts),
        }
    }

    /// Sends lines while the window has room.
    fn pump(&mut self, job_id: i64) {
        loop {
            let Some(streaming) = self
                .held
                .get_mut(&job_id)
                .and_then(|h| h.streaming.as_mut())
            else {
                return;
            };
            if streaming.remaining == 0 || streaming.unacked_bytes >= streaming.window_bytes {
                return;
            }
            streaming.remaining -= 1;
            let line = streaming.line.clone();
            let seq = self.send_line(job_id, &line);
            if let Some(streaming) = self
                .held
                .get_mut(&job_id)
                .and_then(|h| h.streaming.as_mut())
            {
                streaming.unacked.push_back((seq, line.len()));
                streaming.unacked_bytes += line.len();
            }
        }
    }

    fn on_event_ack(&mut self, job_id: i64, acked_seq: u64) {
        let Some(streaming) = self
            .held
            .get_mut(&job_id)
            .and_then(|h| h.streaming.as_mut())
        else {
            return;
        };
        while let Some(&(seq, len)) = streaming.unacked.front() {
            if seq > acked_seq {
                break;
            }
            streaming.unacked.pop_front();
            streaming.unacked_bytes -= len;
            streaming.lines += 1;
            streaming.bytes += len as u64;
        }
        if streaming.remaining == 0 && streaming.unacked.is_empty() {
            let (lines, bytes) = (streaming.lines, streaming.bytes);
            if let Some(held) = self.held.get_mut(&job_id) {
                held.streaming = None;
            }
            let _ = self.events.send(Event::StreamDone {
                job_id,
                lines,
                bytes,
                at: Instant::now(),
            });
            self.complete(job_id, Vec::new());
        } else {
            self.pump(job_id);
        }
    }
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Connects builders `0..identities.len()`, `concurrency` handshakes at a time.
pub async fn connect_fleet(
    ctx: &FleetContext,
    identities: &[Rc<Identity>],
    concurrency: usize,
) -> anyhow::Result<Vec<SimBuilder>> {
    let connected: Vec<anyhow::Result<SimBuilder>> =
        futures_util::stream::iter(identities.iter().cloned().enumerate())
            .map(|(i, identity)| connect(ctx, i, identity))
            .buffered(concurrency)
            .collect()
            .await;
    connected.into_iter().collect()
}

/// Receives events until `pick` returns a value, failing after `timeout`.
pub async fn wait_for<T>(
    events: &mut mpsc::UnboundedReceiver<Event>,
    timeout: Duration,
    what: &str,
    mut pick: impl FnMut(Event) -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .with_context(|| format!("timed out after {timeout:?} waiting for {what}"))?
            .context("all builders stopped")?;
        if let Event::Lost { builder, reason } = &event {
            bail!("builder {builder} lost its connection while waiting for {what}: {reason}");
        }
        if let Some(found) = pick(event)? {
            return Ok(found);
        }
    }
}
