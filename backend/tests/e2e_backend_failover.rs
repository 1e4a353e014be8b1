//! A builder given several backend URLs moves to the next when its backend goes away, and
//! resumes its job there: the connection, the source download and the artifact upload all go
//! to the replica it reaches. The "dead replica" is a proxy in front of the one real backend
//! whose public URL (the origin of the source and upload URLs it hands out) is the proxy's, so
//! once the proxy is closed every URL of the job names a host that refuses connections. (The
//! three-replica test with real processes is `replicas_failover`.)

use std::net::SocketAddr;
use std::time::Duration;

use buildfleet_builder::recipes::{ArtifactConfig, Pack, RecipeBook, RecipeConfig};
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::e2e::{
    assert_complete_log, configure_server, connect_url_of, e2e_recipes, free_port, tar_gz,
    upload_source, wait_lines, wait_outcome, E2eBuilder, TcpProxy, LINE_COUNT,
};
use buildfleet_testkit::server::TestServer;
use buildfleet_testkit::server_tests;
use serde_json::json;

server_tests! {
    a_builder_moves_to_the_next_backend_url_and_finishes_its_job_there,
}

const RECIPE: &str = "lines-then-result";
const JOB_LIMIT: Duration = Duration::from_secs(40);

/// Prints the numbered lines over a few seconds, then writes the job id as its artifact.
fn recipe() -> RecipeConfig {
    RecipeConfig {
        name: RECIPE.into(),
        version: "1".into(),
        commands: vec![vec![
            "sh".into(),
            "-c".into(),
            format!(
                "for i in $(seq 1 {LINE_COUNT}); do echo line $i; sleep 0.02; done; \
                 echo $BUILDFLEET_JOB_ID > \"$BUILDFLEET_OUT/result.txt\""
            ),
        ]],
        env: Default::default(),
        artifacts: vec![ArtifactConfig {
            name: "result.txt".into(),
            path: "result.txt".into(),
            pack: Pack::File,
        }],
        image: None,
        version_commands: Vec::new(),
    }
}

async fn a_builder_moves_to_the_next_backend_url_and_finishes_its_job_there(db: TestDb) {
    let dead_port = free_port();
    let dead = SocketAddr::from(([127, 0, 0, 1], dead_port));
    let mut server = TestServer::start_with(db, |config| {
        configure_server(config);
        config.public_url = Some(format!("http://{dead}"));
    })
    .await;
    // The test itself talks to the backend directly.
    server.url = format!("http://{}", server.addr);
    let proxy = TcpProxy::start_on(dead, server.addr).await;
    let builder = E2eBuilder::start(&server, "two-urls", |config| {
        config.connect_urls = vec![connect_url_of(dead), connect_url_of(server.addr)];
        let mut recipes = e2e_recipes();
        recipes.push(recipe());
        config.recipes = RecipeBook::with_builtins(recipes).expect("recipes");
    })
    .await;

    // Job 1: starts through the first URL, which dies mid-build.
    let (digest, _) = upload_source(&server, tar_gz(&[("one.txt", b"one")])).await;
    let first = server
        .submit(json!({"source_url": null, "source_sha256": digest, "recipe": RECIPE}))
        .await;
    wait_lines(&server, first, 30).await;
    assert!(
        proxy.accepted() >= 2,
        "the session and the source download went through the first URL: {} connections",
        proxy.accepted()
    );
    proxy.close().await;
    let job = wait_outcome(&server, first, "succeeded", JOB_LIMIT).await;
    assert_eq!(job["attempt"], 1, "resumed, not run again: {job:#}");
    assert_complete_log(&server, first).await;
    assert_result(&server, first).await;

    // Job 2: queued after the move; its source URL names the dead host too.
    let (digest, _) = upload_source(&server, tar_gz(&[("two.txt", b"two")])).await;
    let second = server
        .submit(json!({"source_url": null, "source_sha256": digest, "recipe": RECIPE}))
        .await;
    let job = wait_outcome(&server, second, "succeeded", JOB_LIMIT).await;
    assert_eq!(job["attempt"], 1, "{job:#}");
    assert_complete_log(&server, second).await;
    assert_result(&server, second).await;

    builder.stop().await;
    server.shutdown().await;
}

/// The job's one artifact holds its id.
async fn assert_result(server: &TestServer, id: i64) {
    let (status, body) = server
        .get_raw(&server.api(&format!("/jobs/{id}/artifacts/result.txt")))
        .await;
    assert_eq!(status, 200, "artifact of job {id}");
    assert_eq!(String::from_utf8_lossy(&body).trim(), id.to_string());
}
