//! A real `buildfleet-builder` process, SIGKILLed mid-build, takes its job's whole process
//! tree with it (the group leader and its background `sleep`s), so a requeued attempt
//! never runs beside a leftover of the old one.
//!
//! The backend is the real one, the test kit's (in-process, on SQLite), with a key made by
//! `ssh-keygen`: it only has to admit the builder, serve the source and hand out the job,
//! nothing a real backend cannot be asked to do. (The connection, reconnect and throttling
//! tests keep their scripted fake backends: they need a backend that misbehaves on cue.)

use std::time::{Duration, Instant};

use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::e2e::{
    e2e_recipes, pid_alive, small_source, upload_source, wait_for_pids, TREE_RECIPE,
};
use buildfleet_testkit::keys::TestKey;
use buildfleet_testkit::processes::{builder_config_toml, BuilderProcess};
use buildfleet_testkit::server::TestServer;
use serde_json::json;

#[actix_rt::test]
async fn a_killed_builder_takes_its_jobs_whole_process_tree_with_it() {
    let server = TestServer::start(TestDb::sqlite()).await;
    let key = TestKey::generate("killed");
    let id = server.admit(&key).await;
    let (digest, source_url) = upload_source(&server, small_source()).await;
    let pid_dir = tempfile::tempdir().unwrap();
    let job = server
        .submit(json!({
            "source_url": source_url,
            "source_sha256": digest,
            "recipe": TREE_RECIPE,
            "parameters": { "piddir": pid_dir.path().display().to_string() },
        }))
        .await;

    let config = builder_config_toml(
        1,
        [
            ("initial_backoff_ms", 100),
            ("max_backoff_ms", 1_000),
            ("replaced_backoff_ms", 1_000),
            ("healthy_after_ms", 2_000),
        ],
        &e2e_recipes(),
    );
    let mut builder =
        BuilderProcess::start(key, id, &format!("ws://{}", server.addr), &config).await;
    let pids = wait_for_pids(pid_dir.path()).await;
    assert!(
        pids.iter().all(|p| pid_alive(*p)),
        "the whole tree runs before the kill"
    );
    server.wait_for_state(job, "running").await;

    builder.kill().await;
    let killed_at = Instant::now();
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|p| pid_alive(*p)).collect();
        if alive.is_empty() {
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(1),
            "{:?} after the builder was killed, processes {alive:?} of its job {pids:?} still run",
            killed_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.shutdown().await;
}
