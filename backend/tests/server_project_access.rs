//! Access control on every route (issue 17 item 1), over real HTTP against a real scripted
//! builder: a private project's job, with a log, an artifact and a signed statement, is
//! invisible to a token of another project and to anonymous callers (404, with the very
//! answer a job that does not exist gets, never 403), visible to its own project's read
//! token (which still cannot act: 403), while a public project's job stays readable by all.
//! Revoked and expired tokens are refused (401). The statement's DSSE envelope and signature
//! list, a private builder's keys, the lookup of an artifact by digest, another project's
//! webhook named under one's own project, and the dashboard's webhooks pages are hidden the
//! same way. Both databases.

use std::time::Duration;

use awc::http::{Method, StatusCode};
use buildfleet_backend::store::{BuilderId, TokenScope};
use buildfleet_protocol::{CompletionResult, Outcome};
use buildfleet_testkit::builder_client::{job_ref, upload_ok, BuilderClient};
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::keys::TestKey;
use buildfleet_testkit::server::{test_client, wait_until, TestServer, SOURCE_SHA256};
use buildfleet_testkit::server_tests;
use futures_util::StreamExt as _;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

server_tests! {
    every_route_hides_a_private_job_from_other_projects_and_anonymous_callers,
    the_all_jobs_stream_sends_only_visible_changes,
    revoked_and_expired_tokens_are_refused,
    a_private_projects_own_routes_are_hidden_from_other_projects_and_anonymous_callers,
}

const ARTIFACT: &str = "app-x86_64";

/// One request: status and body (JSON when it parses, else the text as a JSON string).
async fn call(
    server: &TestServer,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    server.call(method, path, token, body.as_ref()).await
}

async fn get(server: &TestServer, path: &str, token: Option<&str>) -> (StatusCode, Value) {
    call(server, Method::GET, path, token, None).await
}

async fn create_project(server: &TestServer, name: &str, public: bool) {
    let (status, body) = server
        .post_admin("/projects", &json!({ "name": name, "public": public }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "creating {name}: {body}");
}

/// A token made through the API by the admin; returns its secret.
async fn token(server: &TestServer, project: &str, scope: &str) -> String {
    let (status, body) = server
        .post_admin(
            "/tokens",
            &json!({ "project": project, "scope": scope, "description": format!("{scope} of {project}") }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "token of {project}: {body}");
    body["secret"].as_str().expect("secret").to_owned()
}

/// Submits a job of `project` as the admin; returns its id.
async fn submit(server: &TestServer, project: &str) -> i64 {
    let (status, job) = server
        .post_admin(
            "/jobs",
            &json!({
                "source_url": "https://example.invalid/app-1.0.0.tar.gz",
                "source_sha256": SOURCE_SHA256,
                "recipe": "cargo-build",
                "project": project,
            }),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "submitting to {project}: {job}"
    );
    assert_eq!(job["project"], project);
    job["id"].as_i64().expect("job id")
}

/// The bytes of the artifact [`run_to_success`] publishes for job `id`: its own, so its
/// SHA-256 finds that one job.
fn artifact_bytes(id: i64) -> Vec<u8> {
    format!("an app binary of job {id}").into_bytes()
}

/// Runs the next job on `builder` to success: one log line, one artifact, a signed statement.
async fn run_to_success(server: &TestServer, builder: &mut BuilderClient, key: &TestKey, id: i64) {
    builder.request_jobs(1);
    let job = builder.next_assignment().await;
    assert_eq!(
        job.job_id.to_string(),
        id.to_string(),
        "the builder got another job"
    );
    builder.accept(&job);
    wait_for_state(server, id, "running").await;
    builder.log(job_ref(&job), 1, "compiling app");
    builder.expect_event_ack(job_ref(&job), 1).await;
    let digest = upload_ok(&job, ARTIFACT, &artifact_bytes(id)).await;
    let result = builder
        .complete(key, &job, Outcome::Succeeded, vec![digest])
        .await;
    assert_eq!(result, CompletionResult::Accepted);
    wait_for_state(server, id, "succeeded").await;
}

/// Polls the job as the admin (the testkit's helper reads anonymously) until it is in `state`.
async fn wait_for_state(server: &TestServer, id: i64, state: &str) {
    let token = server.admin_token.clone();
    wait_until(&format!("job {id} to be {state}"), || {
        let token = token.clone();
        async move {
            let (_, job) = get(server, &format!("/jobs/{id}"), Some(&token)).await;
            (job["state"] == state).then_some(())
        }
    })
    .await;
}

/// Every read route of one job.
fn read_routes(id: i64) -> Vec<String> {
    [
        "",
        "/plan",
        "/log",
        "/log?format=text",
        "/log/stream",
        "/events",
        "/artifacts",
        &format!("/artifacts/{ARTIFACT}"),
        "/statement",
        "/statement.sig",
        "/statement.dsse",
        "/signatures",
    ]
    .iter()
    .map(|tail| format!("/jobs/{id}{tail}"))
    .collect()
}

/// `route` of a job the caller sees answered as for a job that exists: 200, or for what the
/// job has not got, a 404 that says so (which tells the job exists): a build-mode job has no
/// plan, and the scripted builder's statement (`buildfleet-statement/v1`, SSHSIG only) has
/// no DSSE envelope.
fn assert_seen(route: &str, status: StatusCode, body: &Value) {
    let missing_part = if route.ends_with("/plan") {
        Some("build-mode")
    } else if route.ends_with("/statement.dsse") {
        Some("has no DSSE signature")
    } else {
        None
    };
    match missing_part {
        Some(said) => {
            assert_eq!(status, StatusCode::NOT_FOUND, "{route}: {body}");
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains(said), "{route}: {body}");
        }
        None => assert_eq!(status, StatusCode::OK, "{route}: {body}"),
    }
}

/// The answer for a job that does not exist, with its id swapped for `id`'s: what a caller
/// must get for a job it may not see.
async fn missing_answer(
    server: &TestServer,
    method: Method,
    route: &str,
    id: i64,
    token: Option<&str>,
) -> Value {
    let missing = 999_999;
    let path = route.replace(&format!("/jobs/{id}"), &format!("/jobs/{missing}"));
    let (status, body) = call(server, method, &path, token, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    serde_json::from_str(
        &body
            .to_string()
            .replace(&missing.to_string(), &id.to_string()),
    )
    .expect("json")
}

/// `route` answers exactly as for a job that does not exist.
async fn assert_hidden(
    server: &TestServer,
    method: Method,
    route: &str,
    id: i64,
    token: Option<&str>,
) {
    let (status, body) = call(server, method.clone(), route, token, None).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "{method} {route} with {token:?}: {body}"
    );
    assert_eq!(body["error"]["code"], "not_found", "{route}: {body}");
    assert_eq!(
        body,
        missing_answer(server, method.clone(), route, id, token).await,
        "{method} {route}: a hidden job must be told apart from no job in nothing"
    );
}

async fn job_ids(server: &TestServer, path: &str, token: Option<&str>) -> Vec<i64> {
    let (status, body) = get(server, path, token).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| j["id"].as_i64().expect("id"))
        .collect()
}

async fn builder_ids(server: &TestServer, token: Option<&str>) -> Vec<i64> {
    let (status, body) = get(server, "/builders", token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["builders"]
        .as_array()
        .expect("builders")
        .iter()
        .map(|b| b["id"].as_i64().expect("id"))
        .collect()
}

async fn every_route_hides_a_private_job_from_other_projects_and_anonymous_callers(db: TestDb) {
    let server = TestServer::start(db).await;
    create_project(&server, "acme/secret", false).await;
    create_project(&server, "acme/open", true).await;
    create_project(&server, "rival/app", false).await;
    let own_read = token(&server, "acme/secret", "read").await;
    let rival_submit = token(&server, "rival/app", "submit").await;
    let rival_admin = token(&server, "rival/app", "admin").await;

    // One shared builder runs both jobs; a second one, never connected, is private.
    let key = TestKey::generate("shared-one");
    server.admit(&key).await;
    let private_key = TestKey::generate("secret-one");
    let private_builder = server.admit(&private_key).await;
    server
        .with_store(move |store| {
            let project = store
                .project_by_slug("acme/secret")
                .unwrap()
                .expect("project")
                .id;
            store.set_builder_projects(BuilderId(private_builder), &[project])
        })
        .await
        .expect("making a builder private");
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    let secret = submit(&server, "acme/secret").await;
    run_to_success(&server, &mut builder, &key, secret).await;
    let open = submit(&server, "acme/open").await;
    run_to_success(&server, &mut builder, &key, open).await;
    let secret_sha256 = hex::encode(Sha256::digest(artifact_bytes(secret)));
    let unknown_sha256 = "ab".repeat(32);

    // Read routes: hidden from another project's tokens and from anonymous callers.
    for token in [
        Some(rival_submit.as_str()),
        Some(rival_admin.as_str()),
        None,
    ] {
        for route in read_routes(secret) {
            assert_hidden(&server, Method::GET, &route, secret, token).await;
        }
    }
    // Acting on it: the same 404, for the other project's submit and admin tokens.
    for token in [&rival_submit, &rival_admin] {
        for action in ["cancel", "retry"] {
            assert_hidden(
                &server,
                Method::POST,
                &format!("/jobs/{secret}/{action}"),
                secret,
                Some(token),
            )
            .await;
        }
    }
    // Anonymous acting needs a token first, whatever the job (nothing told either way).
    let (status, body) = call(
        &server,
        Method::POST,
        &format!("/jobs/{secret}/cancel"),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    // Listings leave it out; naming its project is a 404 too.
    for token in [Some(rival_submit.as_str()), None] {
        let listed = job_ids(&server, "/jobs", token).await;
        assert!(!listed.contains(&secret), "{listed:?}");
        assert!(listed.contains(&open), "{listed:?}");
        let (status, body) = get(&server, "/jobs?project=acme/secret", token).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["error"]["message"], "project acme/secret not found");
        let (status, body) = get(&server, "/projects/acme/secret", token).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        let (_, body) = get(&server, "/projects", token).await;
        let names: Vec<&str> = body["projects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert!(
            !names.contains(&"acme/secret") && names.contains(&"acme/open"),
            "{names:?}"
        );
        // The builder private to acme/secret does not exist for them.
        let builders = builder_ids(&server, token).await;
        assert!(!builders.contains(&private_builder), "{builders:?}");
        assert_eq!(
            builders.len(),
            1,
            "the shared builder stays listed: {builders:?}"
        );
        let (status, body) = get(&server, &format!("/builders/{private_builder}"), token).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(
            body["error"]["message"],
            format!("builder {private_builder} not found")
        );
        // Its keys too: answered as a builder that does not exist, before any token check.
        let keys = format!("/builders/{private_builder}/keys");
        let (status, body) = get(&server, &keys, token).await;
        let (_, missing) = get(&server, "/builders/999999/keys", token).await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "{keys} with {token:?}: {body}"
        );
        assert_eq!(
            body.to_string(),
            missing
                .to_string()
                .replace("999999", &private_builder.to_string()),
            "{keys}: a hidden builder must be told apart from no builder in nothing"
        );
        // Looking its artifact up by digest finds nothing, as for a digest no job has.
        let (status, found) = get(
            &server,
            &format!("/artifacts/by-sha256/{secret_sha256}"),
            token,
        )
        .await;
        let (_, none) = get(
            &server,
            &format!("/artifacts/by-sha256/{unknown_sha256}"),
            token,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{found}");
        assert_eq!(found["artifacts"], json!([]), "{found}");
        assert_eq!(
            found.to_string(),
            none.to_string().replace(&unknown_sha256, &secret_sha256),
            "the hidden job's artifact is as absent as a missing one"
        );
    }

    // The public project's job: every read route answers anyone.
    for token in [None, Some(rival_submit.as_str())] {
        for route in read_routes(open) {
            let (status, body) = get(&server, &route, token).await;
            assert_seen(&route, status, &body);
        }
    }
    let (_, detail) = get(&server, &format!("/jobs/{open}"), None).await;
    assert_eq!(detail["project"], "acme/open");

    // Its own project's read token sees every route, the listing and the private builder...
    for route in read_routes(secret) {
        let (status, body) = get(&server, &route, Some(&own_read)).await;
        assert_seen(&route, status, &body);
    }
    let (_, text) = get(
        &server,
        &format!("/jobs/{secret}/log?format=text"),
        Some(&own_read),
    )
    .await;
    assert!(text.as_str().unwrap().contains("compiling app"), "{text}");
    let (_, signature) = get(
        &server,
        &format!("/jobs/{secret}/statement.sig"),
        Some(&own_read),
    )
    .await;
    assert!(
        signature.as_str().unwrap().contains("BEGIN SSH SIGNATURE"),
        "{signature}"
    );
    let listed = job_ids(&server, "/jobs?project=acme/secret", Some(&own_read)).await;
    assert_eq!(listed, [secret]);
    let (_, found) = get(
        &server,
        &format!("/artifacts/by-sha256/{secret_sha256}"),
        Some(&own_read),
    )
    .await;
    assert_eq!(
        found["artifacts"],
        json!([{ "job": secret, "attempt": 1, "name": ARTIFACT }])
    );
    let (status, keys) = get(
        &server,
        &format!("/builders/{private_builder}/keys"),
        Some(&own_read),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    assert_eq!(
        keys["keys"][0]["fingerprint"],
        private_key.fingerprint.as_str()
    );
    let listed = job_ids(&server, "/jobs", Some(&own_read)).await;
    assert!(
        listed.contains(&secret) && listed.contains(&open),
        "{listed:?}"
    );
    assert!(builder_ids(&server, Some(&own_read))
        .await
        .contains(&private_builder));
    // A builder it sees because it serves its project does not name the other projects it
    // serves: rival/app is private to rival's tokens.
    let (status, _) = call(
        &server,
        Method::PUT,
        &format!("/builders/{private_builder}/projects"),
        Some(&server.admin_token),
        Some(json!({ "projects": ["acme/secret", "rival/app"] })),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        format!("/builders/{private_builder}"),
        "/builders".to_owned(),
    ] {
        let (_, body) = get(&server, &path, Some(&own_read)).await;
        let shown = body.get("builders").map_or(&body, |list| {
            list.as_array()
                .and_then(|all| all.iter().find(|b| b["id"] == private_builder))
                .expect("the private builder listed")
        });
        assert_eq!(shown["projects"], json!(["acme/secret"]), "{path}: {body}");
    }
    let (_, body) = get(
        &server,
        &format!("/builders/{private_builder}"),
        Some(&server.admin_token),
    )
    .await;
    assert_eq!(
        body["projects"],
        json!(["acme/secret", "rival/app"]),
        "{body}"
    );
    // ...and cannot act: 403, as it sees the job.
    for action in ["cancel", "retry"] {
        let (status, body) = call(
            &server,
            Method::POST,
            &format!("/jobs/{secret}/{action}"),
            Some(&own_read),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{action}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("read scope"),
            "{body}"
        );
    }
    // Another project's token acting on a public job it sees: 403, not 404.
    let (status, body) = call(
        &server,
        Method::POST,
        &format!("/jobs/{open}/retry"),
        Some(&rival_submit),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // Admin-only routes stay admin-only for project admin tokens.
    let (status, body) = call(
        &server,
        Method::GET,
        "/enrolment-tokens",
        Some(&rival_admin),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = call(
        &server,
        Method::POST,
        &format!("/builders/{private_builder}/disable"),
        Some(&rival_admin),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // The dashboard: a private job's page is a 404 without credentials and with another
    // project's, and shows with its own project's token in the session cookie.
    let page = |cookie: Option<String>| {
        let url = format!("{}/jobs/{secret}", server.url);
        async move {
            let mut request = test_client(None).get(&url);
            if let Some(cookie) = cookie {
                request = request.insert_header(("Cookie", format!("buildfleet_token={cookie}")));
            }
            let mut response = request.send().await.expect("GET page");
            let body = response
                .body()
                .limit(8 * 1024 * 1024)
                .await
                .expect("page body");
            (
                response.status(),
                String::from_utf8_lossy(&body).into_owned(),
            )
        }
    };
    assert_eq!(page(None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        page(Some(rival_submit.clone())).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, html) = page(Some(own_read.clone())).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("compiling app"),
        "the page shows the job's log"
    );
    for (path, cookie, shown) in [
        ("/jobs", None, false),
        ("/", None, false),
        ("/jobs", Some(own_read.clone()), true),
    ] {
        let url = format!("{}{path}", server.url);
        let mut request = test_client(None).get(&url);
        if let Some(cookie) = &cookie {
            request = request.insert_header(("Cookie", format!("buildfleet_token={cookie}")));
        }
        let mut response = request.send().await.expect("GET page");
        let body = response.body().limit(8 * 1024 * 1024).await.expect("body");
        let html = String::from_utf8_lossy(&body);
        assert_eq!(
            html.contains(&format!("href=\"/jobs/{secret}\"")),
            shown,
            "{path} with {cookie:?}"
        );
        assert!(html.contains(&format!("href=\"/jobs/{open}\"")), "{path}");
    }
    // The dashboard's script sets the cookie through POST /session with its token: checked
    // (a wrong one is 401 and sets nothing), HttpOnly and SameSite=Strict.
    let mut response = test_client(None)
        .post(format!("{}/session", server.url))
        .bearer_auth(&own_read)
        .send()
        .await
        .expect("POST /session");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let cookie = response
        .cookie("buildfleet_token")
        .expect("the session cookie is set");
    assert_eq!(cookie.value(), own_read);
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(cookie.same_site(), Some(awc::cookie::SameSite::Strict));
    let _ = response.body().await;
    let mut response = test_client(None)
        .post(format!("{}/session", server.url))
        .bearer_auth("bfapi_wrong")
        .send()
        .await
        .expect("POST /session");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.cookie("buildfleet_token").is_none());
    let _ = response.body().await;

    // The cookie reads, but never acts: a cancel with it alone is unauthorised.
    let mut response = test_client(None)
        .post(server.api(&format!("/jobs/{secret}/cancel")))
        .insert_header(("Cookie", format!("buildfleet_token={}", server.admin_token)))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let _ = response.body().await;
    server.shutdown().await;
}

/// Reads the all-jobs stream until an event of `until` arrives; returns the job ids seen.
async fn feed_until(
    response: &mut awc::ClientResponse<
        impl futures_util::Stream<Item = Result<bytes::Bytes, awc::error::PayloadError>> + Unpin,
    >,
    until: i64,
) -> Vec<i64> {
    let mut text = String::new();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let chunk = tokio::time::timeout_at(deadline, response.next())
            .await
            .expect("no event of the awaited job within 10 s")
            .expect("the stream ended")
            .expect("the stream broke");
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let event: String = text.drain(..end + 2).collect();
            for line in event.lines() {
                if let Some(data) = line.strip_prefix("data: ") {
                    let value: Value = serde_json::from_str(data).expect("event data");
                    let job = value["job"].as_i64().expect("job");
                    seen.push(job);
                    if job == until {
                        return seen;
                    }
                }
            }
        }
    }
}

async fn open_feed(
    server: &TestServer,
    token: Option<&str>,
) -> awc::ClientResponse<
    impl futures_util::Stream<Item = Result<bytes::Bytes, awc::error::PayloadError>> + Unpin,
> {
    let mut request = awc::Client::builder()
        .disable_timeout()
        .finish()
        .get(server.api("/job-events"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("GET /job-events");
    assert_eq!(response.status(), StatusCode::OK);
    response
}

async fn the_all_jobs_stream_sends_only_visible_changes(db: TestDb) {
    let server = TestServer::start(db).await;
    create_project(&server, "acme/secret", false).await;
    create_project(&server, "rival/app", false).await;
    let own_read = token(&server, "acme/secret", "read").await;
    let rival_read = token(&server, "rival/app", "read").await;
    let mut rival = open_feed(&server, Some(&rival_read)).await;
    let mut anonymous = open_feed(&server, None).await;
    let mut own = open_feed(&server, Some(&own_read)).await;
    let mut admin = open_feed(&server, Some(&server.admin_token)).await;

    let secret = submit(&server, "acme/secret").await;
    let theirs = submit(&server, "rival/app").await;
    let public = submit(&server, "default/default").await;

    let seen = feed_until(&mut rival, public).await;
    assert!(
        !seen.contains(&secret),
        "another project's token saw {seen:?}"
    );
    assert!(seen.contains(&theirs), "{seen:?}");
    let seen = feed_until(&mut anonymous, public).await;
    assert_eq!(seen, [public], "anonymous sees public changes only");
    let seen = feed_until(&mut own, public).await;
    assert_eq!(seen, [secret, public]);
    let seen = feed_until(&mut admin, public).await;
    assert_eq!(seen, [secret, theirs, public]);
    server.shutdown().await;
}

async fn revoked_and_expired_tokens_are_refused(db: TestDb) {
    let server = TestServer::start(db).await;
    create_project(&server, "acme/secret", false).await;
    let secret = submit(&server, "acme/secret").await;
    let (status, created) = server
        .post_admin(
            "/tokens",
            &json!({ "project": "acme/secret", "scope": "read", "description": "soon revoked" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let revoked = created["secret"].as_str().unwrap().to_owned();
    let path = format!("/jobs/{secret}");
    assert_eq!(get(&server, &path, Some(&revoked)).await.0, StatusCode::OK);
    let (status, body) = call(
        &server,
        Method::DELETE,
        &format!("/tokens/{}", created["id"]),
        Some(&server.admin_token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Expired one millisecond ago, made in the store to need no waiting.
    let expired = server
        .with_store(|store| {
            let project = store
                .project_by_slug("acme/secret")
                .unwrap()
                .expect("project")
                .id;
            let now = store.now_ms();
            store.create_api_token(Some(project), TokenScope::Read, "expired", Some(now - 1))
        })
        .await
        .expect("token")
        .1;
    for token in [&revoked, &expired] {
        for route in read_routes(secret).iter().chain([&"/jobs".to_owned()]) {
            let (status, body) = get(&server, route, Some(token)).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{route}: {body}");
            assert_eq!(body["error"]["code"], "unauthorized");
        }
        let (status, _) = server
            .post("/jobs", Some(token), &json!({ "recipe": "cargo-build", "source_sha256": SOURCE_SHA256, "source_url": "https://example.invalid/x.tar.gz" }))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // The job is still there for the admin.
    assert_eq!(
        get(&server, &path, Some(&server.admin_token)).await.0,
        StatusCode::OK
    );
    server.shutdown().await;
}

/// The routes named after a project (the project, its webhooks and their deliveries, its
/// event stream, its retention) and the job routes added with notifications and retention
/// (deleting artifacts): a private project's are "not found" to another project's admin token
/// and to anonymous callers, as a project that does not exist is; its own admin token gets
/// through.
async fn a_private_projects_own_routes_are_hidden_from_other_projects_and_anonymous_callers(
    db: TestDb,
) {
    let server = TestServer::start(db).await;
    create_project(&server, "acme/secret", false).await;
    create_project(&server, "rival/app", false).await;
    let own_admin = token(&server, "acme/secret", "admin").await;
    let rival_admin = token(&server, "rival/app", "admin").await;
    let job = submit(&server, "acme/secret").await;
    let (status, _) = server
        .call(
            Method::POST,
            &format!("/jobs/{job}/cancel"),
            Some(&server.admin_token),
            None,
        )
        .await;
    assert!(status.is_success(), "cancel: {status}");
    let (status, hook) = server
        .call(
            Method::POST,
            "/projects/acme/secret/webhooks",
            Some(&own_admin),
            Some(&json!({ "url": "http://127.0.0.1:9/hook" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");
    let hook = hook["id"].as_i64().expect("webhook id");

    let policy = json!({ "artifacts": { "keep_last": 1 }, "logs": {} });
    // Every route of the project (and its job), and the same route of a project (and a job)
    // that does not exist: a caller who may not see acme/secret gets the same answer from both.
    let routes = |project: &str, job: i64, hook: i64| -> Vec<(Method, String, Option<Value>)> {
        let base = format!("/projects/{project}");
        vec![
            (Method::GET, base.clone(), None),
            (Method::PATCH, base.clone(), Some(json!({ "weight": 2 }))),
            (Method::GET, format!("{base}/webhooks"), None),
            (
                Method::POST,
                format!("{base}/webhooks"),
                Some(json!({ "url": "http://127.0.0.1:9/x" })),
            ),
            (Method::DELETE, format!("{base}/webhooks/{hook}"), None),
            (
                Method::GET,
                format!("{base}/webhooks/{hook}/deliveries"),
                None,
            ),
            (Method::GET, format!("{base}/events"), None),
            (Method::GET, format!("{base}/retention"), None),
            (
                Method::PUT,
                format!("{base}/retention"),
                Some(policy.clone()),
            ),
            (
                Method::PATCH,
                format!("{base}/retention"),
                Some(policy.clone()),
            ),
            (Method::DELETE, format!("/jobs/{job}/artifacts"), None),
        ]
    };
    let hidden_routes = routes("acme/secret", job, hook);
    let missing_routes = routes("acme/nothing", 999_999, 999_999);
    for token in [Some(rival_admin.as_str()), None] {
        let who = if token.is_some() {
            "rival/app's admin"
        } else {
            "anonymous"
        };
        for ((method, path, body), (_, missing_path, _)) in
            hidden_routes.iter().zip(&missing_routes)
        {
            let (status, answer) = server
                .call(method.clone(), path, token, body.as_ref())
                .await;
            let (missing_status, missing) = server
                .call(method.clone(), missing_path, token, body.as_ref())
                .await;
            assert!(
                [
                    StatusCode::NOT_FOUND,
                    StatusCode::UNAUTHORIZED,
                    StatusCode::FORBIDDEN
                ]
                .contains(&status),
                "{method} {path} as {who}: {status} {answer}"
            );
            assert_eq!(
                (status, &answer["error"]["code"]),
                (missing_status, &missing["error"]["code"]),
                "{method} {path} as {who} answers unlike {missing_path}: {answer} / {missing}"
            );
            if status == StatusCode::FORBIDDEN {
                // Only a route no project token may use says so, whatever the project.
                assert_eq!(answer, missing, "{method} {path} as {who}");
            }
        }
    }
    let (_, hidden) = server
        .call(
            Method::GET,
            "/projects/acme/secret/webhooks",
            Some(&rival_admin),
            None,
        )
        .await;
    assert_eq!(
        hidden["error"]["message"], "project acme/secret not found",
        "{hidden}"
    );

    // A project's admin naming another project's webhook under its own project: as a
    // webhook that does not exist, and the webhook stays.
    for (method, tail) in [(Method::DELETE, ""), (Method::GET, "/deliveries")] {
        let path = format!("/projects/rival/app/webhooks/{hook}{tail}");
        let missing_path = format!("/projects/rival/app/webhooks/999999{tail}");
        let (status, answer) = server
            .call(method.clone(), &path, Some(&rival_admin), None)
            .await;
        let (_, missing) = server
            .call(method.clone(), &missing_path, Some(&rival_admin), None)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {answer}");
        assert_eq!(
            answer.to_string(),
            missing.to_string().replace("999999", &hook.to_string()),
            "{method} {path}"
        );
    }

    // The dashboard's pages, with the rival admin token as the session cookie (or none): the
    // project's page is the page of a project that does not exist, the overview leaves it out.
    for cookie in [Some(rival_admin.as_str()), None] {
        let (status, html) = page(&server, "/projects/acme/secret/webhooks", cookie).await;
        let (missing_status, missing) =
            page(&server, "/projects/acme/nothing/webhooks", cookie).await;
        assert_eq!(
            (status, missing_status),
            (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND),
            "{cookie:?}: {html}"
        );
        assert_eq!(
            html,
            missing.replace("acme/nothing", "acme/secret"),
            "the page of a hidden project is that of a missing one ({cookie:?})"
        );
        let (status, html) = page(&server, "/webhooks", cookie).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!html.contains("acme/secret"), "{cookie:?}: {html}");
        assert_eq!(html.contains("rival/app"), cookie.is_some(), "{html}");
    }
    let (status, html) = page(&server, "/projects/acme/secret/webhooks", Some(&own_admin)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("http://127.0.0.1:9/hook"),
        "its admin sees its webhook"
    );
    let (_, html) = page(&server, "/webhooks", Some(&own_admin)).await;
    assert!(html.contains("acme/secret") && !html.contains("rival/app"));

    // Its own admin token gets through.
    for path in [
        "/projects/acme/secret/webhooks".to_owned(),
        format!("/projects/acme/secret/webhooks/{hook}/deliveries"),
        "/projects/acme/secret/retention".to_owned(),
    ] {
        let (status, answer) = server
            .call(Method::GET, &path, Some(&own_admin), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{path}: {answer}");
    }
    let (_, hooks) = server
        .call(
            Method::GET,
            "/projects/acme/secret/webhooks",
            Some(&own_admin),
            None,
        )
        .await;
    assert_eq!(
        hooks["webhooks"][0]["id"], hook,
        "the webhook is still there: {hooks}"
    );
    let (status, answer) = server
        .call(
            Method::DELETE,
            &format!("/jobs/{job}/artifacts"),
            Some(&own_admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    server.shutdown().await;
}

/// A dashboard page with `cookie` as the session cookie: status and HTML.
async fn page(server: &TestServer, path: &str, cookie: Option<&str>) -> (StatusCode, String) {
    let mut request = test_client(None).get(format!("{}{path}", server.url));
    if let Some(cookie) = cookie {
        request = request.insert_header(("Cookie", format!("buildfleet_token={cookie}")));
    }
    let mut response = request.send().await.expect("GET page");
    let body = response
        .body()
        .limit(8 * 1024 * 1024)
        .await
        .expect("page body");
    (
        response.status(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}
