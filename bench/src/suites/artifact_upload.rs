//! Artifact upload: one large artifact streamed over `PUT {upload_url}/{name}` with its
//! declared SHA-256, which the backend checks on the fly; its throughput next to this
//! filesystem's own write+fsync speed measured in the same run, and the backend's peak
//! memory while it runs.

use std::cell::Cell;
use std::io::Write as _;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use buildfleet_protocol::{ArtifactDigest, Sha256Digest};
use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use crate::api::http_client;
use crate::fleet::{self, Behaviour, Command, Event};
use crate::procfs;
use crate::report::{Goal, SuiteResult};
use crate::target::{BackendSettings, DbKind};

use super::{setup, RunOptions};

const RECIPE: &str = "bench-artifact";
const MIB: usize = 1024 * 1024;
/// Request body chunks, as a builder streaming a file would send them.
const CHUNK: usize = 256 * 1024;
const SAMPLE_EVERY: Duration = Duration::from_millis(10);

pub async fn run(db: DbKind, options: &RunOptions, result: &mut SuiteResult) -> anyhow::Result<()> {
    let size_mib = options.size(1024, 64);
    let size = size_mib * MIB;
    result.param("artifact_bytes", size);
    let behaviour = Behaviour {
        auto_complete: false,
        refill: false,
        ..Behaviour::noop(RECIPE, 1)
    };
    let mut s = setup(db, options, &BackendSettings::default(), behaviour, result).await?;
    let identities = fleet::admit_fleet(&s.api, "artifact", 1, 1).await?;
    let fleet = fleet::connect_fleet(&s.fleet, &identities, 1).await?;
    s.api.submit(RECIPE).await?;
    let job = fleet::wait_for(
        &mut s.events,
        Duration::from_secs(30),
        "the assignment",
        |e| {
            Ok(match e {
                Event::Assigned { job, .. } => Some(job),
                _ => None,
            })
        },
    )
    .await?;

    // The body: one random MiB repeated, so generating it costs nothing; its digest first.
    let block = Bytes::from((0..MIB).map(|_| rand::random::<u8>()).collect::<Vec<u8>>());
    let sha256 = {
        let mut hasher = Sha256::new();
        for _ in 0..size_mib {
            hasher.update(&block);
        }
        hex::encode(hasher.finalize())
    };

    let probe = s.backend.data_dir.join("disk-probe");
    let disk = disk_write_speed(probe.clone(), block.clone(), size_mib).await?;
    result.metric("disk write+fsync (same filesystem)", disk / 1e6, "MB/s");

    let pid = s.backend.pid;
    let peak_reset = procfs::reset_peak_rss(pid);
    let baseline = procfs::rss_kib(pid)?;
    let peak = Rc::new(Cell::new(baseline));
    let sampling = Rc::new(Cell::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        actix_rt::spawn(async move {
            while sampling.get() {
                if let Ok(rss) = procfs::rss_kib(pid) {
                    peak.set(peak.get().max(rss));
                }
                actix_rt::time::sleep(SAMPLE_EVERY).await;
            }
        })
    };
    let chunks = (0..size / CHUNK).map(move |i| {
        let offset = (i * CHUNK) % MIB;
        Ok::<_, std::io::Error>(block.slice(offset..offset + CHUNK))
    });
    let started = Instant::now();
    let mut response = http_client(Duration::from_secs(1800))
        .put(format!("{}/artifact.bin", job.upload_url))
        .bearer_auth(&job.job_token)
        .insert_header(("X-Buildfleet-Sha256", sha256.as_str()))
        .send_stream(futures_util::stream::iter(chunks))
        .await
        .map_err(|e| anyhow::anyhow!("uploading: {e}"))?;
    let upload_time = started.elapsed();
    sampling.set(false);
    let _ = sampler.await;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if status.as_u16() != 201 || body["sha256"].as_str() != Some(sha256.as_str()) {
        bail!("upload answered {status}: {body}");
    }
    let mut peak_kib = peak.get();
    if peak_reset {
        peak_kib = peak_kib.max(procfs::peak_rss_kib(pid).unwrap_or(0));
    }
    let upload = size as f64 / upload_time.as_secs_f64();
    result.metric(
        "upload (SHA-256 checked, stored, fsynced)",
        upload / 1e6,
        "MB/s",
    );
    result.metric_with_target(
        "upload / disk write+fsync",
        100.0 * upload / disk,
        "%",
        Goal::AtLeast(80.0),
    );
    result.metric("backend rss before upload", baseline as f64 / 1024.0, "MiB");
    result.metric(
        "backend peak rss during upload",
        peak_kib as f64 / 1024.0,
        "MiB",
    );
    result.metric(
        "backend peak rss growth",
        peak_kib.saturating_sub(baseline) as f64 / 1024.0,
        "MiB",
    );
    if !peak_reset {
        result.note("could not reset VmHWM; the peak is from 10 ms samples only");
    }

    // Publish it: the completion names the artifact and its digest.
    let digest = ArtifactDigest {
        name: "artifact.bin".into(),
        size: size as u64,
        sha256: sha256.parse::<Sha256Digest>().context("digest")?,
    };
    fleet[0].command(Command::Complete {
        job_id: job.job_id.0,
        artifacts: vec![digest],
    });
    let accepted = fleet::wait_for(
        &mut s.events,
        Duration::from_secs(60),
        "the completion ack",
        |e| {
            Ok(match e {
                Event::Completed { accepted, .. } => Some(accepted),
                _ => None,
            })
        },
    )
    .await?;
    if !accepted {
        bail!("the backend refused the completion naming the uploaded artifact");
    }
    Ok(())
}

/// Writes `size_mib` MiB to `path` in 1 MiB writes, then fsyncs: bytes per second.
async fn disk_write_speed(path: PathBuf, block: Bytes, size_mib: usize) -> anyhow::Result<f64> {
    actix_rt::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut file = std::fs::File::create(&path)?;
        for _ in 0..size_mib {
            file.write_all(&block)?;
        }
        file.sync_all()?;
        let speed = (size_mib * MIB) as f64 / started.elapsed().as_secs_f64();
        drop(file);
        std::fs::remove_file(&path)?;
        Ok(speed)
    })
    .await?
}
