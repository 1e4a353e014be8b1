//! Test helpers: a real HTTP server on 127.0.0.1:0 that serves source archives and takes
//! artifact uploads the way the backend does, and a job environment around it.
//!
//! A scripted stand-in rather than the test kit's real backend: the tests that use it run a
//! job's steps without a session (no admission, no assignment), count requests, and script
//! failures the real backend cannot be told to produce (a chosen status with `Retry-After`,
//! an outage on a fixed port).

#![allow(
    dead_code,
    reason = "each test binary uses a different subset of the helpers"
)]

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use buildfleet_builder::config::{Limits, Strategy, ToolchainEnv};
use buildfleet_builder::event_buffer::EventBuffer;
use buildfleet_builder::identity::Identity;
use buildfleet_builder::job::{Finished, JobEnv, JobRun, SpareDirs};
use buildfleet_builder::process::StopSignal;
use buildfleet_builder::recipes::{RecipeBook, RecipeConfig};
use buildfleet_builder::source::SourceCache;
use buildfleet_protocol::{
    Attempt, JobAssignment, JobEvent, JobId, JobMode, JobRef, Sha256Digest, SourceSpec,
};
use sha2::{Digest, Sha256};

pub const TOKEN: &str = "job-token-123";

#[derive(Default)]
pub struct ServerState {
    /// Path → body served by GET.
    pub files: Mutex<BTreeMap<String, Vec<u8>>>,
    /// Name → body received by PUT /upload/{name}.
    pub uploads: Mutex<BTreeMap<String, Vec<u8>>>,
    pub gets: AtomicUsize,
    pub puts: AtomicUsize,
    /// Answers given (status, `Retry-After` seconds) before any request is served, in order.
    pub failures: Mutex<std::collections::VecDeque<(u16, Option<u64>)>>,
}

/// The next scripted failure, if any is left.
fn scripted_failure(state: &ServerState) -> Option<HttpResponse> {
    let (status, retry_after) = state.failures.lock().unwrap().pop_front()?;
    let mut response =
        HttpResponse::build(actix_web::http::StatusCode::from_u16(status).expect("a valid status"));
    if let Some(seconds) = retry_after {
        response.insert_header(("Retry-After", seconds.to_string()));
    }
    Some(response.body(format!("scripted {status}")))
}

pub struct TestServer {
    pub base: String,
    pub state: Arc<ServerState>,
}

pub fn sha256(bytes: &[u8]) -> Sha256Digest {
    Sha256Digest::from_bytes(&Sha256::digest(bytes).into())
}

async fn serve(req: HttpRequest, state: web::Data<ServerState>) -> HttpResponse {
    state.gets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    if let Some(response) = scripted_failure(&state) {
        return response;
    }
    match state.files.lock().unwrap().get(req.path()) {
        Some(body) => HttpResponse::Ok().body(body.clone()),
        None => HttpResponse::NotFound().finish(),
    }
}

async fn upload(
    req: HttpRequest,
    name: web::Path<String>,
    body: web::Bytes,
    state: web::Data<ServerState>,
) -> HttpResponse {
    state.puts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    if let Some(response) = scripted_failure(&state) {
        return response;
    }
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    if auth != Some(&format!("Bearer {TOKEN}")) {
        return HttpResponse::Unauthorized().finish();
    }
    let declared = req
        .headers()
        .get("x-buildfleet-sha256")
        .and_then(|v| v.to_str().ok());
    let actual = sha256(&body);
    if declared != Some(actual.as_str()) {
        return HttpResponse::UnprocessableEntity().finish();
    }
    state
        .uploads
        .lock()
        .unwrap()
        .insert(name.clone(), body.to_vec());
    HttpResponse::Created().json(serde_json::json!({
        "name": name.into_inner(), "size": body.len(), "sha256": actual.as_str()
    }))
}

/// Starts the server on the current actix system.
pub fn start_server() -> TestServer {
    start_server_on("127.0.0.1:0".parse().unwrap(), Arc::default())
}

/// Starts the server on `addr` with `state` (e.g. again after an outage).
pub fn start_server_on(addr: std::net::SocketAddr, state: Arc<ServerState>) -> TestServer {
    let data = web::Data::from(state.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(512 * 1024 * 1024))
            .route("/upload/{name}", web::put().to(upload))
            .default_service(web::get().to(serve))
    })
    .workers(1)
    .bind(addr)
    .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    let addr = server.addrs()[0];
    actix_rt::spawn(server.run());
    TestServer {
        base: format!("http://{addr}"),
        state,
    }
}

impl TestServer {
    pub fn put_file(&self, path: &str, body: Vec<u8>) -> String {
        self.state
            .files
            .lock()
            .unwrap()
            .insert(path.to_owned(), body);
        format!("{}{path}", self.base)
    }
}

/// The backends of a builder with one backend URL: no URL is rerouted.
pub fn one_backend() -> buildfleet_builder::backends::Backends {
    buildfleet_builder::backends::Backends::new(vec![buildfleet_builder::config::connect_url(
        "ws://127.0.0.1:9",
    )
    .expect("connect URL")])
}

pub fn test_identity(dir: &Path) -> Arc<Identity> {
    let path = dir.join("builder_key");
    buildfleet_builder::identity::keygen(&path, "test").expect("keygen");
    Arc::new(Identity::load(&path).expect("load key"))
}

pub fn job_env(work: &Path, strategy: Strategy, recipes: Vec<RecipeConfig>) -> JobEnv {
    job_env_with_cache(
        work,
        strategy,
        recipes,
        Limits::default().source_cache_bytes,
    )
}

/// A job environment whose source cache holds at most `cache_bytes`.
pub fn job_env_with_cache(
    work: &Path,
    strategy: Strategy,
    recipes: Vec<RecipeConfig>,
    cache_bytes: u64,
) -> JobEnv {
    let tls = buildfleet_builder::http::tls_config(None).expect("tls");
    let jobs_dir = work.join("jobs");
    std::fs::create_dir_all(&jobs_dir).unwrap();
    JobEnv {
        client: buildfleet_builder::http::client(&tls),
        backends: Arc::new(one_backend()),
        identity: test_identity(work),
        recipes: RecipeBook::with_builtins(recipes).expect("recipes"),
        strategy,
        toolchain: ToolchainEnv::from_process_env(),
        limits: Limits::default(),
        offline: true,
        sources: SourceCache::open(&work.join("sources"), cache_bytes).expect("source cache"),
        spare_dirs: Arc::new(SpareDirs::new(jobs_dir.clone())),
        jobs_dir,
        max_log_line_bytes: Arc::new(AtomicUsize::new(16 * 1024)),
        build_user: None,
    }
}

pub fn assignment(
    server: &TestServer,
    source_url: &str,
    digest: Sha256Digest,
    recipe: &str,
) -> JobAssignment {
    JobAssignment {
        job_id: JobId(42),
        attempt: Attempt(1),
        source: SourceSpec {
            url: source_url.to_owned(),
            sha256: digest,
            max_bytes: 64 * 1024 * 1024,
        },
        recipe: recipe.to_owned(),
        parameters: BTreeMap::new(),
        annotations: BTreeMap::new(),
        mode: JobMode::Build,
        timeout_secs: 600,
        job_token: TOKEN.to_owned(),
        upload_url: format!("{}/upload", server.base),
    }
}

/// Runs one job to completion, cleans up, and returns its response and events.
pub async fn run(
    env: &JobEnv,
    assignment: JobAssignment,
) -> (buildfleet_protocol::JobResponse, Vec<JobEvent>) {
    let (finished, events) = run_uncleaned(env, assignment).await;
    (finished.clean_up().await, events)
}

/// Runs one job to completion and returns what it finished with (its directory still in
/// place) and its events.
pub async fn run_uncleaned(env: &JobEnv, assignment: JobAssignment) -> (Finished, Vec<JobEvent>) {
    let job = JobRef {
        job_id: assignment.job_id,
        attempt: assignment.attempt,
    };
    let events = Arc::new(EventBuffer::new(job, 64 * 1024 * 1024, |_| {}));
    let deadline =
        tokio::time::Instant::now() + std::time::Duration::from_secs(assignment.timeout_secs);
    let (_stop, signal) = StopSignal::new(Some(deadline));
    let run = JobRun {
        assignment,
        backend_id: "test-backend".into(),
        events: events.clone(),
        stop: signal,
    };
    let finished = buildfleet_builder::job::run_job(env, run).await;
    (finished, events.events_after(0))
}

pub fn log_lines(events: &[JobEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            buildfleet_protocol::JobEventKind::Log { line, .. } => Some(line.clone()),
            _ => None,
        })
        .collect()
}

pub fn tar_gz(entries: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, data, mode) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(*mode);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, path, *data).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

pub fn rc<T>(value: T) -> Rc<T> {
    Rc::new(value)
}
