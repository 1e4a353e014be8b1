//! Builder footprint: the resident memory of a real, idle `buildfleet-builder run` process,
//! and how long a job takes from assignment to its recipe's process starting (the recipe
//! writes a nanosecond timestamp, uploaded as its artifact).

use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use buildfleet_api::{JobDetail, JobState, SubmitJob};

use crate::api::Api;
use crate::fleet::Identity;
use crate::procfs;
use crate::report::SuiteResult;
use crate::stats::{ms, summarize};
use crate::target::{Backend, BackendSettings, DbKind};

use super::RunOptions;

const RECIPE: &str = "bench-timestamp";

pub async fn run(db: DbKind, options: &RunOptions, result: &mut SuiteResult) -> anyhow::Result<()> {
    let Some(binary) = options.builder_binary.clone() else {
        bail!("the buildfleet-builder binary is not built next to this one (cargo build --release -p buildfleet-builder)");
    };
    let jobs = options.size(10, 2);
    result.param("jobs", jobs);
    result.param("builder_binary", binary.display().to_string());
    let backend = Backend::start(&options.backend, db, &BackendSettings::default()).await?;
    let api = Api::new(&backend);
    let dir = backend.data_dir.join("real-builder");
    std::fs::create_dir_all(&dir)?;
    let identity = Identity::generate("bench-real-builder".into())?;
    let key_path = dir.join("id_ed25519");
    write_private(&key_path, &identity.private_openssh()?)?;
    let builder_id = api
        .admit_builder(&identity.name, &identity.public_openssh)
        .await?;
    let config = dir.join("builder.toml");
    let ws_base = backend.http_url.replacen("http://", "ws://", 1);
    std::fs::write(
        &config,
        builder_config(&ws_base, &key_path, &identity.name, &dir.join("work")),
    )?;

    let log = std::fs::File::create(dir.join("builder.log"))?;
    let child = Process::new(&binary)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let mut child = KillOnDrop(child);
    let pid = child.0.id();
    let spawned = Instant::now();
    wait_connected(&api, builder_id, Duration::from_secs(30)).await?;
    result.metric(
        "start -> connected and authenticated",
        ms(spawned.elapsed()),
        "ms",
    );
    actix_rt::time::sleep(Duration::from_secs(1)).await;
    result.metric(
        "builder rss, idle and connected",
        procfs::rss_kib(pid)? as f64 / 1024.0,
        "MiB",
    );
    result.metric("builder threads", thread_count(pid) as f64, "threads");

    let source = api.upload_source(source_archive()?).await?;
    let mut from_submit = Vec::new();
    let mut from_assigned = Vec::new();
    let mut end_to_end = Vec::new();
    for _ in 0..jobs {
        let job = api
            .submit_body(&SubmitJob {
                max_attempts: Some(1),
                ..SubmitJob::new(source.as_str(), RECIPE)
            })
            .await?;
        let submitted_ns = unix_ns();
        let submitted = Instant::now();
        let detail = wait_finished(&api, job, Duration::from_secs(60)).await?;
        end_to_end.push(submitted.elapsed());
        if detail.job.state != JobState::Succeeded {
            bail!(
                "job {job} ended {}: {}",
                detail.job.state,
                detail.job.error.as_deref().unwrap_or_default()
            );
        }
        let stamp = api
            .get_bytes(&format!("/api/v1/jobs/{job}/artifacts/started"))
            .await?;
        let started_ns: i128 = String::from_utf8_lossy(&stamp)
            .trim()
            .parse()
            .context("the recipe's timestamp")?;
        let assigned_ms = detail
            .attempts
            .first()
            .map(|a| a.assigned_at)
            .context("the job has no attempt")?;
        from_submit.push(duration_ns(started_ns - submitted_ns));
        from_assigned.push(duration_ns(
            started_ns - i128::from(assigned_ms) * 1_000_000,
        ));
    }
    let s = summarize(&from_assigned).context("no jobs")?;
    result.metric("assignment -> recipe process started, p50", ms(s.p50), "ms");
    result.metric("assignment -> recipe process started, max", ms(s.max), "ms");
    if let Some(s) = summarize(&from_submit) {
        result.metric(
            "submit returned -> recipe process started, p50",
            ms(s.p50),
            "ms",
        );
    }
    if let Some(s) = summarize(&end_to_end) {
        result.metric(
            "submit -> job succeeded (seen by polling), p50",
            ms(s.p50),
            "ms",
        );
    }
    result.note("assignment time is the attempt's assigned_at (ms resolution, backend clock = this machine's)");
    actix_rt::time::sleep(Duration::from_secs(1)).await;
    result.metric(
        "builder rss after the jobs",
        procfs::rss_kib(pid)? as f64 / 1024.0,
        "MiB",
    );
    let _ = child.0.kill();
    let _ = child.0.wait();
    Ok(())
}

pub(crate) struct KillOnDrop(pub(crate) std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn builder_config(ws_base: &str, key: &Path, name: &str, work_dir: &Path) -> String {
    format!(
        r#"backend_url = {ws_base:?}
key = {key:?}
name = {name:?}
work_dir = {work_dir:?}
max_concurrent_jobs = 1

[[recipes]]
name = "{RECIPE}"
version = "1"
commands = [["sh", "-c", "date +%s%N > \"$0\"", "${{BUILDFLEET_OUT}}/started"]]

[[recipes.artifacts]]
name = "started"
path = "started"
"#,
        key = key.display().to_string(),
        work_dir = work_dir.display().to_string(),
    )
}

pub(crate) fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    std::io::Write::write_all(&mut file, text.as_bytes())?;
    Ok(())
}

/// A gzipped tarball with one small file: what the builder fetches and unpacks.
pub(crate) fn source_archive() -> anyhow::Result<Vec<u8>> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(encoder);
    let contents = b"a source archive for the builder footprint benchmark\n";
    let mut header = tar::Header::new_gnu();
    header.set_size(contents.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "bench/README", &contents[..])?;
    Ok(tar.into_inner()?.finish()?)
}

pub(crate) async fn wait_connected(api: &Api, builder: i64, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if api.builder(builder).await?.connected {
            return Ok(());
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("the builder did not connect within {limit:?}")
}

async fn wait_finished(api: &Api, job: i64, limit: Duration) -> anyhow::Result<JobDetail> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let detail = api.job(job).await?;
        if detail.job.state.is_terminal() {
            return Ok(detail);
        }
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("job {job} did not finish within {limit:?}")
}

fn unix_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(0))
}

/// A non-negative duration from nanoseconds (clock steps make a negative one zero).
fn duration_ns(ns: i128) -> Duration {
    Duration::from_nanos(u64::try_from(ns.max(0)).unwrap_or(u64::MAX))
}

fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}
