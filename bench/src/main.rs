//! `buildfleet-bench`: the real backend on loopback against real builder processes and
//! against simulated builders (real WebSocket clients, real keys, the real protocol), on
//! SQLite and PostgreSQL. Prints a table and optionally writes JSON. How to run it and what
//! it found: docs/benchmarks.md.

mod api;
mod fleet;
mod floors;
mod procfs;
mod report;
mod sse;
mod stats;
mod suites;
mod target;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use serde_json::json;

use crate::report::SuiteResult;
use crate::suites::{RunOptions, Suite};
use crate::target::{BackendMode, DbKind};

#[derive(Debug, Parser)]
#[command(
    name = "buildfleet-bench",
    about = "Buildfleet benchmarks (see docs/benchmarks.md)"
)]
struct Cli {
    /// Which suite to run.
    #[arg(value_enum)]
    suite: Suite,
    /// Databases to run against; PostgreSQL reads BUILDFLEET_BENCH_POSTGRES_URL or
    /// BUILDFLEET_TEST_POSTGRES_URL (an admin URL; a fresh database is made per suite).
    #[arg(long, value_enum, default_value = "sqlite")]
    db: DbChoice,
    /// Every suite tiny (seconds in total): checks that each produces numbers, no thresholds.
    #[arg(long)]
    smoke: bool,
    /// Also write the results here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// How to run the backend; default: the `buildfleet` binary next to this one if built,
    /// else in-process.
    #[arg(long, value_enum)]
    backend: Option<BackendChoice>,
    /// Directory with the `buildfleet` and `buildfleet-builder` binaries (default: this
    /// executable's directory).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Number of idle sessions, or of reconnect-storm builders (default 10000 and 5000, smoke
    /// 50; capped by the fd limit).
    #[arg(long)]
    sessions: Option<usize>,
    /// Number of jobs of the dispatch, lifecycle and real-builder throughput suites (default
    /// 1000, 10000 and 500).
    #[arg(long)]
    jobs: Option<usize>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum DbChoice {
    Sqlite,
    Postgres,
    Both,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum BackendChoice {
    Binary,
    InProcess,
}

fn find_binary(dir: Option<&PathBuf>, name: &str) -> Option<PathBuf> {
    match dir {
        Some(dir) => Some(dir.join(name)).filter(|p| p.is_file()),
        None => target::sibling_binary(name),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let fd_limit = procfs::raise_fd_limit();
    let backend_binary = find_binary(cli.bin_dir.as_ref(), "buildfleet");
    let backend = match (cli.backend, backend_binary) {
        (Some(BackendChoice::InProcess), _) | (None, None) => BackendMode::InProcess,
        (_, Some(path)) => BackendMode::Binary(path),
        (Some(BackendChoice::Binary), None) => {
            eprintln!("error: no `buildfleet` binary found; build it: cargo build --release -p buildfleet-backend");
            return ExitCode::FAILURE;
        }
    };
    let options = RunOptions {
        backend,
        builder_binary: find_binary(cli.bin_dir.as_ref(), "buildfleet-builder"),
        stamp_binary: find_binary(cli.bin_dir.as_ref(), "buildfleet-bench-stamp"),
        smoke: cli.smoke,
        sessions: cli.sessions,
        jobs: cli.jobs,
        fd_limit,
    };
    let dbs = match cli.db {
        DbChoice::Sqlite => vec![DbKind::Sqlite],
        DbChoice::Postgres => vec![DbKind::Postgres],
        DbChoice::Both => vec![DbKind::Sqlite, DbKind::Postgres],
    };
    let suites: Vec<Suite> = match cli.suite {
        Suite::All => Suite::EACH.to_vec(),
        one => vec![one],
    };
    let started = std::time::SystemTime::now();
    eprintln!(
        "buildfleet-bench: {} on {} ({}), backend {}, fd limit {fd_limit}",
        suites
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", "),
        dbs.iter().map(|d| d.name()).collect::<Vec<_>>().join(" + "),
        if cli.smoke { "smoke" } else { "full" },
        options.backend.describe()
    );
    let results = actix_rt::System::new().block_on(async {
        let mut results: Vec<SuiteResult> = Vec::new();
        for db in &dbs {
            for suite in &suites {
                eprintln!("running {} on {} ...", suite.name(), db.name());
                let clock = std::time::Instant::now();
                let result = suites::run(*suite, *db, &options).await;
                match &result.error {
                    Some(e) => eprintln!("  failed after {:.1?}: {e}", clock.elapsed()),
                    None => eprintln!("  done in {:.1?}", clock.elapsed()),
                }
                results.push(result);
            }
        }
        results
    });
    println!("{}", report::table(&results));

    if let Some(path) = &cli.json {
        let document = json!({
            "started_at_unix": started.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            "smoke": cli.smoke,
            "backend": options.backend.describe(),
            "fd_limit": fd_limit,
            "machine": machine(),
            "git": git_state(),
            "results": results,
        });
        let text = serde_json::to_string_pretty(&document).unwrap_or_default();
        if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!("error: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        eprintln!("wrote {}", path.display());
    }

    let failed: Vec<String> = results
        .iter()
        .filter(|r| !r.has_numbers())
        .map(|r| format!("{} on {}", r.suite, r.db))
        .collect();
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("error: no numbers from {}", failed.join(", "));
        ExitCode::FAILURE
    }
}

/// What the numbers were measured on.
fn machine() -> serde_json::Value {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let mem_total_kib: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "memory_gib": mem_total_kib as f64 / 1024.0 / 1024.0,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "load_average": read("/proc/loadavg").trim(),
    })
}

fn git_state() -> serde_json::Value {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    json!({
        "commit": git(&["rev-parse", "HEAD"]),
        "dirty_files": git(&["status", "--porcelain"]).map(|s| s.lines().count()),
    })
}
