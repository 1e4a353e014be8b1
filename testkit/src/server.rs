//! The real backend, started in-process on `127.0.0.1:0` with a temporary data directory,
//! short timings and one of the test databases, plus the HTTP calls the scenarios make.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use awc::http::StatusCode;
use buildfleet_backend::config::{ServerConfig, Timings};
use buildfleet_backend::server::{self, RunningServer};
use buildfleet_backend::store::Store;
use serde_json::{json, Value};

use crate::db::TestDb;
use crate::keys::TestKey;

/// How long a condition the tests wait for may take before the test fails.
pub const WAIT_LIMIT: Duration = Duration::from_secs(10);

/// Timings short enough for the suite to exercise heartbeats, grace periods and timeouts in
/// about a second each.
pub fn test_timings() -> Timings {
    Timings {
        heartbeat_interval: Duration::from_millis(200),
        heartbeat_timeout: Duration::from_secs(1),
        reconnect_grace: Duration::from_secs(1),
        challenge_ttl: Duration::from_secs(5),
        handshake_timeout: Duration::from_secs(8),
        cancel_grace: Duration::from_millis(500),
        sweep_interval: Duration::from_millis(100),
        log_flush_interval: Duration::from_millis(20),
        webhook_retry_base: Duration::from_millis(300),
        janitor_interval: Duration::from_millis(200),
    }
}

pub struct TestServer {
    running: Option<RunningServer>,
    config: ServerConfig,
    pub addr: SocketAddr,
    pub url: String,
    pub admin_token: String,
    pub backend_id: String,
    pub store: Store,
    pub http: awc::Client,
    // Dropped last: the database and the data directory outlive the server using them.
    data_dir: tempfile::TempDir,
    db: TestDb,
}

/// The tests' HTTP client: the CLI's (TCP_NODELAY, the TLS roots), also trusting `ca_cert`
/// (a test serving HTTPS sets `TestServer::http` to one), with a 10 s limit per request.
pub fn test_client(server_cert: Option<&std::path::Path>) -> awc::Client {
    let tls = buildfleet_builder::http::tls_config(server_cert).expect("test TLS config");
    awc::Client::builder()
        .connector(
            awc::Connector::new()
                .connector(buildfleet_builder::http::nodelay_tcp_connector())
                .rustls_0_23(tls),
        )
        .timeout(Duration::from_secs(10))
        .finish()
}

impl TestServer {
    pub async fn start(db: TestDb) -> TestServer {
        TestServer::start_with(db, |_| {}).await
    }

    /// Starts with the test configuration, adjusted by `configure`.
    pub async fn start_with(db: TestDb, configure: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let data_dir = tempfile::tempdir().expect("temp data dir");
        let mut config = ServerConfig::with_data_dir(data_dir.path());
        config.bind = SocketAddr::from(([127, 0, 0, 1], 0));
        config.database_url = db.url().to_owned();
        config.limits.db_pool_size = 4;
        config.timings = test_timings();
        configure(&mut config);
        let running = server::start(config.clone())
            .await
            .expect("starting the backend");
        TestServer {
            addr: running.addr,
            url: running.public_url.clone(),
            admin_token: running.admin_token.clone(),
            backend_id: running.backend_id.clone(),
            store: running.store.clone(),
            running: Some(running),
            http: test_client(None),
            config,
            data_dir,
            db,
        }
    }

    /// Stops the backend and starts it again on the same address, data directory and
    /// database, as an operator restarting it would.
    pub async fn restart(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop(false).await;
        }
        let mut config = self.config.clone();
        config.bind = self.addr;
        let running = server::start(config).await.expect("restarting the backend");
        assert_eq!(running.addr, self.addr);
        assert_eq!(
            running.admin_token, self.admin_token,
            "admin token survives"
        );
        self.store = running.store.clone();
        self.backend_id = running.backend_id.clone();
        self.running = Some(running);
    }

    /// Stops the backend before the database goes away.
    pub async fn shutdown(mut self) {
        if let Some(running) = self.running.take() {
            running.stop(false).await;
        }
    }

    /// See [`TestDb::execute`].
    pub fn execute_sql(&self, sql: &str) {
        self.db.execute(sql);
    }

    pub fn data_dir(&self) -> &std::path::Path {
        self.data_dir.path()
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/api/v1/builders/connect", self.addr)
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.url)
    }

    /// Runs a store call on the blocking pool, so the actors sharing this thread go on.
    pub async fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> T + Send + 'static,
    ) -> T {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .expect("store call panicked")
    }

    // ---- HTTP ----

    /// `GET` an absolute URL; returns the status and the raw body.
    pub async fn get_raw(&self, url: &str) -> (StatusCode, Vec<u8>) {
        let mut response = self
            .http
            .get(url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let body = response
            .body()
            .limit(64 * 1024 * 1024)
            .await
            .unwrap_or_else(|e| panic!("GET {url} body: {e}"));
        (response.status(), body.to_vec())
    }

    /// `GET /api/v1{path}`, parsed as JSON.
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let (status, body) = self.get_raw(&self.api(path)).await;
        (status, parse_json(&body))
    }

    /// `GET /api/v1{path}` that must succeed.
    pub async fn get_ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    /// `POST /api/v1{path}` with a JSON body and an optional bearer token.
    /// `method` on the API `path` as `token` (`None`: anonymously), with a JSON body or none:
    /// the status and the answer as JSON (a JSON string holding the text when it is not JSON).
    pub async fn call(
        &self,
        method: awc::http::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let url = self.api(path);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let mut response = match body {
            Some(body) => {
                request
                    .insert_header(("Content-Type", "application/json"))
                    .send_body(body.to_string())
                    .await
            }
            None => request.send().await,
        }
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let bytes = response
            .body()
            .limit(16 * 1024 * 1024)
            .await
            .unwrap_or_else(|e| panic!("{method} {url} body: {e}"));
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (response.status(), value)
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> (StatusCode, Value) {
        self.post_raw(path, token, "application/json", body.to_string())
            .await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: String,
    ) -> (StatusCode, Value) {
        let url = self.api(path);
        let mut request = self
            .http
            .post(&url)
            .insert_header(("Content-Type", content_type));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let mut response = request
            .send_body(body)
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        let body = response
            .body()
            .await
            .unwrap_or_else(|e| panic!("POST {url} body: {e}"));
        (response.status(), parse_json(&body))
    }

    /// `POST` as the operator.
    pub async fn post_admin(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let token = self.admin_token.clone();
        self.post(path, Some(&token), body).await
    }

    /// Admits `key` through `POST /api/v1/builders`; returns the builder id.
    pub async fn admit(&self, key: &TestKey) -> i64 {
        let (status, body) = self
            .post_admin(
                "/builders",
                &json!({ "name": key.name, "public_key": key.public_openssh }),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "admitting {}: {body}",
            key.name
        );
        assert_eq!(body["fingerprint"], key.fingerprint.as_str());
        body["id"].as_i64().expect("builder id")
    }

    /// Submits a job with the given fields over the defaults; returns its id.
    pub async fn submit(&self, fields: Value) -> i64 {
        let mut body = json!({
            "source_url": "https://example.invalid/crate-1.0.0.tar.gz",
            "source_sha256": SOURCE_SHA256,
            "recipe": "cargo-build",
        });
        if let (Some(body), Some(fields)) = (body.as_object_mut(), fields.as_object()) {
            body.extend(fields.clone());
        }
        let (status, job) = self.post_admin("/jobs", &body).await;
        assert_eq!(status, StatusCode::CREATED, "submitting a job: {job}");
        assert_eq!(job["state"], "queued");
        job["id"].as_i64().expect("job id")
    }

    pub async fn job(&self, id: i64) -> Value {
        self.get_ok(&format!("/jobs/{id}")).await
    }

    /// Polls `GET /jobs/{id}` until the job is in `state`; returns it.
    pub async fn wait_for_state(&self, id: i64, state: &str) -> Value {
        let deadline = Instant::now() + WAIT_LIMIT;
        loop {
            let job = self.job(id).await;
            if job["state"] == state {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for job {id} to become {state}; it is {job}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET /jobs/{id}/log`: the stored JSONL records of the current attempt.
    pub async fn log_records(&self, id: i64) -> Vec<Value> {
        self.log_records_of(id, None).await
    }

    pub async fn log_records_of(&self, id: i64, attempt: Option<i32>) -> Vec<Value> {
        let query = attempt.map(|a| format!("?attempt={a}")).unwrap_or_default();
        let (status, body) = self
            .get_raw(&self.api(&format!("/jobs/{id}/log{query}")))
            .await;
        assert_eq!(status, StatusCode::OK, "GET log of job {id}");
        String::from_utf8(body)
            .expect("log is UTF-8")
            .lines()
            .map(|line| serde_json::from_str(line).expect("a log line is one JSON record"))
            .collect()
    }

    /// The `line` fields of the stored log, in stored order.
    pub async fn log_lines(&self, id: i64) -> Vec<String> {
        self.log_records(id)
            .await
            .iter()
            .filter_map(|r| r["line"].as_str().map(str::to_owned))
            .collect()
    }

    pub async fn metrics(&self) -> String {
        let (status, body) = self.get_raw(&format!("{}/metrics", self.url)).await;
        assert_eq!(status, StatusCode::OK);
        String::from_utf8(body).expect("metrics are text")
    }
}

/// A made-up source digest; no test fetches the source.
pub const SOURCE_SHA256: &str = "5f3c1e2a9b8d7c6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e";

fn parse_json(body: &[u8]) -> Value {
    if body.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

/// Asserts the API's error shape `{"error": {"code", "message"}}` and returns the code.
pub fn error_code(body: &Value) -> &str {
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error body without a message: {body}"
    );
    error["code"]
        .as_str()
        .unwrap_or_else(|| panic!("error body without a code: {body}"))
}

/// Calls `check` until it returns `Some`, every 20 ms, for at most [`WAIT_LIMIT`].
pub async fn wait_until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT_LIMIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Instantiates each scenario `async fn name(db: TestDb)` of the calling file once per
/// database: `sqlite::name` and `postgres::name`. The PostgreSQL ones say they were skipped
/// when `BUILDFLEET_TEST_POSTGRES_URL` is unset, and fail when it is set but unreachable.
/// The calling crate needs `actix-rt` (the tests run on `#[actix_rt::test]`).
#[macro_export]
macro_rules! server_tests {
    ($($scenario:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[actix_rt::test]
                async fn $scenario() {
                    super::$scenario($crate::db::TestDb::sqlite()).await;
                }
            )+
        }

        mod postgres {
            $(
                #[actix_rt::test]
                async fn $scenario() {
                    // `None` when the variable is unset; `postgres()` says so.
                    if let Some(db) = $crate::db::TestDb::postgres() {
                        super::$scenario(db).await;
                    }
                }
            )+
        }
    };
}
