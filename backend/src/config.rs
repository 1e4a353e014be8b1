//! Backend configuration: flags and environment variables (clap) over an optional TOML file
//! over defaults. Each field names the environment variable it reads.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

/// `serve` flags. Every flag also reads an environment variable and the TOML file.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (flags and environment win).
    #[arg(long, env = "BUILDFLEET_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "BUILDFLEET_BIND")]
    pub bind: Option<SocketAddr>,
    /// Directory for the SQLite database, logs, sources and artifacts.
    #[arg(long, env = "BUILDFLEET_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// `postgres://…` or `sqlite://path`; default: SQLite under the data directory.
    #[arg(long, env = "BUILDFLEET_DATABASE_URL")]
    pub database_url: Option<String>,
    /// The URL builders and users reach this backend at (used in upload and source URLs).
    #[arg(long, env = "BUILDFLEET_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Name this backend signs into challenges; defaults to the public URL.
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
}

/// The TOML file: the same settings as the flags, plus limits and timings.
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
    limits: Limits,
    #[serde(default)]
    timings: TimingsFile,
}

/// Sizes the backend enforces.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_frame_bytes: usize,
    pub max_log_line_bytes: usize,
    pub max_log_bytes_per_job: u64,
    pub max_artifact_bytes: u64,
    pub max_source_bytes: u64,
    pub max_json_body_bytes: usize,
    pub db_pool_size: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: buildfleet_protocol::DEFAULT_MAX_FRAME_BYTES,
            max_log_line_bytes: 16 * 1024,
            max_log_bytes_per_job: 64 * 1024 * 1024,
            max_artifact_bytes: 4 * 1024 * 1024 * 1024,
            max_source_bytes: 512 * 1024 * 1024,
            max_json_body_bytes: 256 * 1024,
            db_pool_size: 16,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct TimingsFile {
    heartbeat_interval_ms: Option<u64>,
    heartbeat_timeout_ms: Option<u64>,
    reconnect_grace_ms: Option<u64>,
    challenge_ttl_ms: Option<u64>,
    cancel_grace_ms: Option<u64>,
}

/// Timings of sessions, leases and timeouts.
#[derive(Debug, Clone)]
pub struct Timings {
    /// How often builders send `heartbeat` and the backend pings.
    pub heartbeat_interval: Duration,
    /// Silence after which a session is dropped.
    pub heartbeat_timeout: Duration,
    /// How long a lost builder's leases live before its jobs are requeued.
    pub reconnect_grace: Duration,
    /// How long a challenge can be answered.
    pub challenge_ttl: Duration,
    /// After a timeout `cancel`, how long the builder has to report before the job is closed.
    pub cancel_grace: Duration,
    /// How often leases and timeouts are swept (the safety net, not the dispatch path).
    pub sweep_interval: Duration,
    /// Log events are flushed to storage at least this often.
    pub log_flush_interval: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            heartbeat_interval: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(30),
            reconnect_grace: Duration::from_secs(60),
            challenge_ttl: Duration::from_secs(30),
            cancel_grace: Duration::from_secs(30),
            sweep_interval: Duration::from_secs(1),
            log_flush_interval: Duration::from_millis(50),
        }
    }
}

/// The resolved configuration of a running backend.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub bind: SocketAddr,
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
        }
    }

    /// Flags and environment over the TOML file over defaults.
    pub fn resolve(args: &ServeArgs) -> anyhow::Result<ServerConfig> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
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
        let mut config = ServerConfig::with_data_dir(data_dir);
        if let Some(bind) = args.bind.or(file.bind) {
            config.bind = bind;
        }
        if let Some(url) = args.database_url.clone().or(file.database_url) {
            config.database_url = url;
        }
        config.public_url = args.public_url.clone().or(file.public_url);
        config.backend_id = args.backend_id.clone().or(file.backend_id);
        config.admin_token = args.admin_token.clone().or(file.admin_token);
        config.tls = match (
            args.tls_cert.clone().or(file.tls_cert),
            args.tls_key.clone().or(file.tls_key),
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => anyhow::bail!("--tls-cert and --tls-key go together"),
        };
        let embedded = !config.database_url.starts_with("postgres");
        config.local_builders = args
            .local_builders
            .or(file.local_builders)
            .unwrap_or(u32::from(embedded));
        config.limits = file.limits;
        let t = file.timings;
        let ms = Duration::from_millis;
        let d = Timings::default();
        config.timings = Timings {
            heartbeat_interval: t
                .heartbeat_interval_ms
                .map(ms)
                .unwrap_or(d.heartbeat_interval),
            heartbeat_timeout: t
                .heartbeat_timeout_ms
                .map(ms)
                .unwrap_or(d.heartbeat_timeout),
            reconnect_grace: t.reconnect_grace_ms.map(ms).unwrap_or(d.reconnect_grace),
            challenge_ttl: t.challenge_ttl_ms.map(ms).unwrap_or(d.challenge_ttl),
            cancel_grace: t.cancel_grace_ms.map(ms).unwrap_or(d.cancel_grace),
            ..d
        };
        Ok(config)
    }
}

pub fn default_database_url(data_dir: &Path) -> String {
    format!("sqlite://{}", data_dir.join("buildfleet.db").display())
}
