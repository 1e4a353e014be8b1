//! `buildfleet builder …` and the CLI's error contract, run as the real binary against a
//! running backend.

use buildfleet_testkit::cli::run_cli;
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::keys::TestKey;
use buildfleet_testkit::server::TestServer;

#[actix_rt::test]
async fn admit_list_disable_enable_remove() {
    let server = TestServer::start(TestDb::sqlite()).await;
    let first = TestKey::generate("first");
    let second = TestKey::generate("second");
    let key_file = first.dir().join("id_ed25519.pub");

    let admitted = server
        .cli(&[
            "builder",
            "admit",
            "first",
            "--key-file",
            key_file.to_str().unwrap(),
            "--label",
            "os=linux",
            "--label",
            "arch=x86_64",
        ])
        .await
        .ok();
    assert!(
        admitted.stdout.contains(first.fingerprint.as_str()),
        "the admit message names the fingerprint ssh-keygen -lf prints: {}",
        admitted.stdout
    );
    let second_json = server
        .cli(&[
            "builder",
            "admit",
            "second",
            "--key",
            &second.public_openssh,
            "--json",
        ])
        .await
        .ok()
        .json();
    assert_eq!(second_json["name"], "second");
    assert_eq!(second_json["fingerprint"], second.fingerprint.as_str());
    let second_id = second_json["id"].as_i64().unwrap().to_string();

    let table = server.cli(&["builder", "list"]).await.ok().stdout;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two rows:\n{table}");
    assert!(lines[0].starts_with("ID  NAME"), "{table}");
    assert!(
        lines[1].contains("first") && lines[1].contains("arch=x86_64,os=linux"),
        "{table}"
    );
    assert!(lines[2].contains(second.fingerprint.as_str()), "{table}");
    let fingerprint_column = lines[0].find("FINGERPRINT").unwrap();
    assert_eq!(
        lines[1].find("SHA256:"),
        Some(fingerprint_column),
        "columns are aligned:\n{table}"
    );

    let listed = server.cli(&["builder", "list", "--json"]).await.ok().json();
    let builders = listed["builders"].as_array().unwrap();
    assert_eq!(builders.len(), 2);
    assert_eq!(builders[0]["labels"]["os"], "linux");
    assert_eq!(builders[0]["enabled"], true);

    // By name and by id.
    server.cli(&["builder", "disable", "first"]).await.ok();
    let listed = server.cli(&["builder", "list", "--json"]).await.ok().json();
    assert_eq!(listed["builders"][0]["enabled"], false);
    assert!(server
        .cli(&["builder", "list"])
        .await
        .ok()
        .stdout
        .contains("disabled"));
    let id = listed["builders"][0]["id"].as_i64().unwrap().to_string();
    let enabled = server
        .cli(&["builder", "enable", &id, "--json"])
        .await
        .ok()
        .json();
    assert_eq!(enabled["enabled"], true);

    // Drain needs a connected builder: the API's conflict comes through as exit 3.
    let drain = server.cli(&["builder", "drain", &id]).await.expect_code(3);
    assert!(drain.stderr.contains("conflict"), "{}", drain.stderr);

    let removed = server.cli(&["builder", "remove", &second_id]).await.ok();
    assert_eq!(
        removed.stdout,
        format!("removed builder second (id {second_id})\n")
    );
    let listed = server.cli(&["builder", "list", "--json"]).await.ok().json();
    assert_eq!(listed["builders"].as_array().unwrap().len(), 1);

    let again = server
        .cli(&["builder", "remove", &second_id])
        .await
        .expect_code(3);
    assert!(again.stderr.contains("not_found"), "{}", again.stderr);
    let unknown = server
        .cli(&["builder", "enable", "nobody"])
        .await
        .expect_code(3);
    assert!(
        unknown.stderr.contains("no builder named"),
        "{}",
        unknown.stderr
    );
    server.shutdown().await;
}

#[actix_rt::test]
async fn the_admin_token_is_read_from_the_data_directory() {
    let server = TestServer::start(TestDb::sqlite()).await;
    let key = TestKey::generate("local");
    let data_dir = server.data_dir().to_str().unwrap().to_owned();
    // No --token: the generated one in <data-dir>/admin-token is used.
    run_cli(
        &[
            "builder",
            "admit",
            "local",
            "--key",
            &key.public_openssh,
            "--url",
            &server.url,
            "--data-dir",
            &data_dir,
        ],
        &[],
    )
    .await
    .ok();
    server.shutdown().await;
}

#[actix_rt::test]
async fn errors_have_stable_exit_codes() {
    let server = TestServer::start(TestDb::sqlite()).await;
    let key = TestKey::generate("someone");

    // A wrong token: exit 3 with the API's error code.
    let wrong = server
        .cli_env(
            &["builder", "admit", "someone", "--key", &key.public_openssh],
            &[("BUILDFLEET_TOKEN", "not-the-token")],
        )
        .await
        .expect_code(3);
    assert!(wrong.stderr.contains("unauthorized"), "{}", wrong.stderr);
    let none = server
        .cli_anonymous(&["builder", "admit", "someone", "--key", &key.public_openssh])
        .await
        .expect_code(3);
    assert!(none.stderr.contains("unauthorized"), "{}", none.stderr);
    // Reads need no token.
    server.cli_anonymous(&["builder", "list"]).await.ok();

    // A key that is not a key: the API's bad_request.
    let bad_key = server
        .cli(&[
            "builder",
            "admit",
            "someone",
            "--key",
            "ssh-ed25519 not-base64",
        ])
        .await
        .expect_code(3);
    assert!(bad_key.stderr.contains("bad_request"), "{}", bad_key.stderr);

    // A duplicate name: conflict.
    server
        .cli(&["builder", "admit", "someone", "--key", &key.public_openssh])
        .await
        .ok();
    let duplicate = server
        .cli(&["builder", "admit", "someone", "--key", &key.public_openssh])
        .await
        .expect_code(3);
    assert!(
        duplicate.stderr.contains("conflict"),
        "{}",
        duplicate.stderr
    );

    // Nobody listens: exit 4.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let unreachable = run_cli(
        &["builder", "list", "--url", &format!("http://{closed}")],
        &[],
    )
    .await
    .expect_code(4);
    assert!(
        unreachable.stderr.contains("cannot reach the backend"),
        "{}",
        unreachable.stderr
    );
    let unreachable = run_cli(
        &["job", "show", "1", "--url", &format!("http://{closed}")],
        &[],
    )
    .await
    .expect_code(4);
    assert!(unreachable.stderr.contains("error:"));

    // Usage errors: exit 2.
    server
        .cli(&["builder", "admit", "nokey"])
        .await
        .expect_code(2);
    server
        .cli(&["job", "show", "not-a-number"])
        .await
        .expect_code(2);
    server.cli(&["job", "frobnicate"]).await.expect_code(2);
    server
        .cli(&["builder", "list", "--url", "ftp://example"])
        .await
        .expect_code(2);
    let missing = server
        .cli(&[
            "builder",
            "admit",
            "x",
            "--key-file",
            "/nonexistent/key.pub",
        ])
        .await
        .expect_code(2);
    assert!(missing.stderr.contains("/nonexistent/key.pub"));

    // A missing job: the API's not_found.
    let not_found = server.cli(&["job", "show", "999"]).await.expect_code(3);
    assert!(
        not_found.stderr.contains("not_found"),
        "{}",
        not_found.stderr
    );

    // --help documents the exit codes.
    for group in ["builder", "job", "artifact"] {
        let help = server.cli(&[group, "--help"]).await.ok();
        assert!(
            help.stdout.contains("Exit codes:"),
            "{group}: {}",
            help.stdout
        );
    }
    server.shutdown().await;
}
