//! Backend configuration: flags and environment variables (clap) over an optional TOML file
//! over defaults. Every setting has all three; `docs/config.md` lists them. Relative paths
//! are made absolute against the working directory at start, so nothing depends on the
//! directory a later step (a build subprocess, a test harness) happens to run in.

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use crate::registry::{RegistryFile, RegistrySettings};

/// Shown at the end of `serve --help`.
pub const SERVE_AFTER_HELP: &str = "Every setting can also be given in the TOML file of \
--config (top-level keys, [limits] and [timings] tables); flags and environment variables \
win over the file; a key is its flag with `_` for `-`. Relative paths are taken from the \
working directory at start. Every key with its default and a complete example file: \
docs/config.md.";

/// `serve` flags. Every flag also reads an environment variable and the TOML file.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (flags and environment win).
    #[arg(long, env = "BUILDFLEET_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8000].
    #[arg(long, env = "BUILDFLEET_BIND")]
    pub bind: Option<SocketAddr>,
    /// Directory for the SQLite database, logs, sources and artifacts [default: data].
    #[arg(long, env = "BUILDFLEET_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// `postgres://…` or `sqlite://path`; default: SQLite under the data directory.
    #[arg(long, env = "BUILDFLEET_DATABASE_URL")]
    pub database_url: Option<String>,
    /// The URL builders and users reach this backend at (used in upload and source URLs).
    #[arg(long, env = "BUILDFLEET_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Name the cluster signs into challenges and statements, stored in the database on first
    /// start (then the public URL by default); a different value than the stored one is refused.
    #[arg(long, env = "BUILDFLEET_BACKEND_ID")]
    pub backend_id: Option<String>,
    /// Admin bearer token; default: generated once and kept in `<data-dir>/admin-token`.
    #[arg(long, env = "BUILDFLEET_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// PEM certificate chain for HTTPS/WSS (with --tls-key).
    #[arg(long, env = "BUILDFLEET_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS/WSS.
    #[arg(long, env = "BUILDFLEET_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Builders to run inside this process, with keys generated and admitted automatically.
    /// Default: 1 on the embedded SQLite database, 0 on PostgreSQL.
    #[arg(long, env = "BUILDFLEET_LOCAL_BUILDERS")]
    pub local_builders: Option<u32>,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub timings: TimingArgs,
}

/// The TOML file: the same settings as the flags, limits and timings in their own tables.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    bind: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    public_url: Option<String>,
    backend_id: Option<String>,
    admin_token: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    local_builders: Option<u32>,
    #[serde(default)]
    limits: LimitArgs,
    #[serde(default)]
    timings: TimingArgs,
    /// The registry follower; off when absent.
    registry: Option<RegistryFile>,
    #[serde(default)]
    scheduler: SchedulerFile,
    #[serde(default)]
    storage: StorageFile,
}

/// The `[storage]` table of the file: where sources, logs and artifacts are kept.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StorageFile {
    kind: Option<StorageKind>,
    bucket: Option<String>,
    endpoint: Option<String>,
    region: Option<String>,
    prefix: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    allow_http: Option<bool>,
    request_timeout_secs: Option<u64>,
    connect_timeout_secs: Option<u64>,
    max_retries: Option<usize>,
    retry_timeout_secs: Option<u64>,
    replicas: Option<u32>,
    allow_local_with_shared_database: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum StorageKind {
    Fs,
    S3,
}

/// `log_flush_interval_ms` when blobs are in an object store and the setting is not given.
pub const OBJECT_STORE_LOG_FLUSH_INTERVAL: Duration = Duration::from_millis(500);

/// Where blobs live (`[storage]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageConfig {
    /// Files under `<data_dir>/blobs` (the default).
    Fs,
    /// An S3-compatible bucket shared by every replica.
    S3(Box<crate::storage::S3Settings>),
}

impl StorageFile {
    /// The storage these keys ask for; `database_url` decides whether local disk is allowed.
    fn resolve(&self, database_url: &str) -> anyhow::Result<StorageConfig> {
        let replicas = self.replicas.unwrap_or(1);
        if replicas == 0 {
            anyhow::bail!("[storage] replicas must be at least 1");
        }
        match self.kind.unwrap_or(StorageKind::Fs) {
            StorageKind::Fs => {
                let forced = self.allow_local_with_shared_database.unwrap_or(false);
                if is_postgres(database_url) && replicas > 1 && !forced {
                    anyhow::bail!(
                        "[storage] kind = \"fs\" keeps blobs on this machine's disk, but \
                         [storage] replicas = {replicas} backends share the PostgreSQL \
                         database: the others would not see its sources, logs and artifacts. \
                         Use kind = \"s3\" (see docs/scale-out.md), or set \
                         allow_local_with_shared_database = true if every replica mounts the \
                         same data directory"
                    );
                }
                Ok(StorageConfig::Fs)
            }
            StorageKind::S3 => {
                let bucket = self
                    .bucket
                    .clone()
                    .filter(|b| !b.is_empty())
                    .ok_or_else(|| anyhow::anyhow!("[storage] kind = \"s3\" needs a bucket"))?;
                let mut settings = crate::storage::S3Settings::new(bucket);
                settings.endpoint = self.endpoint.clone();
                settings.region = self.region.clone();
                settings.prefix = self.prefix.clone().unwrap_or_default();
                settings.access_key_id = self.access_key_id.clone();
                settings.secret_access_key = self.secret_access_key.clone();
                settings.allow_http = self.allow_http.unwrap_or(false);
                if let Some(endpoint) = &settings.endpoint {
                    if endpoint.starts_with("http://") && !settings.allow_http {
                        anyhow::bail!(
                            "[storage] endpoint {endpoint} is plain HTTP: set allow_http = true \
                             to use it"
                        );
                    }
                }
                let secs = |key: &str, value: Option<u64>, default: Duration| match value {
                    Some(0) => Err(anyhow::anyhow!("[storage] {key} must be at least 1")),
                    Some(n) => Ok(Duration::from_secs(n)),
                    None => Ok(default),
                };
                settings.request_timeout = secs(
                    "request_timeout_secs",
                    self.request_timeout_secs,
                    settings.request_timeout,
                )?;
                settings.connect_timeout = secs(
                    "connect_timeout_secs",
                    self.connect_timeout_secs,
                    settings.connect_timeout,
                )?;
                settings.retry_timeout = secs(
                    "retry_timeout_secs",
                    self.retry_timeout_secs,
                    settings.retry_timeout,
                )?;
                if let Some(retries) = self.max_retries {
                    settings.max_retries = retries;
                }
                Ok(StorageConfig::S3(Box::new(settings)))
            }
        }
    }
}

/// The `[scheduler]` table of the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SchedulerFile {
    fair_share_window_secs: Option<u64>,
    reproduce_independence_label: Option<String>,
}

/// How the scheduler shares builders between projects (`[scheduler]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// The sliding window of builder time that fair share looks at.
    pub fair_share_window: Duration,
    /// The builder label (as its operator set it) whose values tell the owners of builders
    /// apart: a reproducible job's runs go to builders with different values of it.
    pub reproduce_independence_label: String,
}

impl SchedulerConfig {
    /// The shortest window accepted: usage is kept in one-minute buckets.
    pub const MIN_FAIR_SHARE_WINDOW: Duration = Duration::from_secs(60);
    /// The longest: usage older than this is deleted.
    pub const MAX_FAIR_SHARE_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            fair_share_window: Duration::from_secs(3600),
            reproduce_independence_label: "owner".to_owned(),
        }
    }
}

/// Help text of a flag: what it sets, and its default.
fn help_with_default(help: &str, default: impl Display) -> String {
    format!("{} [default: {default}]", help.trim_end_matches('.'))
}

/// Declares the limits once: the resolved [`Limits`], and [`LimitArgs`], which is both the
/// `serve` flags (with their environment variables) and the `[limits]` table of the file,
/// so flag, variable, key and default cannot drift apart.
macro_rules! limits {
    ($($(#[doc = $doc:literal])+ $field:ident: $ty:ty = $default:expr, $env:literal;)+) => {
        /// Sizes and counts the backend enforces.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct Limits {
            $($(#[doc = $doc])+ pub $field: $ty,)+
        }

        impl Default for Limits {
            fn default() -> Self {
                Limits { $($field: $default,)+ }
            }
        }

        /// The limits as flags and as the `[limits]` table; an unset one keeps its default.
        #[derive(Debug, Default, Clone, clap::Args, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct LimitArgs {
            $(
                #[arg(
                    long,
                    env = $env,
                    value_name = "N",
                    help_heading = "Limits",
                    help = help_with_default(concat!($($doc),+).trim(), { let default: $ty = $default; default }),
                )]
                pub $field: Option<$ty>,
            )+
        }

        impl LimitArgs {
            /// `self` where set, else `under`.
            fn over(&self, under: &LimitArgs) -> LimitArgs {
                LimitArgs { $($field: self.$field.or(under.$field),)+ }
            }

            fn resolve(&self) -> Limits {
                let defaults = Limits::default();
                Limits { $($field: self.$field.unwrap_or(defaults.$field),)+ }
            }
        }

        /// Every limit's TOML key (under `[limits]`) and environment variable.
        pub const LIMIT_KEYS: &[(&str, &str)] = &[$((stringify!($field), $env)),+];
    };
}

limits! {
    /// Largest WebSocket message (frame) accepted from a builder, in bytes.
    max_frame_bytes: usize = buildfleet_protocol::DEFAULT_MAX_FRAME_BYTES, "BUILDFLEET_MAX_FRAME_BYTES";
    /// Longest log line, in bytes (announced to builders at authentication).
    max_log_line_bytes: usize = 16 * 1024, "BUILDFLEET_MAX_LOG_LINE_BYTES";
    /// Log bytes stored per job attempt; past it a marker ends the log.
    max_log_bytes_per_job: u64 = 64 * 1024 * 1024, "BUILDFLEET_MAX_LOG_BYTES_PER_JOB";
    /// Largest artifact upload, in bytes.
    max_artifact_bytes: u64 = 4 * 1024 * 1024 * 1024, "BUILDFLEET_MAX_ARTIFACT_BYTES";
    /// Largest source archive (uploaded or fetched), in bytes.
    max_source_bytes: u64 = 512 * 1024 * 1024, "BUILDFLEET_MAX_SOURCE_BYTES";
    /// Largest JSON request body of the REST API, in bytes.
    max_json_body_bytes: usize = 256 * 1024, "BUILDFLEET_MAX_JSON_BODY_BYTES";
    /// Database connections in the pool.
    db_pool_size: u32 = 16, "BUILDFLEET_DB_POOL_SIZE";
    /// Builder connections not yet authenticated, in all; more are refused before the
    /// upgrade (503).
    max_unauthenticated_connections: usize = 1024, "BUILDFLEET_MAX_UNAUTHENTICATED_CONNECTIONS";
    /// Builder connections not yet authenticated from one IP address; more are refused
    /// before the upgrade (503).
    max_unauthenticated_per_address: usize = 64, "BUILDFLEET_MAX_UNAUTHENTICATED_PER_ADDRESS";
}

/// Declares the timings once, as [`limits!`] does the limits: the resolved [`Timings`]
/// (durations), and [`TimingArgs`] in milliseconds (flags, variables, `[timings]` table).
macro_rules! timings {
    ($($(#[doc = $doc:literal])+ $field:ident / $key:ident = $default_ms:expr, $env:literal;)+) => {
        /// Timings of sessions, leases and timeouts.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct Timings {
            $($(#[doc = $doc])+ pub $field: Duration,)+
        }

        impl Default for Timings {
            fn default() -> Self {
                Timings { $($field: Duration::from_millis($default_ms),)+ }
            }
        }

        /// The timings in milliseconds, as flags and as the `[timings]` table.
        #[derive(Debug, Default, Clone, clap::Args, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct TimingArgs {
            $(
                #[arg(
                    long,
                    env = $env,
                    value_name = "MS",
                    help_heading = "Timings",
                    help = help_with_default(concat!($($doc),+).trim(), $default_ms),
                )]
                pub $key: Option<u64>,
            )+
        }

        impl TimingArgs {
            fn over(&self, under: &TimingArgs) -> TimingArgs {
                TimingArgs { $($key: self.$key.or(under.$key),)+ }
            }

            fn resolve(&self) -> Timings {
                let defaults = Timings::default();
                Timings {
                    $($field: self.$key.map(Duration::from_millis).unwrap_or(defaults.$field),)+
                }
            }
        }

        /// Every timing's TOML key (under `[timings]`) and environment variable.
        pub const TIMING_KEYS: &[(&str, &str)] = &[$((stringify!($key), $env)),+];
    };
}

timings! {
    /// How often builders send `heartbeat` and the backend pings, in ms.
    heartbeat_interval / heartbeat_interval_ms = 10_000, "BUILDFLEET_HEARTBEAT_INTERVAL_MS";
    /// Silence after which a session is dropped, in ms.
    heartbeat_timeout / heartbeat_timeout_ms = 30_000, "BUILDFLEET_HEARTBEAT_TIMEOUT_MS";
    /// How long a lost builder's leases live before its jobs are requeued, in ms.
    reconnect_grace / reconnect_grace_ms = 60_000, "BUILDFLEET_RECONNECT_GRACE_MS";
    /// How long a challenge can be answered, in ms; must be below the handshake timeout.
    challenge_ttl / challenge_ttl_ms = 15_000, "BUILDFLEET_CHALLENGE_TTL_MS";
    /// From a builder connection's accept to its `auth_accepted`, whatever the client sends
    /// meanwhile, in ms.
    handshake_timeout / handshake_timeout_ms = 20_000, "BUILDFLEET_HANDSHAKE_TIMEOUT_MS";
    /// After a timeout `cancel`, how long the builder has to report before the job is
    /// closed, in ms.
    cancel_grace / cancel_grace_ms = 30_000, "BUILDFLEET_CANCEL_GRACE_MS";
    /// How often leases and timeouts are swept (the safety net, not the dispatch path), in ms.
    sweep_interval / sweep_interval_ms = 1_000, "BUILDFLEET_SWEEP_INTERVAL_MS";
    /// Log events are flushed to storage at least this often, in ms.
    log_flush_interval / log_flush_interval_ms = 50, "BUILDFLEET_LOG_FLUSH_INTERVAL_MS";
    /// The pause after a webhook delivery's first failed try, doubled after each further one
    /// (at most an hour, 8 tries), in ms.
    webhook_retry_base / webhook_retry_base_ms = 10_000, "BUILDFLEET_WEBHOOK_RETRY_BASE_MS";
    /// How often the janitor deletes expired artifacts and logs and reads each project's
    /// storage, in ms.
    janitor_interval / janitor_interval_ms = 60_000, "BUILDFLEET_JANITOR_INTERVAL_MS";
}

/// The resolved configuration of a running backend.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub bind: SocketAddr,
    /// Absolute once resolved.
    pub data_dir: PathBuf,
    pub database_url: String,
    /// `None`: derived from the bound address once it is known.
    pub public_url: Option<String>,
    pub backend_id: Option<String>,
    pub admin_token: Option<String>,
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Builders started in-process (the embedded default).
    pub local_builders: u32,
    pub limits: Limits,
    pub timings: Timings,
    /// The registry follower's settings; `None` leaves it off.
    pub registry: Option<RegistrySettings>,
    pub scheduler: SchedulerConfig,
    pub storage: StorageConfig,
}

impl ServerConfig {
    /// Defaults for a backend whose state lives in `data_dir`.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> ServerConfig {
        let data_dir = data_dir.into();
        ServerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 8000)),
            database_url: default_database_url(&data_dir),
            data_dir,
            public_url: None,
            backend_id: None,
            admin_token: None,
            tls: None,
            local_builders: 0,
            limits: Limits::default(),
            timings: Timings::default(),
            registry: None,
            scheduler: SchedulerConfig::default(),
            storage: StorageConfig::Fs,
        }
    }

    /// Flags and environment over the TOML file over defaults, with every path absolute
    /// and the result checked by [`ServerConfig::validate`].
    pub fn resolve(args: &ServeArgs) -> anyhow::Result<ServerConfig> {
        let file = match &args.config {
            Some(path) => {
                let path = absolute("--config", path)?;
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| "data".into());
        let mut config = ServerConfig::with_data_dir(absolute("data_dir", &data_dir)?);
        if let Some(bind) = args.bind.or(file.bind) {
            config.bind = bind;
        }
        if let Some(url) = args.database_url.clone().or(file.database_url) {
            config.database_url = absolute_database_url(&url)?;
        }
        config.public_url = args.public_url.clone().or(file.public_url);
        config.backend_id = args.backend_id.clone().or(file.backend_id);
        config.admin_token = args.admin_token.clone().or(file.admin_token);
        config.tls = match (
            args.tls_cert.clone().or(file.tls_cert),
            args.tls_key.clone().or(file.tls_key),
        ) {
            (Some(cert), Some(key)) => {
                Some((absolute("tls_cert", &cert)?, absolute("tls_key", &key)?))
            }
            (None, None) => None,
            _ => anyhow::bail!("--tls-cert and --tls-key go together"),
        };
        let embedded = !is_postgres(&config.database_url);
        config.local_builders = args
            .local_builders
            .or(file.local_builders)
            .unwrap_or(u32::from(embedded));
        config.limits = args.limits.over(&file.limits).resolve();
        let timings = args.timings.over(&file.timings);
        config.timings = timings.resolve();
        if let Some(secs) = file.scheduler.fair_share_window_secs {
            config.scheduler.fair_share_window = Duration::from_secs(secs);
        }
        if let Some(label) = &file.scheduler.reproduce_independence_label {
            config.scheduler.reproduce_independence_label = label.clone();
        }
        config.storage = file.storage.resolve(&config.database_url)?;
        if matches!(config.storage, StorageConfig::S3(_)) && timings.log_flush_interval_ms.is_none()
        {
            // Each flush of a job's log is one PUT: at the 50 ms of a local disk a bucket would
            // take 20 requests a second per printing job.
            config.timings.log_flush_interval = OBJECT_STORE_LOG_FLUSH_INTERVAL;
        }
        config.registry = file
            .registry
            .as_ref()
            .map(RegistryFile::resolve)
            .transpose()?;
        config.validate()?;
        Ok(config)
    }

    /// Refuses settings the backend cannot honour, naming the key to change.
    pub fn validate(&self) -> anyhow::Result<()> {
        let t = &self.timings;
        let timings = [
            ("heartbeat_interval_ms", t.heartbeat_interval),
            ("heartbeat_timeout_ms", t.heartbeat_timeout),
            ("reconnect_grace_ms", t.reconnect_grace),
            ("challenge_ttl_ms", t.challenge_ttl),
            ("handshake_timeout_ms", t.handshake_timeout),
            ("cancel_grace_ms", t.cancel_grace),
            ("sweep_interval_ms", t.sweep_interval),
            ("log_flush_interval_ms", t.log_flush_interval),
        ];
        for (key, value) in timings {
            // Intervals of zero would spin (tokio refuses them outright).
            anyhow::ensure!(
                !value.is_zero(),
                "invalid config: timings.{key} must be above 0"
            );
        }
        // A challenge outliving the handshake could never be answered late enough to expire:
        // the connection would be closed first and `challenge_expired` never sent.
        anyhow::ensure!(
            t.challenge_ttl < t.handshake_timeout,
            "invalid config: timings.challenge_ttl_ms ({} ms) must be below \
             timings.handshake_timeout_ms ({} ms)",
            t.challenge_ttl.as_millis(),
            t.handshake_timeout.as_millis()
        );
        let l = &self.limits;
        let limits = [
            ("max_frame_bytes", l.max_frame_bytes as u64),
            ("max_log_line_bytes", l.max_log_line_bytes as u64),
            ("max_log_bytes_per_job", l.max_log_bytes_per_job),
            ("max_artifact_bytes", l.max_artifact_bytes),
            ("max_source_bytes", l.max_source_bytes),
            ("max_json_body_bytes", l.max_json_body_bytes as u64),
            ("db_pool_size", u64::from(l.db_pool_size)),
            (
                "max_unauthenticated_connections",
                l.max_unauthenticated_connections as u64,
            ),
            (
                "max_unauthenticated_per_address",
                l.max_unauthenticated_per_address as u64,
            ),
        ];
        for (key, value) in limits {
            anyhow::ensure!(value > 0, "invalid config: limits.{key} must be above 0");
        }
        let window = self.scheduler.fair_share_window;
        anyhow::ensure!(
            (SchedulerConfig::MIN_FAIR_SHARE_WINDOW..=SchedulerConfig::MAX_FAIR_SHARE_WINDOW)
                .contains(&window),
            "invalid config: scheduler.fair_share_window_secs ({}) must be from {} to {}",
            window.as_secs(),
            SchedulerConfig::MIN_FAIR_SHARE_WINDOW.as_secs(),
            SchedulerConfig::MAX_FAIR_SHARE_WINDOW.as_secs()
        );
        let label = &self.scheduler.reproduce_independence_label;
        anyhow::ensure!(
            !label.is_empty()
                && label.len() <= 64
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)),
            "invalid config: scheduler.reproduce_independence_label ({label:?}) must be 1 to 64 \
             characters of [A-Za-z0-9_.-]"
        );
        Ok(())
    }
}

pub fn default_database_url(data_dir: &Path) -> String {
    format!("sqlite://{}", data_dir.join("buildfleet.db").display())
}

fn is_postgres(url: &str) -> bool {
    let url = url.trim();
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// `path` made absolute against the working directory (without touching the file system).
fn absolute(what: &str, path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path)
        .with_context(|| format!("invalid path for {what}: {:?}", path.display().to_string()))
}

/// A SQLite URL (`sqlite://PATH` or a plain path) with its path made absolute; any other
/// URL unchanged, for the store to accept or refuse.
fn absolute_database_url(url: &str) -> anyhow::Result<String> {
    let trimmed = url.trim();
    let path = trimmed.strip_prefix("sqlite://").unwrap_or(trimmed);
    if is_postgres(trimmed) || path.is_empty() || path.contains("://") || path == ":memory:" {
        return Ok(url.to_owned());
    }
    let path = absolute("database_url", Path::new(path))?;
    Ok(format!("sqlite://{}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve_toml(text: &str) -> anyhow::Result<ServerConfig> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).expect("writing the config");
        ServerConfig::resolve(&ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        })
    }

    #[test]
    fn relative_paths_resolve_against_the_working_directory() {
        let cwd = std::env::current_dir().expect("cwd");
        let config = resolve_toml(
            "data_dir = \"state\"\ndatabase_url = \"sqlite://db/bf.db\"\n\
             tls_cert = \"tls/cert.pem\"\ntls_key = \"tls/key.pem\"\n",
        )
        .expect("resolves");
        assert_eq!(config.data_dir, cwd.join("state"));
        assert_eq!(
            config.database_url,
            format!("sqlite://{}", cwd.join("db/bf.db").display())
        );
        let (cert, key) = config.tls.expect("tls");
        assert_eq!(cert, cwd.join("tls/cert.pem"));
        assert_eq!(key, cwd.join("tls/key.pem"));
    }

    #[test]
    fn the_default_data_dir_and_database_are_absolute() {
        let config = ServerConfig::resolve(&ServeArgs::default()).expect("defaults resolve");
        let cwd = std::env::current_dir().expect("cwd");
        assert_eq!(config.data_dir, cwd.join("data"));
        assert_eq!(
            config.database_url,
            format!("sqlite://{}", cwd.join("data/buildfleet.db").display())
        );
        assert_eq!(config.local_builders, 1);
    }

    #[test]
    fn a_postgres_url_is_left_alone() {
        let url = "postgres://u:p@localhost/db?sslmode=disable";
        let config = resolve_toml(&format!("database_url = \"{url}\"\n")).expect("resolves");
        assert_eq!(config.database_url, url);
        assert_eq!(config.local_builders, 0);
    }

    #[test]
    fn flags_win_over_the_file_field_by_field() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            "[limits]\nmax_frame_bytes = 1000\ndb_pool_size = 3\n\
             [timings]\nheartbeat_interval_ms = 700\nchallenge_ttl_ms = 900\n",
        )
        .expect("writing the config");
        let mut args = ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        };
        args.limits.max_frame_bytes = Some(2000);
        args.timings.challenge_ttl_ms = Some(800);
        let config = ServerConfig::resolve(&args).expect("resolves");
        assert_eq!(config.limits.max_frame_bytes, 2000, "flag over file");
        assert_eq!(config.limits.db_pool_size, 3, "file over default");
        assert_eq!(
            config.limits.max_log_line_bytes,
            Limits::default().max_log_line_bytes
        );
        assert_eq!(config.timings.challenge_ttl, Duration::from_millis(800));
        assert_eq!(
            config.timings.heartbeat_interval,
            Duration::from_millis(700)
        );
        assert_eq!(
            config.timings.handshake_timeout,
            Timings::default().handshake_timeout
        );
    }

    #[test]
    fn object_storage_flushes_logs_less_often_unless_told() {
        let s3 = "[storage]\nkind = \"s3\"\nbucket = \"b\"\n";
        let config = resolve_toml(s3).expect("resolves");
        assert_eq!(
            config.timings.log_flush_interval,
            OBJECT_STORE_LOG_FLUSH_INTERVAL
        );
        let config = resolve_toml(&format!("{s3}[timings]\nlog_flush_interval_ms = 80\n"))
            .expect("resolves");
        assert_eq!(config.timings.log_flush_interval, Duration::from_millis(80));
        let config = resolve_toml("").expect("resolves");
        assert_eq!(
            config.timings.log_flush_interval,
            Timings::default().log_flush_interval
        );
    }

    #[test]
    fn the_default_challenge_expires_before_the_handshake_deadline() {
        let t = Timings::default();
        assert!(t.challenge_ttl < t.handshake_timeout, "{t:?}");
        ServerConfig::with_data_dir("/tmp/x")
            .validate()
            .expect("the defaults are valid");
    }

    #[test]
    fn a_challenge_outliving_the_handshake_is_refused() {
        for toml in [
            "[timings]\nchallenge_ttl_ms = 20000\n",
            "[timings]\nchallenge_ttl_ms = 5000\nhandshake_timeout_ms = 4000\n",
        ] {
            let err = resolve_toml(toml).expect_err(toml).to_string();
            assert!(
                err.contains("challenge_ttl_ms") && err.contains("handshake_timeout_ms"),
                "{err}"
            );
        }
    }

    #[test]
    fn zero_timings_and_limits_are_refused() {
        let err = resolve_toml("[timings]\nsweep_interval_ms = 0\n")
            .expect_err("zero interval")
            .to_string();
        assert!(err.contains("timings.sweep_interval_ms"), "{err}");
        let err = resolve_toml("[limits]\ndb_pool_size = 0\n")
            .expect_err("empty pool")
            .to_string();
        assert!(err.contains("limits.db_pool_size"), "{err}");
    }

    #[test]
    fn the_fair_share_window_is_read_and_bounded() {
        let config = resolve_toml("[scheduler]\nfair_share_window_secs = 600\n").expect("600 s");
        assert_eq!(config.scheduler.fair_share_window, Duration::from_secs(600));
        let config = resolve_toml("").expect("defaults");
        assert_eq!(
            config.scheduler.fair_share_window,
            Duration::from_secs(3600)
        );
        for bad in ["0", "59", "604801"] {
            let err = resolve_toml(&format!("[scheduler]\nfair_share_window_secs = {bad}\n"))
                .expect_err(bad)
                .to_string();
            assert!(err.contains("scheduler.fair_share_window_secs"), "{err}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = format!(
            "{:#}",
            resolve_toml("[timings]\nheartbeat_ms = 1\n").expect_err("unknown key")
        );
        assert!(err.contains("unknown field"), "{err}");
    }
}
