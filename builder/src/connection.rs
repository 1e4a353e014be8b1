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

use crate::backends::Backends;
use crate::identity::Identity;
use crate::supervisor::{
    CloseConnection, Fatal, FromServer, Outgoing, SessionClosed, SessionOpened, Supervisor,
};
use crate::BuilderError;

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
/// How long a closed socket may take to send its close frame; never past the next dial.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

type WsSink = SinkWrite<Message, SplitSink<Framed<BoxedSocket, Codec>, Message>>;

/// When the builder dials again after losing (or failing to get) a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// Ceiling of the first delay; each failure doubles it, up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// After `error{session_replaced}` (another process with this key took over, e.g. a
    /// cloned VM): wait this long plus up to half again, so two clones do not ping-pong.
    pub replaced_backoff: Duration,
    /// A session counts as healthy, and resets the backoff when it ends, once it resumed
    /// and stayed up this long; a session that dies sooner keeps the backoff growing.
    pub healthy_after: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
            replaced_backoff: Duration::from_secs(30),
            healthy_after: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// No socket; the next dial is scheduled (`Connection::redial`). Every failure path
    /// leads here exactly once per connection: a failure reported while waiting belongs to
    /// a connection already given up, so there is only ever one pending dial.
    Waiting,
    Dialing,
    AwaitingChallenge,
    AwaitingAuthResult {
        backend_id: String,
    },
    Authenticated,
}

impl Phase {
    fn has_socket(&self) -> bool {
        !matches!(self, Phase::Waiting | Phase::Dialing)
    }
}

/// Capped exponential backoff with jitter: the n-th delay (from 0) is drawn uniformly from
/// `[step/2, step]` with `step = min(initial * 2^n, max)`. Jitter spreads a fleet that lost
/// its backend; the lower half is kept (rather than full jitter from zero) so the schedule
/// has a floor: no run of unlucky draws can turn into back-to-back redials.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            failures: 0,
        }
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// The ceiling of the next delay.
    pub fn step(&self) -> Duration {
        self.initial
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.max)
    }

    pub fn next_delay(&mut self) -> Duration {
        let step = self.step();
        self.failures = self.failures.saturating_add(1);
        let half = step / 2;
        half + rand::thread_rng().gen_range(Duration::ZERO..=step - half)
    }
}

/// `base` plus up to half of it again, at random.
fn jittered(base: Duration) -> Duration {
    base + rand::thread_rng().gen_range(Duration::ZERO..=base / 2)
}

/// What a socket delivered, tagged with its connection number: frames of a connection
/// already given up are recognised and dropped, whatever the poll order.
struct SocketEvent {
    session: u64,
    frame: Option<Result<Frame, WsProtocolError>>,
}

pub struct Connection {
    backends: Arc<Backends>,
    name: String,
    identity: Arc<Identity>,
    capabilities: Capabilities,
    client: awc::Client,
    supervisor: Addr<Supervisor>,
    policy: ReconnectPolicy,
    phase: Phase,
    sink: Option<WsSink>,
    stream: Option<SpawnHandle>,
    /// The writer of a socket given up, left a moment to send its close frame.
    lingering: Option<SpawnHandle>,
    /// Numbers connections, so late frames of an old one are never taken for the new one.
    session: u64,
    last_heard: Instant,
    /// When the current session got `resume_result` (the start of its healthy time).
    resumed_at: Option<Instant>,
    silence_timeout: Duration,
    ping_interval: Duration,
    last_ping: Instant,
    max_frame_bytes: usize,
    backoff: Backoff,
    closing: bool,
}

impl Connection {
    pub fn new(
        backends: Arc<Backends>,
        name: String,
        identity: Arc<Identity>,
        capabilities: Capabilities,
        client: awc::Client,
        supervisor: Addr<Supervisor>,
        policy: ReconnectPolicy,
    ) -> Self {
        Connection {
            backends,
            name,
            identity,
            capabilities,
            client,
            supervisor,
            backoff: Backoff::new(policy.initial_backoff, policy.max_backoff),
            policy,
            phase: Phase::Waiting,
            sink: None,
            stream: None,
            lingering: None,
            session: 0,
            last_heard: Instant::now(),
            resumed_at: None,
            silence_timeout: DEFAULT_SILENCE_TIMEOUT,
            ping_interval: DEFAULT_SILENCE_TIMEOUT / 3,
            last_ping: Instant::now(),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            closing: false,
        }
    }

    /// Dials; only ever called from `Waiting` (at start and by the one scheduled redial).
    fn connect(&mut self, ctx: &mut Context<Self>) {
        if self.closing || self.phase != Phase::Waiting {
            return;
        }
        // The previous socket is closed for good before the next one opens.
        if let Some(handle) = self.lingering.take() {
            ctx.cancel_future(handle);
        }
        self.session += 1;
        let session = self.session;
        self.phase = Phase::Dialing;
        self.resumed_at = None;
        self.last_heard = Instant::now();
        let url = self.backends.current_connect_url().to_owned();
        let request = self
            .client
            .ws(url.as_str())
            .max_frame_size(MAX_INCOMING_FRAME);
        tracing::debug!(%url, session, "connecting");
        let dial = async move { tokio::time::timeout(HANDSHAKE_TIMEOUT, request.connect()).await };
        ctx.spawn(dial.into_actor(self).map(move |result, act, ctx| {
            if act.session != session || act.phase != Phase::Dialing || act.closing {
                // Given up meanwhile (closing); dropping the result closes its socket.
                return;
            }
            match result {
                Ok(Ok((_response, framed))) => {
                    let (sink, stream) = framed.split();
                    act.sink = Some(SinkWrite::new(sink, ctx));
                    let events = stream
                        .map(move |frame| SocketEvent {
                            session,
                            frame: Some(frame),
                        })
                        .chain(futures_util::stream::once(async move {
                            SocketEvent {
                                session,
                                frame: None,
                            }
                        }));
                    act.stream = Some(ctx.add_stream(events));
                    act.phase = Phase::AwaitingChallenge;
                    act.last_heard = Instant::now();
                    act.write(ClientMessage::Hello(Hello {
                        protocol_version: PROTOCOL_VERSION,
                        fingerprint: act.identity.fingerprint.clone(),
                        builder_name: act.name.clone(),
                        builder_version: env!("CARGO_PKG_VERSION").to_owned(),
                    }));
                }
                Ok(Err(e)) => act.fail(&format!("cannot connect to {url}: {e}"), ctx),
                Err(_) => act.fail(&format!("connecting to {url} timed out"), ctx),
            }
        }));
    }

    fn write(&mut self, message: ClientMessage) {
        if let Some(sink) = self.sink.as_mut() {
            if sink.write(Message::Text(message.to_json().into())).is_err() {
                tracing::debug!("dropped a frame: the socket is closing");
            }
        }
    }

    /// Gives up the current connection and schedules the next dial after the backoff.
    fn fail(&mut self, reason: &str, ctx: &mut Context<Self>) {
        self.fail_waiting_at_least(reason, Duration::ZERO, ctx);
    }

    /// Like [`Connection::fail`], but waits at least `floor` (a retry-after, a replaced
    /// session's long back-off). The one place a redial is scheduled: in `Waiting` a
    /// failure is a second report of one already handled (an error frame and then the
    /// close, the close and then the end of the stream) and changes nothing.
    fn fail_waiting_at_least(&mut self, reason: &str, floor: Duration, ctx: &mut Context<Self>) {
        if self.phase == Phase::Waiting {
            tracing::debug!(reason, "already reconnecting");
            return;
        }
        if self
            .resumed_at
            .is_some_and(|at| at.elapsed() >= self.policy.healthy_after)
        {
            self.backoff.reset();
        }
        self.drop_socket(ctx);
        if self.closing {
            return;
        }
        let delay = self.backoff.next_delay().max(floor);
        // With several replicas, the next dial goes to the next one: the one just lost may
        // be down for good (its jobs resume on whichever replica answers).
        let next_url = if self.backends.len() > 1 {
            self.backends.advance()
        } else {
            self.backends.current_connect_url()
        };
        tracing::warn!(
            reason,
            retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            next = %next_url,
            "connection lost"
        );
        ctx.run_later(delay, |act, ctx| act.connect(ctx));
    }

    /// Closes the socket (if any) and enters `Waiting`.
    fn drop_socket(&mut self, ctx: &mut Context<Self>) {
        if let Some(handle) = self.stream.take() {
            ctx.cancel_future(handle);
        }
        if let Some(mut sink) = self.sink.take() {
            sink.close();
            // A dead peer may never complete the close; do not keep the writer for long.
            let handle = sink.handle();
            self.lingering = Some(handle);
            ctx.run_later(CLOSE_LINGER, move |_, ctx| {
                ctx.cancel_future(handle);
            });
        }
        if self.phase == Phase::Authenticated {
            self.supervisor.do_send(SessionClosed {
                session: self.session,
            });
        }
        self.phase = Phase::Waiting;
        self.resumed_at = None;
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
                // The backoff is not reset here: a session that dies right after
                // authenticating is a failure like any other (see `healthy_after`).
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
                    self.fail("authentication rejected", ctx);
                }
                ErrorCode::TooManyAttempts => {
                    tracing::warn!(reason = %rejected.reason, retry_after_ms = ?rejected.retry_after_ms, "authentication throttled");
                    let floor = Duration::from_millis(rejected.retry_after_ms.unwrap_or(0))
                        .min(MAX_RETRY_AFTER);
                    self.fail_waiting_at_least("authentication throttled", floor, ctx);
                }
                code => {
                    tracing::warn!(code = code.as_str(), reason = %rejected.reason, "authentication rejected");
                    self.fail("authentication rejected", ctx);
                }
            },
            (ServerMessage::Error(error), _) => {
                if error.code == ErrorCode::SessionReplaced {
                    tracing::warn!("another connection with this builder's key replaced this one (is the key used twice?); backing off");
                    let floor = jittered(self.policy.replaced_backoff);
                    self.fail_waiting_at_least("session replaced", floor, ctx);
                } else {
                    tracing::warn!(code = error.code.as_str(), message = %error.message, "error from the backend");
                    self.fail("the backend reported an error", ctx);
                }
            }
            (message, Phase::Authenticated) => {
                if matches!(message, ServerMessage::ResumeResult(_)) {
                    self.resumed_at = Some(Instant::now());
                }
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
            // The dial has its own timeout.
            Phase::Waiting | Phase::Dialing => {}
            Phase::Authenticated => {
                if silent_for > self.silence_timeout {
                    self.fail("the backend went silent", ctx);
                } else if self.last_ping.elapsed() >= self.ping_interval {
                    // Our own pings make a half-open socket fail fast on write.
                    self.last_ping = Instant::now();
                    if let Some(sink) = self.sink.as_mut() {
                        let _ = sink.write(Message::Ping(Default::default()));
                    }
                }
            }
            _ if silent_for > HANDSHAKE_TIMEOUT => self.fail("the handshake timed out", ctx),
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

impl StreamHandler<SocketEvent> for Connection {
    fn handle(&mut self, event: SocketEvent, ctx: &mut Self::Context) {
        // A dropped socket's stream may still deliver what one poll already read (the close
        // after `auth_rejected`, say): it belongs to a connection already given up.
        if event.session != self.session || !self.phase.has_socket() {
            return;
        }
        self.last_heard = Instant::now();
        let Some(item) = event.frame else {
            self.stream = None;
            return self.fail("the connection closed", ctx);
        };
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
                self.fail(
                    &format!("closed by the backend ({})", reason.unwrap_or_default()),
                    ctx,
                );
            }
            Ok(Frame::Binary(_) | Frame::Continuation(_)) => {
                tracing::warn!("ignored a binary frame: the protocol uses text frames");
            }
            Err(e) => self.fail(&format!("protocol error: {e}"), ctx),
        }
    }

    fn finished(&mut self, _ctx: &mut Self::Context) {
        // Each socket's end arrives as a tagged event; the actor outlives every socket.
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
