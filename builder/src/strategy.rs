//! Execution strategies: how one recipe command becomes a process. `process` runs it on
//! the host in the job's directory; `docker` runs it in a fresh, network-less container
//! that sees the source read-only at `/src` and can write only `/out`.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use buildfleet_protocol::JobAssignment;

use crate::config::{BuildUser, DockerSettings, Strategy, ToolchainEnv};
use crate::process::CommandSpec;
use crate::recipes::{expand, param_env_name, Recipe};

/// Variables of the docker CLI's own environment passed through to it.
const DOCKER_CLI_ENV: &[&str] = &[
    "DOCKER_HOST",
    "DOCKER_CONFIG",
    "DOCKER_CONTEXT",
    "DOCKER_CERT_PATH",
    "DOCKER_TLS_VERIFY",
];

#[derive(Debug, thiserror::Error)]
pub enum StrategyError {
    #[error("recipe {0:?} names no docker image and the builder has no default image")]
    NoImage(String),
    #[error("cannot inspect the job directory: {0}")]
    Io(#[from] std::io::Error),
}

/// Where one job's files live on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobLayout {
    /// `<work_dir>/jobs/<job>-<attempt>`, removed when the job ends.
    pub dir: PathBuf,
    /// The downloaded archive.
    pub archive: PathBuf,
    /// Where the archive is unpacked.
    pub src: PathBuf,
    /// Recipes write their outputs here (`$BUILDFLEET_OUT`).
    pub out: PathBuf,
    /// HOME of process-strategy builds.
    pub home: PathBuf,
    /// Packed artifacts before upload.
    pub staging: PathBuf,
}

impl JobLayout {
    pub fn new(dir: PathBuf) -> Self {
        JobLayout {
            archive: dir.join("source.archive"),
            src: dir.join("src"),
            out: dir.join("out"),
            home: dir.join("home"),
            staging: dir.join("artifacts"),
            dir,
        }
    }

    pub fn create(&self) -> std::io::Result<()> {
        for dir in [&self.dir, &self.src, &self.out, &self.home, &self.staging] {
            std::fs::create_dir_all(dir)?;
        }
        Ok(())
    }

    /// Gives the build user what a build writes: `out`, `home` and the unpacked source tree
    /// (cargo writes `target/` into it). Everything else of the job directory, and the rest
    /// of the work directory, stays the builder's. Symbolic links are not followed.
    pub fn hand_to(&self, user: &BuildUser) -> std::io::Result<()> {
        let own = |path: &Path| std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid));
        own(&self.out)?;
        own(&self.home)?;
        let mut pending = vec![self.src.clone()];
        while let Some(path) = pending.pop() {
            own(&path)?;
            if std::fs::symlink_metadata(&path)?.is_dir() {
                for entry in std::fs::read_dir(&path)? {
                    pending.push(entry?.path());
                }
            }
        }
        Ok(())
    }
}

/// Everything a strategy needs to turn a recipe command into a process.
#[derive(Debug, Clone, Copy)]
pub struct CommandContext<'a> {
    pub strategy: &'a Strategy,
    pub recipe: &'a Recipe,
    pub job: &'a JobAssignment,
    pub layout: &'a JobLayout,
    /// The unpacked source's top level on the host.
    pub src_root: &'a Path,
    pub toolchain: &'a ToolchainEnv,
    /// The source's newest file time ([`crate::unpack::Unpacked::newest_mtime`]).
    pub source_date_epoch: u64,
    /// The user process-strategy commands run as (`build_user`), if not the builder's.
    pub build_user: Option<&'a BuildUser>,
}

impl CommandContext<'_> {
    /// The process for command number `index` of the recipe.
    pub fn command_spec(
        &self,
        argv: &[String],
        index: usize,
    ) -> Result<CommandSpec, StrategyError> {
        match self.strategy {
            Strategy::Process => Ok(self.process_spec(argv)),
            Strategy::Docker(settings) => self.docker_spec(settings, argv, index),
        }
    }

    fn process_spec(&self, argv: &[String]) -> CommandSpec {
        let (layout, toolchain) = (self.layout, self.toolchain);
        let mut vars = job_vars(self.job, self.recipe, self.source_date_epoch);
        vars.insert("BUILDFLEET_SRC".into(), self.src_root.display().to_string());
        vars.insert("BUILDFLEET_OUT".into(), layout.out.display().to_string());
        let mut env = recipe_env(self.recipe, &vars);
        env.extend(vars.clone());
        env.insert("PATH".into(), toolchain.path.clone());
        env.insert("HOME".into(), layout.home.display().to_string());
        if let Some(cargo_home) = &toolchain.cargo_home {
            env.insert("CARGO_HOME".into(), cargo_home.display().to_string());
        }
        if self.recipe.is_cargo && !env.contains_key(ENCODED_RUSTFLAGS) {
            let mut prefixes = vec![(layout.dir.clone(), "/buildfleet/job")];
            if let Some(cargo_home) = &toolchain.cargo_home {
                prefixes.push((cargo_home.clone(), "/buildfleet/cargo-home"));
            }
            env.insert(ENCODED_RUSTFLAGS.into(), remap_flags(&prefixes));
        }
        if let Some(rustup_home) = &toolchain.rustup_home {
            env.insert("RUSTUP_HOME".into(), rustup_home.display().to_string());
        }
        let argv: Vec<String> = argv.iter().map(|a| expand(a, &vars)).collect();
        let (program, args) = split_argv(argv);
        CommandSpec {
            program,
            args,
            env,
            cwd: self.src_root.to_path_buf(),
            on_stop: None,
            run_as: self.build_user.cloned(),
        }
    }

    fn docker_spec(
        &self,
        settings: &DockerSettings,
        argv: &[String],
        index: usize,
    ) -> Result<CommandSpec, StrategyError> {
        let (recipe, job, layout) = (self.recipe, self.job, self.layout);
        let image = recipe
            .image
            .clone()
            .or_else(|| settings.image.clone())
            .ok_or_else(|| StrategyError::NoImage(recipe.name.clone()))?;
        let mut vars = job_vars(job, recipe, self.source_date_epoch);
        vars.insert("BUILDFLEET_SRC".into(), "/src".into());
        vars.insert("BUILDFLEET_OUT".into(), "/out".into());
        let mut container_env = recipe_env(recipe, &vars);
        container_env.extend(vars.clone());
        container_env.insert("HOME".into(), "/tmp".into());

        // Files written to /out belong to the builder's user, so it can pack and delete them.
        let owner = std::fs::metadata(&layout.dir)?;
        let name = format!("bf-job-{}-{}-{index}", job.job_id, job.attempt);
        let docker = settings.docker_bin.display().to_string();
        let mut args: Vec<String> = [
            "run",
            "--rm",
            "--network",
            "none",
            "--memory",
            &settings.memory,
            "--cpus",
            &settings.cpus,
            "--pids-limit",
            &settings.pids_limit.to_string(),
            "--read-only",
            "--tmpfs",
            "/tmp",
            "--security-opt",
            "no-new-privileges",
            "--user",
            &format!("{}:{}", owner.uid(), owner.gid()),
            "-v",
            &format!("{}:/src:ro", self.src_root.display()),
            "-v",
            &format!("{}:/out", layout.out.display()),
            "-w",
            "/src",
            "--name",
            &name,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        // `-e NAME` without a value takes it from the CLI's environment: values stay off the
        // docker command line (and out of `ps`).
        for key in container_env.keys() {
            args.push("-e".into());
            args.push(key.clone());
        }
        args.push(image);
        args.extend(argv.iter().map(|a| expand(a, &vars)));

        let mut cli_env = container_env;
        cli_env.insert("PATH".into(), self.toolchain.path.clone());
        cli_env.insert("HOME".into(), layout.home.display().to_string());
        for key in DOCKER_CLI_ENV {
            if let Ok(value) = std::env::var(key) {
                cli_env.insert((*key).to_owned(), value);
            }
        }
        Ok(CommandSpec {
            program: docker.clone(),
            args,
            env: cli_env,
            cwd: layout.dir.clone(),
            // Signals reach the CLI, not the container: stop the container itself.
            on_stop: Some(vec![docker, "kill".into(), name]),
            // The CLI talks to the daemon as the builder; the container sees no key anyway.
            run_as: None,
        })
    }
}

/// Cargo's rustflags variable that takes arguments separated by 0x1f, so a path with a space
/// stays one argument (`RUSTFLAGS` splits on spaces).
const ENCODED_RUSTFLAGS: &str = "CARGO_ENCODED_RUSTFLAGS";

/// `--remap-path-prefix` for each host directory a build's paths start with, so the paths
/// compiled into a binary or an rlib (panic locations, rlib metadata) are the same on every
/// builder, whatever its work directory or job number. rustc applies the last matching
/// mapping: a directory inside another comes after it.
fn remap_flags(prefixes: &[(std::path::PathBuf, &str)]) -> String {
    prefixes
        .iter()
        .map(|(from, to)| format!("--remap-path-prefix={}={to}", from.display()))
        .collect::<Vec<_>>()
        .join("\u{1f}")
}

/// `BUILDFLEET_JOB_ID`, `BUILDFLEET_ATTEMPT`, `BUILDFLEET_RECIPE`, `SOURCE_DATE_EPOCH` (the
/// reproducible-builds convention for timestamps a build embeds) and the job's parameters.
fn job_vars(
    job: &JobAssignment,
    recipe: &Recipe,
    source_date_epoch: u64,
) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::from([
        (
            "SOURCE_DATE_EPOCH".to_owned(),
            source_date_epoch.to_string(),
        ),
        ("BUILDFLEET_JOB_ID".to_owned(), job.job_id.to_string()),
        ("BUILDFLEET_ATTEMPT".to_owned(), job.attempt.to_string()),
        (
            "BUILDFLEET_RECIPE".to_owned(),
            format!("{}@{}", recipe.name, recipe.version),
        ),
    ]);
    for (name, value) in &job.parameters {
        vars.insert(param_env_name(name), value.clone());
    }
    vars
}

fn recipe_env(recipe: &Recipe, vars: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    recipe
        .env
        .iter()
        .map(|(k, v)| (k.clone(), expand(v, vars)))
        .collect()
}

fn split_argv(mut argv: Vec<String>) -> (String, Vec<String>) {
    if argv.is_empty() {
        return (String::new(), Vec::new());
    }
    let program = argv.remove(0);
    (program, argv)
}
