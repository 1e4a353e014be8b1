//! A fleet end to end: three real builders of two slots each take a burst of quick jobs;
//! every job succeeds exactly once, with its own artifact, and the work spreads over the
//! fleet.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::e2e::{
    small_source, start_server, upload_source, wait_connected, wait_terminal, E2eBuilder,
    QUICK_RECIPE,
};
use buildfleet_testkit::server_tests;
use serde_json::json;

server_tests! {
    many_jobs_spread_over_several_builders_each_run_once,
}

const BUILDERS: usize = 3;
const SLOTS: u32 = 2;
const JOBS: usize = 24;

async fn many_jobs_spread_over_several_builders_each_run_once(db: TestDb) {
    let server = start_server(db).await;
    let mut builders = Vec::new();
    for i in 0..BUILDERS {
        builders.push(
            E2eBuilder::start(&server, &format!("fleet-{i}"), |config| {
                config.max_concurrent_jobs = SLOTS;
            })
            .await,
        );
    }
    let names: Vec<&str> = builders.iter().map(|b| b.name.as_str()).collect();
    wait_connected(&server, &names).await;
    let (digest, _) = upload_source(&server, small_source()).await;

    let mut ids = Vec::new();
    for _ in 0..JOBS {
        ids.push(
            server
                .submit(json!({
                    "source_url": null,
                    "source_sha256": digest,
                    "recipe": QUICK_RECIPE,
                }))
                .await,
        );
    }

    // One deadline for the whole burst: six slots run 24 quick jobs in a few seconds.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut per_builder = BTreeMap::<i64, usize>::new();
    for &id in &ids {
        let left = deadline.saturating_duration_since(Instant::now());
        let job = wait_terminal(&server, id, left).await;
        assert_eq!(job["state"], "succeeded", "job {id}: {job:#}");
        assert_eq!(job["attempt"], 1, "job {id} ran once: {job:#}");
        let attempts = job["attempts"].as_array().expect("attempts");
        assert_eq!(attempts.len(), 1, "job {id} has one attempt: {job:#}");
        let builder = job["builder_id"].as_i64().expect("builder id");
        *per_builder.entry(builder).or_default() += 1;

        // The recipe ran once for this job: one start line, one artifact naming this job.
        let lines = server.log_lines(id).await;
        let starts: Vec<_> = lines
            .iter()
            .filter(|l| l.starts_with("start job"))
            .collect();
        assert_eq!(
            starts,
            [&format!("start job {id}")],
            "log of job {id}: {lines:?}"
        );
        let artifacts = job["artifacts"].as_array().expect("artifacts");
        assert_eq!(artifacts.len(), 1, "job {id}: {job:#}");
        let (_, body) = server
            .get_raw(artifacts[0]["url"].as_str().expect("artifact URL"))
            .await;
        assert_eq!(String::from_utf8_lossy(&body).trim(), id.to_string());
    }

    assert_eq!(per_builder.values().sum::<usize>(), JOBS);
    for builder in &builders {
        assert!(
            per_builder.get(&builder.id).is_some_and(|n| *n > 0),
            "builder {} ran no job; jobs per builder id: {per_builder:?}",
            builder.name
        );
    }

    for builder in builders {
        builder.stop().await;
    }
    server.shutdown().await;
}
