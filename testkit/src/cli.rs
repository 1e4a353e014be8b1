//! The real `buildfleet` binary run as a subprocess against an in-process backend, and an
//! in-process builder with recipes of the test's choosing, so the CLI tests exercise what
//! an operator types against jobs that really run.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use buildfleet_builder::recipes::{ArtifactConfig, Pack, RecipeBook, RecipeConfig};
use buildfleet_builder::BuilderConfig;
use serde_json::Value;

use crate::keys::TestKey;
use crate::server::TestServer;

/// One CLI run may take this long before the test fails.
pub const CLI_LIMIT: Duration = Duration::from_secs(120);

/// What a CLI run printed, and its exit code.
#[derive(Debug)]
pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// Panics with both outputs unless the exit code is `code`.
    pub fn expect_code(self, code: i32) -> CliOutput {
        assert_eq!(
            self.code, code,
            "exit code {} (expected {code})\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    pub fn ok(self) -> CliOutput {
        self.expect_code(0)
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

/// Runs `buildfleet ARGS` with `env` (and no BUILDFLEET_* variable of ours leaking in).
pub async fn run_cli(args: &[&str], env: &[(&str, &str)]) -> CliOutput {
    let mut command = tokio::process::Command::new(crate::processes::backend_binary());
    command
        .args(args)
        .env_remove("BUILDFLEET_URL")
        .env_remove("BUILDFLEET_TOKEN")
        .env_remove("BUILDFLEET_CA_CERT")
        .env_remove("BUILDFLEET_CRATES_URL")
        // A data directory that does not exist: no admin-token file is picked up by accident.
        .env("BUILDFLEET_DATA_DIR", "/nonexistent/buildfleet-cli-test")
        .env("BUILDFLEET_LOG", "warn")
        .envs(env.iter().copied())
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

impl TestServer {
    /// `buildfleet ARGS` against this backend with its admin token.
    pub async fn cli(&self, args: &[&str]) -> CliOutput {
        self.cli_env(args, &[]).await
    }

    /// `buildfleet ARGS` against this backend with its admin token and more environment.
    pub async fn cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> CliOutput {
        let mut all = vec![
            ("BUILDFLEET_URL", self.url.as_str()),
            ("BUILDFLEET_TOKEN", self.admin_token.as_str()),
        ];
        all.extend_from_slice(env);
        run_cli(args, &all).await
    }

    /// `buildfleet ARGS` against this backend with no token at all.
    pub async fn cli_anonymous(&self, args: &[&str]) -> CliOutput {
        run_cli(args, &[("BUILDFLEET_URL", self.url.as_str())]).await
    }
}

/// A recipe running one `sh -c SCRIPT`, with the artifacts `(name, path under $BUILDFLEET_OUT)`.
pub fn shell_recipe(name: &str, script: &str, artifacts: &[(&str, &str)]) -> RecipeConfig {
    RecipeConfig {
        name: name.to_owned(),
        version: "1".to_owned(),
        commands: vec![vec!["sh".into(), "-c".into(), script.to_owned()]],
        env: Default::default(),
        artifacts: artifacts
            .iter()
            .map(|(name, path)| ArtifactConfig {
                name: (*name).to_owned(),
                path: (*path).to_owned(),
                pack: Pack::File,
            })
            .collect(),
        image: None,
        version_commands: Vec::new(),
    }
}

/// A builder running in this process under `key` (admitted beforehand), offering `recipes`.
pub struct TestBuilder {
    pub builder: buildfleet_builder::Builder,
    work_dir: tempfile::TempDir,
}

impl TestBuilder {
    pub async fn start(
        server: &TestServer,
        key: &TestKey,
        recipes: Vec<RecipeConfig>,
    ) -> TestBuilder {
        let work_dir = tempfile::tempdir().expect("builder work dir");
        let mut config = BuilderConfig::new(
            &format!("ws://{}", server.addr),
            key.private_key_path(),
            &key.name,
            work_dir.path(),
        )
        .expect("builder config");
        config.recipes = RecipeBook::with_builtins(recipes).expect("test recipes");
        let builder = buildfleet_builder::start(config)
            .await
            .expect("starting the builder");
        TestBuilder { builder, work_dir }
    }

    pub fn work_dir(&self) -> &Path {
        self.work_dir.path()
    }
}

/// Polls `GET /builders/{id}` until it reports the builder connected.
pub async fn wait_connected(server: &TestServer, id: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = server.get(&format!("/builders/{id}")).await;
        if body["connected"] == Value::Bool(true) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "builder {id} did not connect: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
