//! The reconnect loop against a scripted fake backend (a real actix-web WebSocket server on
//! 127.0.0.1:0): one loop per builder whatever the failure, the backoff schedule holds
//! (a backend that refuses the builder, sessions that die right after authenticating),
//! `session_replaced` waits the long back-off, a healthy session resets the backoff, and
//! never are two connections open at once.
//!
//! The backend stays a scripted fake, not the test kit's real one: these tests need a
//! backend that misbehaves on cue (refusing the builder, ending sessions right after
//! authentication, replacing them, throttling every hello), which a real backend cannot be
//! told to do. The key is made by the builder's own `keygen`; the fake checks no signature.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use actix_web_actors::ws;
use buildfleet_builder::config::BuilderConfig;
use buildfleet_builder::connection::ReconnectPolicy;
use buildfleet_protocol::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    /// `auth_rejected{builder_disabled}` then close, at every hello.
    Disabled,
    /// Authenticates, then `error{shutting_down}` and close at once (before resuming).
    DieAfterAuth,
    /// Authenticates and resumes, then `error{session_replaced}` and close.
    Replaced,
    /// Authenticates and resumes, then closes after this long.
    CloseAfter(Duration),
}

#[derive(Default)]
struct Log {
    /// When each connection sent its hello.
    hellos: Vec<Instant>,
    /// When each connection's session actor stopped (the socket closed).
    closes: Vec<Instant>,
    open: u32,
    max_open: u32,
}

type Shared = Arc<Mutex<Log>>;

struct Session {
    script: Script,
    log: Shared,
}

impl Actor for Session {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        let mut log = self.log.lock().unwrap();
        log.open += 1;
        log.max_open = log.max_open.max(log.open);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        let mut log = self.log.lock().unwrap();
        log.open -= 1;
        log.closes.push(Instant::now());
    }
}

fn send(ctx: &mut ws::WebsocketContext<Session>, message: ServerMessage) {
    ctx.text(message.to_json());
}

fn error(code: ErrorCode) -> ServerMessage {
    ServerMessage::Error(ErrorFrame {
        code,
        message: code.as_str().into(),
    })
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Session {
    fn handle(&mut self, item: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        let text = match item {
            Ok(ws::Message::Text(text)) => text,
            Ok(ws::Message::Ping(p)) => return ctx.pong(&p),
            Ok(ws::Message::Close(_)) | Err(_) => return ctx.stop(),
            Ok(_) => return,
        };
        let message =
            ClientMessage::decode(&text, 1 << 20).expect("the builder sends valid frames");
        match message {
            ClientMessage::Hello(_) => {
                self.log.lock().unwrap().hellos.push(Instant::now());
                if self.script == Script::Disabled {
                    send(
                        ctx,
                        ServerMessage::AuthRejected(AuthRejected {
                            code: ErrorCode::BuilderDisabled,
                            reason: "disabled by an operator".into(),
                            retry_after_ms: None,
                        }),
                    );
                    return ctx.close(None);
                }
                send(
                    ctx,
                    ServerMessage::ChallengeRequest(ChallengeRequest {
                        challenge: "ab".repeat(32),
                        backend_id: "fake-backend".into(),
                        expires_in_ms: 30_000,
                    }),
                );
            }
            ClientMessage::ChallengeResponse(_) => {
                send(
                    ctx,
                    ServerMessage::AuthAccepted(AuthAccepted {
                        builder_id: 1,
                        settings: SessionSettings {
                            protocol_version: PROTOCOL_VERSION,
                            heartbeat_interval_ms: 200,
                            heartbeat_timeout_ms: 5_000,
                            max_frame_bytes: 256 * 1024,
                            max_log_line_bytes: 1024,
                            max_log_bytes_per_job: 1 << 20,
                            reconnect_grace_ms: 30_000,
                        },
                    }),
                );
                if self.script == Script::DieAfterAuth {
                    send(ctx, error(ErrorCode::ShuttingDown));
                    ctx.close(None);
                }
            }
            ClientMessage::Resume(_) => {
                send(
                    ctx,
                    ServerMessage::ResumeResult(ResumeResult { jobs: Vec::new() }),
                );
                match self.script {
                    Script::Replaced => {
                        send(ctx, error(ErrorCode::SessionReplaced));
                        ctx.close(None);
                    }
                    Script::CloseAfter(after) => {
                        ctx.run_later(after, |_, ctx| {
                            ctx.close(None);
                            ctx.stop();
                        });
                    }
                    Script::Disabled | Script::DieAfterAuth => {}
                }
            }
            _ => {}
        }
    }
}

async fn connect(
    req: HttpRequest,
    stream: web::Payload,
    state: web::Data<(Script, Shared)>,
) -> actix_web::Result<HttpResponse> {
    let (script, log) = state.get_ref().clone();
    ws::start(Session { script, log }, &req, stream)
}

/// Starts the fake backend and a builder with `policy` dialing it.
async fn start(
    script: Script,
    policy: ReconnectPolicy,
) -> (Shared, buildfleet_builder::Builder, tempfile::TempDir) {
    let log: Shared = Arc::default();
    let data = web::Data::new((script, log.clone()));
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/api/v1/builders/connect", web::get().to(connect))
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let addr = server.addrs()[0];
    actix_rt::spawn(server.run());

    let work = tempfile::tempdir().unwrap();
    let key_path = work.path().join("key");
    buildfleet_builder::identity::keygen(&key_path, "reconnect").unwrap();
    let mut config = BuilderConfig::new(
        &format!("ws://{addr}"),
        &key_path,
        "reconnect",
        work.path().join("work"),
    )
    .unwrap();
    config.reconnect = policy;
    let builder = buildfleet_builder::start(config).await.unwrap();
    (log, builder, work)
}

fn policy(initial_ms: u64, max_ms: u64) -> ReconnectPolicy {
    ReconnectPolicy {
        initial_backoff: Duration::from_millis(initial_ms),
        max_backoff: Duration::from_millis(max_ms),
        replaced_backoff: Duration::from_secs(30),
        healthy_after: Duration::from_secs(10),
    }
}

/// The lower bound of the n-th delay (from 0): half of `min(initial * 2^n, max)`.
fn floor_of(policy: &ReconnectPolicy, n: u32) -> Duration {
    (policy.initial_backoff * 2u32.pow(n.min(20))).min(policy.max_backoff) / 2
}

/// Watches the builder for `window`, then checks the gaps between hellos against the
/// schedule and that connections never overlapped; returns the hellos.
async fn assert_schedule(log: &Shared, policy: &ReconnectPolicy, window: Duration) -> Vec<Instant> {
    tokio::time::sleep(window).await;
    let log = log.lock().unwrap();
    let hellos = log.hellos.clone();
    for (n, pair) in hellos.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let floor = floor_of(policy, u32::try_from(n).unwrap());
        assert!(
            gap >= floor,
            "redial {} came {gap:?} after the previous one, before the backoff floor {floor:?} \
             (all hellos: {:?})",
            n + 1,
            hellos.windows(2).map(|p| p[1] - p[0]).collect::<Vec<_>>()
        );
    }
    assert_eq!(log.max_open, 1, "two connections were open at once");
    hellos
}

#[actix_rt::test]
async fn a_refused_builder_redials_on_the_backoff_schedule() {
    let policy = policy(250, 5_000);
    let (log, builder, _work) = start(Script::Disabled, policy.clone()).await;
    let hellos = assert_schedule(&log, &policy, Duration::from_secs(10)).await;
    // Floors 0.125, 0.25, 0.5, 1, 2, 2.5, 2.5 s: the 9th hello cannot come before 11.375 s.
    // Ceilings 0.25, 0.5, 1, 2, 4 s: the 6th comes by 7.75 s plus the handshakes.
    assert!(
        (5..=8).contains(&hellos.len()),
        "{} connections in 10 s",
        hellos.len()
    );
    builder.cancel();
}

#[actix_rt::test]
async fn sessions_dying_right_after_authentication_keep_the_backoff_growing() {
    // Each connection authenticates and is then told `shutting_down` and closed: the error
    // frame and the close are two reports of one failure, and the backoff never resets.
    let policy = policy(250, 5_000);
    let (log, builder, _work) = start(Script::DieAfterAuth, policy.clone()).await;
    let hellos = assert_schedule(&log, &policy, Duration::from_secs(8)).await;
    assert!(
        (4..=7).contains(&hellos.len()),
        "{} connections in 8 s",
        hellos.len()
    );
    builder.cancel();
}

#[actix_rt::test]
async fn a_replaced_session_waits_the_long_back_off() {
    let policy = ReconnectPolicy {
        replaced_backoff: Duration::from_millis(1_500),
        ..policy(100, 1_000)
    };
    let (log, builder, _work) = start(Script::Replaced, policy).await;
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    let log = log.lock().unwrap();
    let gaps: Vec<Duration> = log.hellos.windows(2).map(|p| p[1] - p[0]).collect();
    assert!(
        gaps.len() >= 2,
        "expected at least 3 connections, got {gaps:?}"
    );
    for gap in &gaps {
        assert!(
            *gap >= Duration::from_millis(1_500),
            "redialed {gap:?} after being replaced, before the 1.5 s back-off: {gaps:?}"
        );
        assert!(
            *gap <= Duration::from_millis(2_250 + 750),
            "the back-off is 1.5 s plus at most half again: {gaps:?}"
        );
    }
    assert_eq!(log.max_open, 1, "two connections were open at once");
    drop(log);
    builder.cancel();
}

#[actix_rt::test]
async fn a_healthy_session_resets_the_backoff() {
    // Every session resumes and lives 1.2 s, longer than `healthy_after`: each loss starts
    // the schedule again, so the redial follows the close within the first step.
    let policy = ReconnectPolicy {
        healthy_after: Duration::from_millis(1_000),
        ..policy(400, 5_000)
    };
    let (log, builder, _work) =
        start(Script::CloseAfter(Duration::from_millis(1_200)), policy).await;
    tokio::time::sleep(Duration::from_millis(7_500)).await;
    let log = log.lock().unwrap();
    // Without the reset the third redial's floor (800 ms) is above the bound below.
    assert!(log.hellos.len() >= 4, "{} connections", log.hellos.len());
    for (close, hello) in log.closes.iter().zip(&log.hellos[1..]) {
        let gap = *hello - *close;
        assert!(
            gap <= Duration::from_millis(400 + 300),
            "redialed {gap:?} after a healthy session ended: the backoff was not reset"
        );
    }
    assert_eq!(log.max_open, 1, "two connections were open at once");
    drop(log);
    builder.cancel();
}
