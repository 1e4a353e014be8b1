//! One job's run: fetch and verify the source, unpack it, run the recipe's commands (or
//! describe them in plan mode), upload the artifacts, and sign the build statement.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use buildfleet_protocol::signing::{sign_statement, BuildStatement, STATEMENT_FORMAT};
use buildfleet_protocol::{
    ArtifactDigest, BuildError, BuildErrorKind, JobAssignment, JobEventKind, JobMode, JobResponse,
    LogStream, Outcome, SignedStatement, Stage,
};

use crate::artifacts;
use crate::config::{Limits, Strategy, ToolchainEnv};
use crate::event_buffer::EventBuffer;
use crate::identity::Identity;
use crate::process::{self, OutputSink, RunOptions, StopReason, StopSignal};
use crate::recipes::{Recipe, RecipeBook};
use crate::source;
use crate::strategy::{CommandContext, JobLayout};
use crate::unpack::{self, UnpackLimits};
use crate::upload;

/// What every job of this builder shares.
pub struct JobEnv {
    pub client: awc::Client,
    pub identity: Arc<Identity>,
    pub recipes: RecipeBook,
    pub strategy: Strategy,
    pub toolchain: ToolchainEnv,
    pub limits: Limits,
    pub offline: bool,
    pub jobs_dir: std::path::PathBuf,
    /// The session's `max_log_line_bytes`; updated on every (re)connection.
    pub max_log_line_bytes: Arc<AtomicUsize>,
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
}

/// Runs the job to its end and returns the signed `job_response`. The job directory is
/// removed before returning, whatever happened.
pub async fn run_job(env: &JobEnv, mut run: JobRun) -> JobResponse {
    let job = &run.assignment;
    let layout = JobLayout::new(env.jobs_dir.join(format!("{}-{}", job.job_id, job.attempt)));
    let ended = steps(env, &mut run, &layout).await;
    let dir = layout.dir.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || remove_dir_if_exists(&dir)).await {
        tracing::warn!(error = %e, "cleaning the job directory failed");
    }
    respond(env, &run, ended)
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
    let dir = layout.clone();
    let created = tokio::task::spawn_blocking(move || {
        remove_dir_if_exists(&dir.dir)?;
        dir.create()
    })
    .await;
    if let Err(e) = created.map_err(std::io::Error::other).and_then(|r| r) {
        return Ended::failed(
            BuildErrorKind::Internal,
            format!("cannot create the job directory: {e}"),
            None,
        );
    }

    stage(run, Stage::FetchingSource).await;
    let fetched = tokio::select! {
        fetched = source::fetch(&env.client, &job.source, &layout.archive, run.stop.deadline()) => fetched,
        reason = run.stop.stopped() => return Ended::stopped(reason, None),
    };
    if let Err(e) = fetched {
        return Ended::failed(e.kind(), e.to_string(), None);
    }

    stage(run, Stage::Unpacking).await;
    let limits = UnpackLimits {
        max_entries: env.limits.max_archive_entries,
        max_total_bytes: env.limits.max_unpacked_bytes,
    };
    let (archive, src) = (layout.archive.clone(), layout.src.clone());
    let unpacked = tokio::select! {
        unpacked = tokio::task::spawn_blocking(move || unpack::unpack(&archive, &src, limits)) => unpacked,
        reason = run.stop.stopped() => return Ended::stopped(reason, None),
    };
    let src_root = match unpacked {
        Ok(Ok(unpacked)) => unpacked.root,
        Ok(Err(e)) => return Ended::failed(e.kind(), e.to_string(), None),
        Err(e) => return Ended::failed(BuildErrorKind::Internal, e.to_string(), None),
    };

    let offline = job
        .parameters
        .get("offline")
        .map_or(env.offline, |v| v == "true" || v == "1");
    let commands = recipe.commands_for(offline);
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
    };
    let options = RunOptions {
        max_line_bytes: env.max_log_line_bytes.load(Ordering::Relaxed),
        grace: env.limits.cancel_grace(),
    };
    let mut exit_status = None;
    for (index, argv) in commands.iter().enumerate() {
        let spec = match context.command_spec(argv, index) {
            Ok(spec) => spec,
            Err(e) => return Ended::failed(BuildErrorKind::Internal, e.to_string(), None),
        };
        builder_note(run, format!("$ {}", argv.join(" "))).await;
        let exit = match process::run(&spec, run.events.as_ref(), &mut run.stop, options).await {
            Ok(exit) => exit,
            Err(e) => return Ended::failed(BuildErrorKind::CommandFailed, e.to_string(), None),
        };
        exit_status = exit.code;
        if let Some(reason) = exit.stopped {
            return Ended::stopped(reason, exit.code);
        }
        if !exit.success() {
            let how = match (exit.code, exit.signal) {
                (Some(code), _) => format!("exit status {code}"),
                (None, Some(signal)) => format!("signal {signal}"),
                (None, None) => "an unknown status".to_owned(),
            };
            return Ended::failed(
                BuildErrorKind::CommandFailed,
                format!(
                    "command {} of {} ({}) ended with {how}",
                    index + 1,
                    commands.len(),
                    argv.join(" ")
                ),
                exit.code,
            );
        }
    }

    stage(run, Stage::Uploading).await;
    let rules = recipe.artifacts.clone();
    let (out, staging, root) = (layout.out.clone(), layout.staging.clone(), src_root.clone());
    let collected = tokio::select! {
        collected = tokio::task::spawn_blocking(move || artifacts::collect(&rules, &out, &root, &staging)) => collected,
        reason = run.stop.stopped() => return Ended::stopped(reason, exit_status),
    };
    let prepared = match collected {
        Ok(Ok(prepared)) => prepared,
        Ok(Err(e)) => return Ended::failed(e.kind(), e.to_string(), exit_status),
        Err(e) => return Ended::failed(BuildErrorKind::Internal, e.to_string(), exit_status),
    };
    let mut uploaded = Vec::new();
    for artifact in &prepared {
        builder_note(
            run,
            format!(
                "uploading {} ({} bytes, sha256 {})",
                artifact.name, artifact.size, artifact.sha256
            ),
        )
        .await;
        let result = tokio::select! {
            result = upload::upload(&env.client, &job.upload_url, &job.job_token, artifact, run.stop.deadline()) => result,
            reason = run.stop.stopped() => return Ended::stopped(reason, exit_status),
        };
        match result {
            Ok(digest) => uploaded.push(digest),
            Err(e) => return Ended::failed(e.kind(), e.to_string(), exit_status),
        }
    }

    stage(run, Stage::Finishing).await;
    Ended {
        outcome: Outcome::Succeeded,
        exit_status,
        error: None,
        artifacts: uploaded,
        plan: None,
    }
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

fn respond(env: &JobEnv, run: &JobRun, ended: Ended) -> JobResponse {
    let job = &run.assignment;
    let statement = BuildStatement {
        format: STATEMENT_FORMAT.to_owned(),
        backend_id: run.backend_id.clone(),
        builder: env.identity.fingerprint.clone(),
        job_id: job.job_id,
        attempt: job.attempt,
        source_sha256: job.source.sha256.clone(),
        recipe: job.recipe.clone(),
        mode: job.mode,
        outcome: ended.outcome,
        artifacts: ended.artifacts.clone(),
    };
    let signed = sign_statement(&env.identity.key, &statement).unwrap_or_else(|e| {
        // The backend refuses an unsigned statement; the job still reports its outcome.
        tracing::error!(job = %job.job_id, error = %e, "cannot sign the build statement");
        SignedStatement {
            statement: statement.to_signed_text(),
            signature: String::new(),
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
    }
}

fn remove_dir_if_exists(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
