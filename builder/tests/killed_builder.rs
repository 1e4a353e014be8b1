//! A real `buildfleet-builder` process, SIGKILLed mid-build, takes its job's whole process
//! tree with it (the group leader and its background `sleep`s), so a requeued attempt
//! never runs beside a leftover of the old one. The backend is a scripted fake (a real
//! actix-web WebSocket server on 127.0.0.1:0) that hands out one job and serves its source.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use actix_web_actors::ws;
use buildfleet_protocol::*;
use common::sha256;

/// Two background sleeps and the shell itself, each writing its pid.
const TREE_SCRIPT: &str = "pids=\"$BUILDFLEET_PARAM_PIDDIR/pids\"; \
     sleep 1000 & echo $! >> \"$pids.tmp\"; \
     sleep 1000 & echo $! >> \"$pids.tmp\"; \
     echo $$ >> \"$pids.tmp\"; \
     mv \"$pids.tmp\" \"$pids\"; \
     echo tree started; \
     wait";

struct State {
    job: Mutex<Option<JobAssignment>>,
    source: Vec<u8>,
}

struct Session {
    state: web::Data<State>,
}

impl Actor for Session {
    type Context = ws::WebsocketContext<Self>;
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Session {
    fn handle(&mut self, item: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        let text = match item {
            Ok(ws::Message::Text(text)) => text,
            Ok(ws::Message::Ping(p)) => return ctx.pong(&p),
            Ok(ws::Message::Close(_)) | Err(_) => return ctx.stop(),
            Ok(_) => return,
        };
        let reply = match ClientMessage::decode(&text, 1 << 20).expect("a valid frame") {
            ClientMessage::Hello(_) => ServerMessage::ChallengeRequest(ChallengeRequest {
                challenge: "ab".repeat(32),
                backend_id: "fake-backend".into(),
                expires_in_ms: 30_000,
            }),
            ClientMessage::ChallengeResponse(_) => ServerMessage::AuthAccepted(AuthAccepted {
                builder_id: 1,
                settings: SessionSettings {
                    protocol_version: PROTOCOL_VERSION,
                    heartbeat_interval_ms: 1_000,
                    heartbeat_timeout_ms: 30_000,
                    max_frame_bytes: 256 * 1024,
                    max_log_line_bytes: 1024,
                    max_log_bytes_per_job: 1 << 20,
                    reconnect_grace_ms: 30_000,
                },
            }),
            ClientMessage::Resume(_) => {
                ServerMessage::ResumeResult(ResumeResult { jobs: Vec::new() })
            }
            ClientMessage::JobRequest(_) => match self.state.job.lock().unwrap().take() {
                Some(job) => ServerMessage::Jobs(Jobs { jobs: vec![job] }),
                None => return,
            },
            _ => return,
        };
        ctx.text(reply.to_json());
    }
}

async fn connect(
    req: HttpRequest,
    stream: web::Payload,
    state: web::Data<State>,
) -> actix_web::Result<HttpResponse> {
    ws::start(Session { state }, &req, stream)
}

async fn source(state: web::Data<State>) -> HttpResponse {
    HttpResponse::Ok().body(state.source.clone())
}

/// Alive unless gone or a zombie (an orphan's reaping is up to the machine's init).
fn pid_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .unwrap_or("?");
    !matches!(state, "Z" | "X" | "x")
}

async fn wait_for_pids(dir: &Path, log: &Path) -> Vec<u32> {
    let path = dir.join("pids");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&path) {
            return text.lines().map(|l| l.trim().parse().unwrap()).collect();
        }
        assert!(
            Instant::now() < deadline,
            "the job never started; builder log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn write_config(work: &Path) -> PathBuf {
    let path = work.join("builder.toml");
    let recipe = toml_string(TREE_SCRIPT);
    std::fs::write(
        &path,
        format!(
            "[[recipes]]\nname = \"tree\"\nversion = \"1\"\ncommands = [[\"sh\", \"-c\", {recipe}]]\n"
        ),
    )
    .unwrap();
    path
}

fn toml_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

#[actix_rt::test]
async fn a_killed_builder_takes_its_jobs_whole_process_tree_with_it() {
    let work = tempfile::tempdir().unwrap();
    let pid_dir = tempfile::tempdir().unwrap();
    let archive = common::tar_gz(&[("pkg/a", b"a", 0o644)]);

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let job = JobAssignment {
        job_id: JobId(7),
        attempt: Attempt(1),
        source: SourceSpec {
            url: format!("http://{addr}/source.tar.gz"),
            sha256: sha256(&archive),
            max_bytes: 1 << 20,
        },
        recipe: "tree".into(),
        parameters: BTreeMap::from([("piddir".into(), pid_dir.path().display().to_string())]),
        mode: JobMode::Build,
        timeout_secs: 600,
        job_token: "t".into(),
        upload_url: format!("http://{addr}/upload"),
    };
    let state = web::Data::new(State {
        job: Mutex::new(Some(job)),
        source: archive,
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/api/v1/builders/connect", web::get().to(connect))
            .route("/source.tar.gz", web::get().to(source))
    })
    .workers(1)
    .listen(listener)
    .unwrap();
    actix_rt::spawn(server.run());

    let key = work.path().join("key");
    buildfleet_builder::identity::keygen(&key, "killed").unwrap();
    let log_path = work.path().join("builder.log");
    let mut builder = Command::new(env!("CARGO_BIN_EXE_buildfleet-builder"))
        .arg("run")
        .arg("--config")
        .arg(write_config(work.path()))
        .arg("--backend-url")
        .arg(format!("ws://{addr}"))
        .arg("--key")
        .arg(&key)
        .arg("--name")
        .arg("killed")
        .arg("--work-dir")
        .arg(work.path().join("work"))
        .env_remove("BUILDFLEET_CONFIG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log_path).unwrap())
        .stderr(std::fs::File::create(work.path().join("builder.err")).unwrap())
        .spawn()
        .expect("start buildfleet-builder");

    let pids = wait_for_pids(pid_dir.path(), &log_path).await;
    assert_eq!(pids.len(), 3, "the shell and its two sleeps: {pids:?}");
    assert!(
        pids.iter().all(|p| pid_alive(*p)),
        "the whole tree runs before the kill"
    );

    builder.kill().expect("SIGKILL the builder");
    builder.wait().unwrap();
    let killed_at = Instant::now();
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|p| pid_alive(*p)).collect();
        if alive.is_empty() {
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(1),
            "{:?} after the builder was killed, processes {alive:?} of its job {pids:?} still run",
            killed_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
