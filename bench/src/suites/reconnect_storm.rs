//! Reconnect storm (issue 14): dispatch latency while thousands of builders lose their
//! sessions at once and all dial back in. A few probe builders take the measured jobs; a
//! submitter at a steady pace measures submit → `jobs` frame at a probe before the storm
//! (baseline), while every storm session is cut and re-authenticated, and for a while after.
//!
//! The storm fleet runs on its own thread and actix system, so its thousands of handshakes do
//! not queue in front of the probes' frames on the measuring thread. Each storm builder dials
//! from its own loopback address, as builders on their own hosts would: the backend's cap on
//! unauthenticated connections per address is then not what shapes the storm, its overall
//! cap is. A refused or failed dial is retried on the real builder's backoff schedule.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures_util::StreamExt as _;
use tokio::sync::{mpsc, oneshot};

use crate::fleet::{self, Behaviour, Counters, Event, FleetContext, Identity, SimBuilder};
use crate::report::{Goal, SuiteResult};
use crate::stats::{ms, summarize};
use crate::target::{BackendMode, BackendSettings, DbKind};

use super::{setup, CpuMeter, RunOptions};

/// The probes' recipe. The storm builders declare another one and ask for no work, so no
/// measured job can land on them.
const RECIPE: &str = "bench-noop";
const STORM_RECIPE: &str = "bench-storm-idle";
const PROBES: usize = 4;
/// Free slots per probe: jobs that pile up while dispatch stalls are then handed out as soon
/// as the backend gets to them, so the latency stays the backend's, not a wait for a builder.
const PROBE_SLOTS: u32 = 256;
/// The submitter's steady pace (100 jobs/s): a small share of what the backend sustains, so
/// the probes have free slots at every submission and the latency is dispatch, not queueing.
const SUBMIT_INTERVAL: Duration = Duration::from_millis(10);
/// Descriptors kept free for the database, storage, the API and the probes.
const FD_RESERVE: u64 = 256;
/// Storm builders dialling at once before the storm (the storm itself dials all at once).
const CONNECT_CONCURRENCY: usize = 64;
/// Connecting the storm fleet, or one storm, taking longer than this is a failure.
const STORM_TIMEOUT: Duration = Duration::from_secs(300);
/// Every submitted job must reach a probe within this after the last submission.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// A storm builder's answer to a failed dial, as the real builder's: the n-th retry waits a
/// random time in `[step/2, step]`, `step` doubling from 250 ms up to 30 s
/// (`ReconnectPolicy::default` in builder/src/connection.rs).
const INITIAL_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a storm builder's WebSocket upgrade may take, as the real builder's handshake.
const DIAL_TIMEOUT: Duration = Duration::from_secs(15);
/// Where the storm builders' source addresses start (127.1.0.1, 127.1.0.2, …).
const FIRST_STORM_ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 1, 0, 1);

pub async fn run(db: DbKind, options: &RunOptions, result: &mut SuiteResult) -> anyhow::Result<()> {
    let wanted = options.sessions.unwrap_or(options.size(5_000, 50));
    // Client and backend each hold one descriptor per session (one process each, or both in
    // one process in in-process mode).
    let per_process = if matches!(options.backend, BackendMode::InProcess) {
        2
    } else {
        1
    };
    let fit = usize::try_from(options.fd_limit.saturating_sub(FD_RESERVE) / per_process)
        .unwrap_or(usize::MAX);
    let storm_size = wanted.min(fit);
    if storm_size == 0 {
        bail!(
            "the fd limit {} leaves no room for storm sessions",
            options.fd_limit
        );
    }
    if storm_size < wanted {
        result.note(format!(
            "scaled down from {wanted} to {storm_size} storm builders: fd limit {}",
            options.fd_limit
        ));
    }
    let phases = Phases {
        warmup: options.size(Duration::from_secs(2), Duration::from_millis(500)),
        baseline: options.size(Duration::from_secs(10), Duration::from_secs(2)),
        tail: options.size(Duration::from_secs(5), Duration::from_secs(1)),
    };
    result.param("storm_builders", storm_size);
    result.param("probe_builders", PROBES);
    result.param("probe_slots", PROBE_SLOTS);
    result.param(
        "submit_interval_ms",
        u64::try_from(SUBMIT_INTERVAL.as_millis()).unwrap_or(u64::MAX),
    );
    result.param("baseline_s", phases.baseline.as_secs_f64());
    result.param("after_storm_s", phases.tail.as_secs_f64());

    let mut s = setup(
        db,
        options,
        &BackendSettings::default(),
        Behaviour::noop(RECIPE, PROBE_SLOTS),
        result,
    )
    .await?;
    let storm_identities = fleet::admit_fleet(&s.api, "storm", storm_size, 32)
        .await?
        .into_iter()
        .map(|identity| {
            Rc::try_unwrap(identity).map_err(|_| anyhow::anyhow!("a storm identity is shared"))
        })
        .collect::<anyhow::Result<Vec<Identity>>>()?;
    let probe_identities = fleet::admit_fleet(&s.api, "probe", PROBES, PROBES).await?;
    let _probes = fleet::connect_fleet(&s.fleet, &probe_identities, PROBES).await?;

    let (cut, cut_rx) = oneshot::channel();
    let (stop, stop_rx) = oneshot::channel();
    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    let storm_thread = start_storm_fleet(
        storm_identities,
        s.backend.ws_url.clone(),
        cut_rx,
        stop_rx,
        reports_tx,
    )?;
    let outcome = measure(&mut s, &mut reports, cut, &phases, result).await;
    // The storm fleet closes its sessions before the backend stops.
    let _ = stop.send(());
    let joined = actix_rt::task::spawn_blocking(move || storm_thread.join()).await;
    if !matches!(joined, Ok(Ok(()))) {
        result.note("the storm fleet's thread did not end cleanly");
    }
    outcome
}

struct Phases {
    /// Submitted but not measured: connections and caches warm up.
    warmup: Duration,
    baseline: Duration,
    /// Measured after every storm session is back.
    tail: Duration,
}

/// One measured job.
struct Sample {
    sent: Instant,
    returned: Instant,
    /// When the probe read the `jobs` frame.
    arrived: Instant,
}

/// A submit call's outcome, from its task.
struct Submitted {
    sent: Instant,
    returned: Instant,
    job: Result<i64, String>,
}

enum Stage {
    Baseline { until: Instant },
    Storm { cpu: CpuMeter, until: Instant },
    After { until: Instant },
    Draining { until: Instant },
}

/// Runs the submitter through the phases; records the metrics.
async fn measure(
    s: &mut super::Setup,
    reports: &mut mpsc::UnboundedReceiver<StormReport>,
    cut: oneshot::Sender<()>,
    phases: &Phases,
    result: &mut SuiteResult,
) -> anyhow::Result<()> {
    match tokio::time::timeout(STORM_TIMEOUT, reports.recv()).await {
        Ok(Some(StormReport::Connected { took, sessions })) => result.metric(
            "storm fleet connect + authenticate rate (before the storm, 64 at a time)",
            sessions as f64 / took.as_secs_f64().max(1e-9),
            "sessions/s",
        ),
        Ok(Some(StormReport::Broken(problem))) => bail!("{problem}"),
        Ok(Some(StormReport::Reconnected(_)) | None) => {
            bail!("the storm fleet ended before connecting")
        }
        Err(_) => bail!("the storm fleet did not connect within {STORM_TIMEOUT:?}"),
    }

    let (submitted_tx, mut submitted_rx) = mpsc::unbounded_channel::<Submitted>();
    let mut ticker = tokio::time::interval(SUBMIT_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    let measured_from = started + phases.warmup;
    let mut cut = Some(cut);
    let mut stage = Stage::Baseline {
        until: measured_from + phases.baseline,
    };
    let mut storm = None;
    let mut in_flight = 0usize;
    // Submitted jobs whose frame has not arrived yet, and frames that beat their submit call
    // back to the client.
    let mut awaiting_frame: HashMap<i64, (Instant, Instant)> = HashMap::new();
    let mut early_frames: HashMap<i64, Instant> = HashMap::new();
    let mut samples: Vec<Sample> = Vec::new();
    let mut failed_submits: Vec<(Instant, String)> = Vec::new();
    let mut most_awaiting = 0usize;

    loop {
        let until = match &stage {
            Stage::Baseline { until }
            | Stage::Storm { until, .. }
            | Stage::After { until }
            | Stage::Draining { until } => *until,
        };
        most_awaiting = most_awaiting.max(in_flight + awaiting_frame.len());
        let submitting = !matches!(stage, Stage::Draining { .. });
        if !submitting && in_flight == 0 && awaiting_frame.is_empty() {
            break;
        }
        tokio::select! {
            _ = ticker.tick(), if submitting => {
                in_flight += 1;
                let api = s.api.clone();
                let done = submitted_tx.clone();
                actix_rt::spawn(async move {
                    let sent = Instant::now();
                    let job = api.submit(RECIPE).await.map_err(|e| format!("{e:#}"));
                    let _ = done.send(Submitted { sent, returned: Instant::now(), job });
                });
            }
            Some(done) = submitted_rx.recv() => {
                in_flight = in_flight.saturating_sub(1);
                match done.job {
                    Ok(job) => match early_frames.remove(&job) {
                        Some(arrived) => samples.push(Sample { sent: done.sent, returned: done.returned, arrived }),
                        None => {
                            awaiting_frame.insert(job, (done.sent, done.returned));
                        }
                    },
                    Err(e) => failed_submits.push((done.sent, e)),
                }
            }
            event = s.events.recv() => match event {
                Some(Event::Assigned { job, at, .. }) => {
                    let job = job.job_id.0;
                    match awaiting_frame.remove(&job) {
                        Some((sent, returned)) => samples.push(Sample { sent, returned, arrived: at }),
                        None => {
                            early_frames.insert(job, at);
                        }
                    }
                }
                Some(Event::Lost { builder, reason }) => {
                    bail!("probe builder {builder} lost its session: {reason}")
                }
                Some(_) => {}
                None => bail!("every probe builder stopped"),
            },
            report = reports.recv() => match report {
                Some(StormReport::Reconnected(done)) => {
                    let Stage::Storm { cpu, .. } = &stage else {
                        bail!("the storm fleet reconnected before it was cut");
                    };
                    storm = Some((done, cpu.elapsed()));
                    stage = Stage::After { until: Instant::now() + phases.tail };
                }
                Some(StormReport::Broken(problem)) => bail!("{problem}"),
                Some(StormReport::Connected { .. }) => bail!("the storm fleet connected twice"),
                None => bail!("the storm fleet's thread ended early"),
            },
            _ = tokio::time::sleep_until(until.into()) => {
                stage = match stage {
                    Stage::Baseline { .. } => {
                        let cpu = CpuMeter::start(&s.backend);
                        if cut.take().is_none_or(|cut| cut.send(()).is_err()) {
                            bail!("the storm fleet's thread ended before the cut");
                        }
                        Stage::Storm { cpu, until: Instant::now() + STORM_TIMEOUT }
                    }
                    Stage::Storm { .. } => {
                        bail!("the storm did not settle within {STORM_TIMEOUT:?}")
                    }
                    Stage::After { .. } => Stage::Draining { until: Instant::now() + DRAIN_TIMEOUT },
                    Stage::Draining { .. } => bail!(
                        "{} submitted jobs reached no probe within {DRAIN_TIMEOUT:?} of the last submission",
                        awaiting_frame.len() + in_flight
                    ),
                };
            }
        }
    }

    let (storm, (backend_cpu, bench_cpu, wall)) = storm.context("the storm never ended")?;
    let storm_end = storm.cut + storm.duration;
    let mut baseline = Vec::new();
    let mut during = Vec::new();
    let mut after = Vec::new();
    for sample in &samples {
        if sample.sent < measured_from {
            continue;
        }
        if sample.sent < storm.cut {
            baseline.push(sample);
        } else if sample.sent <= storm_end {
            during.push(sample);
        } else {
            after.push(sample);
        }
    }
    record_phase(result, "baseline", &baseline, None);
    if during.is_empty() {
        result.note(format!(
            "no submission fell within the storm ({:.0} ms long)",
            ms(storm.duration)
        ));
    }
    // The dispatch suite's target (p99 < 10 ms), asked of dispatch during a storm.
    record_phase(result, "storm", &during, Some(Goal::Below(10.0)));
    record_phase(result, "after the storm", &after, None);
    record_storm(&storm, result);
    let pct = |d: Duration| 100.0 * d.as_secs_f64() / wall.as_secs_f64().max(1e-9);
    if s.backend.in_process {
        result.metric(
            "process cpu during the storm (backend + simulated builders)",
            pct(bench_cpu),
            "% of a core",
        );
    } else {
        result.metric(
            "backend cpu during the storm",
            pct(backend_cpu),
            "% of a core",
        );
        result.metric(
            "bench cpu during the storm (storm fleet, probes, submitter)",
            pct(bench_cpu),
            "% of a core",
        );
    }
    let failed_in_storm = failed_submits
        .iter()
        .filter(|(sent, _)| *sent >= storm.cut && *sent <= storm_end)
        .count();
    result.metric(
        "most jobs submitted and not yet dispatched at once",
        most_awaiting as f64,
        "jobs",
    );
    let probe_slots = PROBES * usize::try_from(PROBE_SLOTS).unwrap_or(usize::MAX);
    if most_awaiting > probe_slots {
        result.note(format!(
            "up to {most_awaiting} jobs awaited dispatch at once, more than the probes' {probe_slots} slots: some waited for a slot"
        ));
    }
    result.metric(
        "submissions refused (whole run)",
        failed_submits.len() as f64,
        "jobs",
    );
    result.metric(
        "submissions refused (storm)",
        failed_in_storm as f64,
        "jobs",
    );
    if let Some((_, first)) = failed_submits.first() {
        result.note(format!("first refused submission: {first}"));
    }
    if samples.is_empty() {
        bail!("no job reached a probe");
    }
    Ok(())
}

/// Dispatch latency of the jobs submitted within one phase.
fn record_phase(result: &mut SuiteResult, phase: &str, samples: &[&Sample], goal: Option<Goal>) {
    result.metric(
        format!("{phase}: jobs measured"),
        samples.len() as f64,
        "jobs",
    );
    // The push can beat the HTTP response back to the client: that counts as zero.
    let after_return: Vec<Duration> = samples
        .iter()
        .map(|s| s.arrived.saturating_duration_since(s.returned))
        .collect();
    let after_send: Vec<Duration> = samples
        .iter()
        .map(|s| s.arrived.saturating_duration_since(s.sent))
        .collect();
    let submit_call: Vec<Duration> = samples
        .iter()
        .map(|s| s.returned.saturating_duration_since(s.sent))
        .collect();
    if let Some(latency) = summarize(&after_return) {
        result.metric(
            format!("{phase}: p50 (submit returned -> jobs frame)"),
            ms(latency.p50),
            "ms",
        );
        let p99 = format!("{phase}: p99 (submit returned -> jobs frame)");
        match goal {
            Some(goal) => result.metric_with_target(p99, ms(latency.p99), "ms", goal),
            None => result.metric(p99, ms(latency.p99), "ms"),
        }
        result.metric(
            format!("{phase}: max (submit returned -> jobs frame)"),
            ms(latency.max),
            "ms",
        );
    }
    if let Some(latency) = summarize(&after_send) {
        result.metric(
            format!("{phase}: p50 (submit sent -> jobs frame)"),
            ms(latency.p50),
            "ms",
        );
        result.metric(
            format!("{phase}: p99 (submit sent -> jobs frame)"),
            ms(latency.p99),
            "ms",
        );
    }
    if let Some(call) = summarize(&submit_call) {
        result.metric(
            format!("{phase}: p99 submit call (POST /api/v1/jobs)"),
            ms(call.p99),
            "ms",
        );
    }
}

fn record_storm(storm: &StormOutcome, result: &mut SuiteResult) {
    let sessions = storm.back_after.len();
    result.metric(
        "storm: sessions cut and re-authenticated",
        sessions as f64,
        "sessions",
    );
    result.metric(
        "storm duration (cut -> all re-authenticated)",
        ms(storm.duration),
        "ms",
    );
    result.metric(
        "storm reconnect rate",
        sessions as f64 / storm.duration.as_secs_f64().max(1e-9),
        "sessions/s",
    );
    if let Some(back) = summarize(&storm.back_after) {
        result.metric("storm: cut -> re-authenticated, p50", ms(back.p50), "ms");
        result.metric("storm: cut -> re-authenticated, p99", ms(back.p99), "ms");
    }
    result.metric(
        "storm: dials refused or failed (then retried)",
        storm.failed_dials as f64,
        "dials",
    );
    if let Some(first) = &storm.first_failure {
        result.note(format!("first failed storm dial: {first}"));
    }
}

/// What the storm thread tells the measuring thread.
enum StormReport {
    /// Every storm builder is connected and authenticated.
    Connected { sessions: usize, took: Duration },
    /// Every cut session is authenticated again.
    Reconnected(StormOutcome),
    /// A storm builder did what it must not (lost its session, got a job), or the fleet
    /// failed.
    Broken(String),
}

struct StormOutcome {
    /// Just before the sessions were dropped.
    cut: Instant,
    /// Cut → the last session authenticated again.
    duration: Duration,
    /// Cut → each session authenticated again.
    back_after: Vec<Duration>,
    failed_dials: u64,
    first_failure: Option<String>,
}

/// Starts the storm fleet on its own thread: it connects every identity, reports
/// [`StormReport::Connected`], waits for `cut`, drops every session at once and dials them
/// all back concurrently, reports [`StormReport::Reconnected`], and holds the sessions until
/// `stop` (or until the measuring side is gone).
fn start_storm_fleet(
    identities: Vec<Identity>,
    ws_url: String,
    cut: oneshot::Receiver<()>,
    stop: oneshot::Receiver<()>,
    reports: mpsc::UnboundedSender<StormReport>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("storm-fleet".into())
        .spawn(move || {
            actix_rt::System::new().block_on(async move {
                if let Err(e) = run_storm_fleet(identities, ws_url, cut, stop, &reports).await {
                    let _ = reports.send(StormReport::Broken(format!(
                        "the storm fleet failed: {e:#}"
                    )));
                }
            });
        })
        .context("starting the storm fleet's thread")
}

async fn run_storm_fleet(
    identities: Vec<Identity>,
    ws_url: String,
    mut cut: oneshot::Receiver<()>,
    mut stop: oneshot::Receiver<()>,
    reports: &mpsc::UnboundedSender<StormReport>,
) -> anyhow::Result<()> {
    let (events, mut storm_events) = mpsc::unbounded_channel();
    let behaviour = Rc::new(Behaviour {
        refill: false,
        ..Behaviour::noop(STORM_RECIPE, 0)
    });
    let counters = Rc::new(Counters::default());
    let builders = identities
        .into_iter()
        .enumerate()
        .map(|(index, identity)| {
            let client = awc::Client::builder()
                .local_address(storm_address(index)?)
                .timeout(DIAL_TIMEOUT)
                .finish();
            let ctx = FleetContext {
                client,
                ws_url: ws_url.clone(),
                behaviour: behaviour.clone(),
                events: events.clone(),
                counters: counters.clone(),
            };
            Ok((ctx, Rc::new(identity)))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let forward = |event: Event| {
        if let Some(problem) = storm_event_problem(event) {
            let _ = reports.send(StormReport::Broken(problem));
        }
    };

    let connecting = Instant::now();
    let deadline = connecting + STORM_TIMEOUT;
    let dials = futures_util::stream::iter(builders.iter().enumerate())
        .map(|(index, (ctx, identity))| dial(ctx, index, identity.clone(), deadline))
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect::<Vec<_>>();
    let fleet = tokio::select! {
        dialled = dials => dialled
            .into_iter()
            .map(|d| d.map(|d| d.builder))
            .collect::<anyhow::Result<Vec<SimBuilder>>>()?,
        _ = &mut stop => return Ok(()),
    };
    let _ = reports.send(StormReport::Connected {
        sessions: fleet.len(),
        took: connecting.elapsed(),
    });
    loop {
        tokio::select! {
            signal = &mut cut => match signal {
                Ok(()) => break,
                Err(_) => return Ok(()),
            },
            _ = &mut stop => return Ok(()),
            Some(event) = storm_events.recv() => forward(event),
        }
    }

    let cut_at = Instant::now();
    // Dropping a session aborts its task, which closes its socket without a close frame, as
    // a network cut would; the aborted tasks report nothing.
    drop(fleet);
    let deadline = cut_at + STORM_TIMEOUT;
    let dials = futures_util::future::join_all(
        builders
            .iter()
            .enumerate()
            .map(|(index, (ctx, identity))| dial(ctx, index, identity.clone(), deadline)),
    );
    let dialled = tokio::select! {
        dialled = dials => dialled.into_iter().collect::<anyhow::Result<Vec<Dialled>>>()?,
        _ = &mut stop => return Ok(()),
    };
    let duration = dialled
        .iter()
        .map(|d| d.at.saturating_duration_since(cut_at))
        .max()
        .unwrap_or_default();
    let outcome = StormOutcome {
        cut: cut_at,
        duration,
        back_after: dialled
            .iter()
            .map(|d| d.at.saturating_duration_since(cut_at))
            .collect(),
        failed_dials: dialled.iter().map(|d| u64::from(d.failures)).sum(),
        first_failure: dialled.iter().find_map(|d| d.first_failure.clone()),
    };
    let fleet: Vec<SimBuilder> = dialled.into_iter().map(|d| d.builder).collect();
    while let Ok(event) = storm_events.try_recv() {
        forward(event);
    }
    let _ = reports.send(StormReport::Reconnected(outcome));
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(event) = storm_events.recv() => forward(event),
        }
    }
    drop(fleet);
    Ok(())
}

/// What a storm builder must not do: lose its session, or be given a job.
fn storm_event_problem(event: Event) -> Option<String> {
    match event {
        Event::Lost { builder, reason } => Some(format!(
            "storm builder {builder} lost its session: {reason}"
        )),
        Event::Assigned { builder, job, .. } => Some(format!(
            "storm builder {builder} was assigned job {} although it asked for no work",
            job.job_id.0
        )),
        _ => None,
    }
}

/// A storm builder's own source address: 127.1.0.1 onwards, one per builder.
fn storm_address(index: usize) -> anyhow::Result<IpAddr> {
    let offset = u32::try_from(index).context("too many storm builders")?;
    let address = u32::from(FIRST_STORM_ADDRESS)
        .checked_add(offset)
        .filter(|a| *a < u32::from(Ipv4Addr::new(127, 255, 255, 255)))
        .context("too many storm builders for 127.0.0.0/8")?;
    Ok(IpAddr::V4(Ipv4Addr::from(address)))
}

struct Dialled {
    builder: SimBuilder,
    /// When it was authenticated.
    at: Instant,
    /// Dials that failed before this one.
    failures: u32,
    first_failure: Option<String>,
}

/// Dials until authenticated, backing off after each failure as the real builder does.
async fn dial(
    ctx: &FleetContext,
    index: usize,
    identity: Rc<Identity>,
    deadline: Instant,
) -> anyhow::Result<Dialled> {
    let mut step = INITIAL_BACKOFF;
    let mut failures = 0u32;
    let mut first_failure = None;
    loop {
        match fleet::connect(ctx, index, identity.clone()).await {
            Ok(builder) => {
                return Ok(Dialled {
                    builder,
                    at: Instant::now(),
                    failures,
                    first_failure,
                })
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let delay = step / 2 + (step / 2).mul_f64(rand::random::<f64>());
                if Instant::now() + delay > deadline {
                    return Err(e.context(format!(
                        "storm builder {index}: {failures} dials failed, giving up"
                    )));
                }
                first_failure.get_or_insert_with(|| format!("{e:#}"));
                actix_rt::time::sleep(delay).await;
                step = step.saturating_mul(2).min(MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storm_addresses_are_distinct_loopback_addresses() {
        let first = storm_address(0).ok();
        let later = storm_address(5_000).ok();
        assert_eq!(first, Some(IpAddr::V4(Ipv4Addr::new(127, 1, 0, 1))));
        assert_eq!(later, Some(IpAddr::V4(Ipv4Addr::new(127, 1, 19, 137))));
        assert!(later.is_some_and(|a| a.is_loopback()));
        // The last address below 127.255.255.255, then none.
        assert_eq!(
            storm_address(16_711_677).ok(),
            Some(IpAddr::V4(Ipv4Addr::new(127, 255, 255, 254)))
        );
        assert!(storm_address(16_711_678).is_err());
        assert!(storm_address(usize::MAX).is_err());
    }
}
