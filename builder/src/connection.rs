//! The connection actor: one WebSocket to the backend at a time (awc, written through
//! `actix::io::SinkWrite`), authentication, and reconnection with capped exponential
//! backoff and jitter. After `auth_accepted` it sends `capabilities` and hands the session
//! to the supervisor, which speaks the rest of the protocol through [`Outgoing`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::io::{SinkWrite, WriteHandler};
use actix::prelude::*;
use actix_codec::Framed;
use awc::error::WsProtocolError;
use awc::ws::{Codec, Frame, Message};
use awc::BoxedSocket;
use buildfleet_protocol::signing::sign_challenge;
use buildfleet_protocol::{
    Capabilities, ChallengeResponse, ClientMessage, ErrorCode, Hello, ServerMessage,
    DEFAULT_MAX_FRAME_BYTES, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use futures_util::stream::{SplitSink, StreamExt};
use rand::Rng;

use crate::identity::Identity;
use crate::supervisor::{
    CloseConnection, Fatal, FromServer, Outgoing, SessionClosed, SessionOpened, Supervisor,
};
use crate::BuilderError;

/// First reconnect delay; doubles per failed attempt up to [`BACKOFF_MAX`].
pub const BACKOFF_BASE: Duration = Duration::from_millis(200);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The longest `retry_after_ms` honoured: a bogus value must not park the builder for good.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);
/// Dialing plus the handshake must finish within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// How often the connection checks that the backend is still heard from.
const LIVENESS_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Silence tolerated before `auth_accepted` tells us the backend's own timeout.
const DEFAULT_SILENCE_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest frame accepted from the backend before the session settings say otherwise.
const MAX_INCOMING_FRAME: usize = 4 * 1024 * 1024;

type WsSink = SinkWrite<Message, SplitSink<Framed<BoxedSocket, Codec>, Message>>;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Waiting to dial (backoff) or dialing.
    Disconnected,
    AwaitingChallenge,
    AwaitingAuthResult {
        backend_id: String,
    },
    Authenticated,
}

/// Capped exponential backoff with jitter (each delay is drawn from the upper half of
/// the current step, so a fleet that lost its backend does not reconnect in lockstep).
#[derive(Debug, Clone)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    pub fn new() -> Self {
        Backoff { failures: 0 }
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    pub fn next_delay(&mut self) -> Duration {
        let step = BACKOFF_BASE
            .saturating_mul(1u32 << self.failures.min(16))
            .min(BACKOFF_MAX);
        self.failures = self.failures.saturating_add(1);
        let half = step / 2;
        half + rand::thread_rng().gen_range(Duration::ZERO..=half)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

pub struct Connection {
    url: String,
    name: String,
    identity: Arc<Identity>,
    capabilities: Capabilities,
    client: awc::Client,
    supervisor: Addr<Supervisor>,
    phase: Phase,
    sink: Option<WsSink>,
    stream: Option<SpawnHandle>,
    /// Numbers connections, so late frames of an old one are never taken for the new one.
    session: u64,
    last_heard: Instant,
    silence_timeout: Duration,
    ping_interval: Duration,
    last_ping: Instant,
    max_frame_bytes: usize,
    backoff: Backoff,
    closing: bool,
}

impl Connection {
    pub fn new(
        url: String,
        name: String,
        identity: Arc<Identity>,
        capabilities: Capabilities,
        client: awc::Client,
        supervisor: Addr<Supervisor>,
    ) -> Self {
        Connection {
            url,
            name,
            identity,
            capabilities,
            client,
            supervisor,
            phase: Phase::Disconnected,
            sink: None,
            stream: None,
            session: 0,
            last_heard: Instant::now(),
            silence_timeout: DEFAULT_SILENCE_TIMEOUT,
            ping_interval: DEFAULT_SILENCE_TIMEOUT / 3,
            last_ping: Instant::now(),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            backoff: Backoff::new(),
            closing: false,
        }
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        self.session += 1;
        self.phase = Phase::Disconnected;
        self.last_heard = Instant::now();
        let request = self
            .client
            .ws(self.url.as_str())
            .max_frame_size(MAX_INCOMING_FRAME);
        let url = self.url.clone();
        tracing::debug!(%url, "connecting");
        let dial = async move { tokio::time::timeout(HANDSHAKE_TIMEOUT, request.connect()).await };
        ctx.spawn(
            dial.into_actor(self)
                .map(move |result, act, ctx| match result {
                    Ok(Ok((_response, framed))) => {
                        let (sink, stream) = framed.split();
                        act.sink = Some(SinkWrite::new(sink, ctx));
                        act.stream = Some(ctx.add_stream(stream));
                        act.phase = Phase::AwaitingChallenge;
                        act.last_heard = Instant::now();
                        act.write(ClientMessage::Hello(Hello {
                            protocol_version: PROTOCOL_VERSION,
                            fingerprint: act.identity.fingerprint.clone(),
                            builder_name: act.name.clone(),
                            builder_version: env!("CARGO_PKG_VERSION").to_owned(),
                        }));
                    }
                    Ok(Err(e)) => act.retry(&format!("cannot connect to {url}: {e}"), ctx),
                    Err(_) => act.retry(&format!("connecting to {url} timed out"), ctx),
                }),
        );
    }

    fn write(&mut self, message: ClientMessage) {
        if let Some(sink) = self.sink.as_mut() {
            if sink.write(Message::Text(message.to_json().into())).is_err() {
                tracing::debug!("dropped a frame: the socket is closing");
            }
        }
    }

    /// Drops the current socket (if any) and schedules the next attempt.
    fn retry(&mut self, reason: &str, ctx: &mut Context<Self>) {
        self.retry_no_sooner_than(reason, Duration::ZERO, ctx);
    }

    /// Like [`Connection::retry`], but waits at least `floor` (a backend's retry-after).
    fn retry_no_sooner_than(&mut self, reason: &str, floor: Duration, ctx: &mut Context<Self>) {
        self.drop_socket(ctx);
        if self.closing {
            return;
        }
        let delay = self.backoff.next_delay().max(floor);
        tracing::warn!(
            reason,
            retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "connection lost"
        );
        ctx.run_later(delay, |act, ctx| act.connect(ctx));
    }

    fn drop_socket(&mut self, ctx: &mut Context<Self>) {
        if let Some(handle) = self.stream.take() {
            ctx.cancel_future(handle);
        }
        if let Some(mut sink) = self.sink.take() {
            sink.close();
            // A dead peer may never complete the close; do not keep the writer forever.
            let handle = sink.handle();
            ctx.run_later(Duration::from_secs(2), move |_, ctx| {
                ctx.cancel_future(handle);
            });
        }
        if self.phase == Phase::Authenticated {
            self.supervisor.do_send(SessionClosed {
                session: self.session,
            });
        }
        self.phase = Phase::Disconnected;
    }

    fn on_text(&mut self, text: &str, ctx: &mut Context<Self>) {
        let message =
            match ServerMessage::decode(text, self.max_frame_bytes.max(DEFAULT_MAX_FRAME_BYTES)) {
                Ok(message) => message,
                Err(e) => {
                    tracing::warn!(error = %e, "undecodable frame from the backend");
                    return;
                }
            };
        match (message, self.phase.clone()) {
            (ServerMessage::ChallengeRequest(challenge), Phase::AwaitingChallenge) => {
                match sign_challenge(
                    &self.identity.key,
                    &challenge.backend_id,
                    &challenge.challenge,
                ) {
                    Ok(signature) => {
                        self.write(ClientMessage::ChallengeResponse(ChallengeResponse {
                            signature,
                        }));
                        self.phase = Phase::AwaitingAuthResult {
                            backend_id: challenge.backend_id,
                        };
                    }
                    Err(e) => {
                        ctx.notify(FatalError(BuilderError::Sign(e.to_string())));
                    }
                }
            }
            (ServerMessage::AuthAccepted(accepted), Phase::AwaitingAuthResult { backend_id }) => {
                let version = accepted.settings.protocol_version;
                if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
                    ctx.notify(FatalError(BuilderError::UnsupportedVersion(format!(
                        "the backend chose protocol version {version}; this builder speaks {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}"
                    ))));
                    return;
                }
                let settings = accepted.settings;
                self.silence_timeout =
                    Duration::from_millis(settings.heartbeat_timeout_ms.max(1000));
                self.ping_interval = Duration::from_millis(settings.heartbeat_interval_ms.max(100));
                self.max_frame_bytes =
                    usize::try_from(settings.max_frame_bytes).unwrap_or(usize::MAX);
                self.backoff.reset();
                self.phase = Phase::Authenticated;
                tracing::info!(builder_id = accepted.builder_id, %backend_id, "authenticated");
                self.write(ClientMessage::Capabilities(self.capabilities.clone()));
                self.supervisor.do_send(SessionOpened {
                    session: self.session,
                    backend_id,
                    settings,
                    outbox: ctx.address().recipient(),
                });
            }
            (ServerMessage::AuthRejected(rejected), _) => match rejected.code {
                ErrorCode::UnsupportedVersion => ctx.notify(FatalError(
                    BuilderError::UnsupportedVersion(rejected.reason),
                )),
                ErrorCode::UnknownBuilder | ErrorCode::BuilderDisabled => {
                    tracing::error!(
                        code = rejected.code.as_str(),
                        reason = %rejected.reason,
                        fingerprint = %self.identity.fingerprint,
                        "the backend does not admit this builder; an operator must admit (or enable) this key. Retrying."
                    );
                    self.retry("authentication rejected", ctx);
                }
                ErrorCode::TooManyAttempts => {
                    tracing::warn!(reason = %rejected.reason, retry_after_ms = ?rejected.retry_after_ms, "authentication throttled");
                    let floor = Duration::from_millis(rejected.retry_after_ms.unwrap_or(0))
                        .min(MAX_RETRY_AFTER);
                    self.retry_no_sooner_than("authentication throttled", floor, ctx);
                }
                code => {
                    tracing::warn!(code = code.as_str(), reason = %rejected.reason, "authentication rejected");
                    self.retry("authentication rejected", ctx);
                }
            },
            (ServerMessage::Error(error), _) => {
                if error.code == ErrorCode::SessionReplaced {
                    tracing::warn!("another connection with this builder's key replaced this one (is the key used twice?)");
                } else {
                    tracing::warn!(code = error.code.as_str(), message = %error.message, "error from the backend");
                }
                self.retry("the backend reported an error", ctx);
            }
            (message, Phase::Authenticated) => {
                self.supervisor.do_send(FromServer {
                    session: self.session,
                    message,
                });
            }
            (message, phase) => {
                tracing::warn!(
                    message = message.type_name(),
                    ?phase,
                    "unexpected message during the handshake"
                );
            }
        }
    }

    fn check_liveness(&mut self, ctx: &mut Context<Self>) {
        let silent_for = self.last_heard.elapsed();
        match self.phase {
            Phase::Disconnected => {}
            Phase::Authenticated => {
                if silent_for > self.silence_timeout {
                    self.retry("the backend went silent", ctx);
                } else if self.last_ping.elapsed() >= self.ping_interval {
                    // Our own pings make a half-open socket fail fast on write.
                    self.last_ping = Instant::now();
                    if let Some(sink) = self.sink.as_mut() {
                        let _ = sink.write(Message::Ping(Default::default()));
                    }
                }
            }
            _ if silent_for > HANDSHAKE_TIMEOUT => self.retry("the handshake timed out", ctx),
            _ => {}
        }
    }
}

/// Internal: stop for good with this error.
#[derive(Message)]
#[rtype(result = "()")]
struct FatalError(BuilderError);

impl Actor for Connection {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.connect(ctx);
        ctx.run_interval(LIVENESS_CHECK_INTERVAL, |act, ctx| act.check_liveness(ctx));
    }
}

impl Handler<FatalError> for Connection {
    type Result = ();

    fn handle(&mut self, msg: FatalError, ctx: &mut Self::Context) {
        self.closing = true;
        self.drop_socket(ctx);
        self.supervisor.do_send(Fatal(msg.0));
    }
}

impl Handler<Outgoing> for Connection {
    type Result = ();

    fn handle(&mut self, msg: Outgoing, _ctx: &mut Self::Context) {
        if msg.session == self.session && self.phase == Phase::Authenticated {
            self.write(msg.message);
        }
    }
}

impl Handler<CloseConnection> for Connection {
    type Result = ();

    fn handle(&mut self, _msg: CloseConnection, ctx: &mut Self::Context) {
        self.closing = true;
        if let Some(sink) = self.sink.as_mut() {
            let _ = sink.write(Message::Close(None));
        }
        self.drop_socket(ctx);
        // Leave a moment for the close frame to go out.
        ctx.run_later(Duration::from_millis(200), |_, ctx| ctx.stop());
    }
}

impl StreamHandler<Result<Frame, WsProtocolError>> for Connection {
    fn handle(&mut self, item: Result<Frame, WsProtocolError>, ctx: &mut Self::Context) {
        // A dropped socket's stream still delivers what one poll already read (a close after
        // `auth_rejected`, say): that must not schedule a second, earlier reconnect.
        if self.phase == Phase::Disconnected {
            return;
        }
        self.last_heard = Instant::now();
        match item {
            Ok(Frame::Text(bytes)) => match std::str::from_utf8(&bytes) {
                Ok(text) => self.on_text(text, ctx),
                Err(_) => tracing::warn!("a text frame that is not UTF-8"),
            },
            Ok(Frame::Ping(payload)) => {
                if let Some(sink) = self.sink.as_mut() {
                    let _ = sink.write(Message::Pong(payload));
                }
            }
            Ok(Frame::Pong(_)) => {}
            Ok(Frame::Close(reason)) => {
                let reason =
                    reason.map(|r| format!("{:?} {}", r.code, r.description.unwrap_or_default()));
                self.retry(
                    &format!("closed by the backend ({})", reason.unwrap_or_default()),
                    ctx,
                );
            }
            Ok(Frame::Binary(_) | Frame::Continuation(_)) => {
                tracing::warn!("ignored a binary frame: the protocol uses text frames");
            }
            Err(e) => self.retry(&format!("protocol error: {e}"), ctx),
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        if self.phase == Phase::Disconnected {
            // The end of a stream already dropped in the same poll.
            return;
        }
        self.stream = None;
        self.retry("the connection closed", ctx);
    }
}

impl WriteHandler<WsProtocolError> for Connection {
    fn error(&mut self, err: WsProtocolError, _ctx: &mut Self::Context) -> Running {
        // The read side (or the silence check) notices the broken socket and reconnects.
        tracing::warn!(error = %err, "writing to the backend failed");
        Running::Stop
    }

    fn finished(&mut self, _ctx: &mut Self::Context) {
        // A writer ending must not stop the actor: the next connection gets a new writer.
    }
}
