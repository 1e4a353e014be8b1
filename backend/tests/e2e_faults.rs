//! Issue 13's fault-injection run, in the test suite: real `buildfleet-builder` processes,
//! each behind its own TCP proxy, and one real `buildfleet serve` process, run a few hundred
//! short jobs while the test keeps breaking things: it cuts proxied connections, black-holes
//! one builder's network for longer than the heartbeat timeout but shorter than the reconnect
//! grace, SIGKILLs a builder (then starts a new process with the same key and work directory)
//! and SIGKILLs the backend (then restarts it on the same port, data directory and database).
//!
//! At the end: no job lost (every submitted job exists once and is terminal), none stuck,
//! every one `succeeded` (max_attempts is high enough that SIGKILLs cannot use it up), no
//! artifact published twice, every log exact, no attempt that ran charged against the job
//! unless its builder process was SIGKILLed during it (network faults cost nothing), no build
//! process of a SIGKILLed builder alive once it is gone, and no reconnect storm.
//!
//! The CI variant runs in well under a minute per database; the soak variants (`#[ignore]`d)
//! run longer with more of everything. How to run them: docs/testing.md.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use awc::http::StatusCode;
use buildfleet_backend::store::JobId;
use buildfleet_builder::recipes::RecipeConfig;
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::e2e::{
    e2e_recipes, is_terminal, small_source, TcpProxy, LINES_RECIPE, LINE_COUNT, QUICK_RECIPE,
};
use buildfleet_testkit::keys::TestKey;
use buildfleet_testkit::processes::{
    builder_config_toml, job_processes, tail, Api, BackendProcess, BuilderProcess,
};
use buildfleet_testkit::server_tests;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{json, Value};

server_tests! {
    faults_lose_no_job_and_no_log_line,
}

/// The long runs; see docs/testing.md.
mod soak {
    use super::*;

    #[actix_rt::test]
    #[ignore = "soak: several minutes; run with --ignored (docs/testing.md)"]
    async fn sqlite() {
        run(TestDb::sqlite(), Scenario::soak()).await;
    }

    #[actix_rt::test]
    #[ignore = "soak: several minutes; run with --ignored (docs/testing.md)"]
    async fn postgres() {
        let Some(db) = TestDb::postgres() else {
            eprintln!("skipped: BUILDFLEET_TEST_POSTGRES_URL is not set");
            return;
        };
        run(db, Scenario::soak()).await;
    }
}

async fn faults_lose_no_job_and_no_log_line(db: TestDb) {
    run(db, Scenario::ci()).await;
}

/// Sleeps two seconds with two background `sleep 60`s in its process group, then exits and
/// leaves them behind: the builder kills them when the command ends, and only a builder
/// that takes its jobs' processes with it when SIGKILLed kills them otherwise.
const TREE_RECIPE: &str = "e2e-fault-tree";

// Backend timings: short, and far enough apart that a black hole fits between the heartbeat
// timeout and the reconnect grace with room for a loaded two-core machine.
const HEARTBEAT_INTERVAL_MS: u64 = 500;
const HEARTBEAT_TIMEOUT_MS: u64 = 2_000;
const RECONNECT_GRACE_MS: u64 = 10_000;
/// Longer than the heartbeat timeout, so both ends give up on the connection; well inside
/// the grace, so its builder is back before its leases run out.
const BLACK_HOLE: Duration = Duration::from_millis(3_500);
/// A SIGKILLed builder's job processes must be gone this soon (the defect: up to a second
/// and beyond; the fix kills them at once). Generous for a loaded machine, far below the
/// 60 s of the tree recipe's sleeps.
const ORPHAN_LIMIT: Duration = Duration::from_secs(3);
/// Every job must be terminal this long after the last fault.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);

struct Scenario {
    builders: usize,
    /// Jobs each builder runs at once.
    slots: u32,
    jobs: usize,
    /// Fault rounds of about a second each; jobs are submitted over the first 90 % of
    /// them.
    rounds: usize,
    /// Connections cut per round.
    cuts_per_round: usize,
}

impl Scenario {
    fn ci() -> Scenario {
        Scenario {
            builders: 5,
            slots: 2,
            jobs: 240,
            rounds: 30,
            cuts_per_round: 1,
        }
    }

    fn soak() -> Scenario {
        let var = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .map(|v| {
                    v.parse()
                        .unwrap_or_else(|_| panic!("{name}={v}: not a number"))
                })
                .unwrap_or(default)
        };
        Scenario {
            builders: var("BUILDFLEET_SOAK_BUILDERS", 6),
            slots: 2,
            jobs: var("BUILDFLEET_SOAK_JOBS", 2_000),
            rounds: var("BUILDFLEET_SOAK_ROUNDS", 240),
            cuts_per_round: 2,
        }
    }
}

/// What the fault loop did, for the checks and the failure message.
#[derive(Default, Debug)]
struct Faults {
    cuts: usize,
    black_holes: usize,
    builder_kills: usize,
    /// Builder kills that caught job processes running.
    kills_mid_build: usize,
    backend_kills: usize,
    /// `(builder id, unix ms just before the SIGKILL)`.
    kill_times: Vec<(i64, i64)>,
    /// Faults each builder's connection went through (cuts, holes, its own restarts).
    per_builder: BTreeMap<i64, usize>,
}

/// One at a time: the two databases' runs would otherwise share two cores with a dozen
/// builders and make every timing in them a coin toss.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run(db: TestDb, scenario: Scenario) {
    let _serial = SERIAL.lock().await;
    let seed = std::env::var("BUILDFLEET_FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen::<u64>());
    eprintln!("fault schedule seed {seed} (BUILDFLEET_FAULTS_SEED={seed} replays the choices)");
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();

    let timings = [
        ("--heartbeat-interval-ms", HEARTBEAT_INTERVAL_MS),
        ("--heartbeat-timeout-ms", HEARTBEAT_TIMEOUT_MS),
        ("--reconnect-grace-ms", RECONNECT_GRACE_MS),
        ("--sweep-interval-ms", 200),
        ("--cancel-grace-ms", 2_000),
        ("--challenge-ttl-ms", 4_000),
        ("--handshake-timeout-ms", 5_000),
        ("--log-flush-interval-ms", 20),
        ("--db-pool-size", 8),
    ]
    .iter()
    .flat_map(|(flag, value)| [(*flag).to_owned(), value.to_string()])
    .collect::<Vec<_>>();
    let mut backend = BackendProcess::start(db.url(), &timings).await;
    let api = backend.api();
    let digest = api.upload_source(small_source()).await;

    // Builders, each dialing through its own proxy; the new process after a SIGKILL too.
    let config = builder_config_toml(
        scenario.slots,
        [
            ("initial_backoff_ms", 100),
            ("max_backoff_ms", 1_000),
            ("replaced_backoff_ms", 1_000),
            ("healthy_after_ms", 2_000),
        ],
        &recipes(),
    );
    let mut proxies = Vec::new();
    let mut builders = Vec::new();
    for i in 0..scenario.builders {
        let key = TestKey::generate(&format!("fault-builder-{i}"));
        let id = api.admit(&key).await;
        let proxy = TcpProxy::start(backend.addr).await;
        let url = format!("ws://{}", proxy.addr);
        builders.push(BuilderProcess::start(key, id, &url, &config).await);
        proxies.push(proxy);
    }
    let names: Vec<String> = builders.iter().map(|b| b.name.clone()).collect();
    wait_connected(&api, &names, &builders, &backend).await;
    eprintln!("set up in {:?}", started.elapsed());
    let faults_start = Instant::now();

    // Submissions run beside the faults, each retried through outages under its own
    // Idempotency-Key.
    let submit_over = Duration::from_millis(scenario.rounds as u64 * 900);
    let submitter = {
        let api = backend.api();
        let (jobs, digest) = (scenario.jobs, digest.clone());
        let pause = submit_over / jobs as u32;
        actix_rt::spawn(async move {
            let mut submitted = Vec::with_capacity(jobs);
            for i in 0..jobs {
                let recipe = recipe_of(i);
                let body = json!({
                    "source_sha256": digest,
                    "recipe": recipe,
                    "max_attempts": 20,
                    "timeout_secs": 300,
                });
                let id = api
                    .submit_idempotent(&format!("faults-{seed}-{i}"), &body)
                    .await;
                submitted.push((id, recipe));
                tokio::time::sleep(pause).await;
            }
            submitted
        })
    };

    let mut faults = Faults::default();
    for round in 0..scenario.rounds {
        let round_started = Instant::now();
        for b in builders.iter_mut() {
            if let Some(status) = b.exited() {
                panic!(
                    "builder {} exited on its own ({status}):\n{}",
                    b.name,
                    tail(&b.log_path(), 40)
                );
            }
        }
        // Cuts, on builders not black-holed right now.
        for _ in 0..scenario.cuts_per_round {
            let i = rng.gen_range(0..proxies.len());
            if !proxies[i].in_black_hole() {
                proxies[i].cut();
                faults.cuts += 1;
                *faults.per_builder.entry(builders[i].id).or_default() += 1;
            }
        }
        if round % 6 == 2 {
            let i = rng.gen_range(0..proxies.len());
            proxies[i].black_hole(BLACK_HOLE);
            faults.black_holes += 1;
            *faults.per_builder.entry(builders[i].id).or_default() += 1;
        }
        if round % 8 == 5 {
            kill_a_builder(&mut builders, &proxies, &mut rng, &mut faults).await;
        }
        if round % 10 == 7 {
            backend.kill().await;
            // Long enough for the builders to notice and start redialing.
            tokio::time::sleep(Duration::from_millis(rng.gen_range(100..800))).await;
            backend.restart().await;
            faults.backend_kills += 1;
        }
        if let Some(rest) = Duration::from_secs(1).checked_sub(round_started.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
    let faults_done = Instant::now();
    let submitted = submitter.await.expect("the submitter task");
    eprintln!(
        "faults for {:?}: {faults:?}; {} jobs submitted",
        faults_done - faults_start,
        submitted.len()
    );

    // ---- nothing lost, nothing stuck ----
    let ids: BTreeSet<i64> = submitted.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        ids.len(),
        submitted.len(),
        "two submissions answered with the same job"
    );
    let deadline = Instant::now() + DRAIN_LIMIT;
    let all = loop {
        let all = api.all_jobs().await;
        let open: Vec<&Value> = all
            .iter()
            .filter(|j| !j["state"].as_str().is_some_and(is_terminal))
            .collect();
        if open.is_empty() {
            break all;
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
                "{} jobs still not terminal {DRAIN_LIMIT:?} after the last fault (seed {seed}): \
                 {list:#?}\nbackend log:\n{}",
                open.len(),
                tail(backend.log_path(), 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!(
        "all {} jobs terminal {:?} after the last fault",
        all.len(),
        faults_done.elapsed()
    );
    let listed: BTreeSet<i64> = all.iter().filter_map(|j| j["id"].as_i64()).collect();
    assert_eq!(
        listed, ids,
        "the backend holds exactly the submitted jobs: none lost, none queued twice by a retry"
    );

    // ---- each job: succeeded, exact log, one publication, no charged network loss ----
    let mut problems = Vec::new();
    for (id, recipe) in &submitted {
        check_job(&api, &db, *id, recipe, &faults, &mut problems).await;
    }

    // ---- no leftover processes, no storm, everyone back ----
    for b in &builders {
        let deadline = Instant::now() + ORPHAN_LIMIT;
        let mut left = job_processes(b.work_dir());
        while !left.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            left = job_processes(b.work_dir());
        }
        if !left.is_empty() {
            problems.push(format!(
                "builder {}: build processes still alive after every job ended: {left:?}",
                b.name
            ));
        }
    }
    wait_connected(&api, &names, &builders, &backend).await;
    for (b, proxy) in builders.iter().zip(&proxies) {
        let hits = faults.per_builder.get(&b.id).copied().unwrap_or(0) + faults.backend_kills;
        // A fault costs a handful of connections (a redial per backoff step while the
        // backend is down); a storm costs hundreds.
        let bound = 10 * hits + 10;
        if proxy.accepted() > bound {
            problems.push(format!(
                "builder {} opened {} connections through {hits} faults (bound {bound}): a \
                 reconnect storm",
                b.name,
                proxy.accepted()
            ));
        }
    }

    // ---- the faults really happened ----
    assert!(
        faults.cuts >= scenario.rounds / 2,
        "too few cuts: {faults:?}"
    );
    assert!(faults.black_holes >= 1, "no black hole: {faults:?}");
    assert!(
        faults.builder_kills >= 2,
        "too few builder kills: {faults:?}"
    );
    assert!(
        faults.kills_mid_build >= 1,
        "no builder was killed mid-build, so the orphan check checked nothing: {faults:?}"
    );
    assert!(
        faults.backend_kills >= 2,
        "too few backend kills: {faults:?}"
    );

    if !problems.is_empty() {
        panic!(
            "{} problems after {faults:?} (seed {seed}):\n{}\n--- backend log:\n{}",
            problems.len(),
            problems
                .iter()
                .take(40)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n"),
            tail(backend.log_path(), 30)
        );
    }

    backend.stop().await;
    for b in builders.iter_mut() {
        b.kill().await;
    }
    eprintln!("done in {:?}", started.elapsed());
}

/// The end-to-end recipes plus the tree one.
fn recipes() -> Vec<RecipeConfig> {
    let mut recipes = e2e_recipes();
    recipes.push(RecipeConfig {
        name: TREE_RECIPE.into(),
        version: "1".into(),
        commands: vec![vec![
            "sh".into(),
            "-c".into(),
            "sleep 60 >/dev/null 2>&1 & sleep 60 >/dev/null 2>&1 & sleep 2; echo tree done".into(),
        ]],
        env: Default::default(),
        artifacts: Vec::new(),
        image: None,
        version_commands: Vec::new(),
    });
    recipes
}

/// One job in eight prints 200 lines over four seconds, one in eight leaves a process tree
/// behind, the rest are quick and publish an artifact.
fn recipe_of(i: usize) -> &'static str {
    match i % 8 {
        0 => LINES_RECIPE,
        4 => TREE_RECIPE,
        _ => QUICK_RECIPE,
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// SIGKILLs the builder running the most build processes (one not black-holed), checks
/// that its build processes die with it, and starts a new process with the same key and
/// work directory.
async fn kill_a_builder(
    builders: &mut [BuilderProcess],
    proxies: &[TcpProxy],
    rng: &mut StdRng,
    faults: &mut Faults,
) {
    let mut candidates: Vec<(usize, usize)> = builders
        .iter()
        .enumerate()
        .filter(|(i, _)| !proxies[*i].in_black_hole())
        .map(|(i, b)| (job_processes(b.work_dir()).len(), i))
        .collect();
    if candidates.is_empty() {
        return;
    }
    let most = candidates.iter().map(|c| c.0).max().unwrap_or(0);
    candidates.retain(|c| c.0 == most);
    let (running, i) = candidates[rng.gen_range(0..candidates.len())];
    let builder = &mut builders[i];
    faults.kill_times.push((builder.id, now_ms()));
    builder.kill().await;
    let killed = Instant::now();
    faults.builder_kills += 1;
    if running > 0 {
        faults.kills_mid_build += 1;
    }
    *faults.per_builder.entry(builder.id).or_default() += 1;
    loop {
        let left = job_processes(builder.work_dir());
        if left.is_empty() {
            break;
        }
        assert!(
            killed.elapsed() < ORPHAN_LIMIT,
            "{:?} after SIGKILL of builder {}, processes of its jobs still run (and would \
             overlap the jobs' next attempts): {left:?}",
            killed.elapsed(),
            builder.name
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    builder.restart();
}

/// Waits until the backend lists every builder as connected.
async fn wait_connected(
    api: &Api,
    names: &[String],
    builders: &[BuilderProcess],
    backend: &BackendProcess,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = api.get_json("/builders").await;
        let list = list
            .as_array()
            .or_else(|| list["builders"].as_array())
            .cloned()
            .unwrap_or_default();
        let missing: Vec<&String> = names
            .iter()
            .filter(|n| {
                !list
                    .iter()
                    .any(|b| b["name"] == n.as_str() && b["connected"] == true)
            })
            .collect();
        if missing.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = builders
                .iter()
                .filter(|b| missing.contains(&&b.name))
                .map(|b| format!("--- {}:\n{}", b.name, tail(&b.log_path(), 20)))
                .collect();
            panic!(
                "builders {missing:?} are not connected after 30 s\n{}\n--- backend:\n{}",
                logs.join("\n"),
                tail(backend.log_path(), 20)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every check of one finished job; what fails goes to `problems`.
async fn check_job(
    api: &Api,
    db: &TestDb,
    id: i64,
    recipe: &str,
    faults: &Faults,
    problems: &mut Vec<String>,
) {
    let job = api.get_json(&format!("/jobs/{id}")).await;
    let attempts = job["attempts"].as_array().cloned().unwrap_or_default();
    let summary = || {
        attempts
            .iter()
            .map(|a| {
                format!(
                    "#{} builder {} {} ({})",
                    a["attempt"], a["builder"], a["outcome"], a["error"]
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    if job["state"] != "succeeded" {
        problems.push(format!(
            "job {id} ({recipe}) ended {} ({}); attempts: {}",
            job["state"],
            job["error"],
            summary()
        ));
        return;
    }
    let succeeded = attempts
        .iter()
        .filter(|a| a["outcome"] == "succeeded")
        .count();
    if succeeded != 1 {
        problems.push(format!(
            "job {id}: {succeeded} attempts succeeded, expected one: {}",
            summary()
        ));
    }

    // An attempt that ran and was lost counts against the job only if its builder process
    // was SIGKILLed while it held it; a lost connection, a black hole or a backend restart
    // must never cost a build (nor should the builder come back to find it gone).
    let killed_during = |a: &Value| {
        let (Some(builder), Some(assigned)) = (a["builder"].as_i64(), a["assigned_at"].as_i64())
        else {
            return false;
        };
        let finished = a["finished_at"].as_i64().unwrap_or(i64::MAX);
        faults
            .kill_times
            .iter()
            .any(|(b, at)| *b == builder && assigned <= *at && *at <= finished)
    };
    for a in &attempts {
        if a["outcome"] == "lost" && !a["started_at"].is_null() && !killed_during(a) {
            problems.push(format!(
                "job {id}: attempt {} was running on builder {} and was lost although that \
                 builder was never killed: a network fault cost a build ({})",
                a["attempt"],
                a["builder"],
                summary()
            ));
        }
    }
    let charged = job["failed_attempts"].as_i64().unwrap_or(0);
    let killed = attempts
        .iter()
        .filter(|a| a["outcome"] == "lost" && killed_during(a))
        .count() as i64;
    if charged > killed {
        problems.push(format!(
            "job {id}: {charged} attempts charged, only {killed} lost to a killed builder: {}",
            summary()
        ));
    }

    // The log of the succeeded attempt: strictly increasing seqs, each line once.
    let (status, body) = api.get_raw(&format!("/jobs/{id}/log")).await;
    if status != StatusCode::OK {
        problems.push(format!("job {id}: GET log answered {status}"));
        return;
    }
    let records: Vec<Value> = String::from_utf8_lossy(&body)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let seqs: Vec<u64> = records.iter().filter_map(|r| r["seq"].as_u64()).collect();
    if seqs.len() != records.len() || seqs.windows(2).any(|w| w[0] >= w[1]) {
        problems.push(format!(
            "job {id}: log seqs not strictly increasing: {seqs:?}"
        ));
    }
    let lines: Vec<&str> = records.iter().filter_map(|r| r["line"].as_str()).collect();
    let count = |wanted: &str| lines.iter().filter(|l| **l == wanted).count();
    match recipe {
        LINES_RECIPE => {
            let numbers: Vec<usize> = lines
                .iter()
                .filter_map(|l| l.strip_prefix("line ")?.parse().ok())
                .collect();
            if numbers != (1..=LINE_COUNT).collect::<Vec<_>>() {
                let mut seen = BTreeMap::<usize, usize>::new();
                for n in &numbers {
                    *seen.entry(*n).or_default() += 1;
                }
                let missing: Vec<usize> =
                    (1..=LINE_COUNT).filter(|n| !seen.contains_key(n)).collect();
                let doubled: Vec<(&usize, &usize)> = seen.iter().filter(|(_, c)| **c > 1).collect();
                problems.push(format!(
                    "job {id}: {} numbered lines, missing {missing:?}, duplicated {doubled:?}, \
                     in order: {}",
                    numbers.len(),
                    numbers.windows(2).all(|w| w[0] < w[1])
                ));
            }
        }
        QUICK_RECIPE => {
            let start = format!("start job {id}");
            if count(&start) != 1 {
                problems.push(format!(
                    "job {id}: `{start}` logged {} times: {lines:?}",
                    count(&start)
                ));
            }
        }
        _ => {
            if count("tree done") != 1 {
                problems.push(format!(
                    "job {id}: `tree done` logged {} times: {lines:?}",
                    count("tree done")
                ));
            }
        }
    }

    // Publications: every published artifact row of the job, whatever its attempt.
    let store = db.store();
    let published = tokio::task::spawn_blocking(move || store.artifacts(JobId(id), true))
        .await
        .expect("store call")
        .expect("artifacts of the job");
    let expected = usize::from(recipe == QUICK_RECIPE);
    if published.len() != expected {
        let rows: Vec<String> = published
            .iter()
            .map(|a| format!("{} of attempt {}", a.name, a.attempt))
            .collect();
        problems.push(format!(
            "job {id} ({recipe}): {} published artifacts, expected {expected}: {rows:?}",
            published.len()
        ));
    }
    if recipe == QUICK_RECIPE {
        let (status, bytes) = api
            .get_raw(&format!("/jobs/{id}/artifacts/result.txt"))
            .await;
        let text = String::from_utf8_lossy(&bytes);
        if status != StatusCode::OK || text.trim() != id.to_string() {
            problems.push(format!(
                "job {id}: result.txt answered {status} with {text:?}"
            ));
        }
    }
}
