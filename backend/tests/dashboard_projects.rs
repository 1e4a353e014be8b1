//! The dashboard under the access model (issue 17): the builders page, the projects and
//! tokens pages, and the jobs list by project show a visitor what its session cookie's token
//! may see, and nothing of a private project it may not (a builder private to it, its jobs,
//! its name). Real HTTP against the backend in process, a real scripted builder, both
//! databases.

use awc::http::StatusCode;
use buildfleet_backend::store::BuilderId;
use buildfleet_testkit::builder_client::BuilderClient;
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::keys::TestKey;
use buildfleet_testkit::server::{test_client, wait_until, TestServer, SOURCE_SHA256};
use buildfleet_testkit::server_tests;
use serde_json::json;

server_tests! {
    the_builders_page_hides_builders_and_jobs_of_projects_the_visitor_cannot_see,
}

/// A dashboard page with `cookie` as the session cookie: status and HTML.
async fn page(server: &TestServer, path: &str, cookie: Option<&str>) -> (StatusCode, String) {
    let url = format!("{}{path}", server.url);
    let mut request = test_client(None).get(&url);
    if let Some(cookie) = cookie {
        request = request.insert_header(("Cookie", format!("buildfleet_token={cookie}")));
    }
    let mut response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let body = response
        .body()
        .limit(8 * 1024 * 1024)
        .await
        .unwrap_or_else(|e| panic!("GET {url} body: {e}"));
    (
        response.status(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// A page that must render (200).
async fn page_ok(server: &TestServer, path: &str, cookie: Option<&str>) -> String {
    let (status, html) = page(server, path, cookie).await;
    assert_eq!(status, StatusCode::OK, "{path} with {cookie:?}: {html}");
    html
}

async fn create_project(server: &TestServer, name: &str, public: bool, weight: i32) {
    let (status, body) = server
        .post_admin(
            "/projects",
            &json!({ "name": name, "public": public, "weight": weight }),
        )
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
async fn submit(server: &TestServer, project: &str, recipe: &str) -> i64 {
    let (status, job) = server
        .post_admin(
            "/jobs",
            &json!({
                "source_url": "https://example.invalid/app-1.0.0.tar.gz",
                "source_sha256": SOURCE_SHA256,
                "recipe": recipe,
                "project": project,
            }),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "submitting to {project}: {job}"
    );
    job["id"].as_i64().expect("job id")
}

/// Makes builder `id` private to `project`, through the store as an operator's change would.
async fn make_private(server: &TestServer, id: i64, project: &'static str) {
    server
        .with_store(move |store| {
            let project = store.project_by_slug(project).unwrap().expect("project").id;
            store.set_builder_projects(BuilderId(id), &[project])
        })
        .await
        .expect("making a builder private");
}

/// Polls the job as the admin until it is in `state`.
async fn wait_for_state(server: &TestServer, id: i64, state: &str) {
    let admin = server.admin_token.clone();
    wait_until(&format!("job {id} to be {state}"), || {
        let admin = admin.clone();
        async move {
            let url = server.api(&format!("/jobs/{id}"));
            let mut response = test_client(None)
                .get(&url)
                .bearer_auth(&admin)
                .send()
                .await
                .ok()?;
            let job: serde_json::Value = response.json().await.ok()?;
            (job["state"] == state).then_some(())
        }
    })
    .await;
}

async fn the_builders_page_hides_builders_and_jobs_of_projects_the_visitor_cannot_see(db: TestDb) {
    let server = TestServer::start(db).await;
    create_project(&server, "acme/secret", false, 1).await;
    create_project(&server, "rival/app", false, 1).await;
    let own = token(&server, "acme/secret", "read").await;
    let rival = token(&server, "rival/app", "admin").await;

    // A shared builder runs a job of the private project; a second builder is private to it.
    let key = TestKey::generate("shared-one");
    server.admit(&key).await;
    let private_key = TestKey::generate("secret-builder");
    let private_id = server.admit(&private_key).await;
    make_private(&server, private_id, "acme/secret").await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    let job = submit(&server, "acme/secret", "cargo-build").await;
    builder.request_jobs(1);
    let assignment = builder.next_assignment().await;
    builder.accept(&assignment);
    wait_for_state(&server, job, "running").await;
    let job_link = format!("href=\"/jobs/{job}\"");

    for (who, cookie, shown) in [
        ("anonymous", None, false),
        ("another project's token", Some(rival.as_str()), false),
        ("the project's read token", Some(own.as_str()), true),
        ("the admin token", Some(server.admin_token.as_str()), true),
    ] {
        let html = page_ok(&server, "/builders", cookie).await;
        assert!(
            html.contains("shared-one"),
            "{who}: the shared builder is listed"
        );
        assert_eq!(
            html.contains("secret-builder"),
            shown,
            "{who}: the private builder's card"
        );
        assert_eq!(
            html.contains(&job_link),
            shown,
            "{who}: the shared builder's running job of the private project"
        );
        assert_eq!(
            html.contains("acme/secret"),
            shown,
            "{who}: the private project's name"
        );
        let count = if shown {
            "2 admitted, 1 connected."
        } else {
            "1 admitted, 1 connected."
        };
        assert!(html.contains(count), "{who}: {count}");
        // The jobs list's builder filter offers the same builders.
        let jobs = page_ok(&server, "/jobs", cookie).await;
        assert_eq!(
            jobs.contains("secret-builder"),
            shown,
            "{who}: /jobs builder filter"
        );
    }
}
