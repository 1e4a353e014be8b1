//! A builder's side of the protocol, under both scripted builders: the tests'
//! [`BuilderClient`](super::BuilderClient), which goes frame by frame and fails the test on
//! anything unexpected, and the benchmark's fleet, which drives thousands of sessions and
//! reports what went wrong. Here: dialling the WebSocket, encoding and decoding frames, the
//! handshake (hello, signed challenge, capabilities, resume) and the signed completion.
//! Nothing here panics: a failure is a [`ClientError`], for the driver to judge.

use std::future::Future;
use std::time::Duration;

use awc::ws;
use buildfleet_protocol::signing::{self, BuildStatement, STATEMENT_FORMAT};
use buildfleet_protocol::ssh_key::PrivateKey;
use buildfleet_protocol::{
    ArtifactDigest, AuthAccepted, Capabilities, ChallengeRequest, ChallengeResponse, ClientMessage,
    Fingerprint, HeldJob, Hello, JobAssignment, JobResponse, Outcome, Resume, ResumeResult,
    ServerMessage, PROTOCOL_VERSION,
};
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};

/// The WebSocket subprotocol the backend's builder endpoint speaks.
pub const SUBPROTOCOL: &str = "buildfleet.v1";

/// The largest frame a builder accepts (an assignment batch can be large).
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

pub type WsFramed = actix_codec::Framed<awc::BoxedSocket, ws::Codec>;
pub type WsSink = SplitSink<WsFramed, ws::Message>;
pub type WsStream = SplitStream<WsFramed>;

/// Why a builder's step failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("closed by the backend: {0:?}")]
    Closed(Option<ws::CloseReason>),
    #[error("WebSocket error: {0}")]
    WebSocket(String),
    /// See [`Frame::Broken`].
    #[error("{0}")]
    Broken(String),
    #[error("timed out after {0:?} waiting for the backend")]
    Timeout(Duration),
    #[error("undecodable frame from the backend: {0}")]
    Undecodable(String),
    #[error("expected {expected}, got {got:?}")]
    Unexpected {
        expected: &'static str,
        got: Box<ServerMessage>,
    },
    #[error("signing: {0}")]
    Signing(String),
}

/// One frame from the backend, read.
#[derive(Debug)]
pub enum Frame {
    Message(ServerMessage),
    /// A text frame that is not a valid server message.
    Undecodable(String),
    /// To be answered with a pong of the same payload.
    Ping(Bytes),
    /// A pong, binary or continuation frame: nothing a builder acts on.
    Other(ws::Frame),
    /// A close frame, with its reason if it had one.
    Closed(Option<ws::CloseReason>),
    /// The stream failed or ended without a close frame: what happened, in words.
    Broken(String),
}

/// Reads an item of the WebSocket stream.
pub fn read<E: std::fmt::Display>(item: Option<Result<ws::Frame, E>>) -> Frame {
    match item {
        Some(Ok(ws::Frame::Text(bytes))) => match std::str::from_utf8(&bytes) {
            Ok(text) => match ServerMessage::decode(text, usize::MAX) {
                Ok(message) => Frame::Message(message),
                Err(_) => Frame::Undecodable(text.to_owned()),
            },
            Err(_) => Frame::Undecodable(String::from_utf8_lossy(&bytes).into_owned()),
        },
        Some(Ok(ws::Frame::Ping(payload))) => Frame::Ping(payload),
        Some(Ok(ws::Frame::Close(reason))) => Frame::Closed(reason),
        Some(Ok(other)) => Frame::Other(other),
        Some(Err(e)) => Frame::Broken(format!("WebSocket error: {e}")),
        None => Frame::Broken("connection closed".into()),
    }
}

/// The text frame that carries `message`.
pub fn encode(message: &ClientMessage) -> ws::Message {
    ws::Message::Text(message.to_json().into())
}

/// Opens the builder endpoint `url` (`ws://…/api/v1/builders/connect`) through `client`.
pub async fn dial(client: &awc::Client, url: &str) -> Result<(WsSink, WsStream), ClientError> {
    let (_response, framed) = client
        .ws(url)
        .protocols([SUBPROTOCOL])
        .max_frame_size(MAX_FRAME_BYTES)
        .connect()
        .await
        .map_err(|e| ClientError::Connect {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(framed.split())
}

/// Where the handshake sends and reads: a [`Connection`], or a driver's own plumbing.
pub trait Transport {
    fn send(&mut self, message: &ClientMessage) -> impl Future<Output = Result<(), ClientError>>;
    /// The next server message: pings answered, other control frames skipped; a close, a
    /// broken stream or an undecodable frame is an error.
    fn recv(&mut self) -> impl Future<Output = Result<ServerMessage, ClientError>>;
}

/// A dialled WebSocket read and written directly, each read bounded by a timeout: for the
/// handshake, before a driver takes the two halves over.
pub struct Connection {
    pub sink: WsSink,
    pub stream: WsStream,
    read_timeout: Duration,
}

impl Connection {
    pub async fn dial(
        client: &awc::Client,
        url: &str,
        read_timeout: Duration,
    ) -> Result<Connection, ClientError> {
        let (sink, stream) = dial(client, url).await?;
        Ok(Connection {
            sink,
            stream,
            read_timeout,
        })
    }

    pub fn into_parts(self) -> (WsSink, WsStream) {
        (self.sink, self.stream)
    }
}

impl Transport for Connection {
    async fn send(&mut self, message: &ClientMessage) -> Result<(), ClientError> {
        self.sink
            .send(encode(message))
            .await
            .map_err(|e| ClientError::WebSocket(e.to_string()))
    }

    async fn recv(&mut self) -> Result<ServerMessage, ClientError> {
        loop {
            let item = tokio::time::timeout(self.read_timeout, self.stream.next())
                .await
                .map_err(|_| ClientError::Timeout(self.read_timeout))?;
            match read(item) {
                Frame::Message(message) => return Ok(message),
                Frame::Ping(payload) => self
                    .sink
                    .send(ws::Message::Pong(payload))
                    .await
                    .map_err(|e| ClientError::WebSocket(e.to_string()))?,
                Frame::Other(_) => {}
                Frame::Undecodable(text) => return Err(ClientError::Undecodable(text)),
                Frame::Closed(reason) => return Err(ClientError::Closed(reason)),
                Frame::Broken(reason) => return Err(ClientError::Broken(reason)),
            }
        }
    }
}

/// Who a builder says it is, and the key it proves it with.
#[derive(Clone, Copy)]
pub struct Credentials<'a> {
    pub name: &'a str,
    pub fingerprint: &'a Fingerprint,
    pub key: &'a PrivateKey,
    /// The `builder_version` of the hello.
    pub version: &'a str,
}

pub fn hello(credentials: Credentials<'_>) -> ClientMessage {
    ClientMessage::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        fingerprint: credentials.fingerprint.clone(),
        builder_name: credentials.name.to_owned(),
        builder_version: credentials.version.to_owned(),
    })
}

/// The signature a builder answers `challenge` with.
pub fn sign_challenge(
    key: &PrivateKey,
    backend_id: &str,
    challenge: &str,
) -> Result<String, ClientError> {
    signing::sign_challenge(key, backend_id, challenge)
        .map_err(|e| ClientError::Signing(e.to_string()))
}

/// What the backend said during authentication.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub challenge: ChallengeRequest,
    pub accepted: AuthAccepted,
}

impl Authenticated {
    /// The id statements are bound to.
    pub fn backend_id(&self) -> &str {
        &self.challenge.backend_id
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.accepted.settings.heartbeat_interval_ms)
    }
}

/// hello → challenge_request → signed challenge_response → auth_accepted.
pub async fn authenticate(
    transport: &mut impl Transport,
    credentials: Credentials<'_>,
) -> Result<Authenticated, ClientError> {
    transport.send(&hello(credentials)).await?;
    let challenge = match transport.recv().await? {
        ServerMessage::ChallengeRequest(request) => request,
        other => return Err(unexpected("challenge_request", other)),
    };
    let signature = sign_challenge(credentials.key, &challenge.backend_id, &challenge.challenge)?;
    transport
        .send(&ClientMessage::ChallengeResponse(ChallengeResponse {
            signature,
        }))
        .await?;
    let accepted = match transport.recv().await? {
        ServerMessage::AuthAccepted(accepted) => accepted,
        other => return Err(unexpected("auth_accepted", other)),
    };
    Ok(Authenticated {
        challenge,
        accepted,
    })
}

/// Authenticates, then capabilities and resume with `held` → resume_result: the session is
/// ready for work.
pub async fn handshake(
    transport: &mut impl Transport,
    credentials: Credentials<'_>,
    capabilities: Capabilities,
    held: Vec<HeldJob>,
) -> Result<(Authenticated, ResumeResult), ClientError> {
    let authenticated = authenticate(transport, credentials).await?;
    transport
        .send(&ClientMessage::Capabilities(capabilities))
        .await?;
    transport
        .send(&ClientMessage::Resume(Resume { jobs: held }))
        .await?;
    match transport.recv().await? {
        ServerMessage::ResumeResult(result) => Ok((authenticated, result)),
        other => Err(unexpected("resume_result", other)),
    }
}

fn unexpected(expected: &'static str, got: ServerMessage) -> ClientError {
    ClientError::Unexpected {
        expected,
        got: Box::new(got),
    }
}

/// The `job_response` for `job` with its build statement signed by `credentials`' key, bound
/// to `backend_id`.
pub fn job_response(
    credentials: Credentials<'_>,
    backend_id: &str,
    job: &JobAssignment,
    outcome: Outcome,
    artifacts: Vec<ArtifactDigest>,
) -> Result<JobResponse, ClientError> {
    let statement = BuildStatement {
        format: STATEMENT_FORMAT.into(),
        backend_id: backend_id.to_owned(),
        builder: credentials.fingerprint.clone(),
        job_id: job.job_id,
        attempt: job.attempt,
        source_sha256: job.source.sha256.clone(),
        recipe: job.recipe.clone(),
        mode: job.mode,
        annotations: job.annotations.clone(),
        outcome,
        artifacts: artifacts.clone(),
    };
    let statement = signing::sign_statement(credentials.key, &statement)
        .map_err(|e| ClientError::Signing(e.to_string()))?;
    Ok(JobResponse {
        job_id: job.job_id,
        attempt: job.attempt,
        outcome,
        exit_status: match outcome {
            Outcome::Succeeded => Some(0),
            Outcome::Failed => Some(1),
            Outcome::Cancelled | Outcome::TimedOut => None,
        },
        error: None,
        artifacts,
        plan: None,
        statement,
        dsse_signature: None,
        reproduction: None,
    })
}
