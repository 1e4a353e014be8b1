//! Dispatch latency: from the submit call returning to the `jobs` frame arriving at an idle
//! matching builder, one job at a time, with every builder idle at each submission.

use std::time::{Duration, Instant};

use crate::fleet::{self, Behaviour, Event};
use crate::report::{Goal, SuiteResult};
use crate::stats::{ms, summarize};
use crate::target::{BackendSettings, DbKind};

use super::{setup, CpuMeter, RunOptions};

const RECIPE: &str = "bench-noop";
const WAIT: Duration = Duration::from_secs(30);

pub async fn run(db: DbKind, options: &RunOptions, result: &mut SuiteResult) -> anyhow::Result<()> {
    measure(db, options, result, false).await
}

/// The same, with a second backend process (a replica) on the same PostgreSQL database and
/// data directory: jobs are submitted through the first, the builders are connected to the
/// second, so every job reaches its builder through the replica bus (`LISTEN`/`NOTIFY`).
pub async fn run_across_replicas(
    db: DbKind,
    options: &RunOptions,
    result: &mut SuiteResult,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        matches!(db, DbKind::Postgres),
        "dispatch-replicas needs --db postgres: SQLite is one process"
    );
    measure(db, options, result, true).await
}

async fn measure(
    db: DbKind,
    options: &RunOptions,
    result: &mut SuiteResult,
    across_replicas: bool,
) -> anyhow::Result<()> {
    let builders = options.size(100, 10);
    let jobs = options.jobs.unwrap_or(options.size(1000, 50));
    let warmup = options.size(20, 5);
    result.param("builders", builders);
    result.param("jobs", jobs);
    result.param("warmup_jobs", warmup);
    let mut s = setup(
        db,
        options,
        &BackendSettings::default(),
        Behaviour::noop(RECIPE, 1),
        result,
    )
    .await?;
    let _replica = if across_replicas {
        let replica = s
            .backend
            .start_replica(&options.backend, &BackendSettings::default())
            .await?;
        result.param("replicas", 2);
        result.note("jobs submitted through replica A, builders connected to replica B");
        s.fleet.ws_url = replica.ws_url.clone();
        Some(replica)
    } else {
        None
    };
    let identities = fleet::admit_fleet(&s.api, "dispatch", builders, 16).await?;
    let _fleet = fleet::connect_fleet(&s.fleet, &identities, 32).await?;

    let mut after_return = Vec::with_capacity(jobs);
    let mut after_send = Vec::with_capacity(jobs);
    let mut submit_rtt = Vec::with_capacity(jobs);
    let mut before_return = 0usize;
    let mut cpu = None;
    for i in 0..warmup + jobs {
        if i == warmup {
            cpu = Some(CpuMeter::start(&s.backend));
        }
        let sent = Instant::now();
        let job_id = s.api.submit(RECIPE).await?;
        let returned = Instant::now();
        let arrived = fleet::wait_for(&mut s.events, WAIT, "the jobs frame", |event| {
            Ok(match event {
                Event::Assigned { job, at, .. } if job.job_id.0 == job_id => Some(at),
                _ => None,
            })
        })
        .await?;
        // Every builder idle again before the next submission.
        fleet::wait_for(&mut s.events, WAIT, "the completion ack", |event| {
            Ok(match event {
                Event::Completed { job_id: done, .. } if done == job_id => Some(()),
                _ => None,
            })
        })
        .await?;
        if i < warmup {
            continue;
        }
        // The push can beat the HTTP response back to the client: that counts as zero.
        if arrived < returned {
            before_return += 1;
        }
        after_return.push(arrived.saturating_duration_since(returned));
        after_send.push(arrived.saturating_duration_since(sent));
        submit_rtt.push(returned - sent);
        // Let the freed builder's new credit reach the scheduler.
        actix_rt::time::sleep(Duration::from_millis(1)).await;
    }

    let latency = summarize(&after_return).ok_or_else(|| anyhow::anyhow!("no samples"))?;
    result.metric_with_target(
        "p50 (submit returned -> jobs frame)",
        ms(latency.p50),
        "ms",
        Goal::Below(2.0),
    );
    result.metric_with_target(
        "p99 (submit returned -> jobs frame)",
        ms(latency.p99),
        "ms",
        Goal::Below(10.0),
    );
    result.metric("max (submit returned -> jobs frame)", ms(latency.max), "ms");
    result.metric(
        "mean (submit returned -> jobs frame)",
        ms(latency.mean),
        "ms",
    );
    if let Some(sent) = summarize(&after_send) {
        result.metric("p50 (submit sent -> jobs frame)", ms(sent.p50), "ms");
        result.metric("p99 (submit sent -> jobs frame)", ms(sent.p99), "ms");
    }
    if let Some(rtt) = summarize(&submit_rtt) {
        result.metric("p50 submit call (POST /api/v1/jobs)", ms(rtt.p50), "ms");
    }
    result.metric(
        "jobs frame before submit returned",
        before_return as f64,
        "jobs",
    );
    if let Some(cpu) = cpu {
        cpu.record(result);
    }
    Ok(())
}
