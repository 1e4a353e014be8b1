//! `buildfleet project …` and `buildfleet token …`, run as the real binary against a running
//! backend: projects created and listed, a project token created and its printed secret used
//! (through `BUILDFLEET_TOKEN` and `--token`) to submit to its project, and a submission to a
//! project the token cannot see refused with the not-found sentence. Both databases.

use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::server::{TestServer, SOURCE_SHA256};
use buildfleet_testkit::server_tests;

server_tests! {
    projects_and_tokens_from_the_command_line,
}

const SOURCE_URL: &str = "https://example.invalid/app-1.0.0.tar.gz";

async fn projects_and_tokens_from_the_command_line(db: TestDb) {
    let server = TestServer::start(db).await;
    let created = server
        .cli(&["project", "create", "acme/web", "--weight", "3"])
        .await
        .ok();
    assert!(
        created.stdout.contains("created project acme/web"),
        "{}",
        created.stdout
    );
    assert!(created.stdout.contains("private"), "{}", created.stdout);
    server.cli(&["project", "create", "rival/app"]).await.ok();
    let public = server
        .cli(&["project", "create", "acme/docs", "--public", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(
        (&public["name"], &public["public"]),
        (&"acme/docs".into(), &true.into())
    );

    let table = server.cli(&["project", "list"]).await.ok().stdout;
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID"), "{table}");
    assert_eq!(lines.len(), 5, "a header and four projects:\n{table}");
    assert!(
        table.contains("acme/web") && table.contains("default/default"),
        "{table}"
    );
    let changed = server
        .cli(&["project", "set", "acme/web", "--weight", "5", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(changed["weight"], 5);
    let shown = server
        .cli(&["project", "show", "acme/web"])
        .await
        .ok()
        .stdout;
    assert!(shown.contains("weight:") && shown.contains('5'), "{shown}");
    assert!(shown.contains("1 builder (no reproduction)"), "{shown}");
    // The project's jobs that name no `reproduce` are built by two independent builders.
    let changed = server
        .cli(&["project", "set", "acme/web", "--reproduce", "2", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(changed["reproduce"], 2);
    let shown = server
        .cli(&["project", "show", "acme/web"])
        .await
        .ok()
        .stdout;
    assert!(shown.contains("2 independent builders"), "{shown}");
    let bad = server
        .cli(&["project", "set", "acme/web", "--reproduce", "9"])
        .await
        .expect_code(3);
    assert!(bad.stderr.contains("reproduce"), "{}", bad.stderr);
    // Refused before sending, and by the server.
    server
        .cli(&["project", "create", "nope"])
        .await
        .expect_code(2);
    server
        .cli(&["project", "set", "acme/web"])
        .await
        .expect_code(2);
    let bad = server
        .cli(&["project", "create", "Acme/web"])
        .await
        .expect_code(3);
    assert!(bad.stderr.contains("lowercase"), "{}", bad.stderr);
    // Anonymous: private projects are not listed.
    let anonymous = server.cli_anonymous(&["project", "list"]).await.ok().stdout;
    assert!(
        !anonymous.contains("acme/web") && anonymous.contains("acme/docs"),
        "{anonymous}"
    );

    // A submit token of acme/web: the secret alone on stdout.
    let made = server
        .cli(&[
            "token",
            "create",
            "--project",
            "acme/web",
            "--scope",
            "submit",
            "--description",
            "ci of acme/web",
            "--expires-in",
            "30d",
        ])
        .await
        .ok();
    let secret = made.stdout.trim().to_owned();
    assert!(secret.starts_with("bfapi_"), "{}", made.stdout);
    assert!(made.stderr.contains("shown this once"), "{}", made.stderr);

    // Used through BUILDFLEET_TOKEN, the job lands in the token's project.
    let submit = [
        "job",
        "submit",
        "--recipe",
        "cargo-build",
        "--source-url",
        SOURCE_URL,
        "--sha256",
        SOURCE_SHA256,
        "--json",
    ];
    let job = server
        .cli_env(&submit, &[("BUILDFLEET_TOKEN", &secret)])
        .await
        .ok()
        .json();
    assert_eq!(job["project"], "acme/web");
    let job_id = job["id"].as_i64().unwrap();
    // And through --token, naming the project.
    let mut named = submit.to_vec();
    named.extend(["--project", "acme/web", "--token", &secret]);
    let job = server.cli_anonymous(&named).await.ok().json();
    assert_eq!(job["project"], "acme/web");
    // A project it cannot see: non-zero, with the not-found sentence.
    let mut wrong = submit.to_vec();
    wrong.extend(["--project", "rival/app", "--token", &secret]);
    let refused = server.cli_anonymous(&wrong).await.expect_code(3);
    assert!(
        refused.stderr.contains("project rival/app not found"),
        "{}",
        refused.stderr
    );
    // job list --project: its jobs, for its token; the admin's view of another project.
    let listed = server
        .cli_env(
            &["job", "list", "--project", "acme/web", "--json"],
            &[("BUILDFLEET_TOKEN", &secret)],
        )
        .await
        .ok()
        .json();
    let ids: Vec<i64> = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{listed}");
    assert!(ids.contains(&job_id));
    let none = server
        .cli(&["job", "list", "--project", "rival/app", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(none["jobs"].as_array().unwrap().len(), 0);

    // Listing and revoking tokens.
    let tokens = server.cli(&["token", "list"]).await.ok().stdout;
    assert!(
        tokens.contains("ci of acme/web") && tokens.contains("live"),
        "{tokens}"
    );
    assert!(!tokens.contains(&secret), "a listing never shows a secret");
    let id = server.cli(&["token", "list", "--json"]).await.ok().json()["tokens"][0]["id"]
        .as_i64()
        .unwrap()
        .to_string();
    let revoked = server.cli(&["token", "revoke", &id]).await.ok().stdout;
    assert!(
        revoked.contains(&format!("revoked token {id}")),
        "{revoked}"
    );
    server.cli(&["token", "revoke", &id]).await.ok();
    let refused = server
        .cli_env(&submit, &[("BUILDFLEET_TOKEN", &secret)])
        .await
        .expect_code(3);
    assert!(
        refused.stderr.contains("unauthorized"),
        "{}",
        refused.stderr
    );
    server
        .cli(&["token", "create", "--scope", "write", "--description", "x"])
        .await
        .expect_code(2);
    server
        .cli(&[
            "token",
            "create",
            "--scope",
            "read",
            "--description",
            "x",
            "--expires-in",
            "3w",
        ])
        .await
        .expect_code(2);
    server.shutdown().await;
}
