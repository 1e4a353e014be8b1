//! The REST answers and the dashboard's pages, pinned: a job's whole life through the real server (admission,
//! enrolment, submission, a scripted builder that runs, logs, uploads and signs), with each
//! answer compared to its snapshot under `tests/snapshots/`. Both databases compare against
//! the same snapshots, so they must answer alike. What varies between runs (times, keys,
//! secrets, the server's port) is replaced by a marker before comparing, never dropped.
//!
//! A deliberate change of an answer: `cargo insta test --review` (or `INSTA_UPDATE=always`),
//! then read the diff like any other.

use awc::http::StatusCode;
use buildfleet_protocol::{CompletionResult, Outcome};
use buildfleet_testkit::builder_client::{job_ref, upload_ok, BuilderClient};
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::keys::TestKey;
use buildfleet_testkit::server::{wait_until, TestServer};
use buildfleet_testkit::server_tests;
use serde_json::{json, Value};

server_tests! {
    rest_answers_match_their_snapshots,
}

/// Fields whose values differ from run to run, and the marker that replaces them.
const VOLATILE: &[(&str, &str)] = &[
    ("created_at", "[time]"),
    ("updated_at", "[time]"),
    ("started_at", "[time]"),
    ("finished_at", "[time]"),
    ("assigned_at", "[time]"),
    ("lease_expires_at", "[time]"),
    ("last_seen_at", "[time]"),
    ("last_used_at", "[time]"),
    ("expires_at", "[time]"),
    ("revoked_at", "[time]"),
    ("at", "[time]"),
    ("public_key", "[public key]"),
    ("fingerprint", "[fingerprint]"),
    ("token", "[secret]"),
];

/// Replaces the volatile values (when present: a `null` stays `null`, so an answer that
/// loses a time still shows) and the server's address in every string.
fn stable(value: Value, server_url: &str) -> Value {
    match value {
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(name, v)| {
                    let marker = VOLATILE.iter().find(|(field, _)| *field == name);
                    let v = match marker {
                        Some((_, marker)) if !v.is_null() => Value::String((*marker).into()),
                        _ => stable(v, server_url),
                    };
                    (name, v)
                })
                .collect(),
        ),
        Value::Array(items) => {
            Value::Array(items.into_iter().map(|v| stable(v, server_url)).collect())
        }
        Value::String(s) => Value::String(s.replace(server_url, "http://[server]")),
        other => other,
    }
}

async fn rest_answers_match_their_snapshots(db: TestDb) {
    let server = TestServer::start(db).await;
    let snapshot = |name: &str, value: Value| {
        insta::assert_json_snapshot!(name, stable(value, &server.url));
    };

    // Enrolment: a token (its secret shown once), the list, and a builder enrolling with it.
    let (status, created) = server
        .post_admin(
            "/enrolment-tokens",
            &json!({ "max_uses": 2, "ttl_secs": 600, "labels": { "pool": "ci" } }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let secret = created["token"].as_str().expect("secret").to_owned();
    snapshot("enrolment_token_created", created);
    let enrolling = TestKey::generate("enrolled-one");
    let (status, enrolled) = server
        .post(
            "/enrol",
            None,
            &json!({
                "token": secret,
                "name": enrolling.name,
                "public_key": enrolling.public_openssh,
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{enrolled}");
    snapshot("enrolled", enrolled);
    let mut listed = buildfleet_testkit::server::test_client(None)
        .get(server.api("/enrolment-tokens"))
        .bearer_auth(&server.admin_token)
        .send()
        .await
        .expect("GET /enrolment-tokens");
    assert_eq!(listed.status(), StatusCode::OK);
    snapshot(
        "enrolment_tokens",
        listed.json().await.expect("the token list as JSON"),
    );

    // An admitted builder that runs one job to its signed end.
    let key = TestKey::generate("builder-one");
    let builder_id = server.admit(&key).await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    builder.request_jobs(1);
    wait_until(
        "the builder's credits and last contact to be recorded",
        || async {
            let live = server.get_ok(&format!("/builders/{builder_id}")).await;
            // `last_seen_at` is written in the background after authentication.
            (live["live"]["credits"] == 1 && !live["last_seen_at"].is_null()).then_some(())
        },
    )
    .await;
    snapshot(
        "builder_connected",
        server.get_ok(&format!("/builders/{builder_id}")).await,
    );

    let (status, submitted) = server
        .post_admin(
            "/jobs",
            &json!({
                "source_url": "https://example.invalid/crate-1.0.0.tar.gz",
                "source_sha256": buildfleet_testkit::server::SOURCE_SHA256,
                "recipe": "cargo-build",
                "parameters": { "profile": "release" },
                "labels": {},
                "annotations": {
                    "crate": "hello",
                    "version": "1.0.0",
                    "commit": "5bb2f0c3b0e4a1d0c6b0e9a8f7d6c5b4a3928170",
                    "message": "Release 1.0.0\n\n<b>escaped</b> & kept",
                    "links.changelog": "https://example.invalid/hello/CHANGELOG.md",
                    "links.unsafe": "javascript:alert(1)",
                },
                "priority": 5,
                "max_attempts": 2,
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{submitted}");
    let id = submitted["id"].as_i64().expect("job id");
    snapshot("job_submitted", submitted);

    let job = builder.next_assignment().await;
    builder.accept(&job);
    server.wait_for_state(id, "running").await;
    builder.log(job_ref(&job), 1, "compiling");
    builder.expect_event_ack(job_ref(&job), 1).await;
    // A running job's page: the stored log so far, and where its live tail goes on.
    let (status, body) = server.get_raw(&format!("{}/jobs/{id}", server.url)).await;
    assert_eq!(status, StatusCode::OK, "GET /jobs/{id} while running");
    let running = String::from_utf8(body).expect("the page is UTF-8");
    insta::assert_snapshot!("page_job_running", stable_page(&running, &server.url));
    // The builders page names what each builder runs.
    let (status, body) = server.get_raw(&format!("{}/builders", server.url)).await;
    assert_eq!(status, StatusCode::OK, "GET /builders while running");
    let builders = String::from_utf8(body).expect("the page is UTF-8");
    insta::assert_snapshot!("page_builders_running", stable_page(&builders, &server.url));
    let digest = upload_ok(&job, "hello-x86_64", b"pretend this is a binary").await;
    let result = builder
        .complete(&key, &job, Outcome::Succeeded, vec![digest])
        .await;
    assert_eq!(result, CompletionResult::Accepted);

    snapshot("job_detail", server.job(id).await);
    snapshot("jobs_list", server.get_ok("/jobs?limit=1").await);
    snapshot(
        "artifacts",
        server.get_ok(&format!("/jobs/{id}/artifacts")).await,
    );
    snapshot("builders_list", server.get_ok("/builders").await);

    // The one error shape.
    let (status, missing) = server.get("/jobs/999999").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    snapshot("error_not_found", missing);
    let (status, refused) = server
        .post_admin("/jobs", &json!({ "recipe": "cargo-build" }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    snapshot("error_bad_request", refused);

    // The dashboard's pages with the same job and builders.
    for (name, path) in [
        ("page_overview", "/".to_owned()),
        ("page_jobs", "/jobs".to_owned()),
        ("page_job", format!("/jobs/{id}")),
        ("page_job_search", format!("/jobs/{id}?q=COMPIL")),
        (
            "page_job_search_nothing",
            format!("/jobs/{id}?attempt=1&q=%3Cb%3E"),
        ),
        ("page_builders", "/builders".to_owned()),
        ("page_submit", "/submit".to_owned()),
        ("page_projects", "/projects".to_owned()),
        ("page_tokens", "/tokens".to_owned()),
    ] {
        let (status, body) = server.get_raw(&format!("{}{path}", server.url)).await;
        assert_eq!(status, StatusCode::OK, "GET {path}");
        let html = String::from_utf8(body).expect("the page is UTF-8");
        insta::assert_snapshot!(name, stable_page(&html, &server.url));
    }

    // Errors in a browser are pages with the navigation; the API keeps its JSON.
    let browser = |path: &str, html: bool| {
        let request =
            buildfleet_testkit::server::test_client(None).get(format!("{}{path}", server.url));
        let request = if html {
            request.insert_header(("Accept", "text/html,application/xhtml+xml,*/*;q=0.8"))
        } else {
            request
        };
        async move {
            let mut response = request.send().await.expect("GET");
            let content_type = response
                .headers()
                .get("Content-Type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let body = response.body().await.expect("the body").to_vec();
            (
                response.status(),
                content_type,
                String::from_utf8(body).expect("UTF-8"),
            )
        }
    };
    for (name, path, status) in [
        (
            "page_error_unknown_job",
            "/jobs/999999".to_owned(),
            StatusCode::NOT_FOUND,
        ),
        (
            "page_error_bad_job_id",
            "/jobs/not-a-number".to_owned(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "page_error_bad_attempt",
            format!("/jobs/{id}?attempt=2"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "page_error_unknown_page",
            "/no-such-page".to_owned(),
            StatusCode::NOT_FOUND,
        ),
    ] {
        let (got, content_type, html) = browser(&path, true).await;
        assert_eq!(got, status, "GET {path}");
        assert!(
            content_type.starts_with("text/html"),
            "GET {path}: {content_type}"
        );
        insta::assert_snapshot!(name, stable_page(&html, &server.url));
    }
    for (path, html) in [("/api/v1/no-such", true), ("/no-such-page", false)] {
        let (got, content_type, body) = browser(path, html).await;
        assert_eq!(got, StatusCode::NOT_FOUND, "GET {path}");
        assert!(
            content_type.starts_with("application/json"),
            "GET {path}: {content_type}"
        );
        let body: Value = serde_json::from_str(&body).expect("the JSON error shape");
        assert_eq!(body["error"]["code"], "not_found", "{body}");
    }

    builder.close().await;
}

/// A page with one element per line, and what varies between runs replaced by markers.
fn stable_page(html: &str, server_url: &str) -> String {
    let replacements = [
        (r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "[time]"),
        (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "[time]"),
        (r"SHA256:[A-Za-z0-9+/]{43}", "[fingerprint]"),
        (
            r"ssh-ed25519 AAAA[A-Za-z0-9+/=]+( [^<\s]*)?",
            "[public key]",
        ),
        // Durations and ages: `0s`, `1m 5s`, `2h 3m`, `3s ago`.
        (r"\b(\d+h )?(\d+m )?\d+[smh]\b", "[duration]"),
    ];
    let mut page = html.replace(server_url, "http://[server]");
    for (pattern, marker) in replacements {
        let pattern = regex::Regex::new(pattern).expect("a valid pattern");
        page = pattern.replace_all(&page, marker).into_owned();
    }
    page.replace("><", ">\n<")
}
