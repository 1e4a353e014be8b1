//! `buildfleet crate backfill|show` and `buildfleet registry status` with the real binary
//! against a real backend following the test kit's local registry (sparse and git indexes
//! over HTTP), on both databases: what they print and answer, and every error path with its
//! message and exit code (no registry followed, an unknown crate, a bad name, a bad version
//! requirement, a missing or wrong token).

use std::time::Duration;

use buildfleet_backend::config::ServerConfig;
use buildfleet_backend::registry::RegistryFile;
use buildfleet_backend::store::TokenScope;
use buildfleet_testkit::cli::CliOutput;
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::registry::{
    CrateFile, LocalRegistry, SAMPLE_BINARY, SAMPLE_LIBRARY, SAMPLE_TAMPERED,
};
use buildfleet_testkit::server::{wait_until, TestServer};
use buildfleet_testkit::server_tests;
use serde_json::{json, Value};

server_tests! {
    backfill_show_and_status_against_a_sparse_index,
    crate_errors_say_what_to_do,
    a_backend_following_no_registry_says_so,
}

fn follow(config: &mut ServerConfig, index: String, crates: &[&str]) {
    let mut settings = RegistryFile {
        name: Some("local".into()),
        index,
        crates: crates.iter().map(|c| (*c).to_owned()).collect(),
        ..RegistryFile::default()
    }
    .resolve()
    .expect("registry settings");
    settings.poll_interval = Duration::from_millis(100);
    config.registry = Some(settings);
}

/// Waits until the crate's page has `version`; answers the page.
async fn wait_for_version(server: &TestServer, krate: &str, version: &str) -> Value {
    wait_until(&format!("{krate} {version} to be seen"), || async {
        let (status, page) = server.get(&format!("/crates/{krate}")).await;
        (status.is_success()
            && page["versions"]
                .as_array()
                .is_some_and(|vs| vs.iter().any(|v| v["version"] == version)))
        .then_some(page)
    })
    .await
}

/// Asserts the run exited with `code`, printed nothing on stdout, and that stderr has one
/// `error:` line equal to `error` and holds each of `parts`.
#[track_caller]
fn fails(output: CliOutput, code: i32, error: &str, parts: &[&str]) -> CliOutput {
    let output = output.expect_code(code);
    assert_eq!(output.stdout, "", "nothing on stdout");
    let errors: Vec<&str> = output
        .stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors, [error], "{}", output.stderr);
    for part in parts {
        assert!(
            output.stderr.contains(part),
            "stderr lacks {part:?}:\n{}",
            output.stderr
        );
    }
    output
}

/// The whitespace-separated cells of the line of `text` whose first cell is `first`.
fn row<'a>(text: &'a str, first: &str) -> Vec<&'a str> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&first))
        .unwrap_or_else(|| panic!("no row {first:?} in:\n{text}"))
}

async fn backfill_show_and_status_against_a_sparse_index(db: TestDb) {
    let (registry, samples) = LocalRegistry::start_with_samples();
    // Packed before the server starts: packing blocks, and the server shares this thread.
    let release = CrateFile::binary(SAMPLE_BINARY, "0.2.0");
    let index = registry.sparse_index_url();
    let server =
        TestServer::start_with(db, |c| follow(c, index, &[SAMPLE_BINARY, SAMPLE_LIBRARY])).await;
    let existing = samples.binary.version.as_str();
    wait_for_version(&server, SAMPLE_BINARY, "0.1.1").await;
    // The round's time is written after the versions it recorded.
    for _ in 0..200 {
        if !server.get_ok("/registry").await["last_fetch_at"].is_null() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }

    // The follower's standing, as a table and as the API's JSON.
    let status = server.cli_anonymous(&["registry", "status"]).await.ok();
    assert_eq!(row(&status.stdout, "registry:"), ["registry:", "local"]);
    assert_eq!(
        row(&status.stdout, "index:"),
        ["index:", &registry.sparse_index_url(), "(sparse)"]
    );
    assert_eq!(
        row(&status.stdout, "crates:"),
        ["crates:", &format!("{SAMPLE_BINARY},"), SAMPLE_LIBRARY]
    );
    assert!(
        status
            .stdout
            .lines()
            .any(|l| l.starts_with("last fetch: ") && l.ends_with(" ago)")),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.contains("\nlast error: -\n"),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.contains("no queued versions"),
        "{}",
        status.stdout
    );
    let status_json = server
        .cli(&["registry", "status", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(status_json["name"], "local");
    assert_eq!(status_json["protocol"], "sparse");
    assert_eq!(
        status_json["crates"],
        json!([SAMPLE_BINARY, SAMPLE_LIBRARY])
    );

    // A crate as the follower saw it, newest first: nothing built yet.
    let shown = server
        .cli_anonymous(&["crate", "show", SAMPLE_BINARY])
        .await
        .ok();
    assert!(
        shown.stdout.starts_with(&format!(
            "crate {SAMPLE_BINARY} (registry local): 2 version(s) seen\n"
        )),
        "{}",
        shown.stdout
    );
    let yanked = row(&shown.stdout, "0.1.1");
    assert_eq!(yanked[1], "yanked", "{}", shown.stdout);
    assert_eq!(
        yanked[4..],
        ["-"; 6],
        "no builds, no reason: {}",
        shown.stdout
    );
    assert!(
        shown.stdout.find("0.1.1").unwrap() < shown.stdout.find(existing).unwrap(),
        "newest first:\n{}",
        shown.stdout
    );
    assert_eq!(row(&shown.stdout, existing)[1], "existing");
    assert_eq!(
        server
            .cli(&["crate", "show", SAMPLE_BINARY, "--json"])
            .await
            .ok()
            .json(),
        server.get_ok(&format!("/crates/{SAMPLE_BINARY}")).await
    );

    // A crate of the index that is not watched: said so, with where the watch list is.
    fails(
        server
            .cli_anonymous(&["crate", "show", SAMPLE_TAMPERED])
            .await,
        3,
        &format!(
            "error: crate \"{SAMPLE_TAMPERED}\" has not been seen by the follower of registry \
             local (not_found, HTTP 404)"
        ),
        &[&format!(
            "hint: the follower watches only the crates in [registry] crates ({SAMPLE_BINARY}, \
             {SAMPLE_LIBRARY}); add {SAMPLE_TAMPERED} there, or `buildfleet crate backfill \
             {SAMPLE_TAMPERED}` queues the versions the index has"
        )],
    );

    // Backfill: the existing, unyanked version gets its metadata job, at the low priority.
    let done = server
        .cli(&["crate", "backfill", SAMPLE_BINARY, "--versions", "<0.2"])
        .await
        .ok();
    assert!(
        done.stdout.starts_with(&format!(
            "crate {SAMPLE_BINARY}: 1 metadata job(s) queued for 1 matching version(s)\n"
        )),
        "{}",
        done.stdout
    );
    assert!(done
        .stderr
        .contains(&format!("buildfleet crate show {SAMPLE_BINARY}")));
    let page = server.get_ok(&format!("/crates/{SAMPLE_BINARY}")).await;
    let backfilled = page["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == existing)
        .unwrap()["builds"][0]["job"]
        .as_i64()
        .expect("the backfilled job");
    assert_eq!(
        row(&done.stdout, existing),
        [existing, &backfilled.to_string()]
    );
    let job = server.job(backfilled).await;
    assert_eq!(job["priority"], -100);
    assert_eq!(job["recipe"], "crate-metadata");
    assert_eq!(job["annotations"]["version"], existing);

    // Again: nothing new, said as such; with --json the API's answer.
    let again = server.cli(&["crate", "backfill", SAMPLE_BINARY]).await.ok();
    assert_eq!(
        again.stdout,
        format!(
            "crate {SAMPLE_BINARY}: the 1 matching version(s) ({existing}) were queued before; \
             nothing new queued\n"
        )
    );
    let again = server
        .cli(&["crate", "backfill", SAMPLE_BINARY, "--json"])
        .await
        .ok()
        .json();
    assert_eq!(
        again,
        json!({ "crate": SAMPLE_BINARY, "versions": [existing], "queued_jobs": [] })
    );
    let none = server
        .cli(&["crate", "backfill", SAMPLE_BINARY, "--versions", ">=9"])
        .await
        .ok();
    assert_eq!(
        none.stdout,
        format!("crate {SAMPLE_BINARY}: no unyanked version matches \">=9\"; nothing queued\n")
    );

    // A release published while following: queued, not a backfill; the backfilled one shows
    // its job.
    registry.publish(&release);
    let page = wait_for_version(&server, SAMPLE_BINARY, "0.2.0").await;
    let released = page["versions"][0]["builds"][0]["job"]
        .as_i64()
        .expect("the release's job");
    let shown = server
        .cli_anonymous(&["crate", "show", SAMPLE_BINARY])
        .await
        .ok();
    assert!(
        shown.stdout.find("0.2.0").unwrap() < shown.stdout.find("0.1.1").unwrap(),
        "{}",
        shown.stdout
    );
    // VERSION STATUS SEEN (two words) TARGET RECIPE JOB STATE BACKFILL REASON
    let new = row(&shown.stdout, "0.2.0");
    assert_eq!(new[1], "queued");
    assert_eq!(
        new[4..],
        [
            "(own)",
            "crate-metadata",
            &released.to_string(),
            "queued",
            "no",
            "-"
        ]
    );
    let old = row(&shown.stdout, existing);
    assert_eq!(old[1], "queued");
    assert_eq!(
        old[4..],
        [
            "(own)",
            "crate-metadata",
            &backfilled.to_string(),
            "queued",
            "yes",
            "-"
        ]
    );
    let status = server.cli_anonymous(&["registry", "status"]).await.ok();
    assert!(
        status.stdout.contains("latest queued versions:"),
        "{}",
        status.stdout
    );
    assert_eq!(
        row(&status.stdout, SAMPLE_BINARY)[..2],
        [SAMPLE_BINARY, "0.2.0"]
    );
    server.shutdown().await;
}

async fn crate_errors_say_what_to_do(db: TestDb) {
    let (registry, _samples) = LocalRegistry::start_with_samples();
    let index = registry.git_index_url();
    let server = TestServer::start_with(db, |c| follow(c, index, &[])).await;
    let head = registry.git_head();
    wait_until("the follower to reach the index's HEAD", || async {
        (server.get_ok("/registry").await["position"] == head).then_some(())
    })
    .await;
    let status = server.cli_anonymous(&["registry", "status"]).await.ok();
    assert_eq!(
        row(&status.stdout, "crates:"),
        ["crates:", "every", "crate", "of", "the", "index"]
    );
    assert_eq!(row(&status.stdout, "position:"), ["position:", &head]);

    // A git index is followed from its HEAD: what was published before is not seen.
    fails(
        server
            .cli_anonymous(&["crate", "show", SAMPLE_BINARY])
            .await,
        3,
        &format!(
            "error: crate \"{SAMPLE_BINARY}\" has not been seen by the follower of registry \
             local (not_found, HTTP 404)"
        ),
        &[&format!(
            "hint: the follower records versions as they are published (and a watched crate's \
             at its first fetch); `buildfleet crate backfill {SAMPLE_BINARY}` queues the \
             versions the index has"
        )],
    );
    fails(
        server
            .cli(&["crate", "backfill", "no-such-crate", "--json"])
            .await,
        3,
        &format!(
            "error: crate \"no-such-crate\" is not in the index of registry local ({}) \
             (not_found, HTTP 404)",
            registry.git_index_url()
        ),
        &["hint: check the crate's name as it was published"],
    );

    // A crate whose every version is yanked has nothing to backfill.
    registry.yank(SAMPLE_TAMPERED, "1.0.0");
    let yanked = server
        .cli(&["crate", "backfill", SAMPLE_TAMPERED])
        .await
        .ok();
    assert_eq!(
        yanked.stdout,
        format!("crate {SAMPLE_TAMPERED}: every version is yanked (never built); nothing queued\n")
    );

    // Names and requirements that cannot be are refused before anything is sent.
    for name in ["../etc", "1up", "a b", &"x".repeat(65)] {
        for command in [vec!["crate", "show", name], vec!["crate", "backfill", name]] {
            fails(
                server.cli(&command).await,
                2,
                &format!(
                    "error: crate name {name:?}: 1 to 64 characters of letters, digits, '-' and \
                     '_', starting with a letter"
                ),
                &[],
            );
        }
    }
    for versions in ["not a req", ">=1.x.y", "1.0 ||| 2"] {
        let refused = server
            .cli(&["crate", "backfill", SAMPLE_BINARY, "--versions", versions])
            .await
            .expect_code(2);
        assert_eq!(refused.stdout, "");
        assert!(
            refused.stderr.starts_with(&format!(
                "error: --versions {versions:?} is not a semver requirement ("
            )) && refused
                .stderr
                .ends_with("; e.g. '>=1.2', '^1.2, <1.5' or '=1.2.3'\n"),
            "{}",
            refused.stderr
        );
    }

    // Backfilling needs the admin token: none, a wrong one, a submit token.
    let backfill = ["crate", "backfill", SAMPLE_BINARY];
    fails(
        server.cli_anonymous(&backfill).await,
        3,
        "error: a bearer token is required (unauthorized, HTTP 401)",
        &["hint: give a token with --token or BUILDFLEET_TOKEN"],
    );
    fails(
        server
            .cli_env(&backfill, &[("BUILDFLEET_TOKEN", "not-the-token")])
            .await,
        3,
        "error: the bearer token is wrong: it is neither the admin token nor a live API token \
         of this backend (unauthorized, HTTP 401)",
        &["hint: check the token given with --token or BUILDFLEET_TOKEN"],
    );
    let (_, submit) = server
        .store
        .create_api_token(None, TokenScope::Submit, "ci", None)
        .unwrap();
    fails(
        server
            .cli_env(&backfill, &[("BUILDFLEET_TOKEN", submit.as_str())])
            .await,
        3,
        "error: this API token has the submit scope; this needs the admin scope or the admin \
         token (forbidden, HTTP 403)",
        &[],
    );
    // None of them queued anything; the admin token does.
    assert!(server
        .get_ok(&format!("/jobs?annotation=crate:{SAMPLE_BINARY}"))
        .await["jobs"]
        .as_array()
        .is_some_and(Vec::is_empty));
    let done = server.cli(&backfill).await.ok();
    assert!(
        done.stdout
            .contains("1 metadata job(s) queued for 1 matching version(s)"),
        "{}",
        done.stdout
    );
    server.shutdown().await;
}

async fn a_backend_following_no_registry_says_so(db: TestDb) {
    let server = TestServer::start(db).await;
    let hint = "hint: the registry follower runs when the backend's config file has a [registry] \
                table (index, crates, builds; see docs/registry.md); add one and restart the \
                backend";
    for command in [
        vec!["registry", "status"],
        vec!["registry", "status", "--json"],
        vec!["crate", "show", SAMPLE_BINARY],
        vec!["crate", "backfill", SAMPLE_BINARY],
        vec![
            "crate",
            "backfill",
            SAMPLE_BINARY,
            "--versions",
            ">=1",
            "--json",
        ],
    ] {
        fails(
            server.cli(&command).await,
            3,
            "error: this backend follows no registry (not_found, HTTP 404)",
            &[hint],
        );
    }
}
