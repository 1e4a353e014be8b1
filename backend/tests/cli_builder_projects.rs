//! `buildfleet builder projects` (a private builder's projects, through
//! `PUT /builders/{id}/projects`), `builder show` and `builder list` printing them, run as the
//! real binary against a running backend: set by name and by id, read back, made shared again;
//! an unknown project refused by the server (its 404 sentence, exit 3, nothing changed), a
//! malformed name refused before anything is sent (exit 2), a project's admin token refused
//! (403), and a builder private to a project a token cannot see shown to it as missing. Both
//! databases.

use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::keys::TestKey;
use buildfleet_testkit::server::TestServer;
use buildfleet_testkit::server_tests;
use serde_json::{json, Value};

server_tests! {
    a_builder_is_made_private_to_projects_and_shared_again,
}

/// The projects the API says the builder serves, read as the admin.
async fn projects_of(server: &TestServer, id: i64) -> Value {
    let (status, body) = server
        .call(
            awc::http::Method::GET,
            &format!("/builders/{id}"),
            Some(&server.admin_token),
            None,
        )
        .await;
    assert!(status.is_success(), "GET /builders/{id}: {status} {body}");
    body["projects"].clone()
}

async fn a_builder_is_made_private_to_projects_and_shared_again(db: TestDb) {
    let server = TestServer::start(db).await;
    for name in ["acme/web", "acme/docs", "rival/app"] {
        server.cli(&["project", "create", name]).await.ok();
    }
    let key = TestKey::generate("ci-1");
    let id = server.admit(&key).await;
    let id_text = id.to_string();
    server.admit(&TestKey::generate("ci-2")).await;

    // Shared at first: every project's jobs.
    let read = server.cli(&["builder", "projects", "ci-1"]).await.ok();
    assert_eq!(
        read.stdout, "builder ci-1 serves every project (shared)\n",
        "{}",
        read.stderr
    );

    // By name: private to two projects (the server answers them sorted).
    let set = server
        .cli(&["builder", "projects", "ci-1", "acme/web", "acme/docs"])
        .await
        .ok();
    assert_eq!(
        set.stdout,
        "builder ci-1 now serves only acme/docs, acme/web (private)\n"
    );
    assert_eq!(
        projects_of(&server, id).await,
        json!(["acme/docs", "acme/web"])
    );

    // `builder show` and `builder list` print them; the shared builder says so.
    let shown = server.cli(&["builder", "show", "ci-1"]).await.ok().stdout;
    let line = shown
        .lines()
        .find(|l| l.starts_with("projects:"))
        .unwrap_or_else(|| panic!("no projects line:\n{shown}"));
    assert!(
        line.ends_with(" only acme/docs, acme/web (private)"),
        "{shown}"
    );
    assert!(
        shown.starts_with("builder:") && shown.contains(&format!("ci-1 (id {id})")),
        "{shown}"
    );
    assert!(shown.contains(key.fingerprint.as_str()), "{shown}");
    let table = server.cli(&["builder", "list"]).await.ok().stdout;
    let lines: Vec<&str> = table.lines().collect();
    let column = lines[0].find("PROJECTS").expect("a PROJECTS column");
    let ci_1 = lines.iter().find(|l| l.contains(" ci-1 ")).expect("ci-1");
    let ci_2 = lines.iter().find(|l| l.contains(" ci-2 ")).expect("ci-2");
    assert_eq!(
        &ci_1[column..column + "acme/docs,acme/web".len()],
        "acme/docs,acme/web",
        "{table}"
    );
    assert_eq!(&ci_2[column..column + "shared".len()], "shared", "{table}");
    let shown = server
        .cli(&["builder", "show", "ci-2", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(shown["projects"], json!([]));

    // By id, with --json: the API's answer.
    let answer = server
        .cli(&["builder", "projects", &id_text, "acme/web", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(answer["id"], id);
    assert_eq!(answer["projects"], json!(["acme/web"]));

    // An unknown project: the server's 404 sentence, exit 3, and nothing changes.
    let unknown = server
        .cli(&["builder", "projects", "ci-1", "acme/web", "acme/nope"])
        .await
        .expect_code(3);
    assert!(
        unknown
            .stderr
            .contains("error: there is no project \"acme/nope\" (not_found, HTTP 404)"),
        "{}",
        unknown.stderr
    );
    assert!(
        unknown.stderr.contains("hint: buildfleet project list"),
        "{}",
        unknown.stderr
    );
    assert_eq!(projects_of(&server, id).await, json!(["acme/web"]));

    // A malformed name is refused before anything is sent: with a URL where nothing
    // listens, a request would have been exit 4.
    for bad in ["web", "acme/web/extra", "/web", "acme/"] {
        let refused = server
            .cli(&[
                "builder",
                "projects",
                "ci-1",
                bad,
                "--url",
                "http://127.0.0.1:9",
            ])
            .await
            .expect_code(2);
        assert!(
            refused.stderr.contains(&format!(
                "{bad:?} is not a project name: give organisation/project"
            )),
            "{}",
            refused.stderr
        );
    }
    // --shared names no project.
    server
        .cli(&["builder", "projects", "ci-1", "acme/web", "--shared"])
        .await
        .expect_code(2);
    assert_eq!(projects_of(&server, id).await, json!(["acme/web"]));

    // An unknown builder.
    let nobody = server
        .cli(&["builder", "projects", "nobody", "acme/web"])
        .await
        .expect_code(3);
    assert!(
        nobody.stderr.contains("no builder named \"nobody\""),
        "{}",
        nobody.stderr
    );
    let missing = server
        .cli(&["builder", "projects", "99999", "acme/web"])
        .await
        .expect_code(3);
    assert!(
        missing
            .stderr
            .contains("builder 99999 not found (not_found, HTTP 404)"),
        "{}",
        missing.stderr
    );

    // A project's admin token may not choose builders (the service's admin does).
    let web_admin = server
        .cli(&[
            "token",
            "create",
            "--project",
            "acme/web",
            "--scope",
            "admin",
            "--description",
            "web admin",
        ])
        .await
        .ok()
        .stdout
        .trim()
        .to_owned();
    let forbidden = server
        .cli_env(
            &["builder", "projects", "ci-1", "acme/web", "acme/docs"],
            &[("BUILDFLEET_TOKEN", &web_admin)],
        )
        .await
        .expect_code(3);
    assert!(
        forbidden.stderr.contains("forbidden, HTTP 403"),
        "{}",
        forbidden.stderr
    );
    // It sees the builder, which serves its project...
    let seen = server
        .cli_env(
            &["builder", "projects", "ci-1"],
            &[("BUILDFLEET_TOKEN", &web_admin)],
        )
        .await
        .ok();
    assert_eq!(seen.stdout, "builder ci-1 serves only acme/web (private)\n");
    // ...while rival/app's token does not: the builder is missing to it.
    let rival = server
        .cli(&[
            "token",
            "create",
            "--project",
            "rival/app",
            "--scope",
            "read",
            "--description",
            "rival",
        ])
        .await
        .ok()
        .stdout
        .trim()
        .to_owned();
    let hidden = server
        .cli_env(
            &["builder", "show", &id_text],
            &[("BUILDFLEET_TOKEN", &rival)],
        )
        .await
        .expect_code(3);
    assert!(
        hidden
            .stderr
            .contains(&format!("builder {id} not found (not_found, HTTP 404)")),
        "{}",
        hidden.stderr
    );
    let listed = server
        .cli_env(&["builder", "list"], &[("BUILDFLEET_TOKEN", &rival)])
        .await
        .ok()
        .stdout;
    assert!(!listed.contains(" ci-1 "), "{listed}");

    // Shared again.
    let shared = server
        .cli(&["builder", "projects", "ci-1", "--shared"])
        .await
        .ok();
    assert_eq!(
        shared.stdout,
        "builder ci-1 now serves every project (shared)\n"
    );
    assert_eq!(projects_of(&server, id).await, json!([]));
    let read = server
        .cli(&["builder", "projects", "ci-1", "--json"])
        .await
        .ok()
        .json();
    assert_eq!((&read["id"], &read["projects"]), (&json!(id), &json!([])));
    server.shutdown().await;
}
