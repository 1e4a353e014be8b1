//! Idle sessions: many authenticated builders connected to one backend; the backend's
//! resident memory per session, and the CPU it spends on heartbeats while nothing runs.

use std::time::{Duration, Instant};

use crate::fleet::{self, Behaviour};
use crate::procfs;
use crate::report::{Goal, SuiteResult};
use crate::target::{BackendSettings, DbKind};

use super::{setup, RunOptions};

const RECIPE: &str = "bench-noop";
/// Descriptors kept free for the database, storage and the API.
const FD_RESERVE: u64 = 256;

pub async fn run(db: DbKind, options: &RunOptions, result: &mut SuiteResult) -> anyhow::Result<()> {
    let wanted = options.sessions.unwrap_or(options.size(10_000, 50));
    // Client and backend each hold one descriptor per session (one process each, or both in
    // one process in in-process mode).
    let per_process = if matches!(options.backend, crate::target::BackendMode::InProcess) {
        2
    } else {
        1
    };
    let fit = usize::try_from(options.fd_limit.saturating_sub(FD_RESERVE) / per_process)
        .unwrap_or(usize::MAX);
    let sessions = wanted.min(fit);
    if sessions < wanted {
        result.note(format!(
            "scaled down from {wanted} to {sessions} sessions: fd limit {}",
            options.fd_limit
        ));
    }
    // Smoke: heartbeats fast enough that the short idle window sees some.
    let heartbeat = options.size(Duration::from_secs(10), Duration::from_millis(500));
    let idle_window = options.size(Duration::from_secs(30), Duration::from_secs(2));
    let settings = BackendSettings {
        heartbeat_interval: Some(heartbeat),
        heartbeat_timeout: Some(heartbeat * 3),
        ..BackendSettings::default()
    };
    result.param("sessions", sessions);
    result.param("heartbeat_interval_ms", heartbeat.as_millis() as u64);
    result.param("idle_window_s", idle_window.as_secs_f64());
    // Builders that never ask for work: credits 0, no jobs, only heartbeats and pings.
    let behaviour = Behaviour {
        refill: false,
        ..Behaviour::noop(RECIPE, 0)
    };
    let s = setup(db, options, &settings, behaviour, result).await?;
    let pid = s.backend.pid;
    let admitted_at = Instant::now();
    let identities = fleet::admit_fleet(&s.api, "idle", sessions, 32).await?;
    result.metric(
        "admission rate (POST /api/v1/builders)",
        sessions as f64 / admitted_at.elapsed().as_secs_f64(),
        "builders/s",
    );
    // Let the allocator settle after the admissions before the baseline.
    actix_rt::time::sleep(Duration::from_secs(1)).await;
    let baseline = procfs::rss_kib(pid)?;

    let connecting = Instant::now();
    let fleet = fleet::connect_fleet(&s.fleet, &identities, 64).await?;
    let connect_time = connecting.elapsed();
    result.metric(
        "connect + authenticate rate",
        fleet.len() as f64 / connect_time.as_secs_f64(),
        "sessions/s",
    );
    actix_rt::time::sleep(Duration::from_secs(2)).await;
    let connected = procfs::rss_kib(pid)?;
    let per_session = connected.saturating_sub(baseline) as f64 / fleet.len().max(1) as f64;
    result.metric(
        "backend rss before sessions",
        baseline as f64 / 1024.0,
        "MiB",
    );
    result.metric(
        "backend rss with sessions",
        connected as f64 / 1024.0,
        "MiB",
    );
    result.metric_with_target(
        "backend rss per idle session",
        per_session,
        "KiB",
        Goal::AtMost(20.0),
    );
    result.metric("backend open fds", procfs::open_fds(pid) as f64, "fds");

    let heartbeats_before = s.fleet.counters.heartbeats_sent.get();
    let pongs_before = s.fleet.counters.pongs_sent.get();
    let cpu_before = procfs::cpu_time(pid)?;
    let idle_started = Instant::now();
    actix_rt::time::sleep(idle_window).await;
    let cpu = procfs::cpu_time(pid)?.saturating_sub(cpu_before);
    let wall = idle_started.elapsed();
    let heartbeats = s.fleet.counters.heartbeats_sent.get() - heartbeats_before;
    let pongs = s.fleet.counters.pongs_sent.get() - pongs_before;
    result.metric(
        "heartbeats received (idle window)",
        heartbeats as f64,
        "frames",
    );
    result.metric("pings answered (idle window)", pongs as f64, "frames");
    result.metric(
        "backend cpu while idle",
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64(),
        "% of a core",
    );
    if heartbeats > 0 {
        result.metric(
            "backend cpu per heartbeat",
            cpu.as_secs_f64() * 1e6 / heartbeats as f64,
            "us",
        );
    }
    let after = procfs::rss_kib(pid)?;
    result.metric(
        "backend rss after idle window",
        after as f64 / 1024.0,
        "MiB",
    );
    drop(fleet);
    Ok(())
}
