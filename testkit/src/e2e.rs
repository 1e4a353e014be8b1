//! End-to-end fixtures: real builders (the builder crate, started in-process on the test's
//! actix system) against the real backend of [`TestServer`], a TCP proxy that can cut or
//! black-hole their connections, source archives (honest and malicious) and the checks the
//! scenarios share.
//! Every wait polls with a deadline: a scenario fails, it never hangs.

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use awc::http::StatusCode;
use buildfleet_backend::config::ServerConfig;
use buildfleet_builder::config::{connect_url, BuilderConfig};
use buildfleet_builder::recipes::{ArtifactConfig, Pack, RecipeBook, RecipeConfig};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::db::TestDb;
use crate::keys::TestKey;
use crate::server::{test_timings, TestServer};

/// How often job state is polled.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Deadline for a quick recipe's job (fetch, unpack, a shell line, upload).
pub const QUICK_JOB_LIMIT: Duration = Duration::from_secs(20);

/// Lines `LINES_RECIPE` prints, one every 20 ms: about five seconds of build.
pub const LINE_COUNT: usize = 200;

/// Writes the job id to `result.txt` (its one artifact) and, when the job has a `marker`
/// parameter, creates that file, so a test can tell whether the recipe ran at all.
pub const QUICK_RECIPE: &str = "e2e-quick";
/// Prints `line 1` … `line 200` over a few seconds; no artifacts.
pub const LINES_RECIPE: &str = "e2e-lines";
/// A shell with two background `sleep 1000` children, their PIDs written to
/// `<piddir parameter>/pids`, waiting forever: only killing the whole tree ends it.
pub const TREE_RECIPE: &str = "e2e-tree";

/// The recipes every end-to-end builder knows, besides the built-in cargo ones.
pub fn e2e_recipes() -> Vec<RecipeConfig> {
    let shell = |script: &str| vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()];
    vec![
        RecipeConfig {
            name: QUICK_RECIPE.into(),
            version: "1".into(),
            commands: vec![shell(
                "echo start job $BUILDFLEET_JOB_ID; \
                 echo $BUILDFLEET_JOB_ID > \"$BUILDFLEET_OUT/result.txt\"; \
                 if [ -n \"${BUILDFLEET_PARAM_MARKER:-}\" ]; then touch \"$BUILDFLEET_PARAM_MARKER\"; fi",
            )],
            env: Default::default(),
            artifacts: vec![ArtifactConfig {
                name: "result.txt".into(),
                path: "result.txt".into(),
                pack: Pack::File,
            }],
            image: None,
            version_commands: Vec::new(),
        },
        RecipeConfig {
            name: LINES_RECIPE.into(),
            version: "1".into(),
            commands: vec![shell(&format!(
                "for i in $(seq 1 {LINE_COUNT}); do echo line $i; sleep 0.02; done"
            ))],
            env: Default::default(),
            artifacts: Vec::new(),
            image: None,
            version_commands: Vec::new(),
        },
        RecipeConfig {
            name: TREE_RECIPE.into(),
            version: "1".into(),
            commands: vec![shell(
                "pids=\"$BUILDFLEET_PARAM_PIDDIR/pids\"; \
                 sleep 1000 & echo $! >> \"$pids.tmp\"; \
                 sleep 1000 & echo $! >> \"$pids.tmp\"; \
                 echo $$ >> \"$pids.tmp\"; \
                 mv \"$pids.tmp\" \"$pids\"; \
                 echo tree started; \
                 wait",
            )],
            env: Default::default(),
            artifacts: Vec::new(),
            image: None,
            version_commands: Vec::new(),
        },
    ]
}

/// Timings of the end-to-end backend: the test ones with a 2 s reconnect grace, room for
/// a builder's backoff across a cut connection or a restart.
pub async fn start_server(db: TestDb) -> TestServer {
    TestServer::start_with(db, configure_server).await
}

pub fn configure_server(config: &mut ServerConfig) {
    config.timings = test_timings();
    config.timings.reconnect_grace = Duration::from_secs(2);
}

/// A real builder, admitted under its own key, with its own work directory.
pub struct E2eBuilder {
    pub name: String,
    pub id: i64,
    builder: Option<buildfleet_builder::Builder>,
    work_dir: tempfile::TempDir,
    _key: TestKey,
}

impl E2eBuilder {
    /// The builder's key (made by `ssh-keygen`).
    pub fn key(&self) -> &TestKey {
        &self._key
    }

    /// Admits a new key as `name` and starts a builder for it, dialing the server directly;
    /// `configure` adjusts the configuration (limits, slots, the URL it dials).
    pub async fn start(
        server: &TestServer,
        name: &str,
        configure: impl FnOnce(&mut BuilderConfig),
    ) -> E2eBuilder {
        let key = TestKey::generate(name);
        let id = server.admit(&key).await;
        let work_dir = tempfile::tempdir().expect("builder work dir");
        let mut config = BuilderConfig::new(
            &format!("ws://{}", server.addr),
            key.private_key_path(),
            name,
            work_dir.path(),
        )
        .expect("builder config");
        config.recipes = RecipeBook::with_builtins(e2e_recipes()).expect("e2e recipes");
        // SIGKILL follows SIGTERM quickly, so a stop test does not wait out the default.
        config.limits.cancel_grace_secs = 1;
        configure(&mut config);
        let builder = buildfleet_builder::start(config)
            .await
            .unwrap_or_else(|e| panic!("starting builder {name}: {e}"));
        E2eBuilder {
            name: name.to_owned(),
            id,
            builder: Some(builder),
            work_dir,
            _key: key,
        }
    }

    pub fn work_dir(&self) -> &Path {
        self.work_dir.path()
    }

    /// Cancels what it still runs and waits (bounded) for it to exit.
    pub async fn stop(mut self) {
        if let Some(builder) = self.builder.take() {
            builder.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), builder.wait()).await;
        }
    }
}

/// `ws://addr`, as a builder's backend URL, turned into its connect URL.
pub fn connect_url_of(addr: SocketAddr) -> String {
    connect_url(&format!("ws://{addr}")).expect("connect URL")
}

/// Waits until the backend lists every one of `names` as connected.
pub async fn wait_connected(server: &TestServer, names: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let builders = server.get_ok("/builders").await;
        let list = builders
            .as_array()
            .or_else(|| builders["builders"].as_array())
            .cloned()
            .unwrap_or_default();
        let connected = |name: &str| {
            list.iter()
                .any(|b| b["name"] == name && b["connected"] == true)
        };
        if names.iter().all(|n| connected(n)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "builders {names:?} did not all connect; the backend lists {builders}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

pub fn is_terminal(state: &str) -> bool {
    matches!(
        state,
        "succeeded" | "failed" | "cancelled" | "timed_out" | "unreproducible"
    )
}

/// Polls `GET /jobs/{id}` until the job is terminal, for at most `limit`; returns it.
pub async fn wait_terminal(server: &TestServer, id: i64, limit: Duration) -> Value {
    wait_job(server, id, limit, "a terminal state", |job| {
        job["state"].as_str().is_some_and(is_terminal)
    })
    .await
}

/// Waits for the job to end in `state`; fails at once if it ends otherwise.
pub async fn wait_outcome(server: &TestServer, id: i64, state: &str, limit: Duration) -> Value {
    let job = wait_terminal(server, id, limit).await;
    assert_eq!(job["state"], state, "job {id} ended otherwise: {job:#}");
    job
}

/// Polls `GET /jobs/{id}` until `done` holds, for at most `limit`.
pub async fn wait_job(
    server: &TestServer,
    id: i64,
    limit: Duration,
    what: &str,
    mut done: impl FnMut(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let job = server.job(id).await;
        if done(&job) {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for job {id} to reach {what}; it is {job:#}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The numbers `n` of the stored `line n` records, in stored order.
pub async fn numbered_lines(server: &TestServer, id: i64) -> Vec<usize> {
    server
        .log_lines(id)
        .await
        .iter()
        .filter_map(|line| line.strip_prefix("line ")?.parse().ok())
        .collect()
}

/// Waits until at least `count` numbered lines of job `id` are stored, the job still
/// running; returns how many are.
pub async fn wait_lines(server: &TestServer, id: i64, count: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stored = numbered_lines(server, id).await.len();
        if stored >= count {
            let job = server.job(id).await;
            assert_eq!(
                job["state"], "running",
                "job {id} should still be running with {stored} lines stored: {job:#}"
            );
            return stored;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {count} log lines of job {id}; {stored} are stored"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The log of a job that printed `line 1..=LINE_COUNT`: each line exactly once, in order,
/// and every record's seq strictly above the one before.
pub async fn assert_complete_log(server: &TestServer, id: i64) {
    let records = server.log_records(id).await;
    let seqs: Vec<u64> = records
        .iter()
        .map(|r| {
            r["seq"]
                .as_u64()
                .unwrap_or_else(|| panic!("record without a seq: {r}"))
        })
        .collect();
    if let Some(w) = seqs.windows(2).find(|w| w[0] >= w[1]) {
        panic!(
            "log seqs of job {id} are not strictly increasing: {} then {}",
            w[0], w[1]
        );
    }
    let numbers = numbered_lines(server, id).await;
    let expected: Vec<usize> = (1..=LINE_COUNT).collect();
    if numbers != expected {
        let mut seen = std::collections::BTreeMap::<usize, usize>::new();
        for n in &numbers {
            *seen.entry(*n).or_default() += 1;
        }
        let missing: Vec<_> = expected.iter().filter(|n| !seen.contains_key(n)).collect();
        let duplicated: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
        panic!(
            "log of job {id}: {} numbered lines, missing {missing:?}, duplicated \
             (line, count) {duplicated:?}",
            numbers.len()
        );
    }
}

// ---- sources ----

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Uploads `archive` with `POST /api/v1/sources`; returns its digest and URL.
pub async fn upload_source(server: &TestServer, archive: Vec<u8>) -> (String, String) {
    let digest = sha256_hex(&archive);
    let url = server.api("/sources");
    let mut response = server
        .http
        .post(&url)
        .bearer_auth(&server.admin_token)
        .insert_header(("Content-Type", "application/octet-stream"))
        .send_body(archive)
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let body: Value = response
        .json()
        .await
        .unwrap_or_else(|e| panic!("POST {url} body: {e}"));
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "source upload: {body}"
    );
    assert_eq!(body["sha256"], digest.as_str(), "the backend's digest");
    let source_url = body["url"].as_str().expect("source URL").to_owned();
    (digest, source_url)
}

/// A gzipped tarball of `files` under one top-level directory, as a `.crate` is laid out.
pub fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, path, *data)
            .expect("append to tar");
    }
    gzip(&tar.into_inner().expect("finish tar"))
}

/// A source any quick recipe can run on.
pub fn small_source() -> Vec<u8> {
    tar_gz(&[("pkg/README", b"an end-to-end test source\n")])
}

/// A tarball whose one entry is named `raw_path` byte for byte: the tar crate's own
/// path setters refuse `..`, a hostile archive does not have to.
pub fn tar_gz_with_raw_path(raw_path: &str, data: &[u8]) -> Vec<u8> {
    let mut header = tar::Header::new_old();
    let name = &mut header.as_old_mut().name;
    assert!(
        raw_path.len() < name.len(),
        "raw path too long for the header"
    );
    name[..raw_path.len()].copy_from_slice(raw_path.as_bytes());
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut tar = tar::Builder::new(Vec::new());
    tar.append(&header, data).expect("append raw entry");
    gzip(&tar.into_inner().expect("finish tar"))
}

/// `count` tiny files: over any small entry limit.
pub fn tar_gz_many_entries(count: usize) -> Vec<u8> {
    let names: Vec<String> = (0..count).map(|i| format!("bomb/f{i}")).collect();
    let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
    tar_gz(&files)
}

/// One file of `size` zero bytes: a few KiB compressed, over any small size limit.
pub fn tar_gz_large_file(size: usize) -> Vec<u8> {
    let zeros = vec![0u8; size];
    tar_gz(&[("bomb/zeros", &zeros)])
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

/// The `itoa` crate's `.crate` archive from the local cargo registry cache.
pub fn itoa_crate() -> (PathBuf, Vec<u8>) {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .expect("CARGO_HOME or HOME must be set to find the cargo registry cache");
    let cache = cargo_home.join("registry").join("cache");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&cache)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .flat_map(|registry| std::fs::read_dir(registry.path()).into_iter().flatten())
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("itoa-") && n.ends_with(".crate"))
        })
        .collect();
    found.sort();
    let path = found.pop().unwrap_or_else(|| {
        panic!(
            "no itoa-*.crate in {}/*/: this test builds the real itoa crate offline; \
             `bash scripts/e2e-crate.sh` fetches it and what building it offline needs",
            cache.display()
        )
    });
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    (path, bytes)
}

/// The regular files of a gzipped tarball, with their sizes.
pub fn tar_gz_files(bytes: &[u8]) -> Vec<(String, u64)> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let mut files = Vec::new();
    for entry in archive.entries().expect("artifact is a tarball") {
        let mut entry = entry.expect("a tar entry");
        if entry.header().entry_type().is_file() {
            let path = entry.path().expect("entry path").display().to_string();
            let mut sink = Vec::new();
            entry.read_to_end(&mut sink).expect("entry data");
            files.push((path, sink.len() as u64));
        }
    }
    files
}

// ---- processes ----

/// Whether `pid` is a live process (a zombie counts as dead: it runs nothing).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) S …`: the state follows the last ')', as comm may hold anything.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .unwrap_or("?");
    !matches!(state, "Z" | "X" | "x")
}

/// Waits until `dir/pids` lists three PIDs (the shell and its two sleeps); returns them.
pub async fn wait_for_pids(dir: &Path) -> Vec<u32> {
    let path = dir.join("pids");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(text) = std::fs::read_to_string(&path) {
            let pids: Vec<u32> = text
                .lines()
                .map(|l| l.trim().parse().expect("a PID per line"))
                .collect();
            assert_eq!(pids.len(), 3, "expected three PIDs in {}", path.display());
            return pids;
        }
        assert!(
            Instant::now() < deadline,
            "the recipe never wrote {}",
            path.display()
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Waits (bounded) until none of `pids` is alive.
pub async fn assert_all_dead(pids: &[u32], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|p| pid_alive(*p)).collect();
        if alive.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after {what}, processes {alive:?} of the job's tree {pids:?} are still alive"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

// ---- network ----

/// A TCP proxy on `127.0.0.1:0` forwarding to `upstream`, which can drop every live
/// connection at once, as a flaky network would, or black-hole them for a while.
pub struct TcpProxy {
    pub addr: SocketAddr,
    cut: watch::Sender<u64>,
    /// When the current black hole ends (`None`, or a past instant: none).
    hole: watch::Sender<Option<tokio::time::Instant>>,
    accepted: Arc<AtomicUsize>,
    accept_loop: JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        TcpProxy::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), upstream).await
    }

    /// A proxy listening on `bind` (a port reserved with [`free_port`], say).
    pub async fn start_on(bind: SocketAddr, upstream: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind(bind).await.expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (cut, _) = watch::channel(0u64);
        let (hole, _) = watch::channel(None);
        let accepted = Arc::new(AtomicUsize::new(0));
        let accept_loop = {
            let (cut, hole, accepted) = (cut.clone(), hole.clone(), accepted.clone());
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let mut cut_rx = cut.subscribe();
                    let mut hole_rx = hole.subscribe();
                    tokio::spawn(async move {
                        // Opened inside a hole: accepted (the SYN got through) but never
                        // forwarded, and closed when the hole ends, as a half-dead network
                        // route would.
                        if let Some(until) = hole_end(&mut hole_rx) {
                            hold(until, &mut cut_rx).await;
                            return;
                        }
                        let Ok(mut server) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        let until = tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
                            _ = cut_rx.changed() => return,
                            until = next_hole(&mut hole_rx) => until,
                        };
                        // Black-holed: both sockets stay open and nothing moves either way
                        // (bytes in the proxy's buffers are lost, as in a partition), so each
                        // end finds out only by its own timeouts. When the hole ends the
                        // connection is closed: both ends have given up on it by then.
                        hold(until, &mut cut_rx).await;
                        drop((client, server));
                    });
                }
            })
        };
        TcpProxy {
            addr,
            cut,
            hole,
            accepted,
            accept_loop,
        }
    }

    /// Drops every connection open now; later ones go through as before.
    pub fn cut(&self) {
        self.cut.send_modify(|generation| *generation += 1);
    }

    /// Stops forwarding on every connection for `duration` without closing any: open
    /// connections go silent, new ones are accepted and held silent. When it ends, the
    /// held connections are closed and new ones go through again.
    pub fn black_hole(&self, duration: Duration) {
        self.hole
            .send_replace(Some(tokio::time::Instant::now() + duration));
    }

    /// Whether a black hole is in force now.
    pub fn in_black_hole(&self) -> bool {
        self.hole
            .borrow()
            .is_some_and(|until| until > tokio::time::Instant::now())
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Goes away as a dead host's process would: open connections dropped, new ones
    /// refused (the port is closed).
    pub async fn close(&self) {
        self.accept_loop.abort();
        self.cut();
        // The listener goes when the aborted task is dropped; wait until connects fail.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(self.addr).await.is_ok() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the proxy on {} still accepts after closing",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A port of 127.0.0.1 that was free a moment ago, for an address needed before its
/// listener can start.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The end of the hole in force now, if one is.
fn hole_end(
    hole: &mut watch::Receiver<Option<tokio::time::Instant>>,
) -> Option<tokio::time::Instant> {
    let until = (*hole.borrow_and_update())?;
    (until > tokio::time::Instant::now()).then_some(until)
}

/// Waits for a hole to start (or to be in force already); returns its end.
async fn next_hole(
    hole: &mut watch::Receiver<Option<tokio::time::Instant>>,
) -> tokio::time::Instant {
    loop {
        if let Some(until) = hole_end(hole) {
            return until;
        }
        if hole.changed().await.is_err() {
            // The proxy is gone; its cut ends the connection.
            std::future::pending::<()>().await;
        }
    }
}

/// Keeps a black-holed connection open until the hole ends or the proxy cuts everything.
async fn hold(until: tokio::time::Instant, cut: &mut watch::Receiver<u64>) {
    tokio::select! {
        _ = tokio::time::sleep_until(until) => {}
        _ = cut.changed() => {}
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept_loop.abort();
        self.cut();
    }
}
