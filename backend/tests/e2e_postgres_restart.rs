//! Builds survive PostgreSQL restarts: real builders run jobs that print 200 lines each while
//! the database is restarted three times (fast shutdown: every connection cut). Writes fail
//! meanwhile (log chunks, transitions, completions); the backend keeps the events, answers
//! completions `internal`, and the builders resend, so every job ends succeeded with an
//! exact log. The database is a server of this test's own, since restarting the shared test
//! server would break everyone else's tests.

use std::time::Duration;

use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::e2e::{
    assert_complete_log, configure_server, small_source, upload_source, wait_outcome, E2eBuilder,
    LINES_RECIPE,
};
use buildfleet_testkit::private_postgres::PrivatePostgres;
use buildfleet_testkit::server::TestServer;
use serde_json::json;

const JOBS: usize = 8;

#[actix_rt::test]
async fn jobs_survive_postgres_restarts_with_exact_logs() {
    let Some(postgres) = PrivatePostgres::start().map(std::sync::Arc::new) else {
        return;
    };
    let db = TestDb::postgres_at(postgres.admin_url());
    let server = TestServer::start_with(db, configure_server).await;
    let mut builders = Vec::new();
    for name in ["pg-a", "pg-b"] {
        builders.push(
            E2eBuilder::start(&server, name, |config| {
                config.max_concurrent_jobs = 2;
            })
            .await,
        );
    }
    let (digest, _) = upload_source(&server, small_source()).await;
    let mut ids = Vec::new();
    for _ in 0..JOBS {
        let id = server
            .submit(json!({ "source_url": null, "source_sha256": digest, "recipe": LINES_RECIPE }))
            .await;
        ids.push(id);
    }

    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let pg = postgres.clone();
        tokio::task::spawn_blocking(move || pg.restart())
            .await
            .expect("restarting PostgreSQL");
    }

    for id in &ids {
        let job = wait_outcome(&server, *id, "succeeded", Duration::from_secs(120)).await;
        assert_eq!(job["failed_attempts"], 0, "{job:#}");
        assert_complete_log(&server, *id).await;
    }
    for builder in builders {
        builder.stop().await;
    }
    server.shutdown().await;
    drop(postgres);
}
