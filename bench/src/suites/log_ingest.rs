//! Log ingestion: builders streaming log lines into storage at once, each keeping a bounded
//! window of unacknowledged lines as a real builder does, with one live viewer following one
//! job's log over `GET /api/v1/jobs/{id}/log/stream`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;

use crate::api::http_client;
use crate::fleet::{self, Behaviour, Command, Event};
use crate::report::{Goal, SuiteResult};
use crate::target::{BackendSettings, DbKind};

use super::{setup, CpuMeter, RunOptions};

const RECIPE: &str = "bench-logs";
const LINE_BYTES: usize = 120;
/// Unacknowledged line bytes per job (a real builder buffers up to 8 MiB).
const WINDOW_BYTES: usize = 1024 * 1024;

pub async fn run(db: DbKind, options: &RunOptions, result: &mut SuiteResult) -> anyhow::Result<()> {
    let builders = options.size(50, 5);
    let lines = options.size(40_000u64, 300);
    let time_limit = options.size(Duration::from_secs(300), Duration::from_secs(60));
    result.param("builders", builders);
    result.param("lines_per_builder", lines);
    result.param("line_bytes", LINE_BYTES);
    result.param("window_bytes", WINDOW_BYTES);
    let behaviour = Behaviour {
        auto_complete: false,
        refill: false,
        ..Behaviour::noop(RECIPE, 1)
    };
    let mut s = setup(db, options, &BackendSettings::default(), behaviour, result).await?;
    let identities = fleet::admit_fleet(&s.api, "logs", builders, 16).await?;
    let fleet = fleet::connect_fleet(&s.fleet, &identities, 32).await?;
    for _ in 0..builders {
        s.api.submit(RECIPE).await?;
    }
    let mut assigned: HashMap<usize, i64> = HashMap::new();
    while assigned.len() < builders {
        let (builder, job) =
            fleet::wait_for(&mut s.events, Duration::from_secs(30), "assignments", |e| {
                Ok(match e {
                    Event::Assigned { builder, job, .. } => Some((builder, job.job_id.0)),
                    _ => None,
                })
            })
            .await?;
        assigned.insert(builder, job);
    }

    // The viewer subscribes before the first line.
    let watched = assigned[&0];
    let viewer = actix_rt::spawn(watch(
        format!("{}/api/v1/jobs/{watched}/log/stream", s.backend.http_url),
        lines,
        time_limit,
    ));
    actix_rt::time::sleep(Duration::from_millis(200)).await;

    let line: Arc<str> = Arc::from(sample_line(LINE_BYTES));
    let stored_before = s
        .api
        .metric("buildfleet_log_bytes_stored_total")
        .await
        .unwrap_or(0.0);
    let cpu = CpuMeter::start(&s.backend);
    let started = Instant::now();
    for builder in &fleet {
        builder.command(Command::Stream {
            job_id: assigned[&builder.index],
            lines,
            line: line.clone(),
            window_bytes: WINDOW_BYTES,
        });
    }
    let mut done = 0;
    let (mut total_lines, mut total_bytes) = (0u64, 0u64);
    let mut last = started;
    let mut watched_done = None;
    let deadline = tokio::time::Instant::now() + time_limit;
    while done < builders {
        match tokio::time::timeout_at(deadline, s.events.recv()).await {
            Ok(Some(Event::StreamDone {
                job_id,
                lines,
                bytes,
                at,
                ..
            })) => {
                done += 1;
                total_lines += lines;
                total_bytes += bytes;
                last = at;
                if job_id == watched {
                    watched_done = Some(at);
                }
            }
            Ok(Some(Event::Lost { builder, reason })) => {
                anyhow::bail!("builder {builder} lost: {reason}")
            }
            Ok(Some(_)) => {}
            Ok(None) => anyhow::bail!("all builders stopped"),
            Err(_) => {
                anyhow::bail!("only {done} of {builders} builders finished within {time_limit:?}")
            }
        }
    }
    let elapsed = last - started;
    let stored = s
        .api
        .metric("buildfleet_log_bytes_stored_total")
        .await
        .unwrap_or(0.0)
        - stored_before;
    let secs = elapsed.as_secs_f64().max(1e-9);
    result.metric_with_target(
        "ingestion (line text)",
        total_bytes as f64 / secs / 1e6,
        "MB/s",
        Goal::AtLeast(100.0),
    );
    result.metric("ingestion (lines)", total_lines as f64 / secs, "lines/s");
    result.metric(
        "ingestion (stored JSONL bytes)",
        stored / secs / 1e6,
        "MB/s",
    );
    result.metric("line text ingested", total_bytes as f64 / 1e6, "MB");
    result.metric("wall time", secs, "s");
    cpu.record(result);
    let watch = viewer.await?;
    result.metric(
        "live viewer records received",
        watch.records as f64,
        "records",
    );
    result.metric("live viewer records expected", lines as f64, "records");
    if let (Some(done), Some(seen)) = (watched_done, watch.last_record_at) {
        let lag = if seen > done {
            (seen - done).as_secs_f64()
        } else {
            -(done - seen).as_secs_f64()
        };
        result.metric("live viewer: last record after last ack", lag * 1e3, "ms");
    }
    if let Some(e) = watch.error {
        result.note(format!("live viewer: {e}"));
    }
    Ok(())
}

fn sample_line(len: usize) -> String {
    let base = "warning: unused variable `x` --> src/lib.rs:42:9 | help: if this is intentional, prefix it with an underscore ";
    base.chars().cycle().take(len).collect()
}

struct Watch {
    records: u64,
    last_record_at: Option<Instant>,
    error: Option<String>,
}

/// Follows a live log until `expected` records arrived or `limit` passed.
async fn watch(url: String, expected: u64, limit: Duration) -> Watch {
    let mut watch = Watch {
        records: 0,
        last_record_at: None,
        error: None,
    };
    let response = http_client(limit).get(&url).send().await;
    let mut response = match response {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => {
            watch.error = Some(format!("status {}", r.status()));
            return watch;
        }
        Err(e) => {
            watch.error = Some(e.to_string());
            return watch;
        }
    };
    let deadline = tokio::time::Instant::now() + limit;
    // Records are unnamed events (`id: …\ndata: …\n\n`); count them across chunk boundaries.
    let mut carry: Vec<u8> = Vec::new();
    while watch.records < expected {
        match tokio::time::timeout_at(deadline, response.next()).await {
            Ok(Some(Ok(chunk))) => {
                carry.extend_from_slice(&chunk);
                let mut start = 0;
                while let Some(end) = find(&carry[start..], b"\n\n") {
                    let event = &carry[start..start + end];
                    if find(event, b"data: ").is_some() && find(event, b"event: ").is_none() {
                        watch.records += 1;
                        watch.last_record_at = Some(Instant::now());
                    }
                    start += end + 2;
                }
                carry.drain(..start);
            }
            Ok(Some(Err(e))) => {
                watch.error = Some(e.to_string());
                break;
            }
            Ok(None) => break,
            Err(_) => {
                watch.error = Some(format!(
                    "timed out with {} of {expected} records",
                    watch.records
                ));
                break;
            }
        }
    }
    watch
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
