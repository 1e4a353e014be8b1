//! The system under test: a fresh database, and the real backend on loopback — the release
//! binary as a child process (memory and CPU are then the backend's alone) or, when that
//! binary is not built, the backend library on its own thread and actix system.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};
use diesel::{Connection as _, PgConnection, RunQueryDsl as _};

/// Environment variables naming a PostgreSQL server (an admin URL); the first set wins.
pub const POSTGRES_URL_VARS: [&str; 2] = [
    "BUILDFLEET_BENCH_POSTGRES_URL",
    "BUILDFLEET_TEST_POSTGRES_URL",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DbKind {
    Sqlite,
    Postgres,
}

impl DbKind {
    pub fn name(self) -> &'static str {
        match self {
            DbKind::Sqlite => "sqlite",
            DbKind::Postgres => "postgres",
        }
    }
}

pub fn postgres_admin_url() -> Option<String> {
    POSTGRES_URL_VARS
        .iter()
        .find_map(|var| std::env::var(var).ok().filter(|v| !v.is_empty()))
}

/// A database of one run: a SQLite file in the data directory, or a PostgreSQL database
/// created for the run and dropped afterwards.
pub struct Database {
    pub url: String,
    postgres: Option<(String, String)>,
}

impl Database {
    pub fn create(kind: DbKind, data_dir: &Path) -> anyhow::Result<Database> {
        match kind {
            DbKind::Sqlite => Ok(Database {
                url: format!("sqlite://{}", data_dir.join("buildfleet.db").display()),
                postgres: None,
            }),
            DbKind::Postgres => {
                let admin_url = postgres_admin_url().with_context(|| {
                    format!("--db postgres needs {}", POSTGRES_URL_VARS.join(" or "))
                })?;
                let name = format!("bf_bench_{:016x}", rand::random::<u64>());
                let mut admin = PgConnection::establish(&admin_url)
                    .with_context(|| format!("connecting to PostgreSQL at {admin_url}"))?;
                diesel::sql_query(format!("CREATE DATABASE {name}"))
                    .execute(&mut admin)
                    .with_context(|| format!("creating database {name}"))?;
                // An experiment knob (docs/benchmarks.md): the server's default is kept
                // unless BUILDFLEET_BENCH_PG_SYNCHRONOUS_COMMIT names another value.
                if let Ok(value) = std::env::var("BUILDFLEET_BENCH_PG_SYNCHRONOUS_COMMIT") {
                    if !matches!(
                        value.as_str(),
                        "on" | "off" | "local" | "remote_write" | "remote_apply"
                    ) {
                        bail!("BUILDFLEET_BENCH_PG_SYNCHRONOUS_COMMIT={value:?} is not a synchronous_commit value");
                    }
                    diesel::sql_query(format!(
                        "ALTER DATABASE {name} SET synchronous_commit = {value}"
                    ))
                    .execute(&mut admin)
                    .with_context(|| format!("configuring database {name}"))?;
                }
                Ok(Database {
                    url: with_database(&admin_url, &name),
                    postgres: Some((admin_url, name)),
                })
            }
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let Some((admin_url, name)) = &self.postgres else {
            return;
        };
        let dropped = PgConnection::establish(admin_url)
            .map_err(|e| e.to_string())
            .and_then(|mut admin| {
                diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = dropped {
            eprintln!("warning: could not drop benchmark database {name}: {e}");
        }
    }
}

/// `url` with its database name replaced, query string kept.
fn with_database(url: &str, database: &str) -> String {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let (head, query) = match url.find('?') {
        Some(i) => (&url[..i], &url[i..]),
        None => (url, ""),
    };
    let base = match head[authority_start..].find('/') {
        Some(i) => &head[..authority_start + i],
        None => head,
    };
    format!("{base}/{database}{query}")
}

/// How the backend runs.
#[derive(Debug, Clone)]
pub enum BackendMode {
    /// `buildfleet serve` from this path, as a child process.
    Binary(PathBuf),
    /// `buildfleet_backend::server::start` on a thread of this process.
    InProcess,
}

impl BackendMode {
    pub fn describe(&self) -> String {
        match self {
            BackendMode::Binary(path) => format!("child process {}", path.display()),
            BackendMode::InProcess => "in-process (library on its own thread)".into(),
        }
    }
}

/// Settings a suite changes from the backend's defaults.
#[derive(Debug, Clone, Default)]
pub struct BackendSettings {
    pub heartbeat_interval: Option<Duration>,
    pub heartbeat_timeout: Option<Duration>,
    pub db_pool_size: Option<u32>,
}

/// A running backend with a fresh database and data directory.
pub struct Backend {
    pub http_url: String,
    pub ws_url: String,
    pub admin_token: String,
    /// The process to measure: the child, or this process in in-process mode.
    pub pid: u32,
    pub data_dir: PathBuf,
    pub in_process: bool,
    running: Running,
    // Dropped after `running` (fields drop in order): the server stops before its database.
    _database: Database,
    _dir: tempfile::TempDir,
}

enum Running {
    Child(Child),
    Thread {
        stop: Option<std::sync::mpsc::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    },
}

/// Generous: a backend under valgrind starts slowly.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);

impl Backend {
    pub async fn start(
        mode: &BackendMode,
        db: DbKind,
        settings: &BackendSettings,
    ) -> anyhow::Result<Backend> {
        let dir = tempfile::Builder::new()
            .prefix("buildfleet-bench-")
            .tempdir_in(bench_tmp_root())
            .context("creating the data directory")?;
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir)?;
        let database = Database::create(db, &data_dir)?;
        let admin_token = format!("bfa_bench_{:032x}", rand::random::<u128>());
        let mut settings = settings.clone();
        if let Some(pool) = std::env::var("BUILDFLEET_BENCH_DB_POOL_SIZE")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            settings.db_pool_size = Some(pool);
        }
        let settings = &settings;
        let (running, addr, pid) = match mode {
            BackendMode::Binary(binary) => {
                let (child, addr) = spawn_binary(
                    binary,
                    dir.path(),
                    &data_dir,
                    &database.url,
                    &admin_token,
                    settings,
                    &data_dir.join("backend.log"),
                )?;
                let pid = child.id();
                (Running::Child(child), addr, pid)
            }
            BackendMode::InProcess => {
                let (stop, thread, addr) =
                    start_in_process(&data_dir, &database.url, &admin_token, settings)?;
                (
                    Running::Thread {
                        stop: Some(stop),
                        thread: Some(thread),
                    },
                    addr,
                    std::process::id(),
                )
            }
        };
        let backend = Backend {
            http_url: format!("http://{addr}"),
            ws_url: format!("ws://{addr}/api/v1/builders/connect"),
            admin_token,
            pid,
            data_dir,
            in_process: matches!(mode, BackendMode::InProcess),
            running,
            _database: database,
            _dir: dir,
        };
        backend.wait_healthy().await?;
        Ok(backend)
    }

    async fn wait_healthy(&self) -> anyhow::Result<()> {
        let client = awc::Client::new();
        let deadline = std::time::Instant::now() + STARTUP_TIMEOUT;
        loop {
            let ok = client
                .get(format!("{}/healthz", self.http_url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!("the backend at {} did not become healthy", self.http_url);
            }
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        match &mut self.running {
            Running::Child(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Running::Thread { stop, thread } => {
                drop(stop.take());
                if let Some(thread) = thread.take() {
                    let _ = thread.join();
                }
            }
        }
    }
}

/// A second backend process on the same database, data directory and admin token as a
/// [`Backend`]: a replica. Killed when dropped.
pub struct Replica {
    pub ws_url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Backend {
    /// Starts a replica of this backend (the backend binary only: two in-process servers
    /// would share one process's figures).
    pub async fn start_replica(
        &self,
        mode: &BackendMode,
        settings: &BackendSettings,
    ) -> anyhow::Result<Replica> {
        let BackendMode::Binary(binary) = mode else {
            bail!("a replica runs the backend binary; --in-process has none");
        };
        let dir = tempfile::Builder::new()
            .prefix("buildfleet-bench-replica-")
            .tempdir_in(bench_tmp_root())
            .context("creating the replica's directory")?;
        let mut config_settings = settings.clone();
        if let Some(pool) = std::env::var("BUILDFLEET_BENCH_DB_POOL_SIZE")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            config_settings.db_pool_size = Some(pool);
        }
        let (child, addr) = spawn_binary(
            binary,
            dir.path(),
            &self.data_dir,
            &self._database.url,
            &self.admin_token,
            &config_settings,
            // Its own log, beside its configuration: the data directory is shared.
            &dir.path().join("backend.log"),
        )?;
        let replica = Replica {
            ws_url: format!("ws://{addr}/api/v1/builders/connect"),
            child,
            _dir: dir,
        };
        let client = awc::Client::new();
        let deadline = std::time::Instant::now() + STARTUP_TIMEOUT;
        loop {
            let ok = client
                .get(format!("http://{addr}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return Ok(replica);
            }
            if std::time::Instant::now() > deadline {
                bail!("the replica at {addr} did not become healthy");
            }
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where data directories go: `BUILDFLEET_BENCH_TMP`, else the system temp directory.
pub fn bench_tmp_root() -> PathBuf {
    std::env::var_os("BUILDFLEET_BENCH_TMP")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

fn config_toml(
    data_dir: &Path,
    database_url: &str,
    admin_token: &str,
    settings: &BackendSettings,
) -> String {
    let mut text = format!(
        "bind = \"127.0.0.1:0\"\ndata_dir = {:?}\ndatabase_url = {:?}\nadmin_token = {:?}\nlocal_builders = 0\n",
        data_dir.display().to_string(),
        database_url,
        admin_token
    );
    if let Some(pool) = settings.db_pool_size {
        text.push_str(&format!("[limits]\ndb_pool_size = {pool}\n"));
    }
    text.push_str("[timings]\n");
    if let Some(d) = settings.heartbeat_interval {
        text.push_str(&format!("heartbeat_interval_ms = {}\n", d.as_millis()));
    }
    if let Some(d) = settings.heartbeat_timeout {
        text.push_str(&format!("heartbeat_timeout_ms = {}\n", d.as_millis()));
    }
    text
}

fn spawn_binary(
    binary: &Path,
    dir: &Path,
    data_dir: &Path,
    database_url: &str,
    admin_token: &str,
    settings: &BackendSettings,
    log: &Path,
) -> anyhow::Result<(Child, String)> {
    let config = dir.join("backend.toml");
    std::fs::write(
        &config,
        config_toml(data_dir, database_url, admin_token, settings),
    )?;
    let log = std::fs::File::create(log)?;
    // A profiler that runs the program in the same process (valgrind), e.g.
    // BUILDFLEET_BENCH_BACKEND_WRAPPER="valgrind --tool=massif --massif-out-file=/tmp/m.out".
    let wrapper = std::env::var("BUILDFLEET_BENCH_BACKEND_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let mut command = match words.next() {
        Some(program) => {
            let mut command = Command::new(program);
            command.args(words).arg(binary);
            command
        }
        None => Command::new(binary),
    };
    let mut child = command
        .arg("serve")
        .arg("--config")
        .arg(&config)
        // Per-request and per-job info lines would be most of the work at thousands per
        // second; warnings still show problems. (Stated in docs/benchmarks.md.)
        .env(
            "BUILDFLEET_LOG",
            std::env::var("BUILDFLEET_BENCH_BACKEND_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env_remove("BUILDFLEET_DATABASE_URL")
        .env_remove("BUILDFLEET_ADMIN_TOKEN")
        .env_remove("BUILDFLEET_BIND")
        .env_remove("BUILDFLEET_DATA_DIR")
        .env_remove("BUILDFLEET_LOCAL_BUILDERS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let stdout = child.stdout.take().context("child stdout")?;
    // The banner names the bound address; read it on a thread so a silent child times out.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut sent = false;
        for line in lines.by_ref().map_while(Result::ok) {
            if let Some(url) = line.split("listening on http://").nth(1) {
                if !sent {
                    let _ = tx.send(url.trim().to_owned());
                    sent = true;
                }
            }
        }
    });
    match rx.recv_timeout(STARTUP_TIMEOUT) {
        Ok(addr) => Ok((child, addr)),
        Err(_) => {
            let _ = child.kill();
            let log = std::fs::read_to_string(data_dir.join("backend.log")).unwrap_or_default();
            let tail: String = log.lines().rev().take(20).collect::<Vec<_>>().join("\n");
            bail!(
                "{} did not report its address; its log ends:\n{tail}",
                binary.display()
            )
        }
    }
}

type InProcess = (
    std::sync::mpsc::Sender<()>,
    std::thread::JoinHandle<()>,
    String,
);

fn start_in_process(
    data_dir: &Path,
    database_url: &str,
    admin_token: &str,
    settings: &BackendSettings,
) -> anyhow::Result<InProcess> {
    use buildfleet_backend::config::ServerConfig;
    let mut config = ServerConfig::with_data_dir(data_dir);
    config.bind = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    config.database_url = database_url.to_owned();
    config.admin_token = Some(admin_token.to_owned());
    if let Some(d) = settings.heartbeat_interval {
        config.timings.heartbeat_interval = d;
    }
    if let Some(d) = settings.heartbeat_timeout {
        config.timings.heartbeat_timeout = d;
    }
    if let Some(pool) = settings.db_pool_size {
        config.limits.db_pool_size = pool;
    }
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<String>>();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("backend".into())
        .spawn(move || {
            actix_rt::System::new().block_on(async move {
                let running = match buildfleet_backend::server::start(config).await {
                    Ok(running) => running,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(running.addr.to_string()));
                // Blocks this thread's actors only while polling; the channel closes on stop.
                let stopped = actix_rt::task::spawn_blocking(move || {
                    let _ = stop_rx.recv();
                });
                let _ = stopped.await;
                running.stop(false).await;
            });
        })?;
    let addr = ready_rx
        .recv_timeout(STARTUP_TIMEOUT)
        .context("the in-process backend did not start")??;
    Ok((stop_tx, thread, addr))
}

/// The binaries next to this executable (`target/<profile>/`), when built.
pub fn sibling_binary(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.join(name);
    path.is_file().then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h/db?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
    }
}
