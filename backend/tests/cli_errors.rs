//! Every error path of the admin CLI: its message (the part that tells what to do) and its
//! exit code, with the real `buildfleet` binary against a real backend on both databases;
//! plus plain-text logs: the CLI's `job logs` and the backend's and the builder's own logs
//! carry no colour escapes into a file or a pipe.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use buildfleet_backend::store::TokenScope;
use buildfleet_testkit::cli::{run_cli, shell_recipe, wait_connected, CliOutput, TestBuilder};
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::keys::TestKey;
use buildfleet_testkit::processes::{builder_config_toml, BackendProcess, BuilderProcess};
use buildfleet_testkit::server::{wait_until, TestServer};
use buildfleet_testkit::server_tests;
use buildfleet_testkit::tls::openssl;

server_tests! {
    tokens_missing_wrong_or_too_narrow,
    missing_things_are_named_once,
    refusals_say_why_by_the_jobs_state,
    bad_values_are_refused_with_a_sentence,
    server_failures_and_strangers,
    tls_failures_point_to_ca_cert,
    builders_are_named_and_logs_are_plain,
    process_logs_are_plain_text,
    the_clis_own_log_goes_to_stderr,
}

/// The largest source `bad_values_are_refused_with_a_sentence` lets its backend take.
const SOURCE_LIMIT: u64 = 16 * 1024;

/// A job source URL and digest that no test fetches.
const URL: &str = "https://example.invalid/src.tar.gz";

fn digest() -> String {
    "ab".repeat(32)
}

/// Asserts the run exited with `code` and that its stderr holds each of `parts`.
#[track_caller]
fn fails(output: CliOutput, code: i32, parts: &[&str]) -> CliOutput {
    let output = output.expect_code(code);
    for part in parts {
        assert!(
            output.stderr.contains(part),
            "stderr lacks {part:?}:\n{}",
            output.stderr
        );
    }
    assert_eq!(
        output
            .stderr
            .lines()
            .filter(|l| l.starts_with("error: "))
            .count(),
        1,
        "one error line: {}",
        output.stderr
    );
    output
}

/// The line of stderr that says the error (without its hint or earlier progress notes).
fn error_line(output: &CliOutput) -> &str {
    output
        .stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_default()
}

fn job_id(output: &CliOutput) -> String {
    output.json()["id"].as_i64().expect("a job id").to_string()
}

/// A job from a URL source, queued (no builder takes it): its id.
async fn queued_job(server: &TestServer, extra: &[&str]) -> String {
    let digest = digest();
    let mut args = vec!["job", "submit", URL, "--sha256", &digest, "--json"];
    args.extend_from_slice(extra);
    job_id(&server.cli(&args).await.ok())
}

/// A port nothing listens on.
fn closed_port() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

async fn tokens_missing_wrong_or_too_narrow(db: TestDb) {
    let server = TestServer::start(db).await;
    let key = TestKey::generate("someone");
    let admit = ["builder", "admit", "someone", "--key", &key.public_openssh];

    // No token at all: say so, and where one comes from.
    let none = fails(
        server.cli_anonymous(&admit).await,
        3,
        &[
            "a bearer token is required (unauthorized, HTTP 401)",
            "hint: give a token with --token or BUILDFLEET_TOKEN",
            "/nonexistent/buildfleet-cli-test/admin-token",
        ],
    );
    assert!(!none.stderr.contains("wrong"), "{}", none.stderr);

    // A wrong token is called wrong, not missing.
    let wrong = fails(
        server
            .cli_env(&admit, &[("BUILDFLEET_TOKEN", "not-the-token")])
            .await,
        3,
        &[
            "the bearer token is wrong",
            "(unauthorized, HTTP 401)",
            "hint: check the token given with --token or BUILDFLEET_TOKEN",
        ],
    );
    assert!(!wrong.stderr.contains("required"), "{}", wrong.stderr);
    fails(
        server.cli_env(&admit, &[("BUILDFLEET_TOKEN", " ")]).await,
        3,
        &[
            "a bearer token is required",
            "--token (or BUILDFLEET_TOKEN) is empty",
        ],
    );

    // A stale admin-token file: the hint names the file.
    let stale = tempfile::tempdir().unwrap();
    std::fs::write(stale.path().join("admin-token"), "stale-token\n").unwrap();
    let stale_dir = stale.path().to_str().unwrap();
    let mut from_file = admit.to_vec();
    from_file.extend(["--url", &server.url, "--data-dir", stale_dir]);
    fails(
        run_cli(&from_file, &[]).await,
        3,
        &[
            "the bearer token is wrong",
            &format!("the token was read from {stale_dir}/admin-token"),
        ],
    );

    // A submit token may submit, but not admit; a revoked one is wrong.
    let (token, submit) = server
        .store
        .create_api_token(None, TokenScope::Submit, "ci", None)
        .unwrap();
    let as_submitter = [("BUILDFLEET_TOKEN", submit.as_str())];
    let digest = digest();
    server
        .cli_env(&["job", "submit", URL, "--sha256", &digest], &as_submitter)
        .await
        .ok();
    fails(
        server.cli_env(&admit, &as_submitter).await,
        3,
        &["this API token has the submit scope; this needs the admin scope or the admin token (forbidden, HTTP 403)"],
    );
    server.store.revoke_api_token(token.id).unwrap();
    fails(
        server
            .cli_env(&["job", "submit", URL, "--sha256", &digest], &as_submitter)
            .await,
        3,
        &["the bearer token is wrong"],
    );

    // Every command that changes something needs the token; reads do not.
    server.cli(&admit).await.ok();
    let job = queued_job(&server, &[]).await;
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("README"), "a source\n").unwrap();
    let source = source.path().to_str().unwrap();
    let commands: Vec<Vec<&str>> = vec![
        vec!["job", "submit", URL, "--sha256", &digest],
        vec!["job", "submit", source],
        vec!["job", "cancel", &job],
        vec!["job", "retry", &job],
        vec!["builder", "enable", "someone"],
        vec!["builder", "disable", "someone"],
        vec!["builder", "drain", "someone"],
        vec!["builder", "pause", "someone"],
        vec!["builder", "resume", "someone"],
        vec!["builder", "remove", "someone"],
    ];
    for command in &commands {
        let refused = fails(
            server.cli_anonymous(command).await,
            3,
            &["a bearer token is required (unauthorized, HTTP 401)"],
        );
        assert!(
            refused.stderr.contains("hint: give a token"),
            "{command:?}: {}",
            refused.stderr
        );
    }
    server.cli_anonymous(&["builder", "list"]).await.ok();
    server.cli_anonymous(&["job", "show", &job]).await.ok();
    server.shutdown().await;
}

async fn missing_things_are_named_once(db: TestDb) {
    let server = TestServer::start(db).await;
    let out = tempfile::tempdir().unwrap();
    let out_path = out.path().join("x.bin");
    let out_path = out_path.to_str().unwrap();
    let job_commands: Vec<Vec<&str>> = vec![
        vec!["job", "show", "999"],
        vec!["job", "cancel", "999"],
        vec!["job", "retry", "999"],
        vec!["job", "plan", "999"],
        vec!["job", "logs", "999"],
        vec!["job", "logs", "999", "--follow"],
        vec!["job", "logs", "999", "--attempt", "1"],
        vec!["artifact", "list", "999"],
        vec!["artifact", "download", "999", "x.bin", "-o", out_path],
    ];
    for command in &job_commands {
        let missing = fails(server.cli(command).await, 3, &[]);
        assert_eq!(
            error_line(&missing),
            "error: job 999 not found (not_found, HTTP 404)",
            "{command:?}"
        );
    }
    assert!(!out.path().join("x.bin.part").exists());

    let key = TestKey::generate("present");
    server.admit(&key).await;
    for action in ["enable", "disable", "drain", "pause", "resume", "remove"] {
        let by_id = fails(server.cli(&["builder", action, "999"]).await, 3, &[]);
        assert_eq!(
            error_line(&by_id),
            "error: builder 999 not found (not_found, HTTP 404)",
            "{action}"
        );
        let by_name = fails(server.cli(&["builder", action, "nobody"]).await, 3, &[]);
        assert_eq!(
            error_line(&by_name),
            "error: no builder named \"nobody\" (not_found, HTTP 404)",
            "{action}"
        );
        assert!(
            by_name
                .stderr
                .contains("hint: buildfleet builder list shows the admitted builders"),
            "{}",
            by_name.stderr
        );
    }
    // `job list --builder` takes a name (or an id), and says when there is no such builder.
    let unknown = fails(
        server.cli(&["job", "list", "--builder", "nobody"]).await,
        3,
        &["hint: buildfleet builder list"],
    );
    assert_eq!(
        error_line(&unknown),
        "error: no builder named \"nobody\" (not_found, HTTP 404)"
    );
    let unknown = fails(
        server.cli(&["job", "list", "--builder", "999"]).await,
        3,
        &[],
    );
    assert_eq!(
        error_line(&unknown),
        "error: builder 999 not found (not_found, HTTP 404)"
    );
    server
        .cli(&["job", "list", "--builder", "present"])
        .await
        .ok();

    let job = queued_job(&server, &[]).await;
    let artifact = fails(
        server
            .cli(&["artifact", "download", &job, "missing.bin", "-o", out_path])
            .await,
        3,
        &[],
    );
    assert_eq!(
        error_line(&artifact),
        format!("error: artifact \"missing.bin\" of job {job} not found (not_found, HTTP 404)")
    );
    server.shutdown().await;
}

async fn refusals_say_why_by_the_jobs_state(db: TestDb) {
    let server = TestServer::start(db).await;
    let build = queued_job(&server, &[]).await;
    let plan = queued_job(&server, &["--plan"]).await;

    server.cli(&["job", "cancel", &build]).await.ok();
    let twice = fails(server.cli(&["job", "cancel", &build]).await, 3, &[]);
    assert_eq!(
        error_line(&twice),
        format!(
            "error: job {build} has already ended (cancelled): there is nothing to cancel \
             (conflict, HTTP 409)"
        )
    );
    let unfinished = fails(server.cli(&["job", "retry", &plan]).await, 3, &[]);
    assert_eq!(
        error_line(&unfinished),
        format!(
            "error: job {plan} is queued: only a job that failed, was cancelled or timed out \
             can be retried (conflict, HTTP 409)"
        )
    );

    let not_plan = fails(server.cli(&["job", "plan", &build]).await, 3, &[]);
    assert_eq!(
        error_line(&not_plan),
        format!(
            "error: job {build} is a build-mode job: only a job submitted with --plan has a \
             plan (not_found, HTTP 404)"
        )
    );
    let no_plan_yet = fails(server.cli(&["job", "plan", &plan]).await, 3, &["hint: "]);
    assert_eq!(
        error_line(&no_plan_yet),
        format!(
            "error: job {plan} has no plan yet: it is queued and no attempt has reported one \
             (not_found, HTTP 404)"
        )
    );

    // A job with no log yet prints nothing and says why; an attempt it has not had is an
    // error (exit 4), with or without --follow.
    let queued = server.cli(&["job", "logs", &plan]).await.ok();
    assert_eq!(queued.stdout, "");
    assert!(
        queued.stderr.contains(&format!(
            "job {plan} attempt 1 has not started yet (queued)"
        )),
        "{}",
        queued.stderr
    );
    let never = server.cli(&["job", "logs", &build]).await.ok();
    assert!(
        never
            .stderr
            .contains(&format!("job {build} never ran (cancelled)")),
        "{}",
        never.stderr
    );
    for extra in [vec![], vec!["--follow"]] {
        for attempt in ["2", "0"] {
            let mut args = vec!["job", "logs", &plan, "--attempt", attempt];
            args.extend(&extra);
            let missing = fails(server.cli(&args).await, 4, &[]);
            assert_eq!(
                error_line(&missing),
                format!(
                    "error: job {plan} has no attempt {attempt}: it has not started yet (queued)"
                )
            );
        }
    }
    let missing = fails(
        server.cli(&["job", "logs", &build, "--attempt", "1"]).await,
        4,
        &[],
    );
    assert_eq!(
        error_line(&missing),
        format!("error: job {build} has no attempt 1: it never ran (cancelled)")
    );

    // Builders: a name taken, and steering one that is not connected.
    let key = TestKey::generate("offline");
    let admit = ["builder", "admit", "offline", "--key", &key.public_openssh];
    server.cli(&admit).await.ok();
    let taken = fails(
        server.cli(&admit).await,
        3,
        &["hint: a name and a key are admitted once each"],
    );
    assert_eq!(
        error_line(&taken),
        "error: builder named \"offline\" already exists (conflict, HTTP 409)"
    );
    let same_key = fails(
        server
            .cli(&["builder", "admit", "renamed", "--key", &key.public_openssh])
            .await,
        3,
        &["hint: a name and a key are admitted once each"],
    );
    assert_eq!(
        error_line(&same_key),
        format!(
            "error: builder with fingerprint {} already exists (conflict, HTTP 409)",
            key.fingerprint
        )
    );
    for action in ["drain", "pause", "resume"] {
        let offline = fails(
            server.cli(&["builder", action, "offline"]).await,
            3,
            &["hint: drain, pause and resume reach a connected builder only"],
        );
        assert_eq!(
            error_line(&offline),
            "error: builder offline is not connected (conflict, HTTP 409)"
        );
    }
    server.shutdown().await;
}

async fn bad_values_are_refused_with_a_sentence(db: TestDb) {
    let server = TestServer::start_with(db, |config| {
        config.limits.max_source_bytes = SOURCE_LIMIT;
    })
    .await;
    let digest = digest();
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("README"), "a source\n").unwrap();
    let source = source.path().to_str().unwrap();
    let key = TestKey::generate("valid");

    // Usage errors (exit 2): found before anything is sent.
    let usage: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["job", "submit", URL, "--sha256", "xyz"],
            "--sha256 \"xyz\" is not a SHA-256 digest: give the 64 hex digits that `sha256sum` prints",
        ),
        (vec!["job", "submit", URL], "a source URL needs --sha256 HEX"),
        (
            vec!["job", "submit", source, "--sha256", &digest],
            "--sha256 goes with a source URL; a local source is hashed here",
        ),
        (
            vec!["job", "submit", "--source-url", "ftp://x.invalid/a", "--sha256", &digest],
            "use an http:// or https:// URL",
        ),
        (
            vec!["job", "submit", "/nonexistent/source"],
            "source \"/nonexistent/source\": No such file or directory",
        ),
        (
            vec!["job", "submit", "--crate", "serde"],
            "expected NAME@VERSION, e.g. serde@1.0.200",
        ),
        (
            vec!["job", "submit", URL, "--sha256", &digest, "--annotate", "a=1", "--annotate", "a=2"],
            "--annotate a=…: the key is given twice",
        ),
        (
            vec!["job", "submit", URL, "--sha256", &digest, "--timeout", "2w"],
            "the unit is s, m, h or d",
        ),
        (
            vec!["job", "submit", URL, "--sha256", &digest, "--param", "novalue"],
            "\"novalue\" is not key=value",
        ),
        (vec!["job", "list", "--state", "sleeping"], "sleeping"),
        (vec!["job", "show", "abc"], "invalid digit"),
        (vec!["job", "frobnicate"], "unrecognized subcommand"),
        (vec!["builder", "admit", "nokey"], "--key-file"),
        (
            vec!["builder", "admit", "x", "--key-file", "/nonexistent/key.pub"],
            "--key-file /nonexistent/key.pub: No such file or directory",
        ),
        (
            vec!["builder", "admit", "x", "--key", "ssh-ed25519 AAAA\nssh-ed25519 BBBB"],
            "the public key must be one line",
        ),
        (
            vec!["builder", "list", "--url", "ftp://example.invalid"],
            "--url \"ftp://example.invalid\": use http://host:port or https://host:port",
        ),
        (
            vec!["builder", "list", "--ca-cert", "/nonexistent/ca.pem"],
            "--ca-cert /nonexistent/ca.pem: ",
        ),
        (
            vec!["artifact", "download", "1", "../escape"],
            "artifact name \"../escape\": ",
        ),
    ];
    for (args, message) in &usage {
        let refused = server.cli(args).await.expect_code(2);
        assert!(
            refused.stderr.contains(message),
            "{args:?}: stderr lacks {message:?}:\n{}",
            refused.stderr
        );
    }

    // The API's refusals (exit 3) name the value at fault.
    let refused: Vec<(Vec<&str>, &str)> =
        vec![
        (
            vec!["job", "submit", URL, "--sha256", &digest, "--annotate", "Commit=x"],
            "annotation key \"Commit\": 1 to 64 characters of [a-z0-9_.-] (bad_request, HTTP 400)",
        ),
        (
            vec!["job", "submit", URL, "--sha256", &digest, "--recipe", "no spaces"],
            "recipe: 1-64 characters of [A-Za-z0-9._-] (bad_request, HTTP 400)",
        ),
        (
            vec!["job", "submit", URL, "--sha256", &digest, "--priority", "5000"],
            "priority must be -1000..=1000 (bad_request, HTTP 400)",
        ),
        (
            vec!["job", "submit", URL, "--sha256", &digest, "--max-attempts", "50"],
            "max_attempts must be 1..=20 (bad_request, HTTP 400)",
        ),
        (
            vec!["job", "list", "--limit", "0"],
            "limit must be 1..=1000 (bad_request, HTTP 400)",
        ),
        (
            vec!["job", "list", "--annotation", "Bad Key"],
            "annotation filter \"Bad Key\": use key:value or key",
        ),
        (
            vec!["builder", "admit", "bad name", "--key", &key.public_openssh],
            "builder names use letters, digits",
        ),
        (
            vec!["builder", "admit", "x", "--key", "ssh-ed25519 not-base64"],
            "public_key: cannot parse",
        ),
    ];
    for (args, message) in &refused {
        fails(server.cli(args).await, 3, &[message]);
    }

    // A source larger than the backend takes (random bytes: gzip cannot shrink them).
    let big = tempfile::tempdir().unwrap();
    let mut noise = vec![0u8; 4 * SOURCE_LIMIT as usize];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut noise);
    std::fs::write(big.path().join("noise.bin"), noise).unwrap();
    fails(
        server
            .cli(&["job", "submit", big.path().to_str().unwrap()])
            .await,
        3,
        &[&format!(
            "body exceeds the limit of {SOURCE_LIMIT} bytes (payload_too_large, HTTP 413)"
        )],
    );

    // The API itself names the field of a malformed body (the CLI never sends one).
    let (status, body) = server
        .post_admin(
            "/jobs",
            &serde_json::json!({ "source_url": URL, "source_sha256": 12, "recipe": "r" }),
        )
        .await;
    assert_eq!(status.as_u16(), 400);
    assert_eq!(
        body["error"]["message"],
        "invalid request body: source_sha256: invalid type: integer `12`, expected a string"
    );
    server.shutdown().await;
}

/// An HTTP server that is not a Buildfleet backend: every request gets a page of HTML.
fn stranger() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let page = "<html><body>It works!</body></html>";
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    addr
}

async fn server_failures_and_strangers(db: TestDb) {
    let server = TestServer::start(db).await;
    let job = queued_job(&server, &[]).await;

    // Nobody listens: exit 4, and whether the backend runs is the question.
    let closed = format!("http://{}", closed_port());
    for command in [vec!["builder", "list"], vec!["job", "show", "1"]] {
        let mut args = command.clone();
        args.extend(["--url", &closed]);
        fails(
            run_cli(&args, &[]).await,
            4,
            &[
                &format!("cannot reach the backend at {closed}"),
                &format!("hint: is the backend running, and listening at {closed}?"),
            ],
        );
    }

    // A web server that is not the API: exit 4, check --url.
    let stranger = format!("http://{}", stranger());
    fails(
        run_cli(&["job", "list", "--url", &stranger], &[]).await,
        4,
        &[
            &format!("{stranger} did not answer as a Buildfleet backend: the answer is not JSON (text/html"),
            "hint: check --url",
        ],
    );

    // A crate that does not exist where crates are downloaded from: the API's 404, exit 3.
    let cargo_home = tempfile::tempdir().unwrap();
    let crates_url = format!("{}/no-crates-here", server.url);
    fails(
        server
            .cli_env(
                &["job", "submit", "--crate", "absent@1.0.0"],
                &[
                    ("CARGO_HOME", cargo_home.path().to_str().unwrap()),
                    ("BUILDFLEET_CRATES_URL", &crates_url),
                ],
            )
            .await,
        3,
        &[
            "absent@1.0.0 is not in",
            "does not exist (crate_not_found, HTTP 404)",
        ],
    );

    // The backend fails (its jobs table is gone): exit 4, and its log says why.
    server.execute_sql("ALTER TABLE jobs RENAME TO jobs_gone");
    for command in [vec!["job", "list"], vec!["job", "show", &job]] {
        let failed = fails(
            server.cli(&command).await,
            4,
            &["hint: the backend's log says what went wrong"],
        );
        assert_eq!(
            error_line(&failed),
            "error: the backend failed: internal error (internal, HTTP 500)"
        );
    }
    server.execute_sql("ALTER TABLE jobs_gone RENAME TO jobs");
    server.shutdown().await;
}

/// A self-signed certificate for 127.0.0.1 with the subject `/CN={subject}`, and its key,
/// under `prefix` in `dir`.
fn self_signed(
    dir: &Path,
    prefix: &str,
    subject: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (format!("{prefix}.pem"), format!("{prefix}.key"));
    let subject = format!("/CN={subject}");
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &subject,
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-keyout",
            &key,
            "-out",
            &cert,
        ],
        dir,
    );
    (dir.join(cert), dir.join(key))
}

async fn tls_failures_point_to_ca_cert(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "server", "127.0.0.1");
    // Another CA, and one of the same name as the server's (as after regenerating it).
    let (other_cert, _) = self_signed(dir.path(), "other", "another CA");
    let (twin_cert, _) = self_signed(dir.path(), "twin", "127.0.0.1");
    let server_cert = cert.clone();
    let server = TestServer::start_with(db, move |config| {
        config.tls = Some((server_cert, key));
    })
    .await;
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let list = ["builder", "list", "--url", &server.url];

    fails(
        run_cli(&list, &[]).await,
        4,
        &[
            "invalid peer certificate: UnknownIssuer",
            "hint: the backend's certificate is not signed by a CA this machine trusts; give \
             the CA certificate (PEM) that signed it with --ca-cert or BUILDFLEET_CA_CERT",
        ],
    );
    for (ca, failure) in [(&other_cert, "UnknownIssuer"), (&twin_cert, "BadSignature")] {
        let ca = ca.to_str().unwrap();
        fails(
            run_cli(&list, &[("BUILDFLEET_CA_CERT", ca)]).await,
            4,
            &[
                &format!("invalid peer certificate: {failure}"),
                &format!(
                    "hint: the backend's certificate is not signed by the CA in --ca-cert {ca}"
                ),
            ],
        );
    }
    // Not retried while following: a certificate does not change in ten seconds.
    let started = std::time::Instant::now();
    fails(
        run_cli(&["job", "logs", "1", "--follow", "--url", &server.url], &[]).await,
        4,
        &["hint: the backend's certificate is not signed"],
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    run_cli(&list, &[("BUILDFLEET_CA_CERT", cert.to_str().unwrap())])
        .await
        .ok();

    // https:// to a plain HTTP backend.
    let plain = TestServer::start(TestDb::sqlite()).await;
    let as_https = plain.url.replacen("http://", "https://", 1);
    fails(
        run_cli(&["builder", "list", "--url", &as_https], &[]).await,
        4,
        &[&format!(
            "hint: the backend did not answer TLS; if it serves plain HTTP, use --url {}",
            plain.url
        )],
    );
    plain.shutdown().await;
    server.shutdown().await;
}

/// Prints colours on both streams, then writes an artifact.
const COLOURFUL: &str = r#"printf '\033[1;32mgreen\033[0m text\n'; printf '\033[31mred\033[0m warning\n' >&2; printf 'artifact' > "${BUILDFLEET_OUT}/out.txt""#;

/// `sh -c` quoting of one word.
fn quoted(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// `buildfleet ARGS` on a pseudo-terminal (util-linux `script`), as at a person's terminal:
/// what the terminal showed, both streams.
async fn on_terminal(server: &TestServer, args: &[&str], env: &[(&str, &str)]) -> String {
    let binary = buildfleet_testkit::processes::backend_binary();
    let line: Vec<String> = std::iter::once(binary.to_str().unwrap())
        .chain(args.iter().copied())
        .map(quoted)
        .collect();
    let output = tokio::process::Command::new("script")
        .args(["-qec", &line.join(" "), "/dev/null"])
        .env("BUILDFLEET_URL", &server.url)
        .env("BUILDFLEET_TOKEN", &server.admin_token)
        .env_remove("NO_COLOR")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("running script(1)");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn builders_are_named_and_logs_are_plain(db: TestDb) {
    let server = TestServer::start(db).await;
    let key = TestKey::generate("runner");
    let builder_id = server.admit(&key).await;
    let _builder = TestBuilder::start(
        &server,
        &key,
        vec![
            shell_recipe("colourful", COLOURFUL, &[("out.txt", "out.txt")]),
            shell_recipe("sleepy", "echo sleeping; sleep 60", &[]),
        ],
    )
    .await;
    wait_connected(&server, builder_id).await;
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("README"), "a source\n").unwrap();
    let source = source.path().to_str().unwrap();

    // A build's colours reach neither a pipe nor a file; the JSON records keep them.
    let colourful = job_id(
        &server
            .cli(&["job", "submit", source, "--recipe", "colourful", "--json"])
            .await
            .ok(),
    );
    let followed = server
        .cli(&["job", "logs", &colourful, "--follow"])
        .await
        .ok();
    let stored = server.cli(&["job", "logs", &colourful]).await.ok();
    for output in [&followed, &stored] {
        assert_eq!(output.stdout, "green text\n");
        assert!(output.stderr.contains("red warning\n"), "{}", output.stderr);
        assert!(!output.stderr.contains('\u{1b}'), "{:?}", output.stderr);
    }
    let records = server
        .cli(&["job", "logs", &colourful, "--json"])
        .await
        .ok();
    assert!(
        records.stdout.contains(r"\u001b[1;32mgreen"),
        "{}",
        records.stdout
    );
    // A terminal shows them, unless NO_COLOR says not to.
    let terminal = on_terminal(&server, &["job", "logs", &colourful], &[]).await;
    assert!(
        terminal.contains("\u{1b}[1;32mgreen\u{1b}[0m text"),
        "{terminal:?}"
    );
    let no_color = on_terminal(&server, &["job", "logs", &colourful], &[("NO_COLOR", "1")]).await;
    assert!(no_color.contains("green text"), "{no_color:?}");
    assert!(!no_color.contains('\u{1b}'), "{no_color:?}");

    // Downloads that cannot be written or checked.
    let out = tempfile::tempdir().unwrap();
    fails(
        server
            .cli(&[
                "artifact",
                "download",
                &colourful,
                "out.txt",
                "-o",
                "/nonexistent/dir/out.txt",
            ])
            .await,
        4,
        &["writing /nonexistent/dir/out.txt.part: No such file or directory"],
    );
    fails(
        server
            .cli(&[
                "artifact",
                "download",
                &colourful,
                "out.txt",
                "-o",
                out.path().to_str().unwrap(),
                "--allowed-signers",
                "/nonexistent/allowed_signers",
            ])
            .await,
        2,
        &["--allowed-signers /nonexistent/allowed_signers: No such file or directory"],
    );
    assert!(!out.path().join("out.txt").exists());
    assert!(!out.path().join("out.txt.part").exists());

    // A running job: lists, shows and messages name its builder.
    let sleepy = job_id(
        &server
            .cli(&["job", "submit", source, "--recipe", "sleepy", "--json"])
            .await
            .ok(),
    );
    server
        .wait_for_state(sleepy.parse().unwrap(), "running")
        .await;
    let table = server.cli(&["job", "list"]).await.ok().stdout;
    let row = table
        .lines()
        .find(|l| l.starts_with(&format!("{sleepy} ")))
        .unwrap_or_else(|| panic!("no row for job {sleepy}:\n{table}"));
    assert!(row.contains("  runner  "), "{table}");
    for by in ["runner", &builder_id.to_string()] {
        let listed = server
            .cli(&["job", "list", "--builder", by, "--json"])
            .await
            .ok()
            .json();
        let ids: Vec<String> = listed["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].to_string())
            .collect();
        assert_eq!(ids, [sleepy.clone(), colourful.clone()], "--builder {by}");
    }
    let shown = server.cli(&["job", "show", &sleepy]).await.ok().stdout;
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("builder:") && l.ends_with(" runner")),
        "{shown}"
    );

    let busy = fails(
        server.cli(&["builder", "remove", "runner"]).await,
        3,
        &["hint: a builder with running jobs cannot be removed: disable it (buildfleet builder disable runner)"],
    );
    assert_eq!(
        error_line(&busy),
        "error: builder runner holds 1 active attempt(s) (conflict, HTTP 409)"
    );
    let paused = server.cli(&["builder", "pause", "runner"]).await.ok();
    assert_eq!(paused.stdout, "builder runner paused; now paused\n");
    let resumed = server
        .cli(&["builder", "resume", &builder_id.to_string()])
        .await
        .ok();
    assert_eq!(resumed.stdout, "builder runner resumed; now enabled\n");

    let cancelled = server.cli(&["job", "cancel", &sleepy]).await.ok();
    assert_eq!(
        cancelled.stdout,
        format!("job {sleepy}: cancel requested; builder runner is stopping it\n")
    );
    server
        .wait_for_state(sleepy.parse().unwrap(), "cancelled")
        .await;
    let missing = fails(
        server
            .cli(&["job", "logs", &sleepy, "--attempt", "2"])
            .await,
        4,
        &[],
    );
    assert_eq!(
        error_line(&missing),
        format!("error: job {sleepy} has no attempt 2: it has had 1 so far")
    );
    let drained = server.cli(&["builder", "drain", "runner"]).await.ok();
    assert_eq!(
        drained.stdout,
        "builder runner asked to drain; now draining\n"
    );
    server.shutdown().await;
}

async fn process_logs_are_plain_text(db: TestDb) {
    let mut backend = BackendProcess::start(db.url(), &[]).await;
    let key = TestKey::generate("plain-logs");
    let id = backend.api().admit(&key).await;
    let config = builder_config_toml(
        1,
        [
            ("initial_backoff_ms", 100),
            ("max_backoff_ms", 1_000),
            ("replaced_backoff_ms", 1_000),
            ("healthy_after_ms", 2_000),
        ],
        &[],
    );
    let mut builder =
        BuilderProcess::start(key, id, &format!("ws://{}", backend.addr), &config).await;
    let builder_log = builder.log_path();
    let log = wait_until("the builder to log its authentication", || {
        let text = std::fs::read_to_string(&builder_log).unwrap_or_default();
        std::future::ready(text.contains("authenticated").then_some(text))
    })
    .await;
    assert!(log.contains(" INFO "), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour escapes in the builder's log:\n{log:?}"
    );
    builder.kill().await;
    backend.stop().await;
    let log = std::fs::read_to_string(backend.log_path()).unwrap();
    assert!(log.contains(" INFO "), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour escapes in the backend's log:\n{log:?}"
    );
}

/// An admin command's own log (its libraries' warnings, or more with `BUILDFLEET_LOG`)
/// goes to stderr: stdout holds the results alone, so `--json` stays JSON.
async fn the_clis_own_log_goes_to_stderr(db: TestDb) {
    let server = TestServer::start(db).await;
    let job = queued_job(&server, &[]).await;
    for args in [
        vec!["job", "list", "--json"],
        vec!["job", "show", &job, "--json"],
        vec!["builder", "list", "--json"],
    ] {
        let run = server
            .cli_env(&args, &[("BUILDFLEET_LOG", "debug")])
            .await
            .ok();
        run.json();
        assert!(
            run.stderr.contains(" DEBUG "),
            "{args:?}: no log on stderr:\n{}",
            run.stderr
        );
    }
}

/// A follower whose backend goes away gives up after about ten seconds of reconnecting.
#[actix_rt::test]
async fn following_gives_up_when_the_backend_stays_away() {
    let server = TestServer::start(TestDb::sqlite()).await;
    let job = queued_job(&server, &[]).await;
    let env = [
        ("BUILDFLEET_URL", server.url.clone()),
        ("BUILDFLEET_TOKEN", server.admin_token.clone()),
    ];
    let follower = actix_rt::spawn(async move {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run_cli(&["job", "logs", &job, "--follow"], &env).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.shutdown().await;
    let gave_up = follower.await.unwrap();
    fails(
        gave_up,
        4,
        &[
            "cannot reach the backend at",
            "hint: is the backend running",
        ],
    );
}
