//! Real builders: the whole path of a job through real `buildfleet-builder run` processes
//! (fetch from the source cache, unpack, spawn, report, sign) and the release backend.
//!
//! - floors, measured first in the same run: spawning the no-op command until its first
//!   instruction and until it is reaped, and a loopback TCP round trip;
//! - latency: 4 idle builders × 1 slot, 50 jobs one after another; submit → the command
//!   running (it prints the wall clock first thing: `buildfleet-bench-stamp`) and submit →
//!   the terminal state seen by a client waiting on the pushed job state
//!   (`GET /api/v1/jobs/{id}/events`, falling back to a 1 ms poll if it is absent);
//! - throughput: 8 builders × 1 slot, 500 jobs from 4 concurrent submitters, until every
//!   job's terminal state arrived on `GET /api/v1/job-events`; the backend's and the
//!   builders' CPU and RSS per job.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use buildfleet_api::{JobChange, JobDetail, JobEnd, JobState, SubmitJob};

use crate::api::{http_client, Api};
use crate::fleet::Identity;
use crate::floors::{self, duration_ns, parse_stamp, unix_ns};
use crate::procfs;
use crate::report::{Goal, SuiteResult};
use crate::sse::{self, Opened};
use crate::stats::{ms, summarize};
use crate::target::{Backend, BackendSettings, DbKind};

use super::builder_footprint::{source_archive, wait_connected, write_private, KillOnDrop};
use super::RunOptions;

const RECIPE: &str = "bench-stamp";
const JOB_LIMIT: Duration = Duration::from_secs(60);

struct Sizes {
    latency_builders: usize,
    latency_jobs: usize,
    builders: usize,
    jobs: usize,
    submitters: usize,
    floor_runs: usize,
}

pub async fn run(db: DbKind, options: &RunOptions, result: &mut SuiteResult) -> anyhow::Result<()> {
    let Some(builder_binary) = options.builder_binary.clone() else {
        bail!("the buildfleet-builder binary is not built next to this one (cargo build --release -p buildfleet-builder)");
    };
    let Some(stamp) = options.stamp_binary.clone() else {
        bail!("the buildfleet-bench-stamp binary is not built next to this one (cargo build --release -p buildfleet-bench)");
    };
    let sizes = Sizes {
        latency_builders: options.size(4, 2),
        latency_jobs: options.size(50, 5),
        builders: options.size(8, 2),
        jobs: options.jobs.unwrap_or(options.size(500, 20)),
        submitters: options.size(4, 2),
        floor_runs: options.size(200, 10),
    };
    result.param("latency_builders", sizes.latency_builders);
    result.param("latency_jobs", sizes.latency_jobs);
    result.param("builders", sizes.builders);
    result.param("slots_per_builder", 1);
    result.param("jobs", sizes.jobs);
    result.param("submitters", sizes.submitters);
    result.param("builder_binary", builder_binary.display().to_string());
    result.param("load_average_at_start", load_average());

    let backend = Backend::start(&options.backend, db, &BackendSettings::default()).await?;
    if backend.in_process {
        result.note("backend in-process: its CPU and RSS include the bench");
    }
    let api = Api::new(&backend);
    let source = api.upload_source(source_archive()?).await?;
    let fleet_dir = backend.data_dir.join("real-builders");
    std::fs::create_dir_all(&fleet_dir)?;
    let ws_base = backend.http_url.replacen("http://", "ws://", 1);
    let mut fleet = Fleet {
        api: api.clone(),
        dir: fleet_dir,
        ws_base,
        binary: builder_binary,
        stamp: stamp.clone(),
        builders: Vec::new(),
    };

    // Floors first, with the backend and the idle builders up, as the phases see them.
    fleet.grow(sizes.latency_builders).await?;
    let spawn = floors::spawn_floor(&stamp, sizes.floor_runs)?;
    let rtt = floors::loopback_round_trip(sizes.floor_runs * 5)?;
    let http_rtt = http_round_trip(&api, sizes.floor_runs).await?;
    result.metric(
        "floor: spawn -> first instruction, p50",
        ms(spawn.first_instruction.p50),
        "ms",
    );
    result.metric(
        "floor: spawn -> exit reaped, p50",
        ms(spawn.reaped.p50),
        "ms",
    );
    result.metric("floor: loopback TCP round trip, p50", ms(rtt.p50), "ms");
    result.metric("backend GET /healthz round trip, p50", ms(http_rtt), "ms");
    let running_floor = spawn.first_instruction.p50 + rtt.p50;
    let terminal_floor = spawn.reaped.p50 + rtt.p50;
    result.metric(
        "floor: command running (spawn -> first instruction + round trip)",
        ms(running_floor),
        "ms",
    );
    result.metric(
        "floor: terminal (spawn -> reaped + round trip)",
        ms(terminal_floor),
        "ms",
    );

    // Latency: one job at a time, every builder idle at each submission.
    warm_up(&api, &source, sizes.latency_builders * 2).await?;
    let mut running = Vec::with_capacity(sizes.latency_jobs);
    let mut terminal = Vec::with_capacity(sizes.latency_jobs);
    let mut polled = false;
    let mut latency_ids = Vec::with_capacity(sizes.latency_jobs);
    for _ in 0..sizes.latency_jobs {
        let sent_ns = unix_ns();
        let sent = Instant::now();
        let job = submit(&api, &source).await?;
        latency_ids.push(job);
        let (seen, pushed) = wait_terminal(&api, job).await?;
        polled |= !pushed;
        terminal.push(seen.duration_since(sent));
        let started_ns = stamp_of(&api, job).await?;
        running.push(duration_ns(started_ns - sent_ns));
        // Let the builder's next credit reach the scheduler before the next submission.
        actix_rt::time::sleep(Duration::from_millis(2)).await;
    }
    let (running_goal, terminal_goal) = match db {
        DbKind::Sqlite => (4.0, 6.0),
        DbKind::Postgres => (6.0, 9.0),
    };
    let run_s = summarize(&running).context("no latency samples")?;
    let term_s = summarize(&terminal).context("no latency samples")?;
    result.metric_with_target(
        "submit -> command running, p50",
        ms(run_s.p50),
        "ms",
        Goal::AtMost(running_goal),
    );
    result.metric("submit -> command running, p99", ms(run_s.p99), "ms");
    result.metric_with_target(
        "submit -> terminal seen by a waiting client, p50",
        ms(term_s.p50),
        "ms",
        Goal::AtMost(terminal_goal),
    );
    result.metric(
        "submit -> terminal seen by a waiting client, p99",
        ms(term_s.p99),
        "ms",
    );
    result.metric(
        "command running / its floor, p50",
        run_s.p50.as_secs_f64() / running_floor.as_secs_f64().max(1e-9),
        "x",
    );
    result.metric(
        "terminal seen / its floor, p50",
        term_s.p50.as_secs_f64() / terminal_floor.as_secs_f64().max(1e-9),
        "x",
    );
    result.note(if polled {
        "the backend has no pushed job state (GET /api/v1/jobs/{id}/events answered 404): the client polled GET /api/v1/jobs/{id} every 1 ms"
    } else {
        "terminal seen on the pushed job state (GET /api/v1/jobs/{id}/events, its `end` event)"
    });

    breakdown(&api, &latency_ids, "latency", result).await?;

    // Throughput: the fleet grows to its full size, then the submitters go.
    fleet.grow(sizes.builders).await?;
    warm_up(&api, &source, sizes.builders * 2).await?;
    throughput(&backend, &fleet, &api, &source, &sizes, result).await?;
    result.param("load_average_at_end", load_average());
    drop(fleet);
    Ok(())
}

/// The builder processes of the run, each with its own key, admitted by the API.
struct Fleet {
    api: Api,
    dir: PathBuf,
    ws_base: String,
    binary: PathBuf,
    stamp: PathBuf,
    builders: Vec<KillOnDrop>,
}

impl Fleet {
    /// Starts builders until there are `count`, and waits until each is connected.
    async fn grow(&mut self, count: usize) -> anyhow::Result<()> {
        let mut started = Vec::new();
        while self.builders.len() < count {
            let n = self.builders.len();
            let identity = Identity::generate(format!("bench-real-{n}"))?;
            let dir = self.dir.join(format!("builder-{n}"));
            std::fs::create_dir_all(&dir)?;
            let key = dir.join("id_ed25519");
            write_private(&key, &identity.private_openssh()?)?;
            let id = self
                .api
                .admit_builder(&identity.name, &identity.public_openssh)
                .await?;
            let config = dir.join("builder.toml");
            std::fs::write(
                &config,
                builder_config(
                    &self.ws_base,
                    &key,
                    &identity.name,
                    &dir.join("work"),
                    &self.stamp,
                ),
            )?;
            let log = std::fs::File::create(dir.join("builder.log"))?;
            let child = Process::new(&self.binary)
                .arg("run")
                .arg("--config")
                .arg(&config)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {}", self.binary.display()))?;
            self.builders.push(KillOnDrop(child));
            started.push(id);
        }
        for id in started {
            wait_connected(&self.api, id, Duration::from_secs(30)).await?;
        }
        Ok(())
    }

    fn pids(&self) -> Vec<u32> {
        self.builders.iter().map(|b| b.0.id()).collect()
    }
}

fn builder_config(ws_base: &str, key: &Path, name: &str, work_dir: &Path, stamp: &Path) -> String {
    format!(
        r#"backend_url = {ws_base:?}
key = {key:?}
name = {name:?}
work_dir = {work_dir:?}
max_concurrent_jobs = 1

[[recipes]]
name = "{RECIPE}"
version = "1"
commands = [[{stamp:?}]]
"#,
        key = key.display().to_string(),
        work_dir = work_dir.display().to_string(),
        stamp = stamp.display().to_string(),
    )
}

async fn submit(api: &Api, source: &str) -> anyhow::Result<i64> {
    api.submit_body(&SubmitJob {
        max_attempts: Some(1),
        ..SubmitJob::new(source, RECIPE)
    })
    .await
}

/// `count` jobs at once, so that every builder fetches and caches the source (and has run
/// a command) before anything is measured.
async fn warm_up(api: &Api, source: &str, count: usize) -> anyhow::Result<()> {
    let mut jobs = Vec::with_capacity(count);
    for _ in 0..count {
        jobs.push(submit(api, source).await?);
    }
    for job in jobs {
        let detail = poll_terminal(api, job).await?;
        if detail.job.state != JobState::Succeeded {
            bail!(
                "warm-up {}",
                ended_unsuccessfully(job, detail.job.state, detail.job.error.as_deref())
            );
        }
    }
    Ok(())
}

/// Waits for job `job` to end as a client would: on its pushed state if the backend has
/// it (`true`), else by polling every millisecond (`false`). Returns when it was seen.
async fn wait_terminal(api: &Api, job: i64) -> anyhow::Result<(Instant, bool)> {
    let client = http_client(JOB_LIMIT);
    let url = api.url(&format!("/api/v1/jobs/{job}/events"));
    match sse::open(&client, &url, api.token()).await? {
        Opened::Stream(mut stream) => loop {
            let Some(event) = stream.next(JOB_LIMIT).await? else {
                bail!("the state stream of job {job} ended without an `end` event");
            };
            if event.name == "end" {
                let seen = Instant::now();
                let end: JobEnd = serde_json::from_str(&event.data)?;
                if end.outcome != JobState::Succeeded {
                    return Err(ended_unsuccessfully(
                        job,
                        end.outcome,
                        end.change.error.as_deref(),
                    ));
                }
                return Ok((seen, true));
            }
        },
        Opened::NotFound => {
            let detail = poll_terminal(api, job).await?;
            let seen = Instant::now();
            if detail.job.state != JobState::Succeeded {
                return Err(ended_unsuccessfully(
                    job,
                    detail.job.state,
                    detail.job.error.as_deref(),
                ));
            }
            Ok((seen, false))
        }
    }
}

fn ended_unsuccessfully(job: i64, state: JobState, error: Option<&str>) -> anyhow::Error {
    anyhow::anyhow!("job {job} ended {state}: {}", error.unwrap_or_default())
}

async fn poll_terminal(api: &Api, job: i64) -> anyhow::Result<JobDetail> {
    let deadline = Instant::now() + JOB_LIMIT;
    while Instant::now() < deadline {
        let detail = api.job(job).await?;
        if detail.job.state.is_terminal() {
            return Ok(detail);
        }
        actix_rt::time::sleep(Duration::from_millis(1)).await;
    }
    bail!("job {job} did not finish within {JOB_LIMIT:?}")
}

/// When the job's command started: the clock it printed first thing, from the stored log.
async fn stamp_of(api: &Api, job: i64) -> anyhow::Result<i128> {
    // The log is flushed before the terminal commit, so it is complete here.
    let text = api
        .get_bytes(&format!("/api/v1/jobs/{job}/log?format=text"))
        .await?;
    parse_stamp(&String::from_utf8_lossy(&text))
        .with_context(|| format!("no bf-stamp line in the log of job {job}"))
}

async fn http_round_trip(api: &Api, runs: usize) -> anyhow::Result<Duration> {
    let mut samples = Vec::with_capacity(runs);
    for i in 0..runs + 10 {
        let started = Instant::now();
        api.get_bytes("/healthz").await?;
        if i >= 10 {
            samples.push(started.elapsed());
        }
    }
    Ok(summarize(&samples).context("no round trips")?.p50)
}

async fn throughput(
    backend: &Backend,
    fleet: &Fleet,
    api: &Api,
    source: &str,
    sizes: &Sizes,
    result: &mut SuiteResult,
) -> anyhow::Result<()> {
    // Every terminal change from here on is one of ours: the warm-up jobs are done.
    let client = http_client(Duration::from_secs(600));
    let feed = match sse::open(&client, &api.url("/api/v1/job-events"), api.token()).await? {
        Opened::Stream(stream) => Some(stream),
        Opened::NotFound => None,
    };
    let pushed = feed.is_some();
    let builder_pids = fleet.pids();
    let backend_cpu = procfs::cpu_time(backend.pid).unwrap_or_default();
    let backend_rss = procfs::rss_kib(backend.pid).unwrap_or(0);
    let builders_cpu = sum_cpu(&builder_pids, procfs::cpu_time);
    let commands_cpu = sum_cpu(&builder_pids, procfs::children_cpu_time);
    let completed_before = api.metric("buildfleet_jobs_completed_total").await?;

    let done = Rc::new(Cell::new(0usize));
    let failed = Rc::new(RefCell::new(Vec::<String>::new()));
    let last = Rc::new(Cell::new(Instant::now()));
    let watcher = feed.map(|mut stream| {
        let (done, failed, last, total) = (done.clone(), failed.clone(), last.clone(), sizes.jobs);
        actix_rt::spawn(async move {
            let mut seen = HashSet::new();
            while done.get() < total {
                let Ok(Some(event)) = stream.next(JOB_LIMIT).await else {
                    return;
                };
                if event.name != "state" {
                    continue;
                }
                let Ok(change) = serde_json::from_str::<JobChange>(&event.data) else {
                    continue;
                };
                if change.state.is_terminal() && seen.insert(change.job) {
                    last.set(Instant::now());
                    if change.state != JobState::Succeeded {
                        failed.borrow_mut().push(
                            ended_unsuccessfully(change.job, change.state, change.error.as_deref())
                                .to_string(),
                        );
                    }
                    done.set(done.get() + 1);
                }
            }
        })
    });

    let started = Instant::now();
    let mut submitters = Vec::with_capacity(sizes.submitters);
    for s in 0..sizes.submitters {
        let share = sizes.jobs / sizes.submitters + usize::from(s < sizes.jobs % sizes.submitters);
        let (api, source) = (api.clone(), source.to_owned());
        submitters.push(actix_rt::spawn(async move {
            let mut ids = Vec::with_capacity(share);
            for _ in 0..share {
                ids.push(submit(&api, &source).await?);
            }
            anyhow::Ok((Instant::now(), ids))
        }));
    }
    let mut submitted = started;
    let mut ids = Vec::with_capacity(sizes.jobs);
    for submitter in submitters {
        let (at, mut some) = submitter.await??;
        submitted = submitted.max(at);
        ids.append(&mut some);
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    if pushed {
        while done.get() < sizes.jobs {
            if Instant::now() > deadline {
                bail!("{} of {} jobs ended within 600 s", done.get(), sizes.jobs);
            }
            actix_rt::time::sleep(Duration::from_millis(1)).await;
        }
    } else {
        loop {
            let completed = api.metric("buildfleet_jobs_completed_total").await? - completed_before;
            if completed >= sizes.jobs as f64 {
                last.set(Instant::now());
                break;
            }
            if Instant::now() > deadline {
                bail!("{completed} of {} jobs ended within 600 s", sizes.jobs);
            }
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
    }
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    if let Some(first) = failed.borrow().first() {
        bail!(
            "{} jobs did not succeed, e.g. {first}",
            failed.borrow().len()
        );
    }
    let wall = last.get().saturating_duration_since(started);
    let jobs = sizes.jobs as f64;
    result.metric_with_target(
        "throughput, submit -> terminal",
        jobs / wall.as_secs_f64().max(1e-9),
        "jobs/s",
        Goal::AtLeast(600.0),
    );
    result.metric(
        "submissions accepted",
        jobs / submitted.duration_since(started).as_secs_f64().max(1e-9),
        "jobs/s",
    );
    let per_job = |d: Duration| d.as_secs_f64() * 1e3 / jobs;
    let backend_cpu = procfs::cpu_time(backend.pid)
        .unwrap_or_default()
        .saturating_sub(backend_cpu);
    let builders_cpu = sum_cpu(&builder_pids, procfs::cpu_time).saturating_sub(builders_cpu);
    let commands_cpu =
        sum_cpu(&builder_pids, procfs::children_cpu_time).saturating_sub(commands_cpu);
    result.metric("backend cpu per job", per_job(backend_cpu), "ms");
    result.metric(
        "builders' cpu per job (builder processes)",
        per_job(builders_cpu),
        "ms",
    );
    result.metric(
        "commands' cpu per job (the no-op command, reaped)",
        per_job(commands_cpu),
        "ms",
    );
    result.metric(
        "backend cpu during the run",
        100.0 * backend_cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9),
        "% of a core",
    );
    result.metric(
        "builders' cpu during the run (all of them)",
        100.0 * builders_cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9),
        "% of a core",
    );
    let backend_rss_after = procfs::rss_kib(backend.pid).unwrap_or(0);
    result.metric(
        "backend rss after the run",
        backend_rss_after as f64 / 1024.0,
        "MiB",
    );
    result.metric(
        "backend rss growth per job",
        backend_rss_after.saturating_sub(backend_rss) as f64 / jobs,
        "KiB",
    );
    let rss: Vec<u64> = builder_pids
        .iter()
        .filter_map(|pid| procfs::rss_kib(*pid).ok())
        .collect();
    if !rss.is_empty() {
        result.metric(
            "builder rss after the run, mean",
            rss.iter().sum::<u64>() as f64 / rss.len() as f64 / 1024.0,
            "MiB",
        );
    }
    breakdown(api, &ids, "throughput", result).await?;
    result.note(if pushed {
        "throughput ends at the last terminal change on the pushed feed (GET /api/v1/job-events)"
    } else {
        "the backend has no pushed job feed: throughput ends when /metrics counted every completion (5 ms polls)"
    });
    Ok(())
}

/// Where a builder's time per job went in the throughput phase, from the job records
/// (millisecond timestamps of the backend's commits) and the command's own clock.
async fn breakdown(
    api: &Api,
    ids: &[i64],
    phase: &str,
    result: &mut SuiteResult,
) -> anyhow::Result<()> {
    // (builder, assigned, started, running, finished), in ms since the epoch.
    let mut rows = Vec::with_capacity(ids.len());
    for &job in ids {
        let detail = api.job(job).await?;
        let attempt = detail
            .attempts
            .first()
            .with_context(|| format!("job {job} has no attempt"))?;
        let running_ms = (stamp_of(api, job).await? / 1_000_000) as i64;
        rows.push((
            attempt.builder.unwrap_or(0),
            attempt.assigned_at,
            attempt
                .started_at
                .with_context(|| format!("started_at of job {job}"))?,
            running_ms,
            attempt
                .finished_at
                .with_context(|| format!("finished_at of job {job}"))?,
        ));
    }
    let p50 = |mut values: Vec<i64>| -> f64 {
        values.sort_unstable();
        values
            .get(values.len().saturating_sub(1) / 2)
            .copied()
            .unwrap_or(0) as f64
    };
    result.metric(
        format!("{phase}: assigned -> accepted (running recorded), p50"),
        p50(rows.iter().map(|r| r.2 - r.1).collect()),
        "ms",
    );
    result.metric(
        format!("{phase}: assigned -> command running, p50"),
        p50(rows.iter().map(|r| r.3 - r.1).collect()),
        "ms",
    );
    result.metric(
        format!("{phase}: command running -> terminal committed, p50"),
        p50(rows.iter().map(|r| r.4 - r.3).collect()),
        "ms",
    );
    rows.sort_unstable_by_key(|r| (r.0, r.1));
    let gaps: Vec<i64> = rows
        .windows(2)
        .filter(|w| w[0].0 == w[1].0)
        .map(|w| w[1].1 - w[0].4)
        .collect();
    result.metric(
        format!("{phase}: a builder's terminal committed -> its next assignment, p50"),
        p50(gaps),
        "ms",
    );
    result.note("the per-job breakdown has millisecond resolution (the backend's timestamps)");
    Ok(())
}

fn sum_cpu(pids: &[u32], read: fn(u32) -> anyhow::Result<Duration>) -> Duration {
    pids.iter().filter_map(|pid| read(*pid).ok()).sum()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}
