//! `buildfleet job show` against jobs that really ran on an in-process builder: a job retried
//! automatically and by hand prints its attempt as the dashboard does (failures against
//! `max_attempts`, manual retries apart; never "4 of at most 2"), why each attempt started,
//! and its project; a queued job that no builder can take prints its place in the queue as
//! the reason, as `job submit --wait` says it. Both databases.

use buildfleet_testkit::cli::{shell_recipe, wait_connected, TestBuilder};
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::keys::TestKey;
use buildfleet_testkit::server::TestServer;
use buildfleet_testkit::server_tests;

server_tests! {
    show_counts_failures_against_the_bound_and_manual_retries_apart,
}

/// The value of the `name:` line of `job show`'s fields.
fn field<'a>(shown: &'a str, name: &str) -> &'a str {
    shown
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} line:\n{shown}"))
        .trim()
}

async fn show_counts_failures_against_the_bound_and_manual_retries_apart(db: TestDb) {
    let server = TestServer::start(db).await;
    let key = TestKey::generate("runner");
    let id = server.admit(&key).await;
    let _builder = TestBuilder::start(
        &server,
        &key,
        vec![shell_recipe("broken", "echo 'about to fail'; exit 3", &[])],
    )
    .await;
    wait_connected(&server, id).await;
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("README"), "a source\n").unwrap();

    // Attempt 1 fails, attempt 2 is the automatic retry and fails: the bound of 2 is spent.
    let ended = server
        .cli(&[
            "job",
            "submit",
            source.path().to_str().unwrap(),
            "--recipe",
            "broken",
            "--max-attempts",
            "2",
            "--retry-exit-code",
            "3",
            "--retry-backoff-ms",
            "10",
            "--wait",
            "--json",
        ])
        .await
        .expect_code(1);
    let job = ended.json()["id"].as_i64().expect("job id");
    let job_text = job.to_string();
    assert_eq!(ended.json()["attempt"], 2, "{}", ended.stdout);

    // A manual retry: attempts 3 and 4 (its automatic retry) fail too.
    server.cli(&["job", "retry", &job_text]).await.ok();
    server.wait_for_state(job, "failed").await;
    let detail = server.job(job).await;
    assert_eq!(
        (&detail["attempt"], &detail["manual_retries"]),
        (&4.into(), &1.into()),
        "{detail}"
    );

    let shown = server.cli(&["job", "show", &job_text]).await.ok().stdout;
    // The attempt number is not a count against the bound (it used to say "4 of at most
    // 2"); the state changes below keep the server's own "2 of at most 2 attempts failed".
    assert_eq!(
        field(&shown, "attempt"),
        "4 · 2 of 2 attempts failed · 1 manual retry",
        "{shown}"
    );
    assert_eq!(field(&shown, "project"), "default/default");
    assert!(
        !shown.lines().any(|l| l.starts_with("queue:")),
        "a finished job has no queue standing:\n{shown}"
    );
    // Why each attempt started, one row per attempt.
    let header = shown
        .lines()
        .find(|l| l.starts_with("ATTEMPT"))
        .unwrap_or_else(|| panic!("no attempts table:\n{shown}"));
    let cause_column = header.find("STARTED AS").expect("a STARTED AS column");
    let causes: Vec<String> = shown
        .lines()
        .skip_while(|l| !l.starts_with("ATTEMPT"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|row| {
            let (number, _) = row.split_once(' ').expect("a row");
            let cause = row[cause_column..]
                .split("  ")
                .next()
                .unwrap_or_default()
                .to_owned();
            format!("{number}: {cause}")
        })
        .collect();
    assert_eq!(
        causes,
        [
            "1: first attempt",
            "2: automatic retry after a script failure",
            "3: manual retry",
            "4: automatic retry after a script failure",
        ],
        "{shown}"
    );

    // A queued job no builder can take: the reason, as `--wait` says it.
    let queued = server
        .cli(&[
            "job",
            "submit",
            source.path().to_str().unwrap(),
            "--recipe",
            "nobody-offers-this",
            "--json",
        ])
        .await
        .ok()
        .json()["id"]
        .as_i64()
        .expect("job id");
    let shown = server
        .cli(&["job", "show", &queued.to_string()])
        .await
        .ok()
        .stdout;
    assert_eq!(field(&shown, "state"), "queued");
    let queue = field(&shown, "queue");
    assert!(
        queue.starts_with(
            "no builder matches: no connected builder offers recipe \"nobody-offers-this\""
        ),
        "{shown}"
    );
    assert_eq!(
        field(&shown, "attempt"),
        "1 · 0 of 3 attempts failed",
        "{shown}"
    );
    let json = server
        .cli(&["job", "show", &queued.to_string(), "--json"])
        .await
        .ok()
        .json();
    assert_eq!(json["queue"]["blocked"].as_str(), Some(queue), "{json}");
    server.shutdown().await;
}
