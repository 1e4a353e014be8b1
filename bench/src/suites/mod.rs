//! The suites. Each starts its own backend on a fresh database, measures one thing and
//! returns a [`SuiteResult`]; an error becomes the result's `error`, never a panic.

pub mod artifact_upload;
pub mod builder_footprint;
pub mod dispatch;
pub mod idle_sessions;
pub mod lifecycle;
pub mod log_ingest;
pub mod real_builders;
pub mod reconnect_storm;

use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::api::{http_client, Api};
use crate::fleet::{Behaviour, Counters, Event, FleetContext};
use crate::procfs;
use crate::report::SuiteResult;
use crate::target::{Backend, BackendMode, BackendSettings, DbKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
    All,
    RealBuilders,
    Dispatch,
    /// Dispatch across two backend processes on one PostgreSQL database: submitted through
    /// one, the builders connected to the other. Not in `all` (PostgreSQL only).
    DispatchReplicas,
    Lifecycle,
    IdleSessions,
    ReconnectStorm,
    LogIngest,
    ArtifactUpload,
    BuilderFootprint,
}

impl Suite {
    pub const EACH: [Suite; 8] = [
        Suite::RealBuilders,
        Suite::Dispatch,
        Suite::Lifecycle,
        Suite::IdleSessions,
        Suite::ReconnectStorm,
        Suite::LogIngest,
        Suite::ArtifactUpload,
        Suite::BuilderFootprint,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Suite::All => "all",
            Suite::RealBuilders => "real-builders",
            Suite::Dispatch => "dispatch",
            Suite::DispatchReplicas => "dispatch-replicas",
            Suite::Lifecycle => "lifecycle",
            Suite::IdleSessions => "idle-sessions",
            Suite::ReconnectStorm => "reconnect-storm",
            Suite::LogIngest => "log-ingest",
            Suite::ArtifactUpload => "artifact-upload",
            Suite::BuilderFootprint => "builder-footprint",
        }
    }
}

/// What every suite needs to know about the run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub backend: BackendMode,
    /// The real builder binary, for the builder footprint and real-builder suites.
    pub builder_binary: Option<PathBuf>,
    /// `buildfleet-bench-stamp`, the real builders' no-op command.
    pub stamp_binary: Option<PathBuf>,
    pub smoke: bool,
    /// Overrides the session count of the idle-sessions and reconnect-storm suites.
    pub sessions: Option<usize>,
    /// Overrides the job count of the dispatch, lifecycle and real-builder suites.
    pub jobs: Option<usize>,
    /// The soft fd limit after raising it.
    pub fd_limit: u64,
}

impl RunOptions {
    /// `full` normally, `smoke` under `--smoke`.
    pub fn size<T>(&self, full: T, smoke: T) -> T {
        if self.smoke {
            smoke
        } else {
            full
        }
    }
}

pub async fn run(suite: Suite, db: DbKind, options: &RunOptions) -> SuiteResult {
    let mut result = SuiteResult::new(suite.name(), db.name());
    let outcome = match suite {
        Suite::RealBuilders => real_builders::run(db, options, &mut result).await,
        Suite::Dispatch => dispatch::run(db, options, &mut result).await,
        Suite::DispatchReplicas => dispatch::run_across_replicas(db, options, &mut result).await,
        Suite::Lifecycle => lifecycle::run(db, options, &mut result).await,
        Suite::IdleSessions => idle_sessions::run(db, options, &mut result).await,
        Suite::ReconnectStorm => reconnect_storm::run(db, options, &mut result).await,
        Suite::LogIngest => log_ingest::run(db, options, &mut result).await,
        Suite::ArtifactUpload => artifact_upload::run(db, options, &mut result).await,
        Suite::BuilderFootprint => builder_footprint::run(db, options, &mut result).await,
        Suite::All => Ok(()),
    };
    if let Err(e) = outcome {
        result.error = Some(format!("{e:#}"));
    }
    result
}

/// A backend, its API, and a fleet context for simulated builders of `behaviour`.
pub struct Setup {
    pub backend: Backend,
    pub api: Api,
    pub fleet: FleetContext,
    pub events: mpsc::UnboundedReceiver<Event>,
}

pub async fn setup(
    db: DbKind,
    options: &RunOptions,
    settings: &BackendSettings,
    behaviour: Behaviour,
    result: &mut SuiteResult,
) -> anyhow::Result<Setup> {
    let backend = Backend::start(&options.backend, db, settings).await?;
    if backend.in_process {
        result.note("backend in-process: memory and CPU figures include the simulated builders");
    }
    let api = Api::new(&backend);
    let (events_tx, events) = mpsc::unbounded_channel();
    let fleet = FleetContext {
        client: http_client(Duration::from_secs(60)),
        ws_url: backend.ws_url.clone(),
        behaviour: Rc::new(behaviour),
        events: events_tx,
        counters: Rc::new(Counters::default()),
    };
    Ok(Setup {
        backend,
        api,
        fleet,
        events,
    })
}

/// CPU used by the backend and by the bench itself over an interval, as % of one core.
pub struct CpuMeter {
    backend_pid: u32,
    backend: Duration,
    bench: Duration,
    started: Instant,
}

impl CpuMeter {
    pub fn start(backend: &Backend) -> CpuMeter {
        let own = std::process::id();
        CpuMeter {
            backend_pid: backend.pid,
            backend: procfs::cpu_time(backend.pid).unwrap_or_default(),
            bench: procfs::cpu_time(own).unwrap_or_default(),
            started: Instant::now(),
        }
    }

    /// (backend CPU, bench CPU, wall time) since the start.
    pub fn elapsed(&self) -> (Duration, Duration, Duration) {
        let backend = procfs::cpu_time(self.backend_pid)
            .unwrap_or_default()
            .saturating_sub(self.backend);
        let bench = procfs::cpu_time(std::process::id())
            .unwrap_or_default()
            .saturating_sub(self.bench);
        (backend, bench, self.started.elapsed())
    }

    /// Adds `backend cpu` and `bench cpu` (percent of one core) to the result.
    pub fn record(&self, result: &mut SuiteResult) {
        let (backend, bench, wall) = self.elapsed();
        let pct = |d: Duration| 100.0 * d.as_secs_f64() / wall.as_secs_f64().max(1e-9);
        if self.backend_pid == std::process::id() {
            result.metric(
                "process cpu (backend + simulated builders)",
                pct(bench),
                "% of a core",
            );
        } else {
            result.metric("backend cpu", pct(backend), "% of a core");
            result.metric("bench (simulated builders) cpu", pct(bench), "% of a core");
        }
    }
}
