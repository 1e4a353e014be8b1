//! Fair share between projects, private builders and the admin's global boost, end to end:
//! scripted builders take, run and complete jobs over the real WebSocket protocol while
//! projects queue work through the real API (issue 17 item 2).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use awc::http::{Method, StatusCode};
use buildfleet_backend::store::{NewProject, ProjectId, TokenScope};
use buildfleet_protocol::{CompletionResult, JobAssignment, Outcome, ServerMessage};
use buildfleet_testkit::builder_client::BuilderClient;
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::keys::TestKey;
use buildfleet_testkit::server::{TestServer, SOURCE_SHA256};
use buildfleet_testkit::server_tests;
use serde_json::{json, Value};
use tokio::time::Instant;

server_tests! {
    a_small_project_is_not_starved_by_a_deep_backlog,
    weights_three_to_one_share_builder_time_three_to_one,
    weights_share_builder_time_when_run_times_differ,
    private_builders_serve_only_their_projects,
    a_boost_goes_ahead_of_every_project_and_only_the_admin_may_boost,
}

/// The slots of every scripted builder here.
const SLOTS: u32 = 4;

async fn create_project(server: &TestServer, name: &str, weight: i32) -> ProjectId {
    let new = NewProject {
        organisation: "acme".into(),
        name: name.into(),
        public: true,
        weight,
    };
    server
        .with_store(move |store| store.create_project(&new))
        .await
        .expect("creating a project")
        .id
}

/// Queues `count` jobs of `project` in one batch; returns their ids in order.
async fn queue(server: &TestServer, project: &str, count: usize) -> Vec<i64> {
    let body: Vec<Value> = (0..count)
        .map(|_| {
            json!({
                "source_url": "https://example.invalid/crate-1.0.0.tar.gz",
                "source_sha256": SOURCE_SHA256,
                "recipe": "cargo-build",
                "project": project,
            })
        })
        .collect();
    let (status, jobs) = server.post_admin("/jobs", &Value::Array(body)).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "queueing for {project}: {jobs}"
    );
    jobs.as_array()
        .expect("an array of jobs")
        .iter()
        .map(|job| job["id"].as_i64().expect("job id"))
        .collect()
}

async fn connect(server: &TestServer, name: &str) -> (TestKey, i64, BuilderClient) {
    let key = TestKey::generate(name);
    let id = server.admit(&key).await;
    let builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    (key, id, builder)
}

/// Runs jobs on `builder` as a real one would: accepts what it is given, works on it for
/// `hold`, completes it and asks for as many jobs as it finished. Stops after `count`
/// assignments, or as soon as `done` says so; returns the job ids in the order assigned, one
/// list per `jobs` frame (one claim).
async fn work(
    builder: &mut BuilderClient,
    key: &TestKey,
    count: usize,
    hold: Duration,
    mut done: impl FnMut(&[i64]) -> bool,
) -> Vec<Vec<i64>> {
    let mut assigned = Vec::new();
    let mut batches = Vec::new();
    while assigned.len() < count && !done(&assigned) {
        let jobs = builder.next_jobs().await;
        for job in &jobs {
            builder.accept(job);
            assigned.push(job.job_id.0);
        }
        batches.push(jobs.iter().map(|j| j.job_id.0).collect());
        tokio::time::sleep(hold).await;
        complete_all(builder, key, &jobs).await;
        builder.request_jobs(u32::try_from(jobs.len()).expect("a few jobs"));
    }
    batches
}

async fn complete_all(builder: &mut BuilderClient, key: &TestKey, jobs: &[JobAssignment]) {
    for job in jobs {
        let result = builder
            .complete(key, job, Outcome::Succeeded, Vec::new())
            .await;
        assert!(
            matches!(result, CompletionResult::Accepted),
            "completion of job {}: {result:?}",
            job.job_id.0
        );
    }
}

/// Runs jobs as a builder of [`SLOTS`] slots would, each for its own `run_time`: completes
/// each as soon as its time is up and asks for one job per completion. Stops asking after
/// `count` assignments and returns once the jobs it holds are done, with the ids assigned.
async fn work_timed(
    builder: &mut BuilderClient,
    key: &TestKey,
    count: usize,
    run_time: impl Fn(i64) -> Duration,
) -> Vec<i64> {
    let mut assigned = Vec::new();
    let mut running: Vec<(Instant, JobAssignment)> = Vec::new();
    builder.request_jobs(SLOTS);
    loop {
        let now = Instant::now();
        let (due, still): (Vec<_>, Vec<_>) = running.into_iter().partition(|(end, _)| *end <= now);
        running = still;
        let due: Vec<JobAssignment> = due.into_iter().map(|(_, job)| job).collect();
        complete_all(builder, key, &due).await;
        if !due.is_empty() && assigned.len() < count {
            builder.request_jobs(u32::try_from(due.len()).expect("a few jobs"));
        }
        if running.is_empty() && assigned.len() >= count {
            return assigned;
        }
        let wait = running
            .iter()
            .map(|(end, _)| end.saturating_duration_since(Instant::now()))
            .min()
            .unwrap_or(Duration::from_secs(10));
        let jobs = builder
            .try_expect(wait, "a jobs frame", |m| match m {
                ServerMessage::Jobs(jobs) => Some(jobs.jobs.clone()),
                _ => None,
            })
            .await;
        match jobs {
            Some(jobs) => {
                for job in jobs {
                    builder.accept(&job);
                    let id = job.job_id.0;
                    assigned.push(id);
                    running.push((Instant::now() + run_time(id), job));
                }
            }
            None => assert!(
                !running.is_empty(),
                "no job came within {wait:?} with every slot free"
            ),
        }
    }
}

/// The builder time (ms) the finished jobs of `project` took, read from each job's own
/// attempts in the API: from the attempt's assignment (its slot is the builder's from then)
/// to its end. Not from `started_at`: that is when the backend recorded the accept, which
/// can lag the assignment by tens of milliseconds when the scripted builder sends several
/// small frames back to back (its WebSocket has Nagle's algorithm on), undercounting short
/// jobs. Answers the number of jobs and their time.
async fn builder_time_ms(server: &TestServer, project: &str) -> (usize, i64) {
    let admin = Some(server.admin_token.as_str());
    let (status, list) = server
        .call(
            Method::GET,
            &format!("/jobs?project={project}&state=succeeded&limit=1000"),
            admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let jobs = list["jobs"].as_array().expect("jobs");
    let mut used = 0;
    for job in jobs {
        let id = job["id"].as_i64().expect("id");
        let (status, detail) = server
            .call(Method::GET, &format!("/jobs/{id}"), admin, None)
            .await;
        assert_eq!(status, StatusCode::OK, "{detail}");
        for attempt in detail["attempts"].as_array().expect("attempts") {
            let assigned = attempt["assigned_at"].as_i64().expect("assigned_at");
            let finished = attempt["finished_at"].as_i64().expect("finished_at");
            used += finished - assigned;
        }
    }
    (jobs.len(), used)
}

async fn put(
    server: &TestServer,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, Value) {
    let mut request = server
        .http
        .put(server.api(path))
        .insert_header(("Content-Type", "application/json"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let mut response = request.send_body(body.to_owned()).await.expect("PUT");
    let bytes = response.body().await.expect("PUT body");
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (response.status(), value)
}

async fn set_projects(server: &TestServer, builder: i64, projects: &[&str]) -> Value {
    let body = json!({ "projects": projects }).to_string();
    let token = server.admin_token.clone();
    let (status, seen) = put(
        server,
        &format!("/builders/{builder}/projects"),
        Some(&token),
        &body,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{seen}");
    seen
}

/// Project A has a deep backlog and has been using the builder; project B queues 10 jobs.
/// B has used no builder time, so its jobs take the next free slots: once B queued, the only
/// jobs of A that run before B's last one starts are those A was already running.
async fn a_small_project_is_not_starved_by_a_deep_backlog(db: TestDb) {
    let server = TestServer::start(db).await;
    create_project(&server, "a", 1).await;
    create_project(&server, "b", 1).await;
    let (key, _, mut builder) = connect(&server, "fair").await;
    let a_jobs = queue(&server, "acme/a", 1000).await;
    builder.request_jobs(SLOTS);
    let hold = Duration::from_millis(20);
    let before = work(&mut builder, &key, 24, hold, |_| false).await.concat();
    assert!(
        before.iter().all(|id| a_jobs.contains(id)),
        "only A had work"
    );
    // Every slot busy with A's work (the credits `work` asked for last) when B queues, so
    // no claim is under way or owed that could not yet see B's jobs.
    let mut running = Vec::new();
    while running.len() < SLOTS as usize {
        for job in builder.next_jobs().await {
            builder.accept(&job);
            running.push(job);
        }
    }
    assert!(running.iter().all(|j| a_jobs.contains(&j.job_id.0)));

    let b_jobs: BTreeSet<i64> = queue(&server, "acme/b", 10).await.into_iter().collect();
    complete_all(&mut builder, &key, &running).await;
    builder.request_jobs(SLOTS);
    let after = work(&mut builder, &key, 200, hold, |assigned| {
        b_jobs.iter().all(|b| assigned.contains(b))
    })
    .await;
    // Each claim hands out its slots one at a time to the project lowest in builder time:
    // B, until B has nothing left. So every claim before the one that took B's last job
    // holds B's jobs only (that one may fill its other slots with A's).
    let last_b = after
        .iter()
        .rposition(|batch| batch.iter().any(|id| b_jobs.contains(id)))
        .expect("B's jobs ran");
    let a_early: Vec<i64> = after[..last_b]
        .iter()
        .flatten()
        .copied()
        .filter(|id| !b_jobs.contains(id))
        .collect();
    assert!(
        a_early.is_empty(),
        "A's jobs {a_early:?} took slots while B's waited; claims: {after:?}"
    );
    let a_with_last_b = after[last_b]
        .iter()
        .filter(|id| !b_jobs.contains(id))
        .count();
    assert!(
        a_with_last_b < SLOTS as usize,
        "the claim that took B's last job took one of B's: {after:?}"
    );
    // And A goes on once B has had its share.
    let rest = work(&mut builder, &key, 8, hold, |_| false).await.concat();
    assert!(rest.iter().all(|id| a_jobs.contains(id)), "{rest:?}");
}

/// Two projects with deep backlogs and weights 3 and 1 share the builder's time 3:1.
async fn weights_three_to_one_share_builder_time_three_to_one(db: TestDb) {
    let server = TestServer::start(db).await;
    let heavy = create_project(&server, "heavy", 3).await;
    let light = create_project(&server, "light", 1).await;
    let heavy_jobs: BTreeSet<i64> = queue(&server, "acme/heavy", 300)
        .await
        .into_iter()
        .collect();
    let light_jobs: BTreeSet<i64> = queue(&server, "acme/light", 300)
        .await
        .into_iter()
        .collect();
    let (key, _, mut builder) = connect(&server, "weighted").await;
    builder.request_jobs(SLOTS);
    let ran = work(&mut builder, &key, 160, Duration::from_millis(15), |_| {
        false
    })
    .await
    .concat();
    let heavy_count = ran.iter().filter(|id| heavy_jobs.contains(id)).count();
    let light_count = ran.iter().filter(|id| light_jobs.contains(id)).count();
    assert_eq!(heavy_count + light_count, ran.len());
    let ratio = heavy_count as f64 / light_count.max(1) as f64;
    assert!(
        (2.7..=3.3).contains(&ratio),
        "jobs ran {heavy_count}:{light_count} (ratio {ratio:.2}), not 3:1 ± 10 %"
    );
    // The builder time recorded for the window splits the same way.
    let usage: BTreeMap<i64, i64> = server
        .with_store(move |store| store.project_usage_in_window(&[heavy, light], 3_600_000))
        .await
        .expect("usage");
    let (heavy_ms, light_ms) = (usage[&heavy.0] as f64, usage[&light.0] as f64);
    let time_ratio = heavy_ms / light_ms.max(1.0);
    assert!(
        (2.7..=3.3).contains(&time_ratio),
        "builder time {heavy_ms}:{light_ms} ms (ratio {time_ratio:.2}), not 3:1 ± 10 %"
    );
}

/// Weights 3 and 1 share builder *time* 3:1, not jobs: the heavy project's jobs run twice as
/// long as the light one's, so it gets 1.5 jobs for each of the light project's. A
/// scheduler sharing slots by job count would give 3:1 jobs and 6:1 time. Builder time is
/// read from the jobs' own attempts in the API, not from the scheduler's bookkeeping.
async fn weights_share_builder_time_when_run_times_differ(db: TestDb) {
    const HEAVY_RUN: Duration = Duration::from_millis(80);
    const LIGHT_RUN: Duration = Duration::from_millis(40);
    let server = TestServer::start(db).await;
    create_project(&server, "heavy", 3).await;
    create_project(&server, "light", 1).await;
    let heavy_jobs: BTreeSet<i64> = queue(&server, "acme/heavy", 300)
        .await
        .into_iter()
        .collect();
    queue(&server, "acme/light", 300).await;
    let (key, _, mut builder) = connect(&server, "timed").await;
    work_timed(&mut builder, &key, 120, |id| {
        if heavy_jobs.contains(&id) {
            HEAVY_RUN
        } else {
            LIGHT_RUN
        }
    })
    .await;
    let (heavy_count, heavy_ms) = builder_time_ms(&server, "acme/heavy").await;
    let (light_count, light_ms) = builder_time_ms(&server, "acme/light").await;
    assert!(
        heavy_count + light_count >= 120,
        "{heavy_count} + {light_count} jobs ran"
    );
    let time_ratio = heavy_ms as f64 / light_ms.max(1) as f64;
    assert!(
        (2.55..=3.45).contains(&time_ratio),
        "builder time {heavy_ms}:{light_ms} ms (ratio {time_ratio:.2}), not 3:1 ± 15 % \
         ({heavy_count}:{light_count} jobs)"
    );
    // Sharing by count would run 3 heavy jobs for each light one. By time it is 1.5 for
    // 40 ms against 80 ms; the per-job overhead (a few round trips) lifts it towards 1.9.
    let count_ratio = heavy_count as f64 / light_count.max(1) as f64;
    assert!(
        (1.2..=2.4).contains(&count_ratio),
        "jobs ran {heavy_count}:{light_count} (ratio {count_ratio:.2}): runs twice as long \
         should get about half the jobs per unit of weight, not 3:1 by count"
    );
}

/// A builder private to P never gets Q's jobs, a shared one gets both; a project whose only
/// recipe-matching builders are private to others is told no builder matches.
async fn private_builders_serve_only_their_projects(db: TestDb) {
    let server = TestServer::start(db).await;
    for name in ["p", "q", "r"] {
        create_project(&server, name, 1).await;
    }
    let private_key = TestKey::generate("private");
    let private_id = server.admit(&private_key).await;
    let seen = set_projects(&server, private_id, &["acme/p"]).await;
    assert_eq!(seen["projects"], json!(["acme/p"]), "{seen}");

    // Refusals: unknown project, unknown builder, a bad body, no token, a narrower token.
    let admin = server.admin_token.clone();
    let path = format!("/builders/{private_id}/projects");
    let (status, body) = put(
        &server,
        &path,
        Some(&admin),
        r#"{"projects":["acme/nope"]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(
        body["error"]["message"], "there is no project \"acme/nope\"",
        "{body}"
    );
    let (status, body) = put(
        &server,
        "/builders/9999/projects",
        Some(&admin),
        r#"{"projects":[]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = put(&server, &path, Some(&admin), r#"{"projects":"acme/p"}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = put(&server, &path, Some(&admin), r#"{"projects":["no-slash"]}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = put(&server, &path, None, r#"{"projects":[]}"#).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let submit_token = project_token(&server, "p", TokenScope::Submit).await;
    let (status, _) = put(&server, &path, Some(&submit_token), r#"{"projects":[]}"#).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Still private to P after the refusals.
    let seen = server.get_ok(&format!("/builders/{private_id}")).await;
    assert_eq!(seen["projects"], json!(["acme/p"]), "{seen}");

    let mut private = BuilderClient::connect_ready(&server.ws_url(), &private_key).await;
    let (shared_key, shared_id, mut shared) = connect(&server, "shared").await;
    let q_jobs = queue(&server, "acme/q", 3).await;
    let p_jobs = queue(&server, "acme/p", 3).await;

    // The private builder, asking first and for more than P has, gets P's jobs only.
    private.request_jobs(2);
    let mut got = private.next_jobs().await;
    while got.len() < 2 {
        got.extend(private.next_jobs().await);
    }
    let got: Vec<i64> = got.iter().map(|j| j.job_id.0).collect();
    assert_eq!(got, p_jobs[..2], "the private builder took {got:?}");
    // The shared builder takes Q's three and P's last.
    shared.request_jobs(SLOTS);
    let mut taken = BTreeSet::new();
    while taken.len() < 4 {
        taken.extend(shared.next_jobs().await.iter().map(|j| j.job_id.0));
    }
    let expected: BTreeSet<i64> = q_jobs.iter().chain(&p_jobs[2..]).copied().collect();
    assert_eq!(taken, expected);
    // Asking for more, the private builder is not given Q's work.
    let q_more = queue(&server, "acme/q", 1).await[0];
    private.request_jobs(2);
    let stray = private
        .try_expect(Duration::from_millis(600), "no job of Q", |m| {
            matches!(m, ServerMessage::Jobs(_)).then_some(())
        })
        .await;
    assert_eq!(stray, None, "a builder private to P got a job");
    assert_eq!(server.job(q_more).await["state"], "queued");

    // The shared builder becomes private to Q: a job of R now has no builder at all.
    set_projects(&server, shared_id, &["acme/q"]).await;
    let r_job = queue(&server, "acme/r", 1).await[0];
    let seen = server.job(r_job).await;
    assert_eq!(
        seen["queue"]["blocked"], "no builder matches: no builder serves project acme/r",
        "{seen}"
    );
    assert_eq!(seen["queue"]["matching_builders_online"], 0, "{seen}");
    // Shared again (an empty list): R's job matches, and the builder with free slots runs it.
    let seen = set_projects(&server, private_id, &[]).await;
    assert_eq!(seen["projects"], json!([]), "{seen}");
    // Its two free slots take the waiting work of both R and Q.
    let mut taken = BTreeSet::new();
    while taken.len() < 2 {
        taken.extend(private.next_jobs().await.iter().map(|j| j.job_id.0));
    }
    assert_eq!(taken, BTreeSet::from([r_job, q_more]));
    drop(shared_key);
}

async fn project_token(server: &TestServer, project: &str, scope: TokenScope) -> String {
    let slug = format!("acme/{project}");
    server
        .with_store(move |store| {
            let project = store.project_by_slug(&slug)?.expect("the project").id;
            store.create_api_token(Some(project), scope, "fair-share test", None)
        })
        .await
        .expect("a project token")
        .1
}

/// The admin's boost puts a young job of one project ahead of both projects' backlogs; a
/// project's own tokens, even its admin token, may not boost.
async fn a_boost_goes_ahead_of_every_project_and_only_the_admin_may_boost(db: TestDb) {
    let server = TestServer::start(db).await;
    create_project(&server, "a", 1).await;
    create_project(&server, "b", 1).await;
    let a_jobs = queue(&server, "acme/a", 40).await;
    queue(&server, "acme/b", 40).await;
    let target = *a_jobs.last().expect("jobs");
    let boost = format!("/jobs/{target}/boost");

    let (status, _) = server.post(&boost, None, &json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for scope in [TokenScope::Submit, TokenScope::Admin] {
        let token = project_token(&server, "a", scope).await;
        let (status, body) = server.post(&boost, Some(&token), &json!({})).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{scope:?}: {body}");
    }
    assert_eq!(
        server.job(target).await["priority"],
        0,
        "refusals change nothing"
    );
    let (status, body) = server.post_admin("/jobs/99999/boost", &json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let (status, body) = server.post_admin(&boost, &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["priority"], 1001, "{body}");

    let (key, _, mut builder) = connect(&server, "boosted").await;
    builder.request_jobs(1);
    let first = builder.next_assignment().await;
    assert_eq!(first.job_id.0, target, "the boosted job goes first");
    builder.accept(&first);
    // Only a queued job can be boosted.
    let (status, body) = server.post_admin(&boost, &json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    builder
        .complete(&key, &first, Outcome::Succeeded, Vec::new())
        .await;
    // A submission cannot ask for a boost's priority itself.
    let (status, body) = server
        .post_admin(
            "/jobs",
            &json!({"source_sha256": SOURCE_SHA256, "source_url": "https://example.invalid/x.tar.gz",
                    "recipe": "cargo-build", "priority": 1001}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}
