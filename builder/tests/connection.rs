//! The connection and supervisor actors against a scripted fake backend (a real actix-web
//! WebSocket server on 127.0.0.1:0): authentication, capabilities, resume, credits, a job
//! streamed to completion, and a connection lost mid-build that resumes with no lost and
//! no duplicated log line.
//!
//! The fake stays, rather than the test kit's real backend, because these tests script the
//! server's side frame by frame: closing the socket after exactly the tenth stored event,
//! answering with a protocol version the builder does not speak, refusing a key and then
//! admitting it. A real backend cannot be told to do any of that; and the tests read every
//! frame the builder sent, in order. The builder's key is the test kit's (`TestKey`, made
//! by `ssh-keygen`, as an operator would make one).

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use actix_web_actors::ws;
use buildfleet_builder::config::BuilderConfig;
use buildfleet_builder::recipes::{RecipeBook, RecipeConfig};
use buildfleet_builder::BuilderError;
use buildfleet_protocol::provenance::verify_statement;
use buildfleet_protocol::signing::verify_challenge;
use buildfleet_protocol::*;
use buildfleet_testkit::keys::TestKey;
use common::sha256;

#[derive(Default)]
struct Backend {
    /// The admitted key; `None` admits nobody.
    admitted: Option<ssh_key::PublicKey>,
    /// Protocol version put in `auth_accepted`.
    version: u32,
    /// Assignments handed out once credits arrive.
    pending: Vec<JobAssignment>,
    /// Close the first connection once this many events are stored.
    drop_after: Option<u64>,
    connections: u32,
    hellos: u32,
    received: Vec<(u32, ClientMessage)>,
    stored: BTreeMap<JobRef, Vec<JobEvent>>,
    responses: Vec<JobResponse>,
    source: Vec<u8>,
}

type Shared = Arc<Mutex<Backend>>;

struct Session {
    backend: Shared,
    number: u32,
}

impl Actor for Session {
    type Context = ws::WebsocketContext<Self>;
}

fn send(ctx: &mut ws::WebsocketContext<Session>, message: ServerMessage) {
    ctx.text(message.to_json());
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
        let mut backend = self.backend.lock().unwrap();
        backend.received.push((self.number, message.clone()));
        match message {
            ClientMessage::Hello(_) => {
                backend.hellos += 1;
                if backend.admitted.is_none() {
                    send(
                        ctx,
                        ServerMessage::AuthRejected(AuthRejected {
                            code: ErrorCode::UnknownBuilder,
                            reason: "unknown".into(),
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
            ClientMessage::ChallengeResponse(response) => {
                let key = backend.admitted.clone().expect("admitted");
                verify_challenge(&key, "fake-backend", &"ab".repeat(32), &response.signature)
                    .expect("a valid challenge signature");
                send(
                    ctx,
                    ServerMessage::AuthAccepted(AuthAccepted {
                        builder_id: 1,
                        settings: SessionSettings {
                            protocol_version: backend.version,
                            heartbeat_interval_ms: 200,
                            heartbeat_timeout_ms: 5_000,
                            max_frame_bytes: 256 * 1024,
                            max_log_line_bytes: 1024,
                            max_log_bytes_per_job: 1 << 20,
                            reconnect_grace_ms: 30_000,
                        },
                    }),
                );
            }
            ClientMessage::Resume(resume) => {
                let jobs = resume
                    .jobs
                    .iter()
                    .map(|held| {
                        let job = JobRef {
                            job_id: held.job_id,
                            attempt: held.attempt,
                        };
                        let stored = backend.stored.get(&job).map_or(0, |e| e.len() as u64);
                        ResumeDecision {
                            job_id: held.job_id,
                            attempt: held.attempt,
                            decision: ResumeAction::Continue {
                                next_seq: stored + 1,
                            },
                        }
                    })
                    .collect();
                send(ctx, ServerMessage::ResumeResult(ResumeResult { jobs }));
            }
            ClientMessage::JobRequest(request) => {
                let take = (request.credits as usize).min(backend.pending.len());
                let jobs: Vec<_> = backend.pending.drain(..take).collect();
                if !jobs.is_empty() {
                    send(ctx, ServerMessage::Jobs(Jobs { jobs }));
                }
            }
            ClientMessage::JobEvent(event) => {
                let job = JobRef {
                    job_id: event.job_id,
                    attempt: event.attempt,
                };
                let stored = backend.stored.entry(job).or_default();
                // Contiguous only, duplicates dropped: what the real backend promises.
                if event.seq == stored.len() as u64 + 1 {
                    stored.push(event.clone());
                }
                let acked_seq = stored.len() as u64;
                send(
                    ctx,
                    ServerMessage::EventAck(EventAck {
                        job_id: event.job_id,
                        attempt: event.attempt,
                        acked_seq,
                    }),
                );
                if self.number == 1 && backend.drop_after == Some(acked_seq) {
                    ctx.stop();
                }
            }
            ClientMessage::JobResponse(response) => {
                backend.responses.push(response.clone());
                send(
                    ctx,
                    ServerMessage::CompletionAck(CompletionAck {
                        job_id: response.job_id,
                        attempt: response.attempt,
                        result: CompletionResult::Accepted,
                    }),
                );
            }
            ClientMessage::Capabilities(_)
            | ClientMessage::WorkAck(_)
            | ClientMessage::Heartbeat(_) => {}
        }
    }
}

async fn connect(
    req: HttpRequest,
    stream: web::Payload,
    backend: web::Data<Mutex<Backend>>,
) -> actix_web::Result<HttpResponse> {
    let shared: Shared = backend.into_inner();
    let number = {
        let mut b = shared.lock().unwrap();
        b.connections += 1;
        b.connections
    };
    ws::start(
        Session {
            backend: shared,
            number,
        },
        &req,
        stream,
    )
}

async fn source(backend: web::Data<Mutex<Backend>>) -> HttpResponse {
    HttpResponse::Ok().body(backend.lock().unwrap().source.clone())
}

fn start_backend(backend: Backend) -> (String, Shared) {
    let shared: Shared = Arc::new(Mutex::new(backend));
    let data = web::Data::from(shared.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/api/v1/builders/connect", web::get().to(connect))
            .route("/source.tar.gz", web::get().to(source))
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let addr = server.addrs()[0];
    actix_rt::spawn(server.run());
    (format!("127.0.0.1:{}", addr.port()), shared)
}

/// A builder configuration for a new key; the key stays with the caller for the fake to
/// admit and to check signatures with.
fn builder_config(addr: &str, work: &std::path::Path) -> (BuilderConfig, TestKey) {
    let key = TestKey::generate("test-builder");
    let mut config = BuilderConfig::new(
        &format!("ws://{addr}"),
        key.private_key_path(),
        "test-builder",
        work.join("work"),
    )
    .unwrap();
    let script = "i=1; while [ $i -le 40 ]; do echo line $i; i=$((i+1)); sleep 0.02; done";
    config.recipes = RecipeBook::with_builtins(vec![RecipeConfig {
        name: "lines".into(),
        version: "1".into(),
        commands: vec![vec!["sh".into(), "-c".into(), script.into()]],
        env: Default::default(),
        artifacts: Vec::new(),
        image: None,
        version_commands: Vec::new(),
    }])
    .unwrap();
    (config, key)
}

fn assignment(addr: &str, source: &[u8]) -> JobAssignment {
    JobAssignment {
        job_id: JobId(9),
        attempt: Attempt(1),
        source: SourceSpec {
            url: format!("http://{addr}/source.tar.gz"),
            sha256: sha256(source),
            max_bytes: 1 << 20,
        },
        recipe: "lines".into(),
        parameters: BTreeMap::new(),
        annotations: BTreeMap::new(),
        mode: JobMode::Build,
        timeout_secs: 60,
        job_token: "t".into(),
        upload_url: format!("http://{addr}/upload"),
    }
}

async fn wait_for(shared: &Shared, what: &str, done: impl Fn(&Backend) -> bool) {
    for _ in 0..500 {
        if done(&shared.lock().unwrap()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

#[actix_rt::test]
async fn a_job_survives_a_lost_connection_without_losing_or_duplicating_lines() {
    let source = common::tar_gz(&[("pkg/a", b"a", 0o644)]);
    let (addr, shared) = start_backend(Backend {
        version: PROTOCOL_VERSION,
        drop_after: Some(10),
        source: source.clone(),
        ..Backend::default()
    });
    let work = tempfile::tempdir().unwrap();
    let (config, key) = builder_config(&addr, work.path());
    {
        let mut backend = shared.lock().unwrap();
        backend.admitted = Some(key.private.public_key().clone());
        backend.pending.push(assignment(&addr, &source));
    }
    let builder = buildfleet_builder::start(config).await.unwrap();
    wait_for(&shared, "the job's completion", |b| !b.responses.is_empty()).await;
    wait_for(&shared, "a heartbeat", |b| {
        b.received
            .iter()
            .any(|(_, m)| matches!(m, ClientMessage::Heartbeat(_)))
    })
    .await;
    builder.drain();
    tokio::time::timeout(Duration::from_secs(10), builder.wait())
        .await
        .expect("drain ends")
        .unwrap();

    let backend = shared.lock().unwrap();
    assert!(
        backend.connections >= 2,
        "the first connection was dropped, so there was a second"
    );
    let response = &backend.responses[0];
    assert_eq!(response.outcome, Outcome::Succeeded, "{:?}", response.error);
    verify_statement(key.private.public_key(), &response.statement)
        .expect("the statement verifies");

    let events = &backend.stored[&JobRef {
        job_id: JobId(9),
        attempt: Attempt(1),
    }];
    let lines: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.event {
            JobEventKind::Log {
                stream: LogStream::Stdout,
                line,
            } => Some(line.clone()),
            _ => None,
        })
        .collect();
    let expected: Vec<String> = (1..=40).map(|i| format!("line {i}")).collect();
    assert_eq!(lines, expected, "every line exactly once, in order");

    // The handshake order of each connection: hello, challenge_response, capabilities, resume.
    for number in 1..=backend.connections {
        let types: Vec<&str> = backend
            .received
            .iter()
            .filter(|(n, _)| *n == number)
            .map(|(_, m)| m.type_name())
            .take(4)
            .collect();
        assert_eq!(
            types,
            ["hello", "challenge_response", "capabilities", "resume"],
            "connection {number}"
        );
    }
    // The second connection resumed the running job from the last acknowledged event.
    let resumed = backend.received.iter().find_map(|(n, m)| match m {
        ClientMessage::Resume(resume) if *n == 2 => Some(resume.jobs.clone()),
        _ => None,
    });
    let held = resumed.expect("a resume on the second connection");
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].last_acked_seq, Some(10));
    let credits: u32 = backend
        .received
        .iter()
        .filter_map(|(n, m)| match m {
            ClientMessage::JobRequest(r) if *n == 1 => Some(r.credits),
            _ => None,
        })
        .sum();
    assert_eq!(credits, 1, "one slot, one credit on the first connection");
}

#[actix_rt::test]
async fn an_unknown_builder_keeps_retrying_and_an_unsupported_version_stops_it() {
    let (addr, shared) = start_backend(Backend {
        version: PROTOCOL_VERSION,
        ..Backend::default()
    });
    let work = tempfile::tempdir().unwrap();
    let (config, key) = builder_config(&addr, work.path());
    let builder = buildfleet_builder::start(config).await.unwrap();
    wait_for(&shared, "a retried hello", |b| b.hellos >= 3).await;

    // Admitted now, but the backend picks a protocol version the builder does not speak.
    {
        let mut backend = shared.lock().unwrap();
        backend.admitted = Some(key.private.public_key().clone());
        backend.version = PROTOCOL_VERSION + 1;
    }
    let result = tokio::time::timeout(Duration::from_secs(60), builder.wait())
        .await
        .expect("the builder stops");
    assert!(
        matches!(result, Err(BuilderError::UnsupportedVersion(_))),
        "{result:?}"
    );
}
