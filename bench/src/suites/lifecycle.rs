//! Lifecycle throughput: no-op jobs per second through their whole life — submitted over
//! the API in batches, assigned, acknowledged, a few log lines, completed with a signed statement and
//! stored — with many builders of several slots each.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;

use crate::fleet::{self, Behaviour, Event};
use crate::report::{Goal, SuiteResult};
use crate::target::{BackendSettings, DbKind};

use super::{setup, CpuMeter, RunOptions};

const RECIPE: &str = "bench-noop";
/// Submissions in flight at once (several API clients).
const SUBMITTERS: usize = 8;
/// Jobs per submission (`POST /api/v1/jobs` with an array: one request, one transaction).
const SUBMIT_BATCH: usize = 50;
const LOG_LINES: u32 = 3;

pub async fn run(db: DbKind, options: &RunOptions, result: &mut SuiteResult) -> anyhow::Result<()> {
    let builders = options.size(200, 20);
    let slots = 4;
    let jobs = options.jobs.unwrap_or(options.size(10_000, 200));
    let time_limit = options.size(Duration::from_secs(180), Duration::from_secs(60));
    result.param("builders", builders);
    result.param("slots_per_builder", slots);
    result.param("jobs", jobs);
    result.param("log_lines_per_job", LOG_LINES);
    result.param("concurrent_submitters", SUBMITTERS);
    result.param("jobs_per_submission", SUBMIT_BATCH);
    result.param("accepts_every_assignment", true);
    let behaviour = Behaviour {
        log_lines: LOG_LINES,
        log_line: Arc::from("   Compiling buildfleet-bench v0.1.0 (/work/bench) -- a no-op line"),
        // Simulated builders never turn work down: their claims start the jobs.
        accepts_every_assignment: true,
        ..Behaviour::noop(RECIPE, slots)
    };
    let mut s = setup(db, options, &BackendSettings::default(), behaviour, result).await?;
    let identities = fleet::admit_fleet(&s.api, "lifecycle", builders, 16).await?;
    let _fleet = fleet::connect_fleet(&s.fleet, &identities, 32).await?;

    let cpu = CpuMeter::start(&s.backend);
    let started = Instant::now();
    let api = s.api.clone();
    let batches: Vec<usize> = (0..jobs)
        .step_by(SUBMIT_BATCH)
        .map(|first| SUBMIT_BATCH.min(jobs - first))
        .collect();
    let submitting = actix_rt::spawn(async move {
        let outcomes: Vec<(usize, anyhow::Result<Vec<i64>>)> = futures_util::stream::iter(batches)
            .map(|count| {
                let api = api.clone();
                async move { (count, api.submit_batch(RECIPE, count).await) }
            })
            .buffer_unordered(SUBMITTERS)
            .collect()
            .await;
        (outcomes, started.elapsed())
    });

    let mut completed = 0usize;
    let mut refused = 0usize;
    let mut last = started;
    let deadline = tokio::time::Instant::now() + time_limit;
    while completed + refused < jobs {
        match tokio::time::timeout_at(deadline, s.events.recv()).await {
            Ok(Some(Event::Completed { accepted, at, .. })) => {
                if accepted {
                    completed += 1;
                } else {
                    refused += 1;
                }
                last = at;
            }
            Ok(Some(Event::Lost { builder, reason })) => {
                anyhow::bail!("builder {builder} lost: {reason}")
            }
            Ok(Some(_)) => {}
            Ok(None) => anyhow::bail!("all builders stopped"),
            Err(_) => {
                result.note(format!(
                    "stopped at the {time_limit:?} limit with {completed} of {jobs} jobs completed"
                ));
                break;
            }
        }
    }
    let elapsed = last.saturating_duration_since(started);
    let (outcomes, submit_time) = submitting.await?;
    let submit_errors: usize = outcomes
        .iter()
        .filter(|(_, o)| o.is_err())
        .map(|(count, _)| count)
        .sum();
    if let Some((_, Err(e))) = outcomes.iter().find(|(_, o)| o.is_err()) {
        result.note(format!("{submit_errors} submissions failed, first: {e:#}"));
    }
    let throughput = completed as f64 / elapsed.as_secs_f64().max(1e-9);
    result.metric_with_target(
        "throughput (submit -> completion stored)",
        throughput,
        "jobs/s",
        Goal::AtLeast(5000.0),
    );
    result.metric(
        "submission rate (API alone, concurrent)",
        (jobs - submit_errors) as f64 / submit_time.as_secs_f64().max(1e-9),
        "jobs/s",
    );
    result.metric("jobs completed", completed as f64, "jobs");
    result.metric("completions refused", refused as f64, "jobs");
    result.metric("wall time", elapsed.as_secs_f64(), "s");
    cpu.record(result);
    if let Ok(stored) = s.api.metric("buildfleet_jobs_completed_total").await {
        result.metric("completions stored (backend counter)", stored, "jobs");
    }
    Ok(())
}
