//! Projects and API tokens over the REST API (issue 17 item 1): creating, listing and
//! changing projects; creating (secret once), listing, expiring and revoking tokens; what
//! each scope may do, and bad input refused with a sentence. Both databases.

use std::time::Duration;

use awc::http::{Method, StatusCode};
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::server::{TestServer, SOURCE_SHA256};
use buildfleet_testkit::server_tests;
use serde_json::{json, Value};

server_tests! {
    projects_are_created_listed_and_changed,
    tokens_are_created_listed_expired_and_revoked,
    scopes_bound_what_a_token_may_do,
}

async fn call(
    server: &TestServer,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    server.call(method, path, token, body.as_ref()).await
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

fn job_body(project: Option<&str>) -> Value {
    let mut body = json!({
        "source_url": "https://example.invalid/app-1.0.0.tar.gz",
        "source_sha256": SOURCE_SHA256,
        "recipe": "cargo-build",
    });
    if let Some(project) = project {
        body["project"] = json!(project);
    }
    body
}

async fn projects_are_created_listed_and_changed(db: TestDb) {
    let server = TestServer::start(db).await;
    let admin = server.admin_token.clone();
    let (status, created) = call(
        &server,
        Method::POST,
        "/projects",
        Some(&admin),
        Some(json!({ "name": "acme/web", "public": true, "weight": 3 })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(
        (
            &created["name"],
            &created["organisation"],
            &created["public"],
            &created["weight"]
        ),
        (&json!("acme/web"), &json!("acme"), &json!(true), &json!(3))
    );
    let (status, _) = call(
        &server,
        Method::POST,
        "/projects",
        Some(&admin),
        Some(json!({ "name": "acme/api" })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    // Again: a conflict.
    let (status, body) = call(
        &server,
        Method::POST,
        "/projects",
        Some(&admin),
        Some(json!({ "name": "acme/web" })),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // Bad input: a sentence each.
    for (body, says) in [
        (json!({ "name": "acme" }), "organisation/project"),
        (json!({ "name": "Acme/web" }), "lowercase"),
        (
            json!({ "name": "acme/-web" }),
            "starting with a letter or digit",
        ),
        (json!({ "name": "acme/w", "weight": 0 }), "weight 0"),
        (json!({ "name": "acme/w", "weight": 1001 }), "weight 1001"),
        (json!({ "name": "acme/w", "colour": "red" }), "colour"),
    ] {
        let (status, answer) = call(
            &server,
            Method::POST,
            "/projects",
            Some(&admin),
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert!(message(&answer).contains(says), "{body}: {answer}");
    }

    // The admin sees all three (default/default too); anonymous only the public ones.
    let (_, all) = call(&server, Method::GET, "/projects", Some(&admin), None).await;
    let names: Vec<&str> = all["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["acme/api", "acme/web", "default/default"]);
    let (_, public) = call(&server, Method::GET, "/projects", None, None).await;
    assert_eq!(public["projects"].as_array().unwrap().len(), 2);

    // Patch: admin only; absent fields stay.
    let (status, patched) = call(
        &server,
        Method::PATCH,
        "/projects/acme/api",
        Some(&admin),
        Some(json!({ "public": true })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(
        (&patched["public"], &patched["weight"]),
        (&json!(true), &json!(1))
    );
    let (status, patched) = call(
        &server,
        Method::PATCH,
        "/projects/acme/api",
        Some(&admin),
        Some(json!({ "weight": 7 })),
    )
    .await;
    assert_eq!(
        (status, &patched["weight"], &patched["public"]),
        (StatusCode::OK, &json!(7), &json!(true))
    );
    let (_, fetched) = call(&server, Method::GET, "/projects/acme/api", None, None).await;
    assert_eq!(fetched, patched);
    let (status, body) = call(
        &server,
        Method::PATCH,
        "/projects/acme/api",
        Some(&admin),
        Some(json!({ "weight": -1 })),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = call(
        &server,
        Method::PATCH,
        "/projects/acme/nothing",
        Some(&admin),
        Some(json!({ "weight": 2 })),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(message(&body), "project acme/nothing not found");
    let (status, _) = call(
        &server,
        Method::PATCH,
        "/projects/acme/api",
        None,
        Some(json!({ "weight": 2 })),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A job submitted to a project names it; an unknown project is a 404 naming it.
    let (status, job) = call(
        &server,
        Method::POST,
        "/jobs",
        Some(&admin),
        Some(job_body(Some("acme/web"))),
    )
    .await;
    assert_eq!(
        (status, &job["project"]),
        (StatusCode::CREATED, &json!("acme/web")),
        "{job}"
    );
    let (status, job) = call(
        &server,
        Method::POST,
        "/jobs",
        Some(&admin),
        Some(job_body(None)),
    )
    .await;
    assert_eq!(
        (status, &job["project"]),
        (StatusCode::CREATED, &json!("default/default"))
    );
    let (status, body) = call(
        &server,
        Method::POST,
        "/jobs",
        Some(&admin),
        Some(job_body(Some("acme/none"))),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(message(&body), "project acme/none not found");
    let (status, body) = call(
        &server,
        Method::POST,
        "/jobs",
        Some(&admin),
        Some(job_body(Some("no-slash"))),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    server.shutdown().await;
}

async fn create_token(server: &TestServer, by: &str, body: Value) -> (StatusCode, Value) {
    call(server, Method::POST, "/tokens", Some(by), Some(body)).await
}

async fn tokens_are_created_listed_expired_and_revoked(db: TestDb) {
    let server = TestServer::start(db).await;
    let admin = server.admin_token.clone();
    for name in ["acme/web", "rival/app"] {
        let (status, _) = call(
            &server,
            Method::POST,
            "/projects",
            Some(&admin),
            Some(json!({ "name": name })),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let (status, created) = create_token(
        &server,
        &admin,
        json!({ "project": "acme/web", "scope": "submit", "description": "ci of acme/web" }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("bfapi_"), "{secret}");
    assert_eq!(
        (
            &created["project"],
            &created["scope"],
            &created["live"],
            &created["expires_at"]
        ),
        (
            &json!("acme/web"),
            &json!("submit"),
            &json!(true),
            &Value::Null
        )
    );
    // The secret is shown once: never in a listing.
    let (status, listed) = call(&server, Method::GET, "/tokens", Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!listed.to_string().contains(&secret));
    assert_eq!(listed["tokens"][0]["id"], created["id"]);

    // It works at once: a submission lands in its project.
    let (status, job) = call(
        &server,
        Method::POST,
        "/jobs",
        Some(&secret),
        Some(job_body(None)),
    )
    .await;
    assert_eq!(
        (status, &job["project"]),
        (StatusCode::CREATED, &json!("acme/web")),
        "{job}"
    );
    // Submitting to a project it cannot see: 404 naming that project.
    let (status, body) = call(
        &server,
        Method::POST,
        "/jobs",
        Some(&secret),
        Some(job_body(Some("rival/app"))),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(message(&body), "project rival/app not found");

    // An expiring token: live, then refused once its time is up.
    let (status, short) = create_token(
        &server,
        &admin,
        json!({ "project": "acme/web", "scope": "read", "description": "short", "expires_in_secs": 1 }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{short}");
    let short_secret = short["secret"].as_str().unwrap().to_owned();
    assert!(short["expires_at"].as_i64().unwrap() > short["created_at"].as_i64().unwrap());
    let (status, _) = call(&server, Method::GET, "/jobs", Some(&short_secret), None).await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body) = call(&server, Method::GET, "/jobs", Some(&short_secret), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (_, listed) = call(&server, Method::GET, "/tokens", Some(&admin), None).await;
    let short_row = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == short["id"])
        .expect("listed")
        .clone();
    assert_eq!(short_row["live"], false);

    // Revoking: the token stops working; revoking again changes nothing.
    let path = format!("/tokens/{}", created["id"]);
    let (status, revoked) = call(&server, Method::DELETE, &path, Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert_eq!(revoked["live"], false);
    let (status, again) = call(&server, Method::DELETE, &path, Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["revoked_at"], revoked["revoked_at"]);
    let (status, _) = call(
        &server,
        Method::POST,
        "/jobs",
        Some(&secret),
        Some(job_body(None)),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = call(
        &server,
        Method::DELETE,
        "/tokens/999999",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = call(&server, Method::DELETE, "/tokens/abc", Some(&admin), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Bad input.
    for (body, status, says) in [
        (
            json!({ "project": "acme/web", "scope": "read", "description": "" }),
            StatusCode::BAD_REQUEST,
            "description",
        ),
        (
            json!({ "project": "acme/web", "scope": "root", "description": "x" }),
            StatusCode::BAD_REQUEST,
            "scope",
        ),
        (
            json!({ "project": "acme/web", "scope": "read", "description": "x", "expires_in_secs": 0 }),
            StatusCode::BAD_REQUEST,
            "expires_in_secs",
        ),
        (
            json!({ "scope": "submit", "description": "x" }),
            StatusCode::BAD_REQUEST,
            "admin scope only",
        ),
        (
            json!({ "project": "acme/none", "scope": "read", "description": "x" }),
            StatusCode::NOT_FOUND,
            "project acme/none not found",
        ),
        (
            json!({ "project": "ACME", "scope": "read", "description": "x" }),
            StatusCode::BAD_REQUEST,
            "organisation/project",
        ),
    ] {
        let (got, answer) = create_token(&server, &admin, body.clone()).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert!(message(&answer).contains(says), "{body}: {answer}");
    }
    server.shutdown().await;
}

async fn scopes_bound_what_a_token_may_do(db: TestDb) {
    let server = TestServer::start(db).await;
    let admin = server.admin_token.clone();
    for name in ["acme/web", "rival/app"] {
        call(
            &server,
            Method::POST,
            "/projects",
            Some(&admin),
            Some(json!({ "name": name })),
        )
        .await;
    }
    let make = |project: Option<&str>, scope: &str| {
        let mut body = json!({ "scope": scope, "description": format!("{scope} token") });
        if let Some(project) = project {
            body["project"] = json!(project);
        }
        body
    };
    let secret = |v: &Value| v["secret"].as_str().unwrap().to_owned();
    let (_, read) = create_token(&server, &admin, make(Some("acme/web"), "read")).await;
    let (_, submit) = create_token(&server, &admin, make(Some("acme/web"), "submit")).await;
    let (_, project_admin) = create_token(&server, &admin, make(Some("acme/web"), "admin")).await;
    let (_, rival_admin) = create_token(&server, &admin, make(Some("rival/app"), "admin")).await;
    let (status, service_admin) = create_token(&server, &admin, make(None, "admin")).await;
    assert_eq!(status, StatusCode::CREATED, "{service_admin}");
    assert_eq!(service_admin["project"], Value::Null);
    let (read, submit, project_admin, rival_admin, service_admin) = (
        secret(&read),
        secret(&submit),
        secret(&project_admin),
        secret(&rival_admin),
        secret(&service_admin),
    );

    // Read cannot submit: 403.
    let (status, body) = call(
        &server,
        Method::POST,
        "/jobs",
        Some(&read),
        Some(job_body(None)),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(message(&body).contains("read scope"), "{body}");
    // Submit cannot manage tokens: 403, listing or creating.
    let (status, body) = create_token(&server, &submit, make(Some("acme/web"), "read")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _) = call(&server, Method::GET, "/tokens", Some(&submit), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = call(&server, Method::GET, "/tokens", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A project admin token: tokens of its project only, never one of no project.
    let (status, minted) =
        create_token(&server, &project_admin, make(Some("acme/web"), "submit")).await;
    assert_eq!(
        (status, &minted["project"]),
        (StatusCode::CREATED, &json!("acme/web")),
        "{minted}"
    );
    let (status, body) = create_token(&server, &project_admin, make(None, "admin")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) =
        create_token(&server, &project_admin, make(Some("rival/app"), "read")).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a private project it cannot see: {body}"
    );
    // Its listing holds its project's tokens only.
    let (_, listed) = call(&server, Method::GET, "/tokens", Some(&project_admin), None).await;
    let projects: Vec<&Value> = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["project"])
        .collect();
    assert_eq!(projects.len(), 4, "{listed}");
    assert!(
        projects.iter().all(|p| **p == json!("acme/web")),
        "{listed}"
    );
    // Another project's token is not there to revoke.
    let (_, all) = call(&server, Method::GET, "/tokens", Some(&admin), None).await;
    let rival_id = all["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["project"] == "rival/app")
        .expect("rival token")["id"]
        .clone();
    let (status, body) = call(
        &server,
        Method::DELETE,
        &format!("/tokens/{rival_id}"),
        Some(&project_admin),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = call(
        &server,
        Method::DELETE,
        &format!("/tokens/{}", minted["id"]),
        Some(&project_admin),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // A project admin is no service admin: builders, enrolment, projects stay the admin's.
    for (method, path, body) in [
        (
            Method::POST,
            "/projects",
            Some(json!({ "name": "acme/new" })),
        ),
        (
            Method::PATCH,
            "/projects/acme/web",
            Some(json!({ "weight": 2 })),
        ),
        (Method::GET, "/enrolment-tokens", None),
    ] {
        let (status, answer) = call(
            &server,
            method.clone(),
            path,
            Some(&rival_admin),
            body.clone(),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {answer}");
        // An admin token of no project is the admin.
        let (status, answer) =
            call(&server, method.clone(), path, Some(&service_admin), body).await;
        assert!(status.is_success(), "{method} {path}: {answer}");
    }
    server.shutdown().await;
}
