//! One job's run: fetch and verify the source, unpack it, run the recipe's commands (or
//! describe them in plan mode), upload the artifacts, and sign the build statement.
//!
//! Only what the job needs sits on its critical path: its directory is a skeleton prepared
//! ahead of time ([`SpareDirs`]) and renamed into place, the source comes from the cache
//! when held (re-verified by the unpacker's own read), and the directory is removed after
//! the result is reported ([`Finished::clean_up`]), not before.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use buildfleet_protocol::provenance::{self, JobFacts, RunFacts};
use buildfleet_protocol::{
    ArtifactDigest, BuildError, BuildErrorKind, JobAssignment, JobEventKind, JobMode, JobResponse,
    LogStream, Outcome, SignedReproduction, SignedStatement, Stage,
};

use crate::artifacts;
use crate::backends::Backends;
use crate::config::{Limits, Strategy, ToolchainEnv};
use crate::event_buffer::{now_ms, EventBuffer};
use crate::identity::Identity;
use crate::process::{self, OutputSink, RunOptions, StopReason, StopSignal};
use crate::recipes::{CargoOptions, Recipe, RecipeBook};
use crate::source::{CachedSource, SourceCache, SourceError};
use crate::strategy::{CommandContext, JobLayout};
use crate::unpack::{self, UnpackLimits};
use crate::upload;

/// What every job of this builder shares.
pub struct JobEnv {
    pub client: awc::Client,
    /// The backend replicas: sources and uploads of a replica go to the current one.
    pub backends: Arc<Backends>,
    pub identity: Arc<Identity>,
    pub recipes: RecipeBook,
    pub strategy: Strategy,
    pub toolchain: ToolchainEnv,
    pub limits: Limits,
    pub offline: bool,
    pub jobs_dir: std::path::PathBuf,
    /// Verified source archives by SHA-256 (`<work_dir>/sources`).
    pub sources: SourceCache,
    /// Job directory skeletons made off the critical path.
    pub spare_dirs: Arc<SpareDirs>,
    /// The session's `max_log_line_bytes`; updated on every (re)connection.
    pub max_log_line_bytes: Arc<AtomicUsize>,
    /// The user process-strategy commands run as (`build_user`); `None`: the builder's own.
    pub build_user: Option<crate::config::BuildUser>,
}

/// One accepted assignment, ready to run.
pub struct JobRun {
    pub assignment: JobAssignment,
    /// The backend the statement is bound to (from the session that assigned the job).
    pub backend_id: String,
    pub events: Arc<EventBuffer>,
    pub stop: StopSignal,
}

/// How a run ended, before it is signed.
struct Ended {
    outcome: Outcome,
    exit_status: Option<i32>,
    error: Option<BuildError>,
    artifacts: Vec<ArtifactDigest>,
    plan: Option<String>,
}

impl Ended {
    fn failed(kind: BuildErrorKind, message: impl Into<String>, exit_status: Option<i32>) -> Self {
        Ended {
            outcome: Outcome::Failed,
            exit_status,
            error: Some(BuildError {
                kind,
                message: message.into(),
            }),
            artifacts: Vec::new(),
            plan: None,
        }
    }

    fn stopped(reason: StopReason, exit_status: Option<i32>) -> Self {
        let (outcome, kind, message) = match reason {
            StopReason::Cancelled => (
                Outcome::Cancelled,
                BuildErrorKind::Cancelled,
                "the job was cancelled",
            ),
            StopReason::TimedOut => (
                Outcome::TimedOut,
                BuildErrorKind::TimedOut,
                "the job ran past its timeout",
            ),
        };
        Ended {
            outcome,
            ..Ended::failed(kind, message, exit_status)
        }
    }

    /// The end of a step after the commands ran keeps their exit status.
    fn with_exit_status(self, exit_status: Option<i32>) -> Self {
        Ended {
            exit_status,
            ..self
        }
    }
}

/// A job run to its end: the signed `job_response` to report, and the job directory to
/// remove once it is reported.
pub struct Finished {
    pub response: JobResponse,
    pub cleanup: Cleanup,
}

/// The job directory, removed by [`Cleanup::run`] off the reporting path.
#[must_use = "the job directory stays until Cleanup::run"]
pub struct Cleanup {
    pub dir: PathBuf,
}

impl Cleanup {
    pub async fn run(self) {
        let dir = self.dir;
        match tokio::task::spawn_blocking(move || remove_dir_if_exists(&dir)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cleaning the job directory failed"),
            Err(e) => tracing::warn!(error = %e, "cleaning the job directory failed"),
        }
    }
}

impl Finished {
    /// Cleans up at once (for callers that report nothing).
    pub async fn clean_up(self) -> JobResponse {
        self.cleanup.run().await;
        self.response
    }
}

/// Runs the job to its end and returns the signed `job_response`, with the job directory
/// still in place: the caller reports first, then runs the [`Cleanup`].
pub async fn run_job(env: &JobEnv, mut run: JobRun) -> Finished {
    let started_ms = now_ms();
    let job = &run.assignment;
    let layout = JobLayout::new(env.jobs_dir.join(format!("{}-{}", job.job_id, job.attempt)));
    let ended = steps(env, &mut run, &layout).await;
    let versions = crate::versions::versions(
        env.recipes.get(&run.assignment.recipe),
        &env.strategy,
        &env.toolchain,
    )
    .await;
    let times = (started_ms, now_ms());
    Finished {
        response: respond(env, &run, ended, versions, times),
        cleanup: Cleanup { dir: layout.dir },
    }
}

/// Job directory skeletons (`JobLayout` with its subdirectories) prepared while no job
/// waits, so that starting a job costs one `rename` instead of a removal and five `mkdir`s.
#[derive(Debug)]
pub struct SpareDirs {
    jobs_dir: PathBuf,
    ready: Mutex<Vec<PathBuf>>,
    next: AtomicU64,
}

impl SpareDirs {
    pub fn new(jobs_dir: PathBuf) -> Self {
        SpareDirs {
            jobs_dir,
            ready: Mutex::new(Vec::new()),
            next: AtomicU64::new(0),
        }
    }

    /// Prepares a skeleton if none is ready (blocking; run it off the critical path).
    pub fn replenish(&self) -> std::io::Result<()> {
        if !self.lock().is_empty() {
            return Ok(());
        }
        // Not `<job>-<attempt>`: a spare never collides with a job's directory.
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let layout = JobLayout::new(self.jobs_dir.join(format!("spare-{n}")));
        layout.create()?;
        self.lock().push(layout.dir);
        Ok(())
    }

    /// Puts a skeleton at `layout.dir`: a spare renamed (one syscall, fine on the async
    /// thread), else made there. Returns whether it still has to be made.
    fn take(&self, layout: &JobLayout) -> bool {
        let spare = self.lock().pop();
        if let Some(spare) = spare {
            if std::fs::rename(&spare, &layout.dir).is_ok() {
                return false;
            }
            let _ = std::fs::remove_dir_all(&spare);
        }
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
        self.ready
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The job's directory, ready to use; a spare is prepared for the next job in the background.
async fn prepare_dir(env: &JobEnv, layout: &JobLayout) -> std::io::Result<()> {
    let made = if env.spare_dirs.take(layout) {
        let dir = layout.clone();
        tokio::task::spawn_blocking(move || {
            // Left by an earlier run of this very attempt (it is not reported twice).
            remove_dir_if_exists(&dir.dir)?;
            dir.create()
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
    } else {
        Ok(())
    };
    let spares = env.spare_dirs.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = spares.replenish() {
            tracing::warn!(error = %e, "cannot prepare a spare job directory");
        }
    });
    made
}

/// Why [`fetch_and_unpack`] gave up.
enum SourceFailure {
    Stopped(StopReason),
    Failed(BuildErrorKind, String),
}

/// Gets the source (from the cache when held), unpacks it into `layout.src` and checks the
/// digest the unpacker read. A cached copy that reads back wrong, or fails to unpack and
/// does not hash right, is evicted and fetched again once; nothing runs on unverified bytes.
async fn fetch_and_unpack(
    env: &JobEnv,
    run: &mut JobRun,
    layout: &JobLayout,
) -> Result<unpack::Unpacked, SourceFailure> {
    let spec = run.assignment.source.clone();
    let limits = UnpackLimits {
        max_entries: env.limits.max_archive_entries,
        max_total_bytes: env.limits.max_unpacked_bytes,
    };
    let mut staged = false;
    loop {
        let deadline = run.stop.deadline();
        let source: CachedSource = run
            .stop
            .race(env.sources.get(&env.client, &env.backends, &spec, deadline))
            .await
            .map_err(SourceFailure::Stopped)?
            .map_err(|e| SourceFailure::Failed(e.kind(), e.to_string()))?;
        if !staged {
            stage(run, Stage::Unpacking).await;
            staged = true;
        }
        let (archive, src) = (source.path.clone(), layout.src.clone());
        let unpacked = run
            .stop
            .race(tokio::task::spawn_blocking(move || {
                let result = unpack::unpack(&archive, &src, limits);
                // A refused archive from the cache may be a corrupted copy of a good one.
                let digest = match &result {
                    Ok(unpacked) => Some(unpacked.archive_sha256.clone()),
                    Err(_) => file_sha256(&archive).ok(),
                };
                (result, digest)
            }))
            .await
            .map_err(SourceFailure::Stopped)?;
        let (result, digest) =
            unpacked.map_err(|e| SourceFailure::Failed(BuildErrorKind::Internal, e.to_string()))?;
        if digest.as_ref() == Some(&spec.sha256) {
            return match result {
                Ok(unpacked) => Ok(unpacked),
                Err(e) => Err(SourceFailure::Failed(e.kind(), e.to_string())),
            };
        }
        let fetched = source.fetched;
        env.sources.evict(source);
        if fetched {
            // Downloaded and verified a moment ago, yet read back different: the disk.
            let error = SourceError::Io(std::io::Error::other(format!(
                "the source archive read back from disk does not match sha256 {}",
                spec.sha256
            )));
            return Err(SourceFailure::Failed(
                BuildErrorKind::Internal,
                error.to_string(),
            ));
        }
        tracing::warn!(sha256 = %spec.sha256, "a cached source was corrupted; fetching it again");
        builder_note(run, "cached source corrupted; fetching it again".into()).await;
        let src = layout.src.clone();
        let emptied = tokio::task::spawn_blocking(move || {
            remove_dir_if_exists(&src)?;
            std::fs::create_dir(&src)
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        if let Err(e) = emptied {
            return Err(SourceFailure::Failed(
                BuildErrorKind::Internal,
                format!("cannot empty the source directory: {e}"),
            ));
        }
    }
}

/// SHA-256 of a whole file.
fn file_sha256(path: &Path) -> std::io::Result<buildfleet_protocol::Sha256Digest> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(buildfleet_protocol::Sha256Digest::from_bytes(
        &hasher.finalize().into(),
    ))
}

async fn steps(env: &JobEnv, run: &mut JobRun, layout: &JobLayout) -> Ended {
    let job = run.assignment.clone();
    let Some(recipe) = env.recipes.get(&job.recipe).cloned() else {
        return Ended::failed(
            BuildErrorKind::UnknownRecipe,
            format!("this builder has no recipe {:?}", job.recipe),
            None,
        );
    };
    if let Err(e) = prepare_dir(env, layout).await {
        return Ended::failed(
            BuildErrorKind::Internal,
            format!("cannot create the job directory: {e}"),
            None,
        );
    }

    stage(run, Stage::FetchingSource).await;
    let (src_root, source_date_epoch) = match fetch_and_unpack(env, run, layout).await {
        Ok(unpacked) => (unpacked.root, unpacked.newest_mtime),
        Err(SourceFailure::Stopped(reason)) => return Ended::stopped(reason, None),
        Err(SourceFailure::Failed(kind, message)) => return Ended::failed(kind, message, None),
    };
    if let Some(user) = env.build_user.clone() {
        let dirs = layout.clone();
        let handed = tokio::task::spawn_blocking(move || dirs.hand_to(&user))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        if let Err(e) = handed {
            return Ended::failed(
                BuildErrorKind::Internal,
                format!("cannot give the job directory to the build user: {e}"),
                None,
            );
        }
    }

    let options = CargoOptions::from_parameters(&job.parameters, env.offline);
    let commands = recipe.commands_with(&options);
    if job.mode == JobMode::Plan {
        return Ended {
            outcome: Outcome::Succeeded,
            exit_status: None,
            error: None,
            artifacts: Vec::new(),
            plan: Some(plan_text(&recipe, &commands, &env.strategy, &src_root)),
        };
    }

    stage(run, Stage::Running).await;
    let context = CommandContext {
        strategy: &env.strategy,
        recipe: &recipe,
        job: &job,
        layout,
        src_root: &src_root,
        toolchain: &env.toolchain,
        source_date_epoch,
        build_user: env.build_user.as_ref(),
    };
    let exit_status = match run_commands(env, run, &context, &commands).await {
        Ok(exit_status) => exit_status,
        Err(ended) => return ended,
    };

    stage(run, Stage::Uploading).await;
    let artifacts = match upload_artifacts(env, run, &recipe, layout, &src_root).await {
        Ok(artifacts) => artifacts,
        Err(ended) => return ended.with_exit_status(exit_status),
    };

    stage(run, Stage::Finishing).await;
    Ended {
        outcome: Outcome::Succeeded,
        exit_status,
        error: None,
        artifacts,
        plan: None,
    }
}

/// Runs the recipe's commands in order; the first that fails or is stopped ends the job.
/// Returns the last command's exit status.
async fn run_commands(
    env: &JobEnv,
    run: &mut JobRun,
    context: &CommandContext<'_>,
    commands: &[Vec<String>],
) -> Result<Option<i32>, Ended> {
    let options = RunOptions {
        max_line_bytes: env.max_log_line_bytes.load(Ordering::Relaxed),
        grace: env.limits.cancel_grace(),
    };
    let mut exit_status = None;
    for (index, argv) in commands.iter().enumerate() {
        let spec = context
            .command_spec(argv, index)
            .map_err(|e| Ended::failed(BuildErrorKind::Internal, e.to_string(), None))?;
        builder_note(run, format!("$ {}", argv.join(" "))).await;
        let exit = process::run(&spec, run.events.as_ref(), &mut run.stop, options)
            .await
            .map_err(|e| Ended::failed(BuildErrorKind::CommandFailed, e.to_string(), None))?;
        exit_status = exit.code;
        if let Some(reason) = exit.stopped {
            return Err(Ended::stopped(reason, exit.code));
        }
        if !exit.success() {
            let how = match (exit.code, exit.signal) {
                (Some(code), _) => format!("exit status {code}"),
                (None, Some(signal)) => format!("signal {signal}"),
                (None, None) => "an unknown status".to_owned(),
            };
            return Err(Ended::failed(
                BuildErrorKind::CommandFailed,
                format!(
                    "command {} of {} ({}) ended with {how}",
                    index + 1,
                    commands.len(),
                    argv.join(" ")
                ),
                exit.code,
            ));
        }
    }
    Ok(exit_status)
}

/// Collects the recipe's artifacts and uploads each; returns their digests in order.
async fn upload_artifacts(
    env: &JobEnv,
    run: &mut JobRun,
    recipe: &Recipe,
    layout: &JobLayout,
    src_root: &Path,
) -> Result<Vec<ArtifactDigest>, Ended> {
    let rules = recipe.artifacts.clone();
    let (out, staging, root) = (
        layout.out.clone(),
        layout.staging.clone(),
        src_root.to_path_buf(),
    );
    let collected = run
        .stop
        .race(tokio::task::spawn_blocking(move || {
            artifacts::collect(&rules, &out, &root, &staging)
        }))
        .await
        .map_err(|reason| Ended::stopped(reason, None))?;
    let prepared = match collected {
        Ok(Ok(prepared)) => prepared,
        Ok(Err(e)) => return Err(Ended::failed(e.kind(), e.to_string(), None)),
        Err(e) => return Err(Ended::failed(BuildErrorKind::Internal, e.to_string(), None)),
    };
    let mut uploaded = Vec::with_capacity(prepared.len());
    for artifact in &prepared {
        builder_note(
            run,
            format!(
                "uploading {} ({} bytes, sha256 {})",
                artifact.name, artifact.size, artifact.sha256
            ),
        )
        .await;
        let deadline = run.stop.deadline();
        let job = &run.assignment;
        let upload = upload::upload(
            &env.client,
            &env.backends,
            &job.upload_url,
            &job.job_token,
            artifact,
            deadline,
        );
        let digest = run
            .stop
            .race(upload)
            .await
            .map_err(|reason| Ended::stopped(reason, None))?
            .map_err(|e| Ended::failed(e.kind(), e.to_string(), None))?;
        uploaded.push(digest);
    }
    Ok(uploaded)
}

async fn stage(run: &JobRun, stage: Stage) {
    run.events.push(JobEventKind::Stage { stage }).await;
}

/// A line from the builder itself, on stderr so it stands apart from the build's output.
async fn builder_note(run: &JobRun, text: String) {
    run.events
        .line(LogStream::Stderr, format!("[buildfleet] {text}"))
        .await;
}

fn plan_text(
    recipe: &Recipe,
    commands: &[Vec<String>],
    strategy: &Strategy,
    src_root: &Path,
) -> String {
    let mut plan = format!(
        "recipe: {}@{}\nstrategy: {}\ncommands:\n",
        recipe.name,
        recipe.version,
        match strategy {
            Strategy::Process => "process",
            Strategy::Docker(_) => "docker",
        }
    );
    for command in commands {
        plan.push_str(&format!("  - {}\n", command.join(" ")));
    }
    plan.push_str("artifacts:\n");
    for name in artifacts::planned_names(&recipe.artifacts, src_root) {
        plan.push_str(&format!("  - {name}\n"));
    }
    plan
}

/// The `job_response`: the attempt's in-toto statement signed with SSHSIG and DSSE, and for
/// a succeeded build the reproduction statement signed both ways too.
fn respond(
    env: &JobEnv,
    run: &JobRun,
    ended: Ended,
    versions: std::collections::BTreeMap<String, String>,
    (started_ms, finished_ms): (i64, i64),
) -> JobResponse {
    let job = &run.assignment;
    let facts = JobFacts::from_assignment(&run.backend_id, job);
    let statement = provenance::attempt_statement(
        &facts,
        &RunFacts {
            builder: env.identity.fingerprint.clone(),
            versions,
            started_ms,
            finished_ms,
            outcome: ended.outcome,
        },
        &ended.artifacts,
    );
    let key = &env.identity.key;
    let (signed, dsse_signature) = match provenance::sign_statement(key, &statement) {
        Ok(signed) => (signed.signed, Some(signed.dsse.sig)),
        Err(e) => {
            // The backend refuses an unsigned statement; the job still reports its outcome.
            tracing::error!(job = %job.job_id, error = %e, "cannot sign the build statement");
            let unsigned = SignedStatement {
                statement: statement.to_signed_text(),
                signature: String::new(),
            };
            (unsigned, None)
        }
    };
    let reproduction = (ended.outcome == Outcome::Succeeded && job.mode == JobMode::Build)
        .then(|| provenance::reproduction_statement(&facts, &ended.artifacts))
        .and_then(|statement| match provenance::sign_statement(key, &statement) {
            Ok(signed) => Some(SignedReproduction {
                statement: signed.signed.statement,
                signature: signed.signed.signature,
                dsse_signature: signed.dsse.sig,
            }),
            Err(e) => {
                tracing::error!(job = %job.job_id, error = %e, "cannot sign the reproduction statement");
                None
            }
        });
    JobResponse {
        job_id: job.job_id,
        attempt: job.attempt,
        outcome: ended.outcome,
        exit_status: ended.exit_status,
        error: ended.error,
        artifacts: ended.artifacts,
        plan: ended.plan,
        statement: signed,
        dsse_signature,
        reproduction,
    }
}

fn remove_dir_if_exists(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
