//! A builder told `auth_rejected{too_many_attempts, retry_after_ms}` waits at least that long
//! before it dials again, against a fake backend (a real actix-web WebSocket server on
//! 127.0.0.1:0) that throttles every hello.
//!
//! The backend stays a scripted fake, not the test kit's real one: the real backend
//! throttles only after real failures, and this test needs every hello throttled with a
//! chosen `retry_after_ms`. The key is made by the builder's own `keygen`; the fake checks
//! no signature.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use actix_web_actors::ws;
use buildfleet_builder::config::BuilderConfig;
use buildfleet_protocol::*;

/// Far above the builder's first backoff steps (at most 400 ms for the first two).
const RETRY_AFTER_MS: u64 = 1_500;

/// When each hello arrived.
type Hellos = Arc<Mutex<Vec<Instant>>>;

struct Throttling {
    hellos: Hellos,
}

impl Actor for Throttling {
    type Context = ws::WebsocketContext<Self>;
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Throttling {
    fn handle(&mut self, item: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        let text = match item {
            Ok(ws::Message::Text(text)) => text,
            Ok(ws::Message::Ping(p)) => return ctx.pong(&p),
            Ok(ws::Message::Close(_)) | Err(_) => return ctx.stop(),
            Ok(_) => return,
        };
        let message =
            ClientMessage::decode(&text, 1 << 20).expect("the builder sends valid frames");
        assert!(
            matches!(message, ClientMessage::Hello(_)),
            "only hello comes before authentication: {message:?}"
        );
        self.hellos.lock().unwrap().push(Instant::now());
        let rejected = ServerMessage::AuthRejected(AuthRejected {
            code: ErrorCode::TooManyAttempts,
            reason: "too many failed authentications with this key".into(),
            retry_after_ms: Some(RETRY_AFTER_MS),
        });
        ctx.text(rejected.to_json());
        ctx.close(None);
    }
}

async fn connect(
    req: HttpRequest,
    stream: web::Payload,
    hellos: web::Data<Mutex<Vec<Instant>>>,
) -> actix_web::Result<HttpResponse> {
    ws::start(
        Throttling {
            hellos: hellos.into_inner(),
        },
        &req,
        stream,
    )
}

#[actix_rt::test]
async fn a_throttled_builder_waits_the_retry_after_before_reconnecting() {
    let hellos: Hellos = Arc::default();
    let data = web::Data::from(hellos.clone());
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
    buildfleet_builder::identity::keygen(&key_path, "throttled").unwrap();
    let config = BuilderConfig::new(
        &format!("ws://{addr}"),
        &key_path,
        "throttled",
        work.path().join("work"),
    )
    .unwrap();
    let _builder = buildfleet_builder::start(config).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(15);
    let seen = loop {
        let seen = hellos.lock().unwrap().clone();
        if seen.len() >= 3 {
            break seen;
        }
        assert!(
            Instant::now() < deadline,
            "expected 3 hellos within 15 s, got {}",
            seen.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for pair in seen.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(RETRY_AFTER_MS),
            "reconnected after {gap:?}, before the retry-after of {RETRY_AFTER_MS} ms"
        );
    }
}
