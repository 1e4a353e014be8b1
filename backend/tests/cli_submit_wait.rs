//! `buildfleet job submit --wait` says on stderr why the job waits, while it waits: that no
//! builder matches (at once, and once), its place in line and how that moves, where it
//! started; stdout carries only the final JSON with `--json`. The CLI runs as a subprocess
//! whose stderr is read line by line as it is written.

use std::process::Stdio;
use std::time::{Duration, Instant};

use buildfleet_testkit::builder_client::BuilderClient;
use buildfleet_testkit::cli::{shell_recipe, wait_connected, TestBuilder};
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::keys::TestKey;
use buildfleet_testkit::server::TestServer;
use buildfleet_testkit::server_tests;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr};

server_tests! {
    a_job_no_builder_offers_says_so_at_once_and_once,
    a_job_waits_for_a_builder_that_connects_and_says_where_it_started,
    a_queued_job_says_its_place_in_line_and_when_it_moves,
}

/// One line of the CLI's stderr may take this long (a standing is read every 3 s).
const LINE_LIMIT: Duration = Duration::from_secs(8);

/// A running `buildfleet job submit --wait`.
struct Waiting {
    child: Child,
    stderr: Lines<BufReader<ChildStderr>>,
    seen: Vec<String>,
}

impl Waiting {
    async fn start(server: &TestServer, source: &std::path::Path, recipe: &str) -> Waiting {
        let mut command =
            tokio::process::Command::new(buildfleet_testkit::processes::backend_binary());
        command
            .args(["job", "submit"])
            .arg(source)
            .args(["--recipe", recipe, "--wait", "--json"])
            .env_remove("BUILDFLEET_CA_CERT")
            .env_remove("BUILDFLEET_CRATES_URL")
            .env("BUILDFLEET_URL", &server.url)
            .env("BUILDFLEET_TOKEN", &server.admin_token)
            .env("BUILDFLEET_DATA_DIR", "/nonexistent/buildfleet-cli-test")
            .env("BUILDFLEET_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("running the buildfleet binary");
        let stderr = child.stderr.take().expect("piped stderr");
        Waiting {
            child,
            stderr: BufReader::new(stderr).lines(),
            seen: Vec::new(),
        }
    }

    /// Reads stderr until a line contains `needle`; fails after `within`.
    async fn line_with(&mut self, needle: &str, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.stderr.next_line()).await {
                Ok(Ok(Some(line))) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Ok(Ok(None)) => {
                    panic!("stderr ended without {needle:?}:\n{}", self.seen.join("\n"))
                }
                Ok(Err(e)) => panic!("reading stderr: {e}"),
                Err(_) => panic!(
                    "no line with {needle:?} within {within:?}; stderr so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// The job id from `submitted job N; waiting for it to end`.
    async fn job_id(&mut self) -> i64 {
        let line = self.line_with("submitted job ", LINE_LIMIT * 2).await;
        line.trim_start_matches("submitted job ")
            .split(';')
            .next()
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("no job id in {line:?}"))
    }

    /// Lines written within `window` (the CLI keeps running).
    async fn lines_within(&mut self, window: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + window;
        let mut lines = Vec::new();
        while let Ok(Ok(Some(line))) =
            tokio::time::timeout_at(deadline, self.stderr.next_line()).await
        {
            self.seen.push(line.clone());
            lines.push(line);
        }
        lines
    }

    /// Waits for the exit; answers the exit code, stdout and all of stderr.
    async fn finish(mut self) -> (i32, String, String) {
        let rest = tokio::time::timeout(Duration::from_secs(60), async {
            let mut rest = Vec::new();
            while let Ok(Some(line)) = self.stderr.next_line().await {
                rest.push(line);
            }
            rest
        })
        .await
        .expect("the CLI ends");
        self.seen.extend(rest);
        let output = tokio::time::timeout(Duration::from_secs(30), self.child.wait_with_output())
            .await
            .expect("the CLI exits")
            .expect("waiting for the CLI");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            self.seen.join("\n"),
        )
    }
}

fn source_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("README"), "a source\n").unwrap();
    dir
}

/// Stdout is exactly one JSON document: the finished job.
fn the_job(stdout: &str) -> Value {
    serde_json::from_str(stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{stdout}"))
}

async fn cancel(server: &TestServer, job: i64) {
    let (status, body) = server
        .post_admin(&format!("/jobs/{job}/cancel"), &json!({}))
        .await;
    assert!(status.is_success(), "cancel: {body}");
}

async fn a_job_no_builder_offers_says_so_at_once_and_once(db: TestDb) {
    let server = TestServer::start(db).await;
    let key = TestKey::generate("other-work");
    server.admit(&key).await;
    // Connected, offering only cargo-build.
    let _builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    let source = source_dir();

    let mut waiting = Waiting::start(&server, source.path(), "foo").await;
    let job = waiting.job_id().await;
    let submitted = Instant::now();
    let line = waiting.line_with("no builder matches", LINE_LIMIT).await;
    assert!(
        submitted.elapsed() < Duration::from_secs(2),
        "said after {:?}",
        submitted.elapsed()
    );
    assert!(
        line.starts_with(&format!(
            "job {job} cannot start: no builder matches: no connected builder offers recipe \"foo\""
        )),
        "{line}"
    );
    // Rechecked since, unchanged: not said again.
    let later = waiting.lines_within(Duration::from_secs(4)).await;
    assert!(later.is_empty(), "said again: {later:?}");

    cancel(&server, job).await;
    let (code, stdout, stderr) = waiting.finish().await;
    assert_eq!(code, 1, "a cancelled job is unsuccessful\n{stderr}");
    let finished = the_job(&stdout);
    assert_eq!(finished["id"], job, "{finished}");
    assert_eq!(finished["state"], "cancelled", "{finished}");
    assert_eq!(stderr.matches("no builder matches").count(), 1, "{stderr}");
}

async fn a_job_waits_for_a_builder_that_connects_and_says_where_it_started(db: TestDb) {
    let server = TestServer::start(db).await;
    let source = source_dir();
    let mut waiting = Waiting::start(&server, source.path(), "late").await;
    let job = waiting.job_id().await;
    let line = waiting.line_with("cannot start", LINE_LIMIT).await;
    assert_eq!(
        line,
        format!("job {job} cannot start: no builder matches: no builder is connected; still waiting, in case a matching builder connects")
    );

    // Admitted (not yet connected): the reason changes, and is said.
    let key = TestKey::generate("latecomer");
    let id = server.admit(&key).await;
    let line = waiting
        .line_with(&format!("job {job} is queued"), LINE_LIMIT)
        .await;
    assert!(
        line.contains("1 admitted builder that may match is offline"),
        "{line}"
    );

    // It connects with the recipe: the job starts there and succeeds.
    let _builder =
        TestBuilder::start(&server, &key, vec![shell_recipe("late", "echo built", &[])]).await;
    wait_connected(&server, id).await;
    let line = waiting.line_with("started on", LINE_LIMIT * 2).await;
    assert_eq!(line, format!("job {job} started on builder latecomer"));
    let (code, stdout, stderr) = waiting.finish().await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(the_job(&stdout)["state"], "succeeded", "{stdout}");
}

async fn a_queued_job_says_its_place_in_line_and_when_it_moves(db: TestDb) {
    let server = TestServer::start(db).await;
    let key = TestKey::generate("busy");
    server.admit(&key).await;
    // Connected and offering cargo-build, but asking for no work yet: jobs stay queued.
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    let first = server.submit(json!({})).await;
    server.submit(json!({})).await;
    let source = source_dir();

    let mut waiting = Waiting::start(&server, source.path(), "cargo-build").await;
    let job = waiting.job_id().await;
    let line = waiting.line_with("in line", LINE_LIMIT).await;
    assert!(
        line.starts_with(&format!(
            "job {job} is queued: 3rd in line for 1 matching builder (1 online, "
        )),
        "{line}"
    );

    // The builder takes the first job: ours moves up, and says so. Accepted, so the
    // builder's heartbeats keep its lease: an unaccepted assignment is requeued when its
    // lease runs out (2 s here), and ours would fall back to third before the CLI's next
    // reading.
    builder.request_jobs(1);
    let taken = builder.next_assignment().await;
    assert_eq!(taken.job_id.0, first);
    builder.accept(&taken);
    let line = waiting.line_with("in line", LINE_LIMIT).await;
    assert!(
        line.starts_with(&format!("job {job} is queued: 2nd in line")),
        "{line}"
    );

    cancel(&server, job).await;
    let (code, stdout, stderr) = waiting.finish().await;
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(the_job(&stdout)["state"], "cancelled", "{stdout}");
    assert!(!stdout.contains("in line"), "{stdout}");
}
