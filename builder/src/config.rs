//! Builder configuration: command-line flags, `BUILDFLEET_*` environment variables and an
//! optional TOML file, resolved in that order of precedence into one validated
//! [`BuilderConfig`].
//!
//! Environment variables read (each mirrors a flag of `run`):
//! `BUILDFLEET_CONFIG`, `BUILDFLEET_BACKEND_URL`, `BUILDFLEET_KEY`, `BUILDFLEET_NAME`,
//! `BUILDFLEET_LABELS` (comma-separated `key=value`), `BUILDFLEET_MAX_JOBS`,
//! `BUILDFLEET_WORK_DIR`, `BUILDFLEET_STRATEGY`, `BUILDFLEET_DOCKER_IMAGE`,
//! `BUILDFLEET_OFFLINE`, `BUILDFLEET_CA_CERT`, `BUILDFLEET_BUILD_USER`. Toolchain variables passed through to
//! recipes: `CARGO_HOME`, `RUSTUP_HOME` and `PATH` (see [`ToolchainEnv`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

use crate::connection::ReconnectPolicy;
use crate::recipes::{RecipeBook, RecipeConfig, RecipeError};

/// The path the builder appends to the backend URL.
pub const CONNECT_PATH: &str = "/api/v1/builders/connect";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("missing {what}: pass {flag}, set {env} or put `{key}` in the config file")]
    Missing {
        what: &'static str,
        flag: &'static str,
        env: &'static str,
        key: &'static str,
    },
    #[error("invalid backend URL {url:?}: {reason}")]
    BackendUrl { url: String, reason: &'static str },
    #[error("invalid builder name {name:?}: {reason}")]
    Name { name: String, reason: &'static str },
    #[error("invalid label {label:?}: expected key=value with a non-empty key")]
    Label { label: String },
    #[error("max concurrent jobs must be between 1 and 1024, got {0}")]
    MaxJobs(u32),
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("invalid path for {what} {path:?}: {source}")]
    Path {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid docker setting {field}: {reason}")]
    Docker { field: &'static str, reason: String },
    #[error("the docker strategy needs an image: pass --docker-image, set BUILDFLEET_DOCKER_IMAGE, put `image` under [strategy], or give every recipe an `image`")]
    DockerImage,
    #[error("invalid build_user {value:?}: {reason}")]
    BuildUser { value: String, reason: String },
    #[error("invalid [reconnect] setting {field}: {reason}")]
    Reconnect { field: &'static str, reason: String },
    #[error(transparent)]
    Recipe(#[from] RecipeError),
}

#[derive(Debug, Parser)]
#[command(
    name = "buildfleet-builder",
    version,
    about = "Buildfleet builder: runs build jobs for a Buildfleet backend"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once at start; boxing would only add noise"
)]
pub enum Command {
    /// Connect to the backend and run jobs until stopped (SIGTERM/Ctrl-C drains, twice cancels).
    Run(RunArgs),
    /// Write a new Ed25519 key pair for this builder and print what to admit.
    Keygen(KeygenArgs),
}

#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    /// TOML configuration file; flags and environment variables override it.
    #[arg(long, env = "BUILDFLEET_CONFIG")]
    pub config: Option<PathBuf>,
    /// Backend base URL, ws:// or wss:// (e.g. ws://127.0.0.1:8000); several replicas as a
    /// comma-separated list or by repeating the flag: the builder dials the next one when a
    /// connection fails.
    #[arg(long, env = "BUILDFLEET_BACKEND_URL", value_delimiter = ',')]
    pub backend_url: Vec<String>,
    /// OpenSSH private key (Ed25519, ECDSA or RSA, unencrypted).
    #[arg(long, env = "BUILDFLEET_KEY")]
    pub key: Option<PathBuf>,
    /// Builder name shown by the backend (defaults to the host name).
    #[arg(long, env = "BUILDFLEET_NAME")]
    pub name: Option<String>,
    /// A label `key=value`; repeat the flag or separate with commas.
    #[arg(long = "label", env = "BUILDFLEET_LABELS", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// How many jobs run at once.
    #[arg(long, env = "BUILDFLEET_MAX_JOBS")]
    pub max_jobs: Option<u32>,
    /// Directory for job sources, outputs and artifacts.
    #[arg(long, env = "BUILDFLEET_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// How recipe commands run.
    #[arg(long, env = "BUILDFLEET_STRATEGY", value_enum)]
    pub strategy: Option<StrategyKind>,
    /// Default image of the docker strategy.
    #[arg(long, env = "BUILDFLEET_DOCKER_IMAGE")]
    pub docker_image: Option<String>,
    /// Build cargo recipes with `--offline` (the registry must be in CARGO_HOME).
    #[arg(long, env = "BUILDFLEET_OFFLINE")]
    pub offline: Option<bool>,
    /// Extra PEM CA certificate(s) to trust for wss:// and https://.
    #[arg(long, env = "BUILDFLEET_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Enrolment token from the operator: admit this builder's key (made if missing) first.
    #[arg(long, env = "BUILDFLEET_ENROL_TOKEN", hide_env_values = true)]
    pub enrol_token: Option<String>,
    /// Run process-strategy commands as this user (NAME or UID:GID), so builds cannot read
    /// the builder's key; needs root or CAP_SETUID and CAP_SETGID.
    #[arg(long, env = "BUILDFLEET_BUILD_USER")]
    pub build_user: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct KeygenArgs {
    /// Where to write the private key; the public key goes to PATH.pub.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyKind {
    Process,
    Docker,
}

/// Resolved, validated configuration of a running builder. Every path in it is absolute:
/// builds run with their job directory as working directory, so a relative work dir would
/// point somewhere else for them.
#[derive(Debug, Clone)]
pub struct BuilderConfig {
    /// Full WebSocket URLs of the connect endpoint, one per backend replica, in the order
    /// they are dialed (never empty).
    pub connect_urls: Vec<String>,
    pub key_path: PathBuf,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub max_concurrent_jobs: u32,
    pub work_dir: PathBuf,
    pub recipes: RecipeBook,
    pub strategy: Strategy,
    /// Default for cargo recipes' `--offline` (a job parameter `offline` overrides it).
    pub offline: bool,
    pub ca_cert: Option<PathBuf>,
    pub limits: Limits,
    pub toolchain: ToolchainEnv,
    /// Backoff between connection attempts (the `[reconnect]` table of the file).
    pub reconnect: ReconnectPolicy,
    /// The user process-strategy commands run as (`build_user`); `None`: the builder's own,
    /// which can read the builder's key.
    pub build_user: Option<BuildUser>,
}

impl BuilderConfig {
    /// A configuration with defaults for everything but the essentials; for embedding the
    /// builder (tests start one in-process this way).
    pub fn new(
        backend_url: &str,
        key_path: impl Into<PathBuf>,
        name: &str,
        work_dir: impl Into<PathBuf>,
    ) -> Result<Self, ConfigError> {
        Ok(BuilderConfig {
            connect_urls: connect_urls(&[backend_url.to_owned()])?,
            key_path: absolute("key", key_path.into())?,
            name: validated_name(name)?,
            labels: BTreeMap::new(),
            max_concurrent_jobs: 1,
            work_dir: absolute("work dir", work_dir.into())?,
            recipes: RecipeBook::with_builtins(Vec::new())?,
            strategy: Strategy::Process,
            offline: false,
            ca_cert: None,
            limits: Limits::default(),
            toolchain: ToolchainEnv::from_process_env(),
            reconnect: ReconnectPolicy::default(),
            build_user: None,
        })
    }
}

/// The user process-strategy builds run as, resolved once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildUser {
    /// As configured: a user name, or `UID:GID`.
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (a named user's from the group database, the primary included;
    /// for `UID:GID` just the GID).
    pub groups: Vec<u32>,
}

impl BuildUser {
    /// Resolves `NAME` through the user database, or takes `UID:GID` as is. Root (uid 0) is
    /// refused: a build running as root reads the key whatever its mode.
    pub fn resolve(value: &str) -> Result<BuildUser, ConfigError> {
        let bad = |reason: String| ConfigError::BuildUser {
            value: value.to_owned(),
            reason,
        };
        let value = value.trim();
        let user = match value.split_once(':') {
            Some((uid, gid)) => {
                let uid = uid
                    .parse::<u32>()
                    .map_err(|_| bad("expected UID:GID with numbers, or a user name".into()))?;
                let gid = gid
                    .parse::<u32>()
                    .map_err(|_| bad("expected UID:GID with numbers, or a user name".into()))?;
                BuildUser {
                    name: value.to_owned(),
                    uid,
                    gid,
                    groups: vec![gid],
                }
            }
            None if value.is_empty() => return Err(bad("empty".into())),
            None => {
                let (uid, gid) = lookup_user(value).map_err(bad)?.ok_or_else(|| {
                    bad("no such user (use UID:GID for a user the system does not name)".into())
                })?;
                let groups = user_groups(value, gid).map_err(bad)?;
                BuildUser {
                    name: value.to_owned(),
                    uid,
                    gid,
                    groups,
                }
            }
        };
        if user.uid == 0 {
            return Err(bad(
                "it is root (uid 0), which can read the builder's key; name an unprivileged user"
                    .into(),
            ));
        }
        Ok(user)
    }
}

/// `name`'s uid and primary gid from the user database (`getpwnam_r`), `None` if unknown.
#[expect(unsafe_code, reason = "getpwnam_r(3) has no safe wrapper in std")]
fn lookup_user(name: &str) -> Result<Option<(u32, u32)>, String> {
    let c_name = std::ffi::CString::new(name).map_err(|_| "contains a NUL byte".to_owned())?;
    let mut size = 1024usize;
    loop {
        let mut buf = vec![0 as libc::c_char; size];
        // SAFETY: an all-zero passwd is a valid value (integers and null pointers).
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call and `buf.len()` is its real size.
        let rc = unsafe {
            libc::getpwnam_r(
                c_name.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && size < 1 << 20 {
            size *= 4;
            continue;
        }
        if rc != 0 {
            return Err(format!(
                "cannot read the user database: {}",
                std::io::Error::from_raw_os_error(rc)
            ));
        }
        return Ok((!result.is_null()).then_some((pwd.pw_uid, pwd.pw_gid)));
    }
}

/// `name`'s groups (`getgrouplist`), the primary `gid` included.
#[expect(unsafe_code, reason = "getgrouplist(3) has no safe wrapper in std")]
fn user_groups(name: &str, gid: u32) -> Result<Vec<u32>, String> {
    let c_name = std::ffi::CString::new(name).map_err(|_| "contains a NUL byte".to_owned())?;
    let mut count: libc::c_int = 32;
    for _ in 0..8 {
        let len = usize::try_from(count).map_err(|_| "too many groups".to_owned())?;
        let mut groups = vec![0 as libc::gid_t; len];
        let mut n = count;
        // SAFETY: `groups` holds `n` entries; getgrouplist writes at most that many and
        // stores the real count in `n`.
        let rc = unsafe { libc::getgrouplist(c_name.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            groups.truncate(usize::try_from(n).unwrap_or(0));
            return Ok(groups);
        }
        // Too small: `n` is the count needed.
        count = n.max(count.saturating_mul(2));
    }
    Err("cannot read its groups".to_owned())
}

/// Resource limits of the builder itself (the backend imposes its own).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Total bytes a source archive may unpack to.
    pub max_unpacked_bytes: u64,
    /// Entries a source archive may contain.
    pub max_archive_entries: u64,
    /// Unacknowledged event bytes kept per job; when full, the job's output is not read
    /// (the build blocks on its pipe) until the backend acknowledges.
    pub event_buffer_bytes: usize,
    /// Seconds between SIGTERM and SIGKILL when a job is cancelled or times out.
    pub cancel_grace_secs: u64,
    /// Bytes of verified source archives kept in `<work_dir>/sources` for later jobs of the
    /// same source, least recently used evicted first; 0 turns the cache off.
    pub source_cache_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_unpacked_bytes: 2 * 1024 * 1024 * 1024,
            max_archive_entries: 100_000,
            event_buffer_bytes: 8 * 1024 * 1024,
            cancel_grace_secs: 5,
            source_cache_bytes: 1024 * 1024 * 1024,
        }
    }
}

impl Limits {
    pub fn cancel_grace(&self) -> Duration {
        Duration::from_secs(self.cancel_grace_secs)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    /// Commands run as child processes of the builder, in their own process group.
    Process,
    /// Each command runs in a fresh container through the docker CLI.
    Docker(DockerSettings),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerSettings {
    /// The docker CLI to call.
    pub docker_bin: PathBuf,
    /// Image for recipes that name none.
    pub image: Option<String>,
    /// `--memory`, e.g. "2g".
    pub memory: String,
    /// `--cpus`, e.g. "2".
    pub cpus: String,
    /// `--pids-limit`.
    pub pids_limit: u32,
}

fn default_docker_bin() -> PathBuf {
    PathBuf::from("docker")
}
fn default_memory() -> String {
    "2g".into()
}
fn default_cpus() -> String {
    "2".into()
}
fn default_pids_limit() -> u32 {
    512
}

impl DockerSettings {
    pub fn with_image(image: Option<String>) -> Self {
        DockerSettings {
            docker_bin: default_docker_bin(),
            image,
            memory: default_memory(),
            cpus: default_cpus(),
            pids_limit: default_pids_limit(),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let memory_ok = !self.memory.is_empty()
            && self
                .memory
                .trim_end_matches(['b', 'k', 'm', 'g', 'B', 'K', 'M', 'G'])
                .parse::<u64>()
                .is_ok();
        if !memory_ok {
            return Err(ConfigError::Docker {
                field: "memory",
                reason: format!("{:?} is not a size like 512m or 2g", self.memory),
            });
        }
        if !self
            .cpus
            .parse::<f64>()
            .is_ok_and(|c| c > 0.0 && c.is_finite())
        {
            return Err(ConfigError::Docker {
                field: "cpus",
                reason: format!("{:?} is not a positive number", self.cpus),
            });
        }
        if self.pids_limit == 0 {
            return Err(ConfigError::Docker {
                field: "pids_limit",
                reason: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}

/// The builder's own toolchain variables that recipes inherit; everything else of the
/// builder's environment is withheld from builds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolchainEnv {
    /// Where `cargo` and `rustc` are found.
    pub path: String,
    /// Cargo's home, with the registry cache offline builds need.
    pub cargo_home: Option<PathBuf>,
    pub rustup_home: Option<PathBuf>,
}

impl ToolchainEnv {
    pub fn from_process_env() -> Self {
        // Made absolute: builds run in their job directory, not the builder's.
        let from_env = |name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .and_then(|v| std::path::absolute(v).ok())
        };
        let mut cargo_home = from_env("CARGO_HOME");
        if cargo_home.is_none() {
            // Cargo's own default, made explicit because builds get HOME = their job dir.
            cargo_home = std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo"));
        }
        let mut rustup_home = from_env("RUSTUP_HOME");
        if rustup_home.is_none() {
            rustup_home = std::env::var_os("HOME")
                .map(|h| Path::new(&h).join(".rustup"))
                .filter(|p| p.is_dir());
        }
        ToolchainEnv {
            path: std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
            cargo_home,
            rustup_home,
        }
    }
}

/// The TOML file, every field optional; flags and environment variables win over it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    backend_url: Option<OneOrMany>,
    key: Option<PathBuf>,
    name: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    max_concurrent_jobs: Option<u32>,
    work_dir: Option<PathBuf>,
    offline: Option<bool>,
    ca_cert: Option<PathBuf>,
    strategy: Option<FileStrategy>,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    reconnect: FileReconnect,
    #[serde(default)]
    recipes: Vec<RecipeConfig>,
    build_user: Option<String>,
}

/// `[reconnect]`, in milliseconds; unset fields keep [`ReconnectPolicy::default`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileReconnect {
    initial_backoff_ms: Option<u64>,
    max_backoff_ms: Option<u64>,
    replaced_backoff_ms: Option<u64>,
    healthy_after_ms: Option<u64>,
}

impl FileReconnect {
    fn policy(&self) -> Result<ReconnectPolicy, ConfigError> {
        let defaults = ReconnectPolicy::default();
        let ms =
            |value: Option<u64>, default: Duration| value.map_or(default, Duration::from_millis);
        let policy = ReconnectPolicy {
            initial_backoff: ms(self.initial_backoff_ms, defaults.initial_backoff),
            max_backoff: ms(self.max_backoff_ms, defaults.max_backoff),
            replaced_backoff: ms(self.replaced_backoff_ms, defaults.replaced_backoff),
            healthy_after: ms(self.healthy_after_ms, defaults.healthy_after),
        };
        // A zero delay would redial in a tight loop: exactly what the backoff prevents.
        if policy.initial_backoff.is_zero() {
            return Err(ConfigError::Reconnect {
                field: "initial_backoff_ms",
                reason: "must be at least 1".into(),
            });
        }
        if policy.max_backoff < policy.initial_backoff {
            return Err(ConfigError::Reconnect {
                field: "max_backoff_ms",
                reason: format!(
                    "must not be below initial_backoff_ms ({})",
                    policy.initial_backoff.as_millis()
                ),
            });
        }
        if policy.replaced_backoff.is_zero() {
            return Err(ConfigError::Reconnect {
                field: "replaced_backoff_ms",
                reason: "must be at least 1".into(),
            });
        }
        Ok(policy)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileStrategy {
    kind: StrategyKind,
    docker_bin: Option<PathBuf>,
    image: Option<String>,
    memory: Option<String>,
    cpus: Option<String>,
    pids_limit: Option<u32>,
}

impl FileStrategy {
    fn docker_settings(self) -> DockerSettings {
        let defaults = DockerSettings::with_image(self.image);
        DockerSettings {
            docker_bin: self.docker_bin.unwrap_or(defaults.docker_bin),
            image: defaults.image,
            memory: self.memory.unwrap_or(defaults.memory),
            cpus: self.cpus.unwrap_or(defaults.cpus),
            pids_limit: self.pids_limit.unwrap_or(defaults.pids_limit),
        }
    }
}

impl RunArgs {
    /// Reads the config file (if any) and merges it under the flags and environment.
    pub fn resolve(&self) -> Result<BuilderConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => parse_config_file(&absolute("config file", path.clone())?)?,
            None => FileConfig::default(),
        };
        self.merge(file)
    }

    fn merge(&self, file: FileConfig) -> Result<BuilderConfig, ConfigError> {
        let backend_urls = if self.backend_url.iter().any(|u| !u.trim().is_empty()) {
            self.backend_url.clone()
        } else {
            file.backend_url
                .map(OneOrMany::into_vec)
                .unwrap_or_default()
        };
        if backend_urls.iter().all(|u| u.trim().is_empty()) {
            return Err(ConfigError::Missing {
                what: "backend URL",
                flag: "--backend-url",
                env: "BUILDFLEET_BACKEND_URL",
                key: "backend_url",
            });
        }
        let key_path = self.key.clone().or(file.key).ok_or(ConfigError::Missing {
            what: "private key",
            flag: "--key",
            env: "BUILDFLEET_KEY",
            key: "key",
        })?;
        let name = match self.name.clone().or(file.name) {
            Some(name) => name,
            None => host_name().ok_or(ConfigError::Missing {
                what: "builder name (the host name is unusable)",
                flag: "--name",
                env: "BUILDFLEET_NAME",
                key: "name",
            })?,
        };
        let mut labels = file.labels;
        for label in self.labels.iter().filter(|l| !l.trim().is_empty()) {
            let (key, value) = parse_label(label)?;
            labels.insert(key, value);
        }
        let max_concurrent_jobs = self.max_jobs.or(file.max_concurrent_jobs).unwrap_or(1);
        if !(1..=1024).contains(&max_concurrent_jobs) {
            return Err(ConfigError::MaxJobs(max_concurrent_jobs));
        }
        let recipes = RecipeBook::with_builtins(file.recipes)?;

        let file_kind = file.strategy.as_ref().map(|s| s.kind);
        let mut docker = file
            .strategy
            .map(FileStrategy::docker_settings)
            .unwrap_or_else(|| DockerSettings::with_image(None));
        // A bare name is looked up in PATH; only a path with a directory part is resolved.
        if docker.docker_bin.components().count() > 1 {
            docker.docker_bin = absolute("docker_bin", docker.docker_bin)?;
        }
        if let Some(image) = &self.docker_image {
            docker.image = Some(image.clone());
        }
        let build_user = self
            .build_user
            .clone()
            .or(file.build_user)
            .filter(|u| !u.trim().is_empty())
            .map(|u| BuildUser::resolve(&u))
            .transpose()?;
        let strategy = match self.strategy.or(file_kind).unwrap_or(StrategyKind::Process) {
            StrategyKind::Process => Strategy::Process,
            StrategyKind::Docker => {
                // Containers never see the key; a second, silently ignored setting would
                // only mislead.
                if let Some(user) = &build_user {
                    return Err(ConfigError::BuildUser {
                        value: user.name.clone(),
                        reason: "it applies to the process strategy only (docker containers never see the key)".into(),
                    });
                }
                docker.validate()?;
                if docker.image.is_none() && !recipes.all_have_images() {
                    return Err(ConfigError::DockerImage);
                }
                Strategy::Docker(docker)
            }
        };

        Ok(BuilderConfig {
            connect_urls: connect_urls(&backend_urls)?,
            key_path: absolute("key", key_path)?,
            name: validated_name(&name)?,
            labels,
            max_concurrent_jobs,
            work_dir: absolute(
                "work dir",
                self.work_dir
                    .clone()
                    .or(file.work_dir)
                    .unwrap_or_else(|| std::env::temp_dir().join("buildfleet-builder")),
            )?,
            recipes,
            strategy,
            offline: self.offline.or(file.offline).unwrap_or(false),
            ca_cert: self
                .ca_cert
                .clone()
                .or(file.ca_cert)
                .map(|path| absolute("CA certificate", path))
                .transpose()?,
            limits: file.limits,
            toolchain: ToolchainEnv::from_process_env(),
            reconnect: file.reconnect.policy()?,
            build_user,
        })
    }
}

/// `path` made absolute against the working directory at start (no file system access, so
/// a work dir that does not exist yet is fine).
fn absolute(what: &'static str, path: PathBuf) -> Result<PathBuf, ConfigError> {
    std::path::absolute(&path).map_err(|source| ConfigError::Path { what, path, source })
}

fn parse_config_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::ParseFile {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn parse_label(label: &str) -> Result<(String, String), ConfigError> {
    match label.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(ConfigError::Label {
            label: label.to_owned(),
        }),
    }
}

fn validated_name(name: &str) -> Result<String, ConfigError> {
    buildfleet_protocol::signing::validate_builder_name(name).map_err(|reason| {
        ConfigError::Name {
            name: name.to_owned(),
            reason,
        }
    })?;
    Ok(name.to_owned())
}

fn host_name() -> Option<String> {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()?;
    let name = raw.trim().to_owned();
    buildfleet_protocol::signing::validate_builder_name(&name).ok()?;
    Some(name)
}

/// `backend_url` of the file: one URL (possibly a comma-separated list) or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(url) => vec![url],
            OneOrMany::Many(urls) => urls,
        }
    }
}

/// The connect URLs of `backend_urls`, each of which may itself be a comma-separated list;
/// blanks are skipped and a repeated URL is dialed once.
pub fn connect_urls(backend_urls: &[String]) -> Result<Vec<String>, ConfigError> {
    let mut urls = Vec::new();
    for url in backend_urls
        .iter()
        .flat_map(|u| u.split(','))
        .map(str::trim)
        .filter(|u| !u.is_empty())
    {
        let full = connect_url(url)?;
        if !urls.contains(&full) {
            urls.push(full);
        }
    }
    if urls.is_empty() {
        return Err(ConfigError::BackendUrl {
            url: backend_urls.join(","),
            reason: "no URL given",
        });
    }
    Ok(urls)
}

/// `ws://host:port[/prefix]` → `ws://host:port[/prefix]/api/v1/builders/connect`.
pub fn connect_url(backend_url: &str) -> Result<String, ConfigError> {
    let bad = |reason| ConfigError::BackendUrl {
        url: backend_url.to_owned(),
        reason,
    };
    let url = backend_url.trim();
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"))
        .ok_or_else(|| bad("the scheme must be ws:// or wss://"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(bad("the URL has no host"));
    }
    if rest.contains(['?', '#', ' ']) {
        return Err(bad("the URL must not have a query, fragment or spaces"));
    }
    let full = format!("{}{CONNECT_PATH}", url.trim_end_matches('/'));
    full.parse::<awc::http::Uri>()
        .map_err(|_| bad("not a valid URL"))?;
    Ok(full)
}
