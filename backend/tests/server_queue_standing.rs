//! Why a queued job waits, through the real server and a real builder session: its
//! position among the jobs its builders could take, the matching builders, an estimate from
//! recent run times, and "no builder matches" at once for a job nobody can run.

use buildfleet_protocol::{CompletionResult, Outcome};
use buildfleet_testkit::builder_client::{default_capabilities, upload_ok, BuilderClient};
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::keys::TestKey;
use buildfleet_testkit::server::TestServer;
use buildfleet_testkit::server_tests;
use serde_json::{json, Value};

server_tests! {
    a_queued_job_shows_its_position_builders_and_estimate,
    a_job_nobody_can_run_says_so_at_once,
    the_estimate_takes_the_crates_own_run_times_once_there_are_enough,
}

async fn standing(server: &TestServer, id: i64) -> Value {
    server.job(id).await["queue"].clone()
}

async fn a_queued_job_shows_its_position_builders_and_estimate(db: TestDb) {
    let server = TestServer::start(db).await;
    let key = TestKey::generate("waiting");
    server.admit(&key).await;
    let mut builder = BuilderClient::connect(&server.ws_url()).await;
    builder
        .handshake_with(&key, default_capabilities(1), Vec::new())
        .await;

    // One job runs to the end, so the recipe has a recent run time.
    builder.request_jobs(1);
    let first = server.submit(json!({})).await;
    let job = builder.next_assignment().await;
    builder.accept(&job);
    server.wait_for_state(first, "running").await;
    let digest = upload_ok(&job, "out.tar.gz", b"bytes").await;
    let result = builder
        .complete(&key, &job, Outcome::Succeeded, vec![digest])
        .await;
    assert_eq!(result, CompletionResult::Accepted);
    server.wait_for_state(first, "succeeded").await;
    assert_eq!(
        server.job(first).await.get("queue"),
        None,
        "only a queued job has a standing"
    );

    // The builder asks for nothing more: three jobs wait in claim order.
    let queued: Vec<i64> = [
        server.submit(json!({})).await,
        server.submit(json!({})).await,
        server.submit(json!({})).await,
    ]
    .into();
    let third = standing(&server, queued[2]).await;
    assert_eq!(third["position"], 3, "{third}");
    assert_eq!(third["position_capped"], false);
    assert_eq!(third["matching_builders_online"], 1);
    assert_eq!(third["free_slots"], 1);
    assert_eq!(third["matching_builders_offline"], 0);
    assert!(third["typical_duration_secs"].is_u64(), "{third}");
    assert!(third["estimated_start_secs"].is_u64(), "{third}");
    assert_eq!(third["blocked"], Value::Null);
    assert_eq!(standing(&server, queued[0]).await["position"], 1);

    // A job of higher priority goes first and pushes the others back.
    let urgent = server.submit(json!({ "priority": 10 })).await;
    assert_eq!(standing(&server, urgent).await["position"], 1);
    assert_eq!(standing(&server, queued[2]).await["position"], 4);
    // A job only another builder could take is not ahead of them.
    let elsewhere = server
        .submit(json!({ "labels": { "os": "plan9" }, "priority": 20 }))
        .await;
    assert_eq!(standing(&server, queued[2]).await["position"], 4);
    assert!(standing(&server, elsewhere).await["blocked"]
        .as_str()
        .is_some_and(|b| b.contains("os=plan9")));

    // Taking work moves the queue on.
    builder.request_jobs(1);
    let next = builder.next_assignment().await;
    assert_eq!(next.job_id.0, urgent);
    assert_eq!(standing(&server, queued[2]).await["position"], 3);
}

async fn a_job_nobody_can_run_says_so_at_once(db: TestDb) {
    let server = TestServer::start(db).await;
    let lonely = server.submit(json!({})).await;
    assert_eq!(
        standing(&server, lonely).await["blocked"],
        "no builder matches: no builder is connected"
    );

    let key = TestKey::generate("offers-cargo-build");
    server.admit(&key).await;
    let _builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    let unknown = server.submit(json!({ "recipe": "cargo-miri" })).await;
    let s = standing(&server, unknown).await;
    assert_eq!(
        s["blocked"],
        "no builder matches: no connected builder offers recipe \"cargo-miri\" (they offer: cargo-build)"
    );
    assert_eq!(s["matching_builders_online"], 0);
    assert_eq!(s["estimated_start_secs"], Value::Null);

    let labelled = server
        .submit(json!({ "labels": { "arch": "riscv64" } }))
        .await;
    assert_eq!(
        standing(&server, labelled).await["blocked"],
        "no builder matches: no connected builder with recipe \"cargo-build\" has the labels arch=riscv64"
    );

    // An admitted builder that is offline and could fit makes it a wait, not a dead end.
    let (status, body) = server
        .post_admin(
            "/builders",
            &json!({
                "name": "riscv-box",
                "public_key": TestKey::generate("riscv-box").public_openssh,
                "labels": { "arch": "riscv64" },
            }),
        )
        .await;
    assert!(status.is_success(), "{body}");
    let s = standing(&server, labelled).await;
    assert_eq!(s["matching_builders_offline"], 1);
    assert_eq!(
        s["blocked"],
        "waiting for a builder: no connected builder with recipe \"cargo-build\" has the labels arch=riscv64; 1 admitted builder that may match is offline"
    );
}

/// A job annotated with a crate is estimated from that crate's recent runs of its recipe once
/// there are `MIN_CRATE_SAMPLES` of them, else from the recipe's (the median either way).
async fn the_estimate_takes_the_crates_own_run_times_once_there_are_enough(db: TestDb) {
    let server = TestServer::start(db).await;
    // Finished runs, their times set in the database: seven of no crate at 60 s, three of
    // "slow" at 900 s, two of "rare" at 3000 s. The recipe's median is 60 s.
    let runs: [(Option<&str>, i64, usize); 3] = [
        (None, 60, 7),
        (Some("slow"), 900, 3),
        (Some("rare"), 3000, 2),
    ];
    for (krate, secs, count) in runs {
        for _ in 0..count {
            let id = server.submit(submission(krate)).await;
            server.execute_sql(&format!(
                "UPDATE jobs SET state = 'succeeded', started_at = 1000, finished_at = {} \
                 WHERE id = {id}",
                1000 + secs * 1000
            ));
        }
    }
    let typical = |krate: Option<&'static str>| {
        let server = &server;
        async move {
            let id = server.submit(submission(krate)).await;
            standing(server, id).await["typical_duration_secs"].clone()
        }
    };
    assert_eq!(typical(Some("slow")).await, 900, "three runs of its own");
    assert_eq!(
        typical(Some("rare")).await,
        60,
        "two are too few: the recipe's"
    );
    assert_eq!(typical(None).await, 60);
}

fn submission(krate: Option<&str>) -> Value {
    match krate {
        Some(krate) => json!({ "annotations": { "crate": krate, "version": "1.0.0" } }),
        None => json!({}),
    }
}
