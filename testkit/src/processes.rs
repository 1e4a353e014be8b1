//! The real binaries as processes, for scenarios that SIGKILL them: `buildfleet serve` and
//! `buildfleet-builder run`, an HTTP client that rides out the backend's restarts, and a
//! look into `/proc` for the build processes a builder left behind.
//!
//! **Finding the binaries.** `cargo test` tells a test where the binaries of its own package
//! are, in `CARGO_BIN_EXE_<name>` (also at run time, as the pinned toolchain's Cargo does),
//! so the backend's tests find `buildfleet` there. `buildfleet-builder` belongs
//! to the builder package (a library dependency of the backend; artifact dependencies are
//! unstable), and this crate is a library, so neither has a compile-time path. When the
//! variable is not set, [`workspace_binary`] runs `cargo build -p <package> --bin <name>`
//! once per test process, with the cargo that runs the tests (`CARGO`), into the test's own
//! target directory and profile (read from the test executable's path,
//! `<target>/[<triple>/]<profile>/deps/<test>`), and takes the executable path cargo reports.
//! Cargo holds its build lock only while compiling, not while tests run, so this does not
//! deadlock; when the binary is current it is a no-op of about a second. A test thus never
//! runs a binary older than the code it links. `BUILDFLEET_BUILDER_BIN` and
//! `BUILDFLEET_BACKEND_BIN` name a built binary instead (a release binary for a soak, or a
//! machine without cargo).

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use awc::http::StatusCode;
use buildfleet_builder::recipes::{Pack, RecipeConfig};
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::process::{Child, Command};

use crate::keys::TestKey;

/// How long the backend may take to listen after a (re)start.
pub const BACKEND_START_LIMIT: Duration = Duration::from_secs(60);

/// How long an HTTP call keeps retrying through connection errors and 503s: a backend
/// restart, with its migrations check, takes a second or two.
pub const OUTAGE_LIMIT: Duration = Duration::from_secs(30);

/// The admin token every [`BackendProcess`] is started with.
pub const ADMIN_TOKEN: &str = "faults-admin-token-0123456789";

/// Path of a `buildfleet-builder` binary built from the current sources (see the module
/// documentation); built at most once per test process.
pub fn builder_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            workspace_binary(
                "buildfleet-builder",
                "buildfleet-builder",
                "BUILDFLEET_BUILDER_BIN",
            )
        })
        .clone()
}

/// Path of the backend's `buildfleet` binary built from the current sources (see the module
/// documentation); built at most once per test process.
pub fn backend_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            workspace_binary("buildfleet-backend", "buildfleet", "BUILDFLEET_BACKEND_BIN")
        })
        .clone()
}

/// The binary `bin` of the workspace package `package`: named by `override_var`, else by
/// cargo's `CARGO_BIN_EXE_<bin>`, else built by cargo (see the module documentation).
pub fn workspace_binary(package: &str, bin: &str, override_var: &str) -> PathBuf {
    let named = std::env::var_os(override_var)
        .map(|path| (override_var.to_owned(), path))
        .or_else(|| {
            let var = format!("CARGO_BIN_EXE_{bin}");
            std::env::var_os(&var).map(|path| (var, path))
        });
    if let Some((var, path)) = named {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "{var}={} is not a file", path.display());
        return path;
    }
    build_binary(package, bin, override_var)
}

fn build_binary(package: &str, bin: &str, override_var: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    // <target>/[<triple>/]<profile>/deps/<test executable>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("{} is not under <target>/<profile>/deps", exe.display()));
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("profile directory name");
    let mut target_dir = profile_dir.parent().expect("target directory");
    let mut triple = None;
    if !target_dir.join("CACHEDIR.TAG").is_file() {
        if let Some(parent) = target_dir
            .parent()
            .filter(|p| p.join("CACHEDIR.TAG").is_file())
        {
            triple = target_dir.file_name().and_then(|n| n.to_str());
            target_dir = parent;
        }
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut command = std::process::Command::new(&cargo);
    command
        .args(["build", "-p", package, "--bin", bin])
        .args(["--message-format", "json-render-diagnostics"])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null());
    match profile {
        "debug" => {}
        "release" => {
            command.arg("--release");
        }
        other => {
            command.args(["--profile", other]);
        }
    }
    if let Some(triple) = triple {
        command.args(["--target", triple]);
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("running {cargo:?} to build {bin}: {e}"));
    assert!(
        output.status.success(),
        "cargo build -p {package} --bin {bin} failed ({}); set {override_var} to use a built \
         binary instead:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == bin)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo reported no {bin} executable"))
}

/// The last `lines` lines of a log file, for failure messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn log_file(path: &Path) -> (Stdio, Stdio) {
    let open = || {
        File::options()
            .create(true)
            .append(true)
            .open(path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
    };
    (Stdio::from(open()), Stdio::from(open()))
}

fn without_buildfleet_env(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("BUILDFLEET_") {
            command.env_remove(name);
        }
    }
}

/// SIGKILL, and wait for the process to be reaped.
async fn kill_hard(child: &mut Child) {
    let _ = child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
}

// ---- the backend ----

/// `buildfleet serve` in its own process, on a temporary data directory and the given
/// database, with the admin token [`ADMIN_TOKEN`] and no local builders. Its output (all
/// starts) goes to one log file.
pub struct BackendProcess {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub url: String,
    args: Vec<String>,
    log: PathBuf,
    /// How many times it was started.
    pub starts: usize,
    data_dir: tempfile::TempDir,
}

impl BackendProcess {
    /// Starts on a free port of 127.0.0.1; `args` are more `serve` flags (timings).
    pub async fn start(database_url: &str, args: &[String]) -> BackendProcess {
        let data_dir = tempfile::tempdir().expect("backend data dir");
        let mut all = vec![
            "serve".to_owned(),
            "--data-dir".to_owned(),
            data_dir.path().join("data").display().to_string(),
            "--database-url".to_owned(),
            database_url.to_owned(),
            "--admin-token".to_owned(),
            ADMIN_TOKEN.to_owned(),
            "--local-builders".to_owned(),
            "0".to_owned(),
        ];
        all.extend_from_slice(args);
        let mut backend = BackendProcess {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            url: String::new(),
            args: all,
            log: data_dir.path().join("backend.log"),
            starts: 0,
            data_dir,
        };
        backend
            .spawn("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        backend
    }

    /// Starts the process bound to `bind` and waits for its "listening on" line.
    async fn spawn(&mut self, bind: &str) -> Result<(), String> {
        let offset = std::fs::metadata(&self.log).map_or(0, |m| m.len() as usize);
        let (stdout, stderr) = log_file(&self.log);
        let mut command = Command::new(backend_binary());
        without_buildfleet_env(&mut command);
        command
            .args(&self.args)
            .args(["--bind", bind])
            .env("BUILDFLEET_LOG", "info,actix_web::middleware::logger=warn")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|e| format!("starting buildfleet serve: {e}"))?;
        self.starts += 1;
        let deadline = Instant::now() + BACKEND_START_LIMIT;
        loop {
            let text = std::fs::read(&self.log).unwrap_or_default();
            let new = String::from_utf8_lossy(&text[offset.min(text.len())..]).into_owned();
            if let Some(line) = new
                .lines()
                .find_map(|l| l.strip_prefix("Buildfleet backend listening on "))
            {
                let url = line.trim().to_owned();
                let authority = url.trim_start_matches("http://").trim_end_matches('/');
                self.addr = authority
                    .parse()
                    .map_err(|e| format!("listening address {url}: {e}"))?;
                self.url = url;
                self.child = Some(child);
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "buildfleet serve --bind {bind} exited ({status}) before listening:\n{}",
                    tail(&self.log, 30)
                ));
            }
            if Instant::now() > deadline {
                kill_hard(&mut child).await;
                return Err(format!(
                    "buildfleet serve did not listen within {BACKEND_START_LIMIT:?}:\n{}",
                    tail(&self.log, 30)
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no shutdown of any kind, as a crash or an OOM kill.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_hard(&mut child).await;
        }
    }

    /// Starts it again on the same port, data directory and database; retried while the
    /// port is not free yet.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running backend");
        let bind = self.addr.to_string();
        let deadline = Instant::now() + BACKEND_START_LIMIT;
        loop {
            match self.spawn(&bind).await {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("{e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// SIGTERM and a bounded wait; SIGKILL if it does not stop.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
            if tokio::time::timeout(Duration::from_secs(20), child.wait())
                .await
                .is_err()
            {
                kill_hard(&mut child).await;
            }
        }
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// The running process's id (`None` once stopped or killed).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// An API client for this backend as the operator.
    pub fn api(&self) -> Api {
        Api::new(&self.url, ADMIN_TOKEN)
    }
}

// ---- builders ----

/// `buildfleet-builder run` in its own process under an admitted key, with its own work
/// directory and TOML configuration; restartable with the same key and work directory, as
/// a supervisor would after a crash.
pub struct BuilderProcess {
    pub name: String,
    pub id: i64,
    backend_url: String,
    key: TestKey,
    work_dir: tempfile::TempDir,
    /// The configuration file and the log (all starts).
    home: tempfile::TempDir,
    child: Option<Child>,
    pub starts: usize,
}

impl BuilderProcess {
    /// Starts a builder for `key` (admitted as builder `id`) dialing `backend_url`
    /// (`ws://…`), configured by `config_toml`.
    pub async fn start(
        key: TestKey,
        id: i64,
        backend_url: &str,
        config_toml: &str,
    ) -> BuilderProcess {
        let home = tempfile::tempdir().expect("builder home");
        std::fs::write(home.path().join("builder.toml"), config_toml).expect("builder config");
        let mut builder = BuilderProcess {
            name: key.name.clone(),
            id,
            backend_url: backend_url.to_owned(),
            key,
            work_dir: tempfile::tempdir().expect("builder work dir"),
            home,
            child: None,
            starts: 0,
        };
        builder.spawn();
        builder
    }

    fn spawn(&mut self) {
        let log = self.log_path();
        let (stdout, stderr) = log_file(&log);
        let mut command = Command::new(builder_binary());
        without_buildfleet_env(&mut command);
        command
            .arg("run")
            .arg("--config")
            .arg(self.home.path().join("builder.toml"))
            .arg("--backend-url")
            .arg(&self.backend_url)
            .arg("--key")
            .arg(self.key.private_key_path())
            .arg("--name")
            .arg(&self.name)
            .arg("--work-dir")
            .arg(self.work_dir.path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true);
        self.child = Some(
            command
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", builder_binary().display())),
        );
        self.starts += 1;
    }

    /// SIGKILL, no drain and no goodbye.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_hard(&mut child).await;
        }
    }

    /// A new process with the same key and work directory.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running builder");
        self.spawn();
    }

    /// Whether the process exited on its own (it should not).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn work_dir(&self) -> &Path {
        self.work_dir.path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.home.path().join("builder.log")
    }
}

/// A builder configuration file: `max_concurrent_jobs`, `[limits] cancel_grace_secs`, the
/// `[reconnect]` table and `recipes`, written with the toml crate so any script survives
/// quoting.
pub fn builder_config_toml(
    max_jobs: u32,
    reconnect_ms: [(&str, u64); 4],
    recipes: &[RecipeConfig],
) -> String {
    use toml::Value as T;
    let table = |pairs: Vec<(&str, T)>| {
        T::Table(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    };
    let strings = |items: &[String]| T::Array(items.iter().cloned().map(T::String).collect());
    let recipes = recipes
        .iter()
        .map(|r| {
            let mut fields = vec![
                ("name", T::String(r.name.clone())),
                ("version", T::String(r.version.clone())),
                (
                    "commands",
                    T::Array(r.commands.iter().map(|c| strings(c)).collect()),
                ),
                (
                    "env",
                    T::Table(
                        r.env
                            .iter()
                            .map(|(k, v)| (k.clone(), T::String(v.clone())))
                            .collect(),
                    ),
                ),
                (
                    "artifacts",
                    T::Array(
                        r.artifacts
                            .iter()
                            .map(|a| {
                                let pack = match a.pack {
                                    Pack::File => "file",
                                    Pack::TarGz => "tar.gz",
                                };
                                table(vec![
                                    ("name", T::String(a.name.clone())),
                                    ("path", T::String(a.path.clone())),
                                    ("pack", T::String(pack.to_owned())),
                                ])
                            })
                            .collect(),
                    ),
                ),
            ];
            if let Some(image) = &r.image {
                fields.push(("image", T::String(image.clone())));
            }
            table(fields)
        })
        .collect();
    let reconnect = reconnect_ms
        .iter()
        .map(|(k, v)| (*k, T::Integer(*v as i64)))
        .collect();
    let config = table(vec![
        ("max_concurrent_jobs", T::Integer(i64::from(max_jobs))),
        ("limits", table(vec![("cancel_grace_secs", T::Integer(1))])),
        ("reconnect", table(reconnect)),
        ("recipes", T::Array(recipes)),
    ]);
    toml::to_string(&config).expect("serialising the builder config")
}

/// Processes whose environment puts their `BUILDFLEET_OUT` under `work_dir`: the build
/// processes of that builder's jobs, down to their background children (which inherit the
/// environment). Identified by environment rather than by PID, so a reused PID never
/// counts. Returns `(pid, command line)`.
pub fn job_processes(work_dir: &Path) -> Vec<(u32, String)> {
    let prefixes: Vec<String> = [Some(work_dir.to_path_buf()), work_dir.canonicalize().ok()]
        .into_iter()
        .flatten()
        .map(|p| format!("BUILDFLEET_OUT={}/", p.display()))
        .collect();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let matches = environ.split(|b| *b == 0).any(|var| {
            let var = String::from_utf8_lossy(var);
            prefixes.iter().any(|p| var.starts_with(p.as_str()))
        });
        if matches && crate::e2e::pid_alive(pid) {
            let cmdline = std::fs::read(entry.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .unwrap_or_default();
            found.push((pid, cmdline.trim().to_owned()));
        }
    }
    found
}

// ---- HTTP ----

/// The backend's API as the operator, every call retried through connection errors,
/// timeouts and 503 `unavailable` for up to [`OUTAGE_LIMIT`]: the backend may be down or
/// restarting at any moment of a fault scenario.
pub struct Api {
    http: awc::Client,
    pub base: String,
    token: String,
}

impl Api {
    pub fn new(base_url: &str, token: &str) -> Api {
        Api {
            http: awc::Client::builder()
                .timeout(Duration::from_secs(10))
                .finish(),
            base: base_url.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        }
    }

    /// One call; `Err` for a failure worth retrying (no answer, or 503).
    async fn once(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Bytes>,
    ) -> Result<(StatusCode, Bytes), String> {
        let url = format!("{}/api/v1{path}", self.base);
        let mut request = match method {
            "GET" => self.http.get(&url),
            "POST" => self.http.post(&url),
            other => panic!("unsupported method {other}"),
        }
        .bearer_auth(&self.token);
        for (name, value) in headers {
            request = request.insert_header((*name, *value));
        }
        let sent = match body {
            Some(body) => request.send_body(body.clone()).await,
            None => request.send().await,
        };
        let mut response = sent.map_err(|e| format!("{method} {url}: {e}"))?;
        let status = response.status();
        let body = response
            .body()
            .limit(64 << 20)
            .await
            .map_err(|e| format!("{method} {url} body: {e}"))?;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            return Err(format!(
                "{method} {url}: 503 {}",
                String::from_utf8_lossy(&body)
            ));
        }
        Ok((status, body))
    }

    /// A call retried until it gets an answer other than 503.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> (StatusCode, Bytes) {
        let deadline = Instant::now() + OUTAGE_LIMIT;
        loop {
            match self.once(method, path, headers, body.as_ref()).await {
                Ok(answer) => return answer,
                Err(e) if Instant::now() > deadline => {
                    panic!("no answer for {OUTAGE_LIMIT:?}, last: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    pub async fn get_raw(&self, path: &str) -> (StatusCode, Bytes) {
        self.call("GET", path, &[], None).await
    }

    /// `GET` that must answer 200 with JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        let (status, body) = self.get_raw(path).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "GET {path}: {}",
            String::from_utf8_lossy(&body)
        );
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON: {e}"))
    }

    /// `POST` a JSON body; the status and the parsed answer.
    pub async fn post_json(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> (StatusCode, Value) {
        let mut all = vec![("Content-Type", "application/json")];
        all.extend_from_slice(headers);
        let (status, answer) = self
            .call("POST", path, &all, Some(Bytes::from(body.to_string())))
            .await;
        let answer = serde_json::from_slice(&answer)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&answer).into_owned()));
        (status, answer)
    }

    /// Admits `key` as a builder; its id.
    pub async fn admit(&self, key: &TestKey) -> i64 {
        let (status, body) = self
            .post_json(
                "/builders",
                &[],
                &json!({ "name": key.name, "public_key": key.public_openssh }),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "admitting {}: {body}",
            key.name
        );
        body["id"].as_i64().expect("builder id")
    }

    /// Uploads a source archive; its SHA-256.
    pub async fn upload_source(&self, archive: Vec<u8>) -> String {
        let (status, body) = self
            .call(
                "POST",
                "/sources",
                &[("Content-Type", "application/octet-stream")],
                Some(Bytes::from(archive)),
            )
            .await;
        let body: Value = serde_json::from_slice(&body).expect("source upload answer");
        assert_eq!(status, StatusCode::CREATED, "source upload: {body}");
        body["sha256"].as_str().expect("source digest").to_owned()
    }

    /// Submits a job under `idempotency_key`, retrying through outages with the same key;
    /// returns its id. A retry of a request the backend did record answers 200 with the
    /// first job, so a job is never queued twice.
    pub async fn submit_idempotent(&self, idempotency_key: &str, job: &Value) -> i64 {
        let (status, body) = self
            .post_json("/jobs", &[("Idempotency-Key", idempotency_key)], job)
            .await;
        assert!(
            status == StatusCode::CREATED || status == StatusCode::OK,
            "submitting {idempotency_key}: {status} {body}"
        );
        body["id"]
            .as_i64()
            .unwrap_or_else(|| panic!("job id in {body}"))
    }

    /// Every job, newest first, through the list's pages.
    pub async fn all_jobs(&self) -> Vec<Value> {
        let mut jobs = Vec::new();
        let mut before = None::<i64>;
        loop {
            let query = match before {
                Some(b) => format!("/jobs?limit=1000&before={b}"),
                None => "/jobs?limit=1000".to_owned(),
            };
            let page = self.get_json(&query).await;
            jobs.extend(page["jobs"].as_array().cloned().unwrap_or_default());
            match page["next_before"].as_i64() {
                Some(next) => before = Some(next),
                None => return jobs,
            }
        }
    }
}

impl Api {
    /// `GET /builders`: every admitted builder, with `connected` and `live` as this backend
    /// sees them (a replica counts as connected only the builders connected to it).
    pub async fn builders(&self) -> Vec<Value> {
        let list = self.get_json("/builders").await;
        list.as_array()
            .or_else(|| list["builders"].as_array())
            .cloned()
            .unwrap_or_else(|| panic!("GET /builders: no list in {list}"))
    }
}
