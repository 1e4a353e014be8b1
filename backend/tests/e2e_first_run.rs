//! The README's first build, run literally with the real binaries: `buildfleet serve` with
//! its defaults (the relative data directory `data`, one local builder) started in a fresh
//! directory, then `buildfleet job submit --crate itoa@1.0.19 --param offline=true --wait`
//! and `buildfleet artifact download 1 …` from that same directory, the CLI finding the admin
//! token in `data/admin-token` there. Only the port differs (0 instead of 8000, so parallel
//! runs do not collide). This failed while the relative data directory reached the local
//! builder unresolved: its build ran in the job directory and wrote its output elsewhere.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use buildfleet_testkit::cli::{CliOutput, CLI_LIMIT};
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::e2e::tar_gz_files;
use buildfleet_testkit::server_tests;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::process::{Child, Command};

server_tests! {
    readme_first_build_succeeds_from_a_fresh_directory,
}

const CRATE: &str = "itoa@1.0.19";
const ARTIFACT: &str = "itoa-1.0.19-x86_64-linux.tar.gz";

/// Start-up: migrations, the local builder's key generation and admission.
const START_LIMIT: Duration = Duration::from_secs(60);

async fn readme_first_build_succeeds_from_a_fresh_directory(db: TestDb) {
    require_cached_crate();
    let dir = tempfile::tempdir().expect("fresh directory");
    let cwd = dir.path();
    // On SQLite nothing but the port is given, as in the README; on PostgreSQL the database
    // and the one local builder the embedded default would have started.
    let mut args = vec!["serve", "--bind", "127.0.0.1:0"];
    if db.url().starts_with("postgres") {
        args.extend(["--database-url", db.url(), "--local-builders", "1"]);
    }
    let server = Backend::start(cwd, &args).await;

    let submit = run_cli_in(
        cwd,
        &server.url,
        &[
            "job",
            "submit",
            "--crate",
            CRATE,
            "--param",
            "offline=true",
            "--wait",
        ],
    )
    .await;
    assert_eq!(
        submit.code,
        0,
        "the README's build did not succeed\n--- stdout\n{}\n--- stderr\n{}\n--- backend\n{}",
        submit.stdout,
        submit.stderr,
        server.output()
    );
    assert!(
        cwd.join("data").join("admin-token").is_file(),
        "the default data directory is `data` under the working directory"
    );

    run_cli_in(cwd, &server.url, &["artifact", "download", "1", ARTIFACT])
        .await
        .ok();
    let bytes = std::fs::read(cwd.join(ARTIFACT)).expect("the downloaded, verified artifact");
    let files = tar_gz_files(&bytes);
    assert!(
        files
            .iter()
            .any(|(path, size)| path.ends_with(".rlib") && *size > 0),
        "the artifact holds the built library: {files:?}"
    );
    // The README's next line: any copy of the file checked in one command, the job found by
    // its digest.
    let verified = run_cli_in(cwd, &server.url, &["verify", ARTIFACT])
        .await
        .ok();
    assert!(
        verified.stdout.contains("built by local-1"),
        "{}",
        verified.stdout
    );

    server.stop().await;
}

/// `buildfleet ARGS` in `cwd`, with none of the caller's `BUILDFLEET_*` variables: the token
/// comes from `./data/admin-token` as the README says. The URL is the one thing passed, as
/// the port is not the README's.
async fn run_cli_in(cwd: &Path, url: &str, args: &[&str]) -> CliOutput {
    let mut command = Command::new(env!("CARGO_BIN_EXE_buildfleet"));
    clean_env(&mut command);
    command
        .args(args)
        .current_dir(cwd)
        .env("BUILDFLEET_URL", url)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(CLI_LIMIT, command.output())
        .await
        .unwrap_or_else(|_| panic!("buildfleet {args:?} ran longer than {CLI_LIMIT:?}"))
        .expect("running the buildfleet binary");
    CliOutput {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn clean_env(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("BUILDFLEET_") {
            command.env_remove(name);
        }
    }
}

/// The crate the README builds must be in cargo's cache: the build is offline.
fn require_cached_crate() {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .expect("CARGO_HOME or HOME must be set to find the cargo registry cache");
    let cache = cargo_home.join("registry").join("cache");
    let found = std::fs::read_dir(&cache)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .any(|registry| registry.path().join("itoa-1.0.19.crate").is_file());
    assert!(
        found,
        "no itoa-1.0.19.crate under {}/*/: `bash scripts/e2e-crate.sh` fetches it and what \
         building it offline needs",
        cache.display()
    );
}

/// The `buildfleet serve` process, its output kept for failure messages.
struct Backend {
    child: Child,
    url: String,
    output: Arc<Mutex<String>>,
}

impl Backend {
    async fn start(cwd: &Path, args: &[&str]) -> Backend {
        let mut command = Command::new(env!("CARGO_BIN_EXE_buildfleet"));
        clean_env(&mut command);
        command
            .args(args)
            .current_dir(cwd)
            .env("BUILDFLEET_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("starting buildfleet serve");
        let output = Arc::new(Mutex::new(String::new()));
        let (url_tx, mut url_rx) = tokio::sync::mpsc::unbounded_channel();
        collect(
            child.stdout.take().expect("stdout"),
            output.clone(),
            Some(url_tx),
        );
        collect(child.stderr.take().expect("stderr"), output.clone(), None);
        let url = tokio::time::timeout(START_LIMIT, url_rx.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                panic!(
                    "buildfleet serve did not report its address within {START_LIMIT:?}:\n{}",
                    output.lock().unwrap()
                )
            });
        Backend { child, url, output }
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// SIGTERM, as Ctrl-C would, and a bounded wait; killed if it does not stop.
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        if tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
            panic!(
                "buildfleet serve did not stop on SIGTERM:\n{}",
                self.output()
            );
        }
    }
}

/// Copies the lines of `stream` into `output`; the URL of the "listening on" line goes to
/// `url` once.
fn collect(
    stream: impl AsyncRead + Unpin + Send + 'static,
    output: Arc<Mutex<String>>,
    mut url: Option<tokio::sync::mpsc::UnboundedSender<String>>,
) {
    actix_rt::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(found) = line.strip_prefix("Buildfleet backend listening on ") {
                if let Some(tx) = url.take() {
                    let _ = tx.send(found.trim().to_owned());
                }
            }
            let mut output = output.lock().unwrap();
            output.push_str(&line);
            output.push('\n');
        }
    });
}
