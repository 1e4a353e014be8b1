//! The dashboard under the access model (issue 17): the builders page, the projects and
//! tokens pages, and the jobs list by project show a visitor what its session cookie's token
//! may see, and nothing of a private project it may not (a builder private to it, its jobs,
//! its name); the forms and buttons that act (webhooks, retention, deleting a job's
//! artifacts, boosting a queued job) show only to a visitor whose token may use them; a
//! queued job's page says why it waits, with the figures of the API's `queue`. Real HTTP
//! against the backend in process, a real scripted builder, both databases.

use awc::http::StatusCode;
use buildfleet_backend::store::BuilderId;
use buildfleet_protocol::{CompletionResult, Outcome};
use buildfleet_testkit::builder_client::{default_capabilities, upload_ok, BuilderClient};
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::keys::TestKey;
use buildfleet_testkit::server::{test_client, wait_until, TestServer, SOURCE_SHA256};
use buildfleet_testkit::server_tests;
use serde_json::json;

server_tests! {
    the_builders_page_hides_builders_and_jobs_of_projects_the_visitor_cannot_see,
    the_projects_page_shows_what_the_visitor_sees_with_jobs_shares_and_builders,
    the_jobs_list_filters_by_project_and_hides_private_projects,
    the_tokens_page_lists_the_tokens_the_visitor_manages,
    the_submit_form_offers_the_projects_the_token_may_submit_to,
    the_forms_that_act_show_only_to_whoever_may_use_them,
    a_queued_jobs_page_says_why_it_waits_as_the_api_does,
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

/// The table row of `html` that holds `needle`.
fn row<'a>(html: &'a str, needle: &str) -> &'a str {
    let at = html
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} is on the page: {html}"));
    let start = html[..at].rfind("<tr").expect("a row starts before it");
    let end = at + html[at..].find("</tr>").expect("the row ends");
    &html[start..end]
}

/// The projects of the fixture: a private one with a weight of 3, a public one, and a
/// private rival; a read token of each private one, and one job queued in each project.
struct Fixture {
    own: String,
    rival: String,
    secret_job: i64,
    open_job: i64,
    rival_job: i64,
}

async fn fixture(server: &TestServer) -> Fixture {
    create_project(server, "acme/secret", false, 3).await;
    create_project(server, "acme/open", true, 1).await;
    create_project(server, "rival/app", false, 1).await;
    Fixture {
        own: token(server, "acme/secret", "read").await,
        rival: token(server, "rival/app", "read").await,
        secret_job: submit(server, "acme/secret", "secret-recipe").await,
        open_job: submit(server, "acme/open", "cargo-build").await,
        rival_job: submit(server, "rival/app", "cargo-build").await,
    }
}

async fn the_projects_page_shows_what_the_visitor_sees_with_jobs_shares_and_builders(db: TestDb) {
    let server = TestServer::start(db).await;
    let f = fixture(&server).await;
    submit(&server, "acme/secret", "secret-recipe").await;
    let private_key = TestKey::generate("secret-builder");
    let private_id = server.admit(&private_key).await;
    make_private(&server, private_id, "acme/secret").await;

    for (who, cookie, seen, hidden) in [
        (
            "anonymous",
            None,
            vec!["default/default", "acme/open"],
            vec!["acme/secret", "rival/app"],
        ),
        (
            "another project's token",
            Some(f.rival.as_str()),
            vec!["default/default", "acme/open", "rival/app"],
            vec!["acme/secret"],
        ),
        (
            "the project's read token",
            Some(f.own.as_str()),
            vec!["default/default", "acme/open", "acme/secret"],
            vec!["rival/app"],
        ),
        (
            "the admin token",
            Some(server.admin_token.as_str()),
            vec!["default/default", "acme/open", "acme/secret", "rival/app"],
            vec![],
        ),
    ] {
        let html = page_ok(&server, "/projects", cookie).await;
        for slug in &seen {
            assert!(
                html.contains(&format!("href=\"/jobs?project={slug}\"")),
                "{who}: {slug} is listed"
            );
        }
        for slug in &hidden {
            assert!(!html.contains(slug), "{who}: {slug} must not be named");
        }
        assert_eq!(
            html.contains("secret-builder"),
            hidden.is_empty() || !hidden.contains(&"acme/secret"),
            "{who}: the private builder"
        );
    }

    // The private project's row, to its own token: private, weight 3, two queued, its builder,
    // its links, and its share of the weights among the projects that token sees (3 of 5).
    let html = page_ok(&server, "/projects", Some(&f.own)).await;
    let secret = row(&html, ">acme/secret</a>");
    for expected in [
        "private",
        "data-label=\"Weight\">3<",
        "href=\"/jobs?project=acme/secret&amp;state=queued\">2<",
        "data-label=\"Running\">0<",
        "secret-builder",
        "href=\"/projects/acme/secret/webhooks\"",
        "60 % of the weight",
    ] {
        assert!(secret.contains(expected), "{expected:?} in {secret}");
    }
    let open = row(&html, ">acme/open</a>");
    assert!(open.contains("public"), "{open}");
    assert!(
        open.contains("data-label=\"Private builders\"><span class=\"muted\">none"),
        "{open}"
    );
    // The admin sees every weight: 3 of 6.
    let html = page_ok(&server, "/projects", Some(&server.admin_token)).await;
    assert!(row(&html, ">acme/secret</a>").contains("50 % of the weight"));
    assert!(
        html.contains("id=\"project-create-form\""),
        "the admin's forms"
    );
}

async fn job_links(server: &TestServer, path: &str, cookie: Option<&str>) -> Vec<i64> {
    let html = page_ok(server, path, cookie).await;
    html.match_indices("href=\"/jobs/")
        .filter_map(|(at, m)| {
            let rest = &html[at + m.len()..];
            rest[..rest.find('"')?].parse().ok()
        })
        .collect()
}

async fn the_jobs_list_filters_by_project_and_hides_private_projects(db: TestDb) {
    let server = TestServer::start(db).await;
    let f = fixture(&server).await;
    let admin = server.admin_token.clone();

    assert_eq!(job_links(&server, "/jobs", None).await, vec![f.open_job]);
    assert_eq!(
        job_links(&server, "/jobs", Some(&f.rival)).await,
        vec![f.rival_job, f.open_job]
    );
    assert_eq!(
        job_links(&server, "/jobs", Some(&f.own)).await,
        vec![f.open_job, f.secret_job]
    );
    assert_eq!(
        job_links(&server, "/jobs", Some(&admin)).await,
        vec![f.rival_job, f.open_job, f.secret_job]
    );
    assert_eq!(
        job_links(&server, "/jobs?project=acme/secret", Some(&f.own)).await,
        vec![f.secret_job]
    );
    assert_eq!(
        job_links(&server, "/jobs?project=acme/open", None).await,
        vec![f.open_job]
    );
    assert_eq!(
        job_links(
            &server,
            "/jobs?project=rival/app&state=queued",
            Some(&admin)
        )
        .await,
        vec![f.rival_job]
    );
    // The filter keeps to its project across the state filter and the pager's links.
    let html = page_ok(&server, "/jobs?project=acme/secret", Some(&f.own)).await;
    assert!(
        html.contains("<option value=\"acme/secret\" selected>"),
        "{html}"
    );
    assert!(
        !html.contains("rival/app"),
        "another private project is not offered"
    );
    // A private project of another team is a 404 page, as a project that does not exist;
    // a malformed name is a 400.
    for (path, cookie) in [
        ("/jobs?project=acme/secret", None),
        ("/jobs?project=acme/secret", Some(f.rival.as_str())),
        ("/jobs?project=nobody/nothing", Some(admin.as_str())),
    ] {
        let (status, html) = page(&server, path, cookie).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path} with {cookie:?}");
        assert!(!html.contains(&format!("/jobs/{}", f.secret_job)), "{path}");
    }
    let (status, _) = page(&server, "/jobs?project=Not%20A%20Slug", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // The job page names its project and links to its jobs.
    let html = page_ok(&server, &format!("/jobs/{}", f.secret_job), Some(&f.own)).await;
    assert!(
        html.contains("href=\"/jobs?project=acme/secret\">acme/secret</a>"),
        "{html}"
    );
}

async fn the_tokens_page_lists_the_tokens_the_visitor_manages(db: TestDb) {
    let server = TestServer::start(db).await;
    let f = fixture(&server).await;
    let own_admin = token(&server, "acme/secret", "admin").await;

    let html = page_ok(&server, "/tokens", None).await;
    assert!(html.contains("A token is needed"), "{html}");
    assert!(!html.contains("read of"), "no token is listed anonymously");
    let html = page_ok(&server, "/tokens", Some(&f.own)).await;
    assert!(html.contains("has the read scope"), "{html}");
    assert!(!html.contains("read of"), "a read token lists none");

    // A project's admin token: its project's tokens only, and it creates tokens of it only.
    let html = page_ok(&server, "/tokens", Some(&own_admin)).await;
    assert!(html.contains("read of acme/secret") && html.contains("admin of acme/secret"));
    assert!(
        !html.contains("rival/app"),
        "another project's tokens: {html}"
    );
    assert!(
        !html.contains("(whole service"),
        "only the admin makes tokens of no project"
    );
    assert!(html.contains("id=\"token-form\""));

    // Revoked through the API: the row says so and offers no revoke.
    let (status, list) = test_client(None)
        .get(server.api("/tokens"))
        .bearer_auth(&server.admin_token)
        .send()
        .await
        .map(|r| (r.status(), r))
        .expect("list tokens");
    assert_eq!(status, StatusCode::OK);
    let mut list = list;
    let list: serde_json::Value = list.json().await.expect("token list");
    let rival_id = list["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .find(|t| t["description"] == "read of rival/app")
        .expect("the rival's token")["id"]
        .as_i64()
        .expect("id");
    let response = test_client(None)
        .delete(server.api(&format!("/tokens/{rival_id}")))
        .bearer_auth(&server.admin_token)
        .send()
        .await
        .expect("revoke");
    assert_eq!(response.status(), StatusCode::OK);
    let html = page_ok(&server, "/tokens", Some(&server.admin_token)).await;
    let revoked = row(&html, "read of rival/app");
    assert!(revoked.contains(">revoked<"), "{revoked}");
    assert!(!revoked.contains("data-action"), "{revoked}");
    let live = row(&html, "read of acme/secret");
    assert!(
        live.contains(">live<") && live.contains("data-action=\"/api/v1/tokens/"),
        "{live}"
    );
    assert!(
        html.contains("(whole service"),
        "the admin makes tokens of no project"
    );
    // A revoked token in the cookie reads as none: the page asks for one, not an error.
    let html = page_ok(&server, "/tokens", Some(&f.rival)).await;
    assert!(html.contains("A token is needed"));
}

async fn the_submit_form_offers_the_projects_the_token_may_submit_to(db: TestDb) {
    let server = TestServer::start(db).await;
    let f = fixture(&server).await;
    let own_submit = token(&server, "acme/secret", "submit").await;
    let options = |html: &str| -> Vec<String> {
        let start = html
            .find("<select name=\"project\">")
            .expect("the project select");
        let select = &html[start..start + html[start..].find("</select>").expect("end")];
        select
            .match_indices("<option value=\"")
            .map(|(at, m)| {
                let rest = &select[at + m.len()..];
                rest[..rest.find('"').expect("quote")].to_owned()
            })
            .collect()
    };
    let html = page_ok(&server, "/submit", Some(&server.admin_token)).await;
    assert_eq!(
        options(&html),
        ["default/default", "acme/open", "acme/secret", "rival/app"]
    );
    assert!(
        html.contains("<summary>Retry</summary>"),
        "the retry fieldset"
    );
    assert!(
        html.contains("name=\"retry_lost_builder\" checked"),
        "lost builder on by default"
    );
    assert_eq!(
        options(&page_ok(&server, "/submit", Some(&own_submit)).await),
        ["acme/secret"]
    );
    // A read token submits nowhere, anonymous neither: the form offers the default project
    // and the API says what is missing.
    assert_eq!(
        options(&page_ok(&server, "/submit", Some(&f.own)).await),
        ["default/default"]
    );
    assert_eq!(
        options(&page_ok(&server, "/submit", None).await),
        ["default/default"]
    );
}

/// Text as maud puts it in a page.
fn escaped(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The element of `html` that starts with `start` (its opening tag's text up to the id),
/// up to the end of `tag`.
fn element<'a>(html: &'a str, start: &str, tag: &str) -> &'a str {
    let at = html
        .find(start)
        .unwrap_or_else(|| panic!("{start:?} is on the page: {html}"));
    let from = html[..at].rfind('<').expect("an opening tag");
    let close = format!("</{tag}>");
    let end = at + html[at..].find(&close).expect("the element ends") + close.len();
    &html[from..end]
}

/// Runs one job of `project` to success on `builder`, with the artifact `out.tar.gz`.
async fn finished_with_artifact(
    server: &TestServer,
    builder: &mut BuilderClient,
    key: &TestKey,
    project: &str,
) -> i64 {
    builder.request_jobs(1);
    let id = submit(server, project, "cargo-build").await;
    let job = builder.next_assignment().await;
    assert_eq!(job.job_id.0, id);
    builder.accept(&job);
    wait_for_state(server, id, "running").await;
    let digest = upload_ok(&job, "out.tar.gz", b"built bytes").await;
    let result = builder
        .complete(key, &job, Outcome::Succeeded, vec![digest])
        .await;
    assert_eq!(result, CompletionResult::Accepted);
    wait_for_state(server, id, "succeeded").await;
    id
}

async fn the_forms_that_act_show_only_to_whoever_may_use_them(db: TestDb) {
    let server = TestServer::start(db).await;
    create_project(&server, "acme/open", true, 1).await;
    create_project(&server, "rival/app", false, 1).await;
    let read = token(&server, "acme/open", "read").await;
    let submitter = token(&server, "acme/open", "submit").await;
    let own_admin = token(&server, "acme/open", "admin").await;
    let rival_admin = token(&server, "rival/app", "admin").await;
    let (status, hook) = server
        .post_admin(
            "/projects/acme/open/webhooks",
            &json!({ "url": "http://127.0.0.1:9/hook", "events": ["finished"] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");
    let hook = hook["id"].as_i64().expect("webhook id");
    let (status, policy) = server
        .call(
            awc::http::Method::PUT,
            "/projects/acme/open/retention",
            Some(&server.admin_token),
            Some(&json!({ "artifacts": { "max_age_days": 30 }, "logs": { "keep_last": 5 } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{policy}");
    let key = TestKey::generate("open-builder");
    server.admit(&key).await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    let done = finished_with_artifact(&server, &mut builder, &key, "acme/open").await;
    let queued = submit(&server, "acme/open", "nobody-offers-this").await;

    let remove = format!("data-action=\"/api/v1/projects/acme/open/webhooks/{hook}\"");
    for (who, cookie, project_admin, admin) in [
        ("anonymous", None, false, false),
        (
            "the project's read token",
            Some(read.as_str()),
            false,
            false,
        ),
        (
            "the project's submit token",
            Some(submitter.as_str()),
            false,
            false,
        ),
        (
            "another project's admin token",
            Some(rival_admin.as_str()),
            false,
            false,
        ),
        (
            "the project's admin token",
            Some(own_admin.as_str()),
            true,
            false,
        ),
        (
            "the admin token",
            Some(server.admin_token.as_str()),
            true,
            true,
        ),
    ] {
        let html = page_ok(&server, "/projects/acme/open/webhooks", cookie).await;
        assert!(
            html.contains("kept: 30 days") && html.contains("kept: the last 5 jobs"),
            "{who}: the policy is shown to whoever sees the project: {html}"
        );
        for (what, needle) in [
            ("the add-webhook form", "id=\"webhook-form\""),
            ("the retention form", "id=\"retention-form\""),
            ("the webhook", "http://127.0.0.1:9/hook"),
            ("the webhook's remove button", remove.as_str()),
            ("the box for a new secret", "id=\"created-webhook\""),
        ] {
            assert_eq!(html.contains(needle), project_admin, "{who}: {what}");
        }
        let finished = page_ok(&server, &format!("/jobs/{done}"), cookie).await;
        assert!(finished.contains("out.tar.gz"), "{who}: the artifact");
        assert_eq!(
            finished.contains("id=\"delete-artifacts\""),
            project_admin,
            "{who}: Delete artifacts"
        );
        assert!(
            !finished.contains("id=\"boost-job\""),
            "{who}: a finished job"
        );
        let waiting = page_ok(&server, &format!("/jobs/{queued}"), cookie).await;
        assert_eq!(waiting.contains("id=\"boost-job\""), admin, "{who}: Boost");
        assert!(
            !waiting.contains("id=\"delete-artifacts\""),
            "{who}: a queued job has nothing to delete"
        );
    }

    // The retention form holds the policy, "none" where there is no limit; the delete button
    // names what it deletes on its confirming press.
    let html = page_ok(&server, "/projects/acme/open/webhooks", Some(&own_admin)).await;
    for (field, value) in [
        ("artifacts_max_age_days", "30"),
        ("artifacts_keep_last", "none"),
        ("logs_max_age_days", "none"),
        ("logs_keep_last", "5"),
    ] {
        assert!(
            html.contains(&format!("name=\"{field}\" value=\"{value}\"")),
            "{field} = {value}: {html}"
        );
    }
    assert!(html.contains("data-project=\"acme/open\""), "{html}");
    let finished = page_ok(&server, &format!("/jobs/{done}"), Some(&own_admin)).await;
    let button = element(&finished, "id=\"delete-artifacts\"", "button");
    assert!(
        button.contains(&format!("data-action=\"/api/v1/jobs/{done}/artifacts\""))
            && button.contains("data-method=\"DELETE\"")
            && button.contains("data-confirm=\"Delete 1 artifact for good?"),
        "{button}"
    );

    // Boosted, the job says so and offers no second boost.
    let (status, answer) = server
        .post_admin(&format!("/jobs/{queued}/boost"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let boosted = page_ok(
        &server,
        &format!("/jobs/{queued}"),
        Some(&server.admin_token),
    )
    .await;
    assert!(!boosted.contains("id=\"boost-job\""), "{boosted}");
    assert!(
        boosted.contains("boosted (ahead of every project"),
        "{boosted}"
    );
    // Deleted, the artifacts say when, and there is nothing left to delete.
    let (status, answer) = server
        .call(
            awc::http::Method::DELETE,
            &format!("/jobs/{done}/artifacts"),
            Some(&own_admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let deleted = page_ok(&server, &format!("/jobs/{done}"), Some(&own_admin)).await;
    assert!(!deleted.contains("id=\"delete-artifacts\""), "{deleted}");
    assert!(
        element(&deleted, "id=\"artifacts-deleted\"", "p")
            .contains("by the project's retention or an admin"),
        "{deleted}"
    );
    builder.close().await;
    server.shutdown().await;
}

async fn a_queued_jobs_page_says_why_it_waits_as_the_api_does(db: TestDb) {
    let server = TestServer::start(db).await;
    let key = TestKey::generate("one-slot");
    server.admit(&key).await;
    let mut builder = BuilderClient::connect(&server.ws_url()).await;
    builder
        .handshake_with(&key, default_capabilities(1), Vec::new())
        .await;
    // One run of the recipe, made to have taken five minutes: the typical duration.
    let first = finished_with_artifact(&server, &mut builder, &key, "default/default").await;
    server.execute_sql(&format!(
        "UPDATE jobs SET started_at = finished_at - 300000 WHERE id = {first}"
    ));
    // The builder's one slot is taken; two jobs wait behind it.
    builder.request_jobs(1);
    let busy = submit(&server, "default/default", "cargo-build").await;
    let held = builder.next_assignment().await;
    assert_eq!(held.job_id.0, busy);
    builder.accept(&held);
    wait_for_state(&server, busy, "running").await;
    submit(&server, "default/default", "cargo-build").await;
    let second = submit(&server, "default/default", "cargo-build").await;

    let standing = server.get_ok(&format!("/jobs/{second}")).await["queue"].clone();
    assert_eq!(standing["position"], 2, "{standing}");
    assert_eq!(standing["matching_builders_online"], 1, "{standing}");
    assert_eq!(standing["free_slots"], 0, "{standing}");
    assert_eq!(standing["typical_duration_secs"], 300, "{standing}");
    // Two rounds of five minutes, the running one taken as half done.
    assert_eq!(standing["estimated_start_secs"], 450, "{standing}");
    let html = page_ok(&server, &format!("/jobs/{second}"), None).await;
    let section = element(&html, "id=\"queue-standing\"", "section");
    for expected in [
        "Position <strong>2</strong>".to_owned(),
        "1 matching builder online, 0 free slots".to_owned(),
        format!(
            "about <time datetime=\"PT{}S\">8 min</time>",
            standing["estimated_start_secs"]
        ),
        format!(
            "took <time datetime=\"PT{}S\">5 min</time>",
            standing["typical_duration_secs"]
        ),
    ] {
        assert!(section.contains(&expected), "{expected:?} in {section}");
    }
    assert!(!section.contains("class=\"blocked\""), "{section}");

    // A job no builder can run says why, in the API's words.
    let nobody = submit(&server, "default/default", "nobody-offers-this").await;
    let blocked = server.get_ok(&format!("/jobs/{nobody}")).await["queue"]["blocked"]
        .as_str()
        .expect("a blocked job says why")
        .to_owned();
    assert_eq!(
        blocked,
        "no builder matches: no connected builder offers recipe \"nobody-offers-this\" (they offer: cargo-build)"
    );
    let html = page_ok(&server, &format!("/jobs/{nobody}"), None).await;
    let section = element(&html, "id=\"queue-standing\"", "section");
    assert!(
        section.contains(&format!(
            "<p class=\"blocked\" role=\"status\">{}</p>",
            escaped(&blocked)
        )),
        "{section}"
    );
    assert!(!section.contains("Position"), "{section}");
    assert!(!section.contains("<time"), "no estimate: {section}");
    // Only a queued job has the box.
    let html = page_ok(&server, &format!("/jobs/{busy}"), None).await;
    assert!(!html.contains("id=\"queue-standing\""), "{html}");
    builder.close().await;
    server.shutdown().await;
}
