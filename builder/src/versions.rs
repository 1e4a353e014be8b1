//! The versions a build statement reports in `runDetails.builder.version`: the builder's
//! own, the recipe's, and the toolchain's as the recipe's version commands print them
//! (`rustc --version`, `cargo --version` for cargo recipes; `version_commands` for
//! configured ones).
//!
//! A version command runs once per builder process and toolchain `PATH`, with the toolchain
//! environment the builds get, and its first output line is kept; later jobs read the cache.
//! Under the docker strategy the toolchain is the image's, which the host cannot see without
//! starting a container, so only the builder's and the recipe's versions are reported there.

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use buildfleet_protocol::provenance::BUILDER_VERSION_KEY;

use crate::config::{Strategy, ToolchainEnv};
use crate::process::resolve_program;
use crate::recipes::Recipe;

/// How long a version command may take.
const VERSION_TIMEOUT: Duration = Duration::from_secs(20);
/// The longest version line kept, in bytes.
const MAX_VERSION_BYTES: usize = 200;

type CacheKey = (Vec<String>, String);

static CACHE: OnceLock<Mutex<HashMap<CacheKey, String>>> = OnceLock::new();

fn cached(key: &CacheKey) -> Option<String> {
    CACHE
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .ok()
        .and_then(|cache| cache.get(key).cloned())
}

fn remember(key: CacheKey, version: String) {
    if let Ok(mut cache) = CACHE.get_or_init(|| Mutex::new(HashMap::new())).lock() {
        cache.insert(key, version);
    }
}

/// `buildfleet-builder`, `recipe` (`name@version`) and each version command's tool.
pub async fn versions(
    recipe: Option<&Recipe>,
    strategy: &Strategy,
    toolchain: &ToolchainEnv,
) -> BTreeMap<String, String> {
    let mut versions = BTreeMap::from([(
        BUILDER_VERSION_KEY.to_owned(),
        env!("CARGO_PKG_VERSION").to_owned(),
    )]);
    let Some(recipe) = recipe else {
        return versions;
    };
    versions.insert(
        "recipe".to_owned(),
        format!("{}@{}", recipe.name, recipe.version),
    );
    if matches!(strategy, Strategy::Docker(_)) {
        return versions;
    }
    for command in &recipe.version_commands {
        let Some(program) = command.first() else {
            continue;
        };
        let tool = std::path::Path::new(program)
            .file_name()
            .map_or_else(|| program.clone(), |n| n.to_string_lossy().into_owned());
        versions.insert(tool, tool_version(command, toolchain).await);
    }
    versions
}

/// The first line a version command prints (cached), or why there is none.
async fn tool_version(command: &[String], toolchain: &ToolchainEnv) -> String {
    let key = (command.to_vec(), toolchain.path.clone());
    if let Some(version) = cached(&key) {
        return version;
    }
    let version = match run(command, toolchain).await {
        Ok(version) => version,
        Err(why) => {
            tracing::warn!(command = ?command, error = %why, "a version command failed");
            // Not cached: a tool installed later is reported by the next job.
            return format!("unknown ({why})");
        }
    };
    remember(key, version.clone());
    version
}

async fn run(command: &[String], toolchain: &ToolchainEnv) -> Result<String, String> {
    let (program, args) = command.split_first().ok_or("an empty command")?;
    let mut child = tokio::process::Command::new(resolve_program(program, Some(&toolchain.path)));
    child
        .args(args)
        .env("PATH", &toolchain.path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    if let Some(home) = &toolchain.cargo_home {
        child.env("CARGO_HOME", home);
    }
    if let Some(home) = &toolchain.rustup_home {
        child.env("RUSTUP_HOME", home);
    }
    let output = tokio::time::timeout(VERSION_TIMEOUT, child.output())
        .await
        .map_err(|_| format!("no answer within {} s", VERSION_TIMEOUT.as_secs()))?
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(format!("exited with {}", output.status));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().map(str::trim).find(|l| !l.is_empty());
    let line = line.ok_or("printed nothing")?;
    let mut end = line.len().min(MAX_VERSION_BYTES);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    Ok(line[..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toolchain() -> ToolchainEnv {
        ToolchainEnv::from_process_env()
    }

    fn recipe(commands: Vec<Vec<String>>) -> Recipe {
        Recipe {
            name: "r".into(),
            version: "3".into(),
            commands: vec![vec!["true".into()]],
            env: BTreeMap::new(),
            artifacts: Vec::new(),
            image: None,
            is_cargo: false,
            version_commands: commands,
        }
    }

    #[tokio::test]
    async fn a_version_command_reports_its_first_line_and_a_failure_says_why() {
        let recipe = recipe(vec![
            vec![
                "sh".into(),
                "-c".into(),
                "echo; echo 'sh 9.9 (x)'; echo more".into(),
            ],
            vec!["false".into()],
        ]);
        let versions = versions(Some(&recipe), &Strategy::Process, &toolchain()).await;
        assert_eq!(versions["sh"], "sh 9.9 (x)");
        assert_eq!(versions["recipe"], "r@3");
        assert_eq!(versions[BUILDER_VERSION_KEY], env!("CARGO_PKG_VERSION"));
        assert!(
            versions["false"].starts_with("unknown (exited with"),
            "{versions:?}"
        );
    }

    #[tokio::test]
    async fn a_version_is_run_once_and_then_read_from_the_cache() {
        let marker = tempfile::tempdir().unwrap();
        let file = marker.path().join("runs");
        let script = format!("echo x >> {}; echo v1", file.display());
        let command = vec!["sh".to_owned(), "-c".to_owned(), script];
        let tools = toolchain();
        assert_eq!(tool_version(&command, &tools).await, "v1");
        assert_eq!(tool_version(&command, &tools).await, "v1");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "x\n");
    }
}
