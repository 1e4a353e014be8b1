//! An S3-compatible server for the object-storage tests, like [`crate::db`] for PostgreSQL:
//! `BUILDFLEET_TEST_S3_URL` names a running one (`scripts/test.sh` and CI start it with
//! `scripts/s3-server.sh start`), and each test gets a bucket of its own there. Unset, the
//! tests say they were skipped, except in CI (`CI=true`), where that is a failure. A test that
//! stops and restarts its server spawns a private one ([`PrivateS3`]) with the same script.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use buildfleet_backend::storage::S3Settings;
use rand::Rng;

pub const S3_URL_VAR: &str = "BUILDFLEET_TEST_S3_URL";

/// A fresh bucket on the test S3 server.
pub struct TestBucket {
    pub endpoint: String,
    pub bucket: String,
}

impl TestBucket {
    /// A new bucket on the server of `BUILDFLEET_TEST_S3_URL`; `None` (said on stderr) when it
    /// is unset outside CI. Panics in CI when unset, and whenever the server does not answer.
    pub async fn create() -> Option<TestBucket> {
        let endpoint = match std::env::var(S3_URL_VAR) {
            Ok(url) if !url.is_empty() => url,
            _ => {
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!(
                        "{S3_URL_VAR} is not set in CI: .ci/run starts the server with \
                         scripts/s3-server.sh start"
                    );
                }
                let _ = writeln!(std::io::stderr(), "skipped: {S3_URL_VAR} is not set");
                return None;
            }
        };
        Some(TestBucket::create_at(&endpoint).await)
    }

    /// A new bucket on the server at `endpoint`.
    pub async fn create_at(endpoint: &str) -> TestBucket {
        let bucket = format!("bf-test-{:016x}", rand::thread_rng().gen::<u64>());
        create_bucket(endpoint, &bucket).await;
        TestBucket {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            bucket,
        }
    }

    /// The backend's settings for this bucket (short timeouts and few retries, so that a
    /// failure test ends quickly).
    pub fn settings(&self) -> S3Settings {
        let mut settings = S3Settings::new(&self.bucket);
        settings.endpoint = Some(self.endpoint.clone());
        settings.region = Some("us-east-1".into());
        settings.access_key_id = Some("testing".into());
        settings.secret_access_key = Some("testing".into());
        settings.allow_http = true;
        settings.request_timeout = Duration::from_secs(10);
        settings.connect_timeout = Duration::from_secs(2);
        settings.max_retries = 2;
        settings.retry_timeout = Duration::from_secs(5);
        settings
    }

    /// The keys in the bucket (a plain ListObjects through the S3 API).
    pub async fn keys(&self) -> Vec<String> {
        let url = format!(
            "{}/{}?list-type=2&max-keys=1000",
            self.endpoint, self.bucket
        );
        let mut response = awc::Client::new()
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let body = response
            .body()
            .limit(16 * 1024 * 1024)
            .await
            .unwrap_or_else(|e| panic!("GET {url} body: {e}"));
        let text = String::from_utf8_lossy(&body);
        text.split("<Key>")
            .skip(1)
            .filter_map(|rest| rest.split_once("</Key>").map(|(key, _)| key.to_owned()))
            .collect()
    }
}

/// `PUT /{bucket}`: moto accepts it unsigned.
async fn create_bucket(endpoint: &str, bucket: &str) {
    let url = format!("{}/{bucket}", endpoint.trim_end_matches('/'));
    let response = awc::Client::new()
        .put(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("creating bucket at {url}: is the S3 server up? {e}"));
    assert!(
        response.status().is_success(),
        "creating bucket {url}: {}",
        response.status()
    );
}

/// A server of the test's own, which it may stop and start again (on the same port).
pub struct PrivateS3 {
    port: u16,
    child: Option<Child>,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/s3-server.sh")
}

impl PrivateS3 {
    /// Starts one on a free loopback port (installing the server first if missing).
    pub fn start() -> PrivateS3 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut server = PrivateS3 { port, child: None };
        server.resume();
        server
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the server again after [`PrivateS3::stop`] (empty: moto keeps nothing),
    /// blocking the thread until it answers.
    pub fn resume(&mut self) {
        self.spawn();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "the S3 server on port {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// [`PrivateS3::resume`] without blocking the test's runtime (its backend and builders
    /// go on meanwhile).
    pub async fn resume_async(&mut self) {
        self.spawn();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "the S3 server on port {} did not start",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("bash")
            .arg(script())
            .args(["run", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("running scripts/s3-server.sh");
        self.child = Some(child);
    }

    fn answers(&self) -> bool {
        std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
    }

    /// Kills the server (SIGKILL: in-flight requests fail as on a crash).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The script execs the server, so this is the server's own process.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateS3 {
    fn drop(&mut self) {
        self.stop();
    }
}
