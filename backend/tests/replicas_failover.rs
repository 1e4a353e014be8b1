//! Issue 16 item 4: builders fail over between backend replicas. Three real `buildfleet serve`
//! processes share one PostgreSQL database and one S3 bucket (`[storage] kind = "s3"`,
//! `replicas = 3`); six real `buildfleet-builder` processes (three slots each) dial them with
//! the list of all three URLs, each starting with another replica (builder i: replicas i, i+1,
//! i+2, mod 3), so every replica has builders. Short jobs, each with a source archive of its
//! own uploaded through the replica it is submitted through, are queued round-robin through
//! all three. Once about a third have finished, and while the victim replica's builders run
//! several, that replica is SIGKILLed; the rest of the jobs are then submitted through the two
//! survivors.
//!
//! What each check guards:
//! - **resumed within 5 s**: every builder connected to the victim just before the SIGKILL is
//!   connected to a survivor (its `GET /builders` says `connected`) within [`RESUME_LIMIT`],
//!   polled every 50 ms: a builder that waits out a backoff on the dead URL, or one whose
//!   re-authentication a survivor refuses (another backend id in the challenge), fails it;
//! - **0 lost**: the survivors list exactly the submitted jobs, every one `succeeded`;
//! - **0 stuck**: all of them terminal within [`DRAIN_LIMIT`] of the last submission;
//! - **resumed, not requeued**: no attempt that had started ended `lost` (the builders never
//!   died, so the attempts they held on the victim must continue on a survivor through
//!   `resume`), and exactly one attempt succeeded;
//! - **0 published twice**: one published artifact row in the database, of the succeeded
//!   attempt; the job's artifact list names the artifact once;
//! - **through each survivor**: the log of the job holds its numbered lines exactly once each,
//!   in order (events buffered across the failover neither lost nor duplicated); the artifact
//!   downloads with the content the job's parameter and source dictate (an upload or a source
//!   fetch aimed at the dead replica went to the live one), its SHA-256 is the listed one and
//!   the statement's subject; the statement is byte for byte the same from both survivors, and
//!   its SSHSIG verifies with the stock `ssh-keygen -Y verify` against that survivor's
//!   `allowed_signers` for the builder that built it.
//!
//! PostgreSQL only (SQLite is one process) and only with the test S3 server: without
//! `BUILDFLEET_TEST_POSTGRES_URL` or `BUILDFLEET_TEST_S3_URL` it says it skipped (in CI, `CI=true`,
//! a missing S3 server is a failure, as for every object-storage test). The CI run takes
//! about a minute and a half on two cores (debug build; half of it reading every log back
//! through both survivors from the test S3 server). A bigger soak: `BUILDFLEET_FAILOVER_JOBS` (300),
//! `BUILDFLEET_FAILOVER_BUILDERS` (6) and `BUILDFLEET_FAILOVER_SLOTS` (3), e.g.
//! `BUILDFLEET_FAILOVER_JOBS=3000 BUILDFLEET_FAILOVER_BUILDERS=12 cargo test -p
//! buildfleet-backend --test replicas_failover`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use awc::http::StatusCode;
use buildfleet_backend::store::JobId;
use buildfleet_builder::recipes::{ArtifactConfig, Pack, RecipeConfig};
use buildfleet_protocol::signing::STATEMENT_NAMESPACE;
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::e2e::{is_terminal, sha256_hex, tar_gz};
use buildfleet_testkit::keys::{ssh_keygen_verify, TestKey};
use buildfleet_testkit::processes::{
    builder_config_toml, tail, Api, BackendProcess, BuilderProcess,
};
use buildfleet_testkit::s3::TestBucket;
use futures_util::{stream, StreamExt as _};
use serde_json::{json, Value};

mod postgres {
    #[actix_rt::test]
    async fn a_killed_replica_loses_no_job_and_its_builders_resume_on_the_survivors() {
        let Some(db) = buildfleet_testkit::db::TestDb::postgres() else {
            return;
        };
        let Some(bucket) = buildfleet_testkit::s3::TestBucket::create().await else {
            return;
        };
        super::run(db, bucket, super::Scenario::from_env()).await;
    }
}

const REPLICAS: usize = 3;
/// The replica SIGKILLed mid-run.
const VICTIM: usize = 1;
const RECIPE: &str = "failover-lines";
const ARTIFACT: &str = "failover.txt";
/// Numbered lines each job prints, 50 ms apart: a job runs about a second.
const LINES: usize = 20;
/// The bound: a builder of the killed replica is connected to a survivor this soon.
const RESUME_LIMIT: Duration = Duration::from_secs(5);
/// How often the survivors are asked for their builders after the SIGKILL.
const RESUME_POLL: Duration = Duration::from_millis(50);
/// Every job terminal this long after the last submission (with 300 jobs; a soak with more
/// gets [`PER_EXTRA_JOB`] more per job).
const DRAIN_LIMIT: Duration = Duration::from_secs(120);
/// How long the run may take to reach the moment of the kill (likewise).
const KILL_POINT_LIMIT: Duration = Duration::from_secs(120);
/// What each job beyond 300 adds to those limits.
const PER_EXTRA_JOB: Duration = Duration::from_millis(400);
/// Builder jobs running on the victim's builders at the kill, at least.
const RUNNING_AT_KILL: u64 = 3;
/// Requests in flight at once while uploading sources and checking the jobs.
const CHECK_CONCURRENCY: usize = 16;
/// Submissions in flight at once: a few, so the queue fills faster than it drains.
const SUBMIT_CONCURRENCY: usize = 4;

/// Backend timings: a heartbeat timeout that a loaded two-core machine does not trip by
/// accident, and a reconnect grace far above [`RESUME_LIMIT`], so an attempt can be lost only
/// if the resume itself fails.
const SERVE_TIMINGS: [(&str, u64); 9] = [
    ("--heartbeat-interval-ms", 500),
    ("--heartbeat-timeout-ms", 3_000),
    ("--reconnect-grace-ms", 15_000),
    ("--sweep-interval-ms", 200),
    ("--cancel-grace-ms", 2_000),
    ("--challenge-ttl-ms", 4_000),
    ("--handshake-timeout-ms", 5_000),
    // A log chunk per half second: a job's log is a few objects in the bucket (read back
    // with a HEAD and a GET each), and a killed replica leaves events unacknowledged, which
    // the builders must resend to a survivor exactly once.
    ("--log-flush-interval-ms", 500),
    // Three replicas of 6 + 1 (the bus) connections stay far under the test server's limit.
    ("--db-pool-size", 6),
];

struct Scenario {
    jobs: usize,
    builders: usize,
    slots: u32,
}

impl Scenario {
    fn from_env() -> Scenario {
        let var = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .map(|v| {
                    v.parse()
                        .unwrap_or_else(|_| panic!("{name}={v}: not a number"))
                })
                .unwrap_or(default)
        };
        let scenario = Scenario {
            jobs: var("BUILDFLEET_FAILOVER_JOBS", 300),
            builders: var("BUILDFLEET_FAILOVER_BUILDERS", 6),
            slots: var("BUILDFLEET_FAILOVER_SLOTS", 3) as u32,
        };
        assert!(
            scenario.jobs >= 30 && scenario.builders >= REPLICAS && scenario.slots >= 1,
            "the scenario needs at least 30 jobs and one builder per replica"
        );
        scenario
    }

    /// `base` for 300 jobs, longer for a soak with more.
    fn limit(&self, base: Duration) -> Duration {
        base + PER_EXTRA_JOB * u32::try_from(self.jobs.saturating_sub(300)).unwrap_or(u32::MAX)
    }
}

/// A job of the run: its parameter `n` and id.
#[derive(Clone, Copy, Debug)]
struct Submitted {
    n: usize,
    id: i64,
}

/// What the builders of one replica looked like, and when each reached a survivor.
struct Failover {
    /// `(builder id, name)` connected to the victim just before the SIGKILL.
    victim_builders: Vec<(i64, String)>,
    /// Jobs those builders held (assigned or running) just before it.
    in_flight: Vec<i64>,
    /// Just before the SIGKILL.
    killed_at: Instant,
    /// How long after the SIGKILL each was connected to a survivor.
    resumed_after: BTreeMap<i64, Duration>,
}

async fn run(db: TestDb, bucket: TestBucket, scenario: Scenario) {
    let started = Instant::now();
    let config_dir = tempfile::tempdir().expect("config dir");
    let config_path = config_dir.path().join("replica.toml");
    std::fs::write(&config_path, storage_toml(&bucket)).expect("writing the replica config");
    let mut args: Vec<String> = vec!["--config".into(), config_path.display().to_string()];
    for (flag, value) in SERVE_TIMINGS {
        args.extend([flag.to_owned(), value.to_string()]);
    }
    // One after the other: the first one creates what the cluster shares.
    let mut backends = Vec::with_capacity(REPLICAS);
    for _ in 0..REPLICAS {
        backends.push(BackendProcess::start(db.url(), &args).await);
    }
    let apis: Vec<Api> = backends.iter().map(BackendProcess::api).collect();
    let survivors: Vec<usize> = (0..REPLICAS).filter(|r| *r != VICTIM).collect();

    // Builders, spread: builder i dials replica i mod 3 first, then the next ones.
    let config = builder_config_toml(
        scenario.slots,
        [
            ("initial_backoff_ms", 100),
            ("max_backoff_ms", 1_000),
            ("replaced_backoff_ms", 1_000),
            ("healthy_after_ms", 2_000),
        ],
        &[recipe()],
    );
    let mut builders = Vec::with_capacity(scenario.builders);
    for i in 0..scenario.builders {
        let key = TestKey::generate(&format!("failover-builder-{i}"));
        let id = apis[i % REPLICAS].admit(&key).await;
        let urls: Vec<String> = (0..REPLICAS)
            .map(|k| format!("ws://{}", backends[(i + k) % REPLICAS].addr))
            .collect();
        builders.push(BuilderProcess::start(key, id, &urls.join(","), &config).await);
    }
    let names: BTreeMap<i64, String> = builders.iter().map(|b| (b.id, b.name.clone())).collect();
    for (i, builder) in builders.iter().enumerate() {
        wait_connected_to(&apis[i % REPLICAS], builder, &backends, &builders).await;
    }
    eprintln!(
        "{REPLICAS} replicas and {} builders up in {:?}",
        builders.len(),
        started.elapsed()
    );

    // Each job's source goes up first, through the replica the job is submitted through
    // (its source URL is that replica's): two thirds of the jobs round-robin through all
    // three, submitted before the kill; the rest through the survivors, after it.
    let before_kill = scenario.jobs * 2 / 3;
    let via = |n: usize| {
        if n < before_kill {
            n % REPLICAS
        } else {
            survivors[n % survivors.len()]
        }
    };
    let (apis_ref, via_ref) = (&apis, &via);
    let sources: BTreeMap<usize, String> = stream::iter(0..scenario.jobs)
        .map(|n| async move { (n, apis_ref[via_ref(n)].upload_source(source_of(n)).await) })
        .buffer_unordered(CHECK_CONCURRENCY)
        .collect()
        .await;
    eprintln!(
        "{} sources uploaded by {:?}",
        sources.len(),
        started.elapsed()
    );
    let sources = &sources;
    let mut submitted: Vec<Submitted> = stream::iter(0..before_kill)
        .map(|n| submit(&apis_ref[via_ref(n)], n, &sources[&n]))
        .buffer_unordered(SUBMIT_CONCURRENCY)
        .collect()
        .await;
    eprintln!("{before_kill} jobs submitted by {:?}", started.elapsed());

    let mut failover = kill_mid_run(
        &mut backends,
        &apis,
        &survivors,
        &builders,
        scenario.jobs / 3,
        scenario.limit(KILL_POINT_LIMIT),
    )
    .await;
    let killed_at = failover.killed_at;
    eprintln!(
        "replica {VICTIM} SIGKILLed at {:?} with {} builders and jobs {:?} in flight on them",
        started.elapsed(),
        failover.victim_builders.len(),
        failover.in_flight
    );
    watch_resume(&apis, &survivors, &mut failover, killed_at).await;

    // The rest through the survivors.
    submitted.extend(
        stream::iter(before_kill..scenario.jobs)
            .map(|n| submit(&apis_ref[via_ref(n)], n, &sources[&n]))
            .buffer_unordered(SUBMIT_CONCURRENCY)
            .collect::<Vec<_>>()
            .await,
    );
    let last_submission = Instant::now();

    // ---- 0 lost, 0 stuck ----
    let all = wait_all_terminal(
        &apis[survivors[0]],
        &backends,
        &builders,
        scenario.limit(DRAIN_LIMIT),
    )
    .await;
    eprintln!(
        "all {} jobs terminal {:?} after the last submission ({:?} in all)",
        all.len(),
        last_submission.elapsed(),
        started.elapsed()
    );
    for b in builders.iter_mut() {
        if let Some(status) = b.exited() {
            panic!(
                "builder {} exited ({status}):\n{}",
                b.name,
                tail(&b.log_path(), 40)
            );
        }
    }
    let ids: BTreeSet<i64> = submitted.iter().map(|s| s.id).collect();
    assert_eq!(
        ids.len(),
        submitted.len(),
        "two submissions answered with one job"
    );
    for r in &survivors {
        let listed: BTreeSet<i64> = apis[*r]
            .all_jobs()
            .await
            .iter()
            .filter_map(|j| j["id"].as_i64())
            .collect();
        assert_eq!(
            listed, ids,
            "replica {r} lists exactly the submitted jobs: none lost, none queued twice"
        );
    }

    // ---- resumed within the limit ----
    let mut problems = Vec::new();
    for (id, name) in &failover.victim_builders {
        match failover.resumed_after.get(id) {
            Some(after) if *after <= RESUME_LIMIT => {}
            Some(after) => problems.push(format!(
                "builder {name} was connected to a survivor only {after:?} after the SIGKILL \
                 (limit {RESUME_LIMIT:?})"
            )),
            None => problems.push(format!(
                "builder {name} was not connected to a survivor within {:?} of the SIGKILL",
                RESUME_LIMIT * 3
            )),
        }
    }

    // ---- each job, through each survivor ----
    let signers: Vec<(usize, String)> = {
        let mut signers = Vec::new();
        for r in &survivors {
            let (status, body) = apis[*r].get_raw("/allowed_signers").await;
            assert_eq!(status, StatusCode::OK, "replica {r}: GET /allowed_signers");
            signers.push((*r, String::from_utf8_lossy(&body).into_owned()));
        }
        signers
    };
    let checks = stream::iter(submitted.iter().copied())
        .map(|job| check_job(&db, &apis, &signers, &names, job))
        .buffer_unordered(CHECK_CONCURRENCY)
        .collect::<Vec<Vec<String>>>()
        .await;
    problems.extend(checks.into_iter().flatten());

    if !problems.is_empty() {
        panic!(
            "{} problems (victim builders {:?}, resumed after {:?}):\n{}\n{}",
            problems.len(),
            failover.victim_builders,
            failover.resumed_after,
            problems
                .iter()
                .take(40)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n"),
            keep_logs(&backends, &builders)
        );
    }
    eprintln!(
        "checked {} jobs through {} survivors; builders of the victim resumed after {:?}; \
         done in {:?}",
        submitted.len(),
        survivors.len(),
        failover.resumed_after,
        started.elapsed()
    );

    for b in builders.iter_mut() {
        b.kill().await;
    }
    for backend in backends.iter_mut() {
        backend.stop().await;
    }
}

/// The replicas' `[storage]` table: the test bucket, shared by all three.
fn storage_toml(bucket: &TestBucket) -> String {
    use toml::Value as T;
    let settings = bucket.settings();
    let storage: toml::Table = [
        ("kind", T::String("s3".into())),
        ("bucket", T::String(bucket.bucket.clone())),
        ("endpoint", T::String(bucket.endpoint.clone())),
        (
            "region",
            T::String(settings.region.unwrap_or_else(|| "us-east-1".into())),
        ),
        (
            "access_key_id",
            T::String(settings.access_key_id.expect("test S3 access key")),
        ),
        (
            "secret_access_key",
            T::String(settings.secret_access_key.expect("test S3 secret")),
        ),
        ("allow_http", T::Boolean(true)),
        ("replicas", T::Integer(REPLICAS as i64)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let config: toml::Table = [("storage".to_owned(), T::Table(storage))]
        .into_iter()
        .collect();
    toml::to_string(&config).expect("serialising the replica config")
}

/// Prints `failover N line 1` … `line 20` over a second, then writes the artifact from the
/// job's parameter and its own source archive.
fn recipe() -> RecipeConfig {
    RecipeConfig {
        name: RECIPE.into(),
        version: "1".into(),
        commands: vec![vec![
            "sh".into(),
            "-c".into(),
            format!(
                "for i in $(seq 1 {LINES}); do echo \"failover $BUILDFLEET_PARAM_N line $i\"; \
                 sleep 0.05; done; \
                 {{ echo \"failover artifact of job $BUILDFLEET_PARAM_N\"; \
                 cat \"$BUILDFLEET_SRC/README\"; }} > \"$BUILDFLEET_OUT/{ARTIFACT}\""
            ),
        ]],
        env: Default::default(),
        artifacts: vec![ArtifactConfig {
            name: ARTIFACT.into(),
            path: ARTIFACT.into(),
            pack: Pack::File,
        }],
        image: None,
        version_commands: Vec::new(),
    }
}

/// Job `n`'s source archive: its README names the job.
fn source_of(n: usize) -> Vec<u8> {
    tar_gz(&[("pkg/README", format!("source of job {n}\n").as_bytes())])
}

fn expected_artifact(n: usize) -> String {
    format!("failover artifact of job {n}\nsource of job {n}\n")
}

fn expected_lines(n: usize) -> Vec<String> {
    (1..=LINES)
        .map(|i| format!("failover {n} line {i}"))
        .collect()
}

/// Submits job `n` of source `digest` through `api`.
async fn submit(api: &Api, n: usize, digest: &str) -> Submitted {
    let body = json!({
        "source_sha256": digest,
        "recipe": RECIPE,
        "parameters": { "n": n.to_string() },
        "max_attempts": 5,
        "timeout_secs": 300,
    });
    let id = api.submit_idempotent(&format!("failover-{n}"), &body).await;
    Submitted { n, id }
}

/// Waits until `api`'s replica lists `builder` as connected.
async fn wait_connected_to(
    api: &Api,
    builder: &BuilderProcess,
    backends: &[BackendProcess],
    builders: &[BuilderProcess],
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let connected = api
            .builders()
            .await
            .iter()
            .any(|b| b["id"] == builder.id && b["connected"] == true);
        if connected {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "builder {} is not connected to {} after 30 s\n{}",
                builder.name,
                api.base,
                keep_logs(backends, builders)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until at least `finished` jobs succeeded and the victim's builders run at least
/// [`RUNNING_AT_KILL`] jobs, then SIGKILLs the victim; what its builders held just before.
async fn kill_mid_run(
    backends: &mut [BackendProcess],
    apis: &[Api],
    survivors: &[usize],
    builders: &[BuilderProcess],
    finished: usize,
    limit: Duration,
) -> Failover {
    let deadline = Instant::now() + limit;
    loop {
        let jobs = apis[survivors[0]].all_jobs().await;
        let done = jobs.iter().filter(|j| j["state"] == "succeeded").count();
        let on_victim: Vec<Value> = apis[VICTIM]
            .builders()
            .await
            .into_iter()
            .filter(|b| b["connected"] == true)
            .collect();
        let running: u64 = on_victim
            .iter()
            .filter_map(|b| b["live"]["active_jobs"].as_u64())
            .sum();
        if done >= finished && running >= RUNNING_AT_KILL {
            let victim_builders: Vec<(i64, String)> = on_victim
                .iter()
                .filter_map(|b| Some((b["id"].as_i64()?, b["name"].as_str()?.to_owned())))
                .collect();
            let ids: BTreeSet<i64> = victim_builders.iter().map(|(id, _)| *id).collect();
            let in_flight = jobs
                .iter()
                .filter(|j| {
                    matches!(j["state"].as_str(), Some("assigned" | "running"))
                        && j["builder_id"].as_i64().is_some_and(|b| ids.contains(&b))
                })
                .filter_map(|j| j["id"].as_i64())
                .collect();
            let killed_at = Instant::now();
            backends[VICTIM].kill().await;
            return Failover {
                killed_at,
                victim_builders,
                in_flight,
                resumed_after: BTreeMap::new(),
            };
        }
        if Instant::now() > deadline {
            panic!(
                "after {limit:?}: {done} of the jobs succeeded (waiting for \
                 {finished}) and the victim's builders run {running} (waiting for \
                 {RUNNING_AT_KILL}); its builders: {on_victim:#?}\n{}",
                keep_logs(backends, builders)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls the survivors' builders every [`RESUME_POLL`] and records when each of the victim's
/// builders is connected to one; gives up at three times [`RESUME_LIMIT`] (the check fails).
async fn watch_resume(
    apis: &[Api],
    survivors: &[usize],
    failover: &mut Failover,
    killed_at: Instant,
) {
    assert!(
        !failover.victim_builders.is_empty(),
        "no builder was connected to the victim: the failover checks nothing"
    );
    while failover.resumed_after.len() < failover.victim_builders.len()
        && killed_at.elapsed() < RESUME_LIMIT * 3
    {
        let lists =
            futures_util::future::join_all(survivors.iter().map(|r| apis[*r].builders())).await;
        let seen = killed_at.elapsed();
        for list in lists {
            for b in list.iter().filter(|b| b["connected"] == true) {
                if let Some(id) = b["id"].as_i64() {
                    if failover.victim_builders.iter().any(|(v, _)| *v == id) {
                        failover.resumed_after.entry(id).or_insert(seen);
                    }
                }
            }
        }
        tokio::time::sleep(RESUME_POLL).await;
    }
}

/// Polls `api`'s job list until every job is terminal; fails after `limit`.
async fn wait_all_terminal(
    api: &Api,
    backends: &[BackendProcess],
    builders: &[BuilderProcess],
    limit: Duration,
) -> Vec<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let all = api.all_jobs().await;
        let open: Vec<&Value> = all
            .iter()
            .filter(|j| !j["state"].as_str().is_some_and(is_terminal))
            .collect();
        if open.is_empty() {
            return all;
        }
        if Instant::now() > deadline {
            let list: Vec<String> = open
                .iter()
                .take(20)
                .map(|j| {
                    format!(
                        "job {} {} attempt {} builder {}",
                        j["id"], j["state"], j["attempt"], j["builder_id"]
                    )
                })
                .collect();
            panic!(
                "{} jobs not terminal {limit:?} after the last submission: {list:#?}\n{}",
                open.len(),
                keep_logs(backends, builders)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every check of one finished job; the problems found.
async fn check_job(
    db: &TestDb,
    apis: &[Api],
    signers: &[(usize, String)],
    names: &BTreeMap<i64, String>,
    job: Submitted,
) -> Vec<String> {
    let Submitted { n, id } = job;
    let mut problems = Vec::new();
    let (first, _) = &signers[0];
    let detail = apis[*first].get_json(&format!("/jobs/{id}")).await;
    let attempts = detail["attempts"].as_array().cloned().unwrap_or_default();
    let summary = attempts
        .iter()
        .map(|a| {
            format!(
                "#{} builder {} {} ({})",
                a["attempt"], a["builder"], a["outcome"], a["error"]
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    if detail["state"] != "succeeded" {
        problems.push(format!(
            "job {id} (n {n}) ended {} ({}); attempts: {summary}",
            detail["state"], detail["error"]
        ));
        return problems;
    }
    let succeeded: Vec<&Value> = attempts
        .iter()
        .filter(|a| a["outcome"] == "succeeded")
        .collect();
    let [winner] = succeeded.as_slice() else {
        problems.push(format!(
            "job {id}: {} attempts succeeded, expected one: {summary}",
            succeeded.len()
        ));
        return problems;
    };
    let attempt = winner["attempt"].as_i64().unwrap_or(-1);
    for a in &attempts {
        if a["outcome"] == "lost" && !a["started_at"].is_null() {
            problems.push(format!(
                "job {id}: attempt {} had started on builder {} and was lost, though no builder \
                 died: it was requeued instead of resumed ({summary})",
                a["attempt"], a["builder"]
            ));
        }
    }

    // Published once: the database's published rows, and the job's list.
    let store = db.store();
    let published = tokio::task::spawn_blocking(move || store.artifacts(JobId(id), true))
        .await
        .expect("store call")
        .expect("artifacts of the job");
    let rows: Vec<(String, i32)> = published
        .iter()
        .map(|a| (a.name.clone(), a.attempt.0))
        .collect();
    if rows != [(ARTIFACT.to_owned(), attempt as i32)] {
        problems.push(format!(
            "job {id}: published artifact rows {rows:?}, expected {ARTIFACT} of attempt \
             {attempt} once"
        ));
    }
    let listed: Vec<&str> = detail["artifacts"]
        .as_array()
        .map(|a| a.iter().filter_map(|a| a["name"].as_str()).collect())
        .unwrap_or_default();
    if listed != [ARTIFACT] {
        problems.push(format!(
            "job {id}: its detail lists artifacts {listed:?}, expected {ARTIFACT} once"
        ));
    }
    let builder_name = winner["builder"]
        .as_i64()
        .and_then(|b| names.get(&b))
        .cloned();

    let mut statements = Vec::new();
    for (r, allowed_signers) in signers {
        let api = &apis[*r];
        let at = |what: &str| format!("job {id} through replica {r}: {what}");

        // The log: the numbered lines once each, in order, with increasing seqs.
        let (status, body) = api.get_raw(&format!("/jobs/{id}/log")).await;
        if status != StatusCode::OK {
            problems.push(at(&format!("GET log answered {status}")));
        } else {
            let records: Vec<Value> = String::from_utf8_lossy(&body)
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            let seqs: Vec<u64> = records.iter().filter_map(|r| r["seq"].as_u64()).collect();
            if seqs.len() != records.len() || seqs.windows(2).any(|w| w[0] >= w[1]) {
                problems.push(at(&format!("log seqs not strictly increasing: {seqs:?}")));
            }
            let numbered: Vec<&str> = records
                .iter()
                .filter_map(|r| r["line"].as_str())
                .filter(|l| l.starts_with("failover "))
                .collect();
            if numbered != expected_lines(n) {
                problems.push(at(&format!(
                    "log lines {numbered:?}, expected {LINES} numbered lines once each"
                )));
            }
        }

        // The artifact: listed once, downloaded, its digest the listed one.
        let list = api.get_json(&format!("/jobs/{id}/artifacts")).await;
        let artifacts = list["artifacts"].as_array().cloned().unwrap_or_default();
        let [artifact] = artifacts.as_slice() else {
            problems.push(at(&format!("artifact list {list}")));
            continue;
        };
        let listed_digest = artifact["sha256"].as_str().unwrap_or_default().to_owned();
        let (status, bytes) = api
            .get_raw(&format!("/jobs/{id}/artifacts/{ARTIFACT}"))
            .await;
        if status != StatusCode::OK {
            problems.push(at(&format!("artifact download answered {status}")));
            continue;
        }
        let digest = sha256_hex(&bytes);
        if digest != listed_digest {
            problems.push(at(&format!(
                "downloaded artifact hashes to {digest}, listed as {listed_digest}"
            )));
        }
        if bytes != expected_artifact(n).as_bytes() {
            problems.push(at(&format!(
                "artifact holds {:?}, expected {:?}",
                String::from_utf8_lossy(&bytes),
                expected_artifact(n)
            )));
        }

        // The statement: its subject is the artifact's digest, its SSHSIG verifies.
        let (status, statement) = api.get_raw(&format!("/jobs/{id}/statement")).await;
        let (sig_status, signature) = api.get_raw(&format!("/jobs/{id}/statement.sig")).await;
        if status != StatusCode::OK || sig_status != StatusCode::OK {
            problems.push(at(&format!(
                "statement answered {status}, its signature {sig_status}"
            )));
            continue;
        }
        let parsed: Value = serde_json::from_slice(&statement).unwrap_or(Value::Null);
        let subject = json!([{ "name": ARTIFACT, "digest": { "sha256": digest } }]);
        if parsed["subject"] != subject {
            problems.push(at(&format!(
                "statement subject {}, expected {subject}",
                parsed["subject"]
            )));
        }
        let Some(principal) = builder_name.clone() else {
            problems.push(at(&format!(
                "the succeeded attempt's builder {} is none of ours",
                winner["builder"]
            )));
            continue;
        };
        let (signers_text, signature) = (
            allowed_signers.clone(),
            String::from_utf8_lossy(&signature).into_owned(),
        );
        let message = statement.to_vec();
        let (verified, output) = tokio::task::spawn_blocking(move || {
            ssh_keygen_verify(
                &signers_text,
                &principal,
                STATEMENT_NAMESPACE,
                &message,
                &signature,
            )
        })
        .await
        .expect("ssh-keygen task");
        if !verified {
            problems.push(at(&format!(
                "ssh-keygen -Y verify refused the statement: {output}"
            )));
        }
        statements.push(statement);
    }
    if statements.windows(2).any(|w| w[0] != w[1]) {
        problems.push(format!(
            "job {id}: the survivors serve different statements"
        ));
    }
    problems
}

/// Copies every replica's and builder's log to a directory that outlives the test (their
/// own directories go with it) and returns where, with the replicas' last lines other than
/// request logs: the evidence of a failure.
fn keep_logs(backends: &[BackendProcess], builders: &[BuilderProcess]) -> String {
    let dir = std::env::temp_dir().join(format!(
        "buildfleet-replicas-failover-{}",
        std::process::id()
    ));
    let _ = std::fs::create_dir_all(&dir);
    let mut text = format!("logs kept in {}", dir.display());
    for (r, backend) in backends.iter().enumerate() {
        let _ = std::fs::copy(backend.log_path(), dir.join(format!("replica-{r}.log")));
        let log = std::fs::read_to_string(backend.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| !l.contains(" HTTP/1.1\" "))
            .collect();
        text += &format!(
            "\n--- replica {r} ({}), last lines besides requests:\n{}",
            backend.url,
            lines[lines.len().saturating_sub(15)..].join("\n")
        );
    }
    for builder in builders {
        let _ = std::fs::copy(
            builder.log_path(),
            dir.join(format!("{}.log", builder.name)),
        );
    }
    text
}
