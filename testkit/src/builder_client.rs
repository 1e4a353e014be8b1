//! A scripted builder: the protocol crate's messages over an awc WebSocket, driven step by
//! step by the tests. A background task answers pings and, once the session is ready, sends
//! heartbeats for the jobs the script holds, so leases live as long as a real builder's.
//! Every wait has a deadline: a test fails, it never hangs.
//!
//! The protocol itself (dialling, frames, the handshake, the signed completion) is in
//! [`connection`], which the benchmark's simulated fleet drives as well; this module is the
//! step-by-step driver that panics where a test should fail.

pub mod connection;

use std::cell::RefCell;
use std::collections::{BTreeSet, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use awc::ws;
use buildfleet_protocol::{
    ArtifactDigest, AuthAccepted, Capabilities, ClientMessage, CompletionResult, ErrorCode,
    Heartbeat, HeldJob, JobAssignment, JobEvent, JobEventKind, JobRef, JobRequest, JobResponse,
    LogStream, Outcome, RecipeCapability, ResumeResult, ServerMessage, Sha256Digest, WorkAck,
    WorkDecision,
};
use futures_util::{SinkExt as _, StreamExt as _};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use self::connection::{Authenticated, ClientError, Frame, Transport, WsSink, WsStream};
use crate::keys::TestKey;

/// How long one expected frame may take to arrive.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// What the backend sent, in order.
#[derive(Debug)]
pub enum Incoming {
    Message(ServerMessage),
    /// A text frame that is not a valid server message.
    Undecodable(String),
    /// The connection closed (with the close frame's reason, if any).
    Closed(Option<ws::CloseReason>),
}

pub struct BuilderClient {
    outgoing: mpsc::UnboundedSender<ws::Message>,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    /// Frames read while waiting for another one, handed out first.
    backlog: VecDeque<Incoming>,
    /// Attempts the heartbeat task reports as active.
    active: Rc<RefCell<BTreeSet<JobRef>>>,
    tasks: Vec<JoinHandle<()>>,
    heartbeat_interval: Duration,
    /// From the challenge request: the id statements are bound to.
    pub backend_id: Option<String>,
    pub accepted: Option<AuthAccepted>,
    closed: bool,
}

impl BuilderClient {
    /// Opens the WebSocket to `url` (`ws://…/api/v1/builders/connect`).
    pub async fn connect(url: &str) -> BuilderClient {
        // TCP_NODELAY as a real builder's: two frames in a row (two accepts) must not wait
        // out a delayed ACK.
        let (sink, stream) = connection::dial(&crate::server::test_client(None), url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        BuilderClient::over(sink, stream)
    }

    /// Drives an open connection: a writer task, and a reader task that answers pings and
    /// queues everything else.
    fn over(mut sink: WsSink, mut stream: WsStream) -> BuilderClient {
        let (outgoing, mut to_send) = mpsc::unbounded_channel::<ws::Message>();
        let (deliver, incoming) = mpsc::unbounded_channel();
        let writer = actix_rt::spawn(async move {
            while let Some(message) = to_send.recv().await {
                let closing = matches!(message, ws::Message::Close(_));
                if sink.send(message).await.is_err() || closing {
                    break;
                }
            }
        });
        let pong = outgoing.clone();
        let reader = actix_rt::spawn(async move {
            loop {
                let item = match connection::read(stream.next().await) {
                    Frame::Message(message) => Incoming::Message(message),
                    Frame::Undecodable(text) => Incoming::Undecodable(text),
                    Frame::Ping(payload) => {
                        let _ = pong.send(ws::Message::Pong(payload));
                        continue;
                    }
                    Frame::Other(other) => Incoming::Undecodable(format!("{other:?}")),
                    Frame::Closed(reason) => Incoming::Closed(reason),
                    Frame::Broken(_) => Incoming::Closed(None),
                };
                let closed = matches!(item, Incoming::Closed(_));
                if deliver.send(item).is_err() || closed {
                    break;
                }
            }
        });
        BuilderClient {
            outgoing,
            incoming,
            backlog: VecDeque::new(),
            active: Rc::default(),
            tasks: vec![writer, reader],
            heartbeat_interval: Duration::from_millis(200),
            backend_id: None,
            accepted: None,
            closed: false,
        }
    }

    /// Connects and completes hello, challenge and capabilities + resume with no held jobs.
    pub async fn connect_ready(url: &str, key: &TestKey) -> BuilderClient {
        let mut client = BuilderClient::connect(url).await;
        client.handshake(key, Vec::new()).await;
        client
    }

    // ---- sending ----

    pub fn send(&mut self, message: ClientMessage) {
        match &message {
            ClientMessage::WorkAck(WorkAck {
                job_id,
                attempt,
                decision: WorkDecision::Accept,
            }) => {
                self.active.borrow_mut().insert(JobRef {
                    job_id: *job_id,
                    attempt: *attempt,
                });
            }
            ClientMessage::JobResponse(response) => {
                self.active.borrow_mut().remove(&JobRef {
                    job_id: response.job_id,
                    attempt: response.attempt,
                });
            }
            _ => {}
        }
        self.send_ws(connection::encode(&message));
    }

    pub fn send_raw(&mut self, text: &str) {
        let _ = self
            .outgoing
            .send(ws::Message::Text(text.to_owned().into()));
    }

    /// Sends any WebSocket message as is (fragments, pings, close frames).
    pub fn send_ws(&mut self, message: ws::Message) {
        let _ = self.outgoing.send(message);
    }

    pub fn send_binary(&mut self, bytes: &[u8]) {
        let _ = self
            .outgoing
            .send(ws::Message::Binary(bytes.to_vec().into()));
    }

    // ---- receiving ----

    /// The next frame, from the backlog first. Fails the test after [`RECV_TIMEOUT`].
    pub async fn next_incoming(&mut self) -> Incoming {
        self.try_next_incoming()
            .await
            .unwrap_or_else(|_| panic!("no frame from the backend within {RECV_TIMEOUT:?}"))
    }

    /// The next frame, from the backlog first; an error after [`RECV_TIMEOUT`].
    async fn try_next_incoming(&mut self) -> Result<Incoming, ClientError> {
        if let Some(item) = self.backlog.pop_front() {
            return Ok(item);
        }
        if self.closed {
            return Ok(Incoming::Closed(None));
        }
        match tokio::time::timeout(RECV_TIMEOUT, self.incoming.recv()).await {
            Ok(Some(item)) => {
                if matches!(item, Incoming::Closed(_)) {
                    self.closed = true;
                }
                Ok(item)
            }
            Ok(None) => {
                self.closed = true;
                Ok(Incoming::Closed(None))
            }
            Err(_) => Err(ClientError::Timeout(RECV_TIMEOUT)),
        }
    }

    /// The next server message; a close or an undecodable frame fails the test.
    pub async fn recv(&mut self) -> ServerMessage {
        match self.next_incoming().await {
            Incoming::Message(message) => message,
            other => panic!("expected a server message, got {other:?}"),
        }
    }

    /// The first message `pick` accepts, searching the backlog and then the socket; other
    /// messages stay in the backlog, in order, for later calls. Fails the test on a close or
    /// after [`RECV_TIMEOUT`].
    pub async fn expect<T>(
        &mut self,
        what: &str,
        pick: impl FnMut(&ServerMessage) -> Option<T>,
    ) -> T {
        match self.try_expect(RECV_TIMEOUT, what, pick).await {
            Some(found) => found,
            None => panic!(
                "waited {RECV_TIMEOUT:?} for {what}; other frames: {:?}",
                self.backlog
            ),
        }
    }

    /// Like [`BuilderClient::expect`], but `None` when nothing matched within `wait`.
    pub async fn try_expect<T>(
        &mut self,
        wait: Duration,
        what: &str,
        mut pick: impl FnMut(&ServerMessage) -> Option<T>,
    ) -> Option<T> {
        for i in 0..self.backlog.len() {
            if let Incoming::Message(message) = &self.backlog[i] {
                if let Some(found) = pick(message) {
                    self.backlog.remove(i);
                    return Some(found);
                }
            }
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let item = if self.closed {
                Incoming::Closed(None)
            } else {
                match tokio::time::timeout_at(deadline, self.incoming.recv()).await {
                    Ok(Some(item)) => item,
                    Ok(None) => Incoming::Closed(None),
                    Err(_) => return None,
                }
            };
            match item {
                Incoming::Message(message) => match pick(&message) {
                    Some(found) => return Some(found),
                    None => self.backlog.push_back(Incoming::Message(message)),
                },
                Incoming::Closed(reason) => {
                    self.closed = true;
                    panic!(
                        "connection closed ({reason:?}) while waiting for {what}; frames before: {:?}",
                        self.backlog
                    )
                }
                other => self.backlog.push_back(other),
            }
        }
    }

    /// Reads until the connection closes; returns the messages received before the close
    /// (including the backlog) and the close reason.
    pub async fn expect_closed(&mut self) -> (Vec<ServerMessage>, Option<ws::CloseReason>) {
        let mut seen = Vec::new();
        loop {
            match self.next_incoming().await {
                Incoming::Message(message) => seen.push(message),
                Incoming::Undecodable(text) => panic!("undecodable frame {text:?}"),
                Incoming::Closed(reason) => return (seen, reason),
            }
        }
    }

    /// The backend must send `error{code}` and close the connection.
    pub async fn expect_error_and_close(&mut self, code: ErrorCode) {
        let (seen, _) = self.expect_closed().await;
        assert!(
            seen.iter()
                .any(|m| matches!(m, ServerMessage::Error(e) if e.code == code)),
            "expected error {code:?} before the close, got {seen:?}"
        );
    }

    /// The backend must send `auth_rejected{code}` and close the connection.
    pub async fn expect_auth_rejected(&mut self, code: ErrorCode) {
        let (seen, _) = self.expect_closed().await;
        assert!(
            matches!(seen.as_slice(), [ServerMessage::AuthRejected(r)] if r.code == code),
            "expected only auth_rejected {code:?} before the close, got {seen:?}"
        );
    }

    // ---- the session's steps ----

    pub fn hello(&mut self, key: &TestKey) {
        self.send(connection::hello(key.credentials()));
    }

    /// Sends hello and returns the challenge (hex) of the challenge request.
    pub async fn request_challenge(&mut self, key: &TestKey) -> String {
        self.hello(key);
        let request = match self.recv().await {
            ServerMessage::ChallengeRequest(request) => request,
            other => panic!("expected challenge_request, got {other:?}"),
        };
        check_challenge(&request);
        self.backend_id = Some(request.backend_id);
        request.challenge
    }

    /// The signature a builder answers `challenge` with.
    pub fn sign_challenge(&self, key: &TestKey, challenge: &str) -> String {
        let backend_id = self
            .backend_id
            .as_deref()
            .expect("a challenge was received");
        connection::sign_challenge(&key.private, backend_id, challenge)
            .expect("signing a challenge")
    }

    /// hello → challenge_request → challenge_response → auth_accepted.
    pub async fn authenticate(&mut self, key: &TestKey) -> AuthAccepted {
        let authenticated = connection::authenticate(self, key.credentials())
            .await
            .unwrap_or_else(|e| panic!("authenticating {}: {e}", key.name));
        self.authenticated(authenticated)
    }

    fn authenticated(&mut self, authenticated: Authenticated) -> AuthAccepted {
        check_challenge(&authenticated.challenge);
        self.heartbeat_interval = authenticated.heartbeat_interval();
        self.backend_id = Some(authenticated.challenge.backend_id);
        self.accepted = Some(authenticated.accepted.clone());
        authenticated.accepted
    }

    /// authenticate, then capabilities (recipe `cargo-build`, 4 slots) and resume with
    /// `held`; returns the resume result. Heartbeats start once the session is ready.
    pub async fn handshake(&mut self, key: &TestKey, held: Vec<HeldJob>) -> ResumeResult {
        self.handshake_with(key, default_capabilities(4), held)
            .await
    }

    pub async fn handshake_with(
        &mut self,
        key: &TestKey,
        capabilities: Capabilities,
        held: Vec<HeldJob>,
    ) -> ResumeResult {
        let (authenticated, result) =
            connection::handshake(self, key.credentials(), capabilities, held.clone())
                .await
                .unwrap_or_else(|e| panic!("handshake of {}: {e}", key.name));
        self.authenticated(authenticated);
        for decision in &result.jobs {
            let still_running = held.iter().any(|h| {
                h.job_id == decision.job_id && h.attempt == decision.attempt && !h.finished
            });
            if still_running
                && matches!(
                    decision.decision,
                    buildfleet_protocol::ResumeAction::Continue { .. }
                )
            {
                self.active.borrow_mut().insert(JobRef {
                    job_id: decision.job_id,
                    attempt: decision.attempt,
                });
            }
        }
        self.start_heartbeats();
        result
    }

    fn start_heartbeats(&mut self) {
        let (outgoing, active, interval) = (
            self.outgoing.clone(),
            self.active.clone(),
            self.heartbeat_interval,
        );
        self.tasks.push(actix_rt::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            loop {
                ticks.tick().await;
                let beat = ClientMessage::Heartbeat(Heartbeat {
                    active_jobs: active.borrow().iter().copied().collect(),
                });
                if outgoing.send(connection::encode(&beat)).is_err() {
                    break;
                }
            }
        }));
    }

    /// Stops reporting `job` in heartbeats (a builder that dropped it).
    pub fn forget(&mut self, job: JobRef) {
        self.active.borrow_mut().remove(&job);
    }

    // ---- work ----

    pub fn request_jobs(&mut self, credits: u32) {
        self.send(ClientMessage::JobRequest(JobRequest { credits }));
    }

    /// The next `jobs` frame's assignments.
    pub async fn next_jobs(&mut self) -> Vec<JobAssignment> {
        self.expect("a jobs frame", |m| match m {
            ServerMessage::Jobs(jobs) => Some(jobs.jobs.clone()),
            _ => None,
        })
        .await
    }

    /// The next single assignment.
    pub async fn next_assignment(&mut self) -> JobAssignment {
        let mut jobs = self.next_jobs().await;
        assert_eq!(jobs.len(), 1, "expected one assignment, got {jobs:?}");
        jobs.remove(0)
    }

    pub fn accept(&mut self, job: &JobAssignment) {
        self.send(ClientMessage::WorkAck(WorkAck {
            job_id: job.job_id,
            attempt: job.attempt,
            decision: WorkDecision::Accept,
        }));
    }

    pub fn reject(&mut self, job: &JobAssignment, reason: &str) {
        self.send(ClientMessage::WorkAck(WorkAck {
            job_id: job.job_id,
            attempt: job.attempt,
            decision: WorkDecision::Reject {
                reason: reason.into(),
            },
        }));
    }

    /// Sends a stdout log line as event `seq` of the job's attempt.
    pub fn log(&mut self, job: JobRef, seq: u64, line: &str) {
        self.send(ClientMessage::JobEvent(JobEvent {
            job_id: job.job_id,
            attempt: job.attempt,
            seq,
            timestamp_ms: 1_700_000_000_000 + i64::try_from(seq).unwrap_or(0),
            event: JobEventKind::Log {
                stream: LogStream::Stdout,
                line: line.into(),
            },
        }));
    }

    /// Waits for an `event_ack` of `job` acknowledging at least `seq`.
    pub async fn expect_event_ack(&mut self, job: JobRef, seq: u64) -> u64 {
        self.expect(&format!("event_ack >= {seq}"), |m| match m {
            ServerMessage::EventAck(ack)
                if ack.job_id == job.job_id
                    && ack.attempt == job.attempt
                    && ack.acked_seq >= seq =>
            {
                Some(ack.acked_seq)
            }
            _ => None,
        })
        .await
    }

    /// The `job_response` a builder sends for `job`, with a statement signed by `key`.
    pub fn job_response(
        &self,
        key: &TestKey,
        job: &JobAssignment,
        outcome: Outcome,
        artifacts: Vec<ArtifactDigest>,
    ) -> JobResponse {
        let backend_id = self.backend_id.as_deref().expect("authenticated");
        connection::job_response(key.credentials(), backend_id, job, outcome, artifacts)
            .expect("signing a statement")
    }

    /// Sends the signed completion and returns the `completion_ack` result.
    pub async fn complete(
        &mut self,
        key: &TestKey,
        job: &JobAssignment,
        outcome: Outcome,
        artifacts: Vec<ArtifactDigest>,
    ) -> CompletionResult {
        let response = self.job_response(key, job, outcome, artifacts);
        self.send(ClientMessage::JobResponse(response));
        self.expect_completion_ack(job_ref(job)).await
    }

    pub async fn expect_completion_ack(&mut self, job: JobRef) -> CompletionResult {
        self.expect("completion_ack", |m| match m {
            ServerMessage::CompletionAck(ack)
                if ack.job_id == job.job_id && ack.attempt == job.attempt =>
            {
                Some(ack.result.clone())
            }
            _ => None,
        })
        .await
    }

    /// Closes the TCP connection without a close frame, as a lost network would.
    pub fn drop_connection(mut self) {
        self.abort_tasks();
    }

    /// Sends a close frame and stops.
    pub async fn close(mut self) {
        let _ = self.outgoing.send(ws::Message::Close(None));
        // Let the writer flush the close frame before the socket goes.
        if let Some(writer) = self.tasks.first_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
        }
        self.abort_tasks();
    }

    fn abort_tasks(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

/// The handshake of [`connection`] over this client's queues, so the tests run the one
/// handshake the benchmark runs.
impl Transport for BuilderClient {
    async fn send(&mut self, message: &ClientMessage) -> Result<(), ClientError> {
        BuilderClient::send(self, message.clone());
        Ok(())
    }

    async fn recv(&mut self) -> Result<ServerMessage, ClientError> {
        match self.try_next_incoming().await? {
            Incoming::Message(message) => Ok(message),
            Incoming::Undecodable(text) => Err(ClientError::Undecodable(text)),
            Incoming::Closed(reason) => Err(ClientError::Closed(reason)),
        }
    }
}

impl Drop for BuilderClient {
    fn drop(&mut self) {
        self.abort_tasks();
    }
}

/// What a test expects of every challenge: 32 random bytes in hex, not yet expired.
fn check_challenge(request: &buildfleet_protocol::ChallengeRequest) {
    assert_eq!(request.challenge.len(), 64, "32 random bytes in hex");
    assert!(request.expires_in_ms > 0);
}

pub fn job_ref(job: &JobAssignment) -> JobRef {
    JobRef {
        job_id: job.job_id,
        attempt: job.attempt,
    }
}

pub fn default_capabilities(max_concurrent_jobs: u32) -> Capabilities {
    Capabilities {
        recipes: vec![RecipeCapability {
            name: "cargo-build".into(),
            version: "1".into(),
        }],
        labels: Default::default(),
        max_concurrent_jobs,
        accepts_every_assignment: false,
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn digest_of(name: &str, bytes: &[u8]) -> ArtifactDigest {
    ArtifactDigest {
        name: name.into(),
        size: bytes.len() as u64,
        sha256: sha256_hex(bytes)
            .parse::<Sha256Digest>()
            .expect("a SHA-256 digest"),
    }
}

/// `PUT {upload_url}/{name}` with the job token and the declared digest; returns the status
/// and the JSON body.
pub async fn upload(
    upload_url: &str,
    token: &str,
    name: &str,
    body: &[u8],
    declared_sha256: &str,
) -> (awc::http::StatusCode, serde_json::Value) {
    let url = format!("{upload_url}/{name}");
    let mut response = awc::Client::new()
        .put(&url)
        .bearer_auth(token)
        .insert_header(("X-Buildfleet-Sha256", declared_sha256))
        .send_body(body.to_vec())
        .await
        .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
    let bytes = response
        .body()
        .await
        .unwrap_or_else(|e| panic!("PUT {url} body: {e}"));
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (response.status(), json)
}

/// Uploads `body` as artifact `name` of `job`, which must succeed; returns its digest.
pub async fn upload_ok(job: &JobAssignment, name: &str, body: &[u8]) -> ArtifactDigest {
    let digest = digest_of(name, body);
    let (status, json) = upload(
        &job.upload_url,
        &job.job_token,
        name,
        body,
        digest.sha256.as_str(),
    )
    .await;
    assert_eq!(
        status,
        awc::http::StatusCode::CREATED,
        "upload {name}: {json}"
    );
    assert_eq!(json["name"], name);
    assert_eq!(json["size"], body.len());
    assert_eq!(json["sha256"], digest.sha256.as_str());
    digest
}
