//! Project webhooks and the project event stream over real HTTP: a receiver on loopback (an
//! actix-web server inside the test) gets signed queued/started/finished deliveries of a job
//! run by a scripted builder; a failing receiver gets a retry after the back-off and the
//! delivery log shows both tries; a receiver down at first gets the delivery after a
//! backend restart; bad inputs are refused; the SSE stream yields the same events.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use awc::http::StatusCode;
use buildfleet_protocol::Outcome;
use buildfleet_testkit::builder_client::BuilderClient;
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::keys::TestKey;
use buildfleet_testkit::server::{error_code, wait_until, TestServer};
use buildfleet_testkit::server_tests;
use eventsource_stream::Eventsource as _;
use futures_util::StreamExt as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

server_tests! {
    a_job_run_sends_signed_queued_started_and_finished_deliveries,
    a_failing_receiver_is_retried_after_a_backoff,
    a_receiver_down_at_first_gets_the_delivery_after_a_restart,
    bad_webhook_inputs_are_refused,
    the_project_stream_yields_the_events,
}

const SECRET: &str = "test-secret-0123456789";
const HOOKS: &str = "/projects/default/default/webhooks";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    event: String,
    signature: String,
    body: Vec<u8>,
}

/// A webhook receiver on loopback answering each request with the next status of `script`
/// (then 200).
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
    handle: actix_web::dev::ServerHandle,
}

impl Receiver {
    async fn start(script: Vec<u16>) -> Receiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        Self::start_on(listener, script).await
    }

    async fn start_on(listener: std::net::TcpListener, script: Vec<u16>) -> Receiver {
        let addr = listener.local_addr().unwrap();
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let script = Arc::new(Mutex::new(script.into_iter()));
        let state = (got.clone(), script);
        let server = HttpServer::new(move || {
            let (got, script) = state.clone();
            App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                let got = got.clone();
                let script = script.clone();
                async move {
                    let header = |name: &str| {
                        req.headers()
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    got.lock().unwrap().push(Received {
                        event: header("X-Buildfleet-Event"),
                        signature: header("X-Buildfleet-Signature"),
                        body: body.to_vec(),
                    });
                    let status = script.lock().unwrap().next().unwrap_or(200);
                    HttpResponse::build(StatusCode::from_u16(status).unwrap()).finish()
                }
            }))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        actix_rt::spawn(server);
        Receiver {
            url: format!("http://{addr}/hook"),
            got,
            handle,
        }
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    async fn wait_for(&self, count: usize) -> Vec<Received> {
        wait_until(&format!("{count} deliveries at the receiver"), || async {
            let got = self.received();
            (got.len() >= count).then_some(got)
        })
        .await
    }
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn call(
    server: &TestServer,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    server
        .call(method.parse().expect("an HTTP method"), path, token, body)
        .await
}

async fn create_hook(server: &TestServer, body: Value) -> Value {
    let (status, created) = call(
        server,
        "POST",
        HOOKS,
        Some(&server.admin_token),
        Some(&body),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created
}

async fn deliveries(server: &TestServer, hook: i64) -> Vec<Value> {
    let (status, body) = call(
        server,
        "GET",
        &format!("{HOOKS}/{hook}/deliveries"),
        Some(&server.admin_token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["deliveries"].as_array().unwrap().clone()
}

/// Runs one job to success with a scripted builder; answers its id.
async fn run_job(server: &TestServer, name: &str) -> i64 {
    let key = TestKey::generate(name);
    server.admit(&key).await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    builder.request_jobs(1);
    let id = server.submit(json!({})).await;
    let job = builder.next_assignment().await;
    builder.accept(&job);
    server.wait_for_state(id, "running").await;
    builder
        .complete(&key, &job, Outcome::Succeeded, vec![])
        .await;
    server.wait_for_state(id, "succeeded").await;
    builder.close().await;
    id
}

async fn a_job_run_sends_signed_queued_started_and_finished_deliveries(db: TestDb) {
    let server = TestServer::start(db).await;
    let receiver = Receiver::start(vec![]).await;
    let created = create_hook(&server, json!({ "url": receiver.url, "secret": SECRET })).await;
    assert_eq!(created["secret"], SECRET);
    assert_eq!(created["events"], json!(["queued", "started", "finished"]));
    assert_eq!(created["project"], "default/default");

    let id = run_job(&server, "hooked").await;
    let got = receiver.wait_for(3).await;
    let events: Vec<&str> = got.iter().map(|r| r.event.as_str()).collect();
    assert_eq!(events, ["queued", "started", "finished"]);
    for received in &got {
        assert_eq!(
            received.signature,
            sign(SECRET, &received.body),
            "the signature verifies with the secret"
        );
        assert_ne!(received.signature, sign("another secret!!", &received.body));
        let body: Value = serde_json::from_slice(&received.body).unwrap();
        assert_eq!(body["job"], id);
        assert_eq!(body["project"], "default/default");
        assert_eq!(body["event"], received.event);
        assert_eq!(body["url"], server.api(&format!("/jobs/{id}")));
    }
    let finished: Value = serde_json::from_slice(&got[2].body).unwrap();
    assert_eq!(finished["state"], "succeeded");
    assert_eq!(finished["outcome"], "succeeded");
    assert!(finished["finished_at"].is_i64(), "{finished}");
    assert!(finished["started_at"].is_i64(), "{finished}");
    let started: Value = serde_json::from_slice(&got[1].body).unwrap();
    assert_eq!(started["state"], "running");
    assert_eq!(started["outcome"], Value::Null);

    let hook = created["id"].as_i64().unwrap();
    let log = wait_until("three delivered deliveries in the log", || async {
        let log = deliveries(&server, hook).await;
        (log.len() == 3 && log.iter().all(|d| d["status"] == "delivered")).then_some(log)
    })
    .await;
    assert!(log
        .iter()
        .all(|d| d["tries"].as_array().unwrap().len() == 1));

    // The dashboard shows the hook and its deliveries to the admin's session only.
    let page = |cookie: Option<String>| {
        let mut request = server
            .http
            .get(format!("{}/projects/default/default/webhooks", server.url));
        if let Some(cookie) = cookie {
            request = request.insert_header(("Cookie", cookie));
        }
        async move {
            let mut response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            String::from_utf8(response.body().await.unwrap().to_vec()).unwrap()
        }
    };
    let cookie = format!(
        "{}={}",
        buildfleet_backend::http::auth::SESSION_COOKIE,
        server.admin_token
    );
    let shown = page(Some(cookie)).await;
    assert!(shown.contains(&receiver.url), "{shown}");
    assert!(shown.contains("delivered"), "{shown}");
    let anonymous = page(None).await;
    assert!(!anonymous.contains(&receiver.url));
    assert!(anonymous.contains("shown to the project"), "{anonymous}");
    let mut overview = server
        .http
        .get(format!("{}/webhooks", server.url))
        .send()
        .await
        .unwrap();
    let overview = String::from_utf8(overview.body().await.unwrap().to_vec()).unwrap();
    assert!(
        overview.contains("/projects/default/default/webhooks"),
        "{overview}"
    );

    // Listed without the secret; deleted, it is gone and sends nothing more.
    let (status, list) = call(&server, "GET", HOOKS, Some(&server.admin_token), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["webhooks"][0]["url"], receiver.url.as_str());
    assert!(list["webhooks"][0].get("secret").is_none(), "{list}");
    let (status, _) = call(
        &server,
        "DELETE",
        &format!("{HOOKS}/{hook}"),
        Some(&server.admin_token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    server.submit(json!({})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.received().len(),
        3,
        "a deleted webhook gets nothing"
    );
    receiver.handle.stop(false).await;
    server.shutdown().await;
}

async fn a_failing_receiver_is_retried_after_a_backoff(db: TestDb) {
    let server = TestServer::start(db).await;
    let receiver = Receiver::start(vec![500]).await;
    let created = create_hook(
        &server,
        json!({ "url": receiver.url, "secret": SECRET, "events": ["queued"] }),
    )
    .await;
    let hook = created["id"].as_i64().unwrap();
    let id = server.submit(json!({})).await;
    let got = receiver.wait_for(2).await;
    assert_eq!(got[0].body, got[1].body, "a retry sends the same body");
    let log = wait_until("the delivery delivered on its second try", || async {
        let log = deliveries(&server, hook).await;
        (log.len() == 1 && log[0]["status"] == "delivered").then_some(log)
    })
    .await;
    let delivery = &log[0];
    assert_eq!(delivery["job"], id);
    assert_eq!(delivery["attempts"], 2);
    let tries = delivery["tries"].as_array().unwrap();
    assert_eq!(tries.len(), 2, "{delivery}");
    assert_eq!(tries[0]["status"], 500);
    assert!(
        tries[0]["error"].as_str().unwrap().contains("500"),
        "{delivery}"
    );
    assert_eq!(tries[1]["status"], 200);
    assert_eq!(tries[1]["error"], Value::Null);
    let pause = tries[1]["at"].as_i64().unwrap() - tries[0]["at"].as_i64().unwrap();
    // The test timings' back-off base is 300 ms.
    assert!(
        pause >= 300,
        "retried after {pause} ms, before the back-off"
    );
    receiver.handle.stop(false).await;
    server.shutdown().await;
}

async fn a_receiver_down_at_first_gets_the_delivery_after_a_restart(db: TestDb) {
    let mut server = TestServer::start(db).await;
    // A port nobody listens on: connections are refused until the receiver starts.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let created = create_hook(
        &server,
        json!({ "url": url, "secret": SECRET, "events": ["queued"] }),
    )
    .await;
    let hook = created["id"].as_i64().unwrap();
    server.submit(json!({})).await;
    let log = wait_until("a failed try", || async {
        let log = deliveries(&server, hook).await;
        (log.len() == 1 && log[0]["attempts"].as_i64() >= Some(1)).then_some(log)
    })
    .await;
    assert_eq!(log[0]["status"], "pending", "{:?}", log[0]);
    assert_eq!(log[0]["last_status"], Value::Null);
    assert!(log[0]["last_error"]
        .as_str()
        .unwrap()
        .contains("sending failed"));

    server.restart().await;
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let receiver = Receiver::start_on(listener, vec![]).await;
    let started = Instant::now();
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].event, "queued");
    assert_eq!(got[0].signature, sign(SECRET, &got[0].body));
    let log = wait_until("the delivery delivered after the restart", || async {
        let log = deliveries(&server, hook).await;
        (log[0]["status"] == "delivered").then_some(log)
    })
    .await;
    assert!(log[0]["attempts"].as_i64().unwrap() >= 2);
    assert!(started.elapsed() < Duration::from_secs(10));
    receiver.handle.stop(false).await;
    server.shutdown().await;
}

async fn bad_webhook_inputs_are_refused(db: TestDb) {
    let server = TestServer::start(db).await;
    let admin = Some(server.admin_token.as_str());
    for (body, needle) in [
        (
            json!({ "url": "ftp://example.com/x" }),
            "http:// or https://",
        ),
        (json!({ "url": "example.com/hook" }), "webhook url"),
        (json!({ "url": "http:///nohost" }), "webhook url"),
        (json!({ "url": "http://exa mple.com/" }), "whitespace"),
        (
            json!({ "url": "http://x.test/", "events": [] }),
            "events is empty",
        ),
        (
            json!({ "url": "http://x.test/", "events": ["assigned"] }),
            "event \"assigned\"",
        ),
        (
            json!({ "url": "http://x.test/", "secret": "short" }),
            "secret must be",
        ),
        (
            json!({ "url": "http://x.test/", "colour": "red" }),
            "unknown field",
        ),
    ] {
        let (status, answer) = call(&server, "POST", HOOKS, admin, Some(&body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(error_code(&answer), "bad_request");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body}: {message}");
    }
    let good = json!({ "url": "http://x.test/" });
    let (status, _) = call(&server, "POST", HOOKS, None, Some(&good)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "no token");
    let (status, _) = call(&server, "GET", HOOKS, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "listing needs the admin");
    let (status, answer) = call(
        &server,
        "POST",
        "/projects/nobody/nothing/webhooks",
        admin,
        Some(&good),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    let (status, _) = call(
        &server,
        "POST",
        "/projects/Bad_Name/x/webhooks",
        admin,
        Some(&good),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = call(&server, "DELETE", &format!("{HOOKS}/999"), admin, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(&server, "DELETE", &format!("{HOOKS}/abc"), admin, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = call(
        &server,
        "GET",
        &format!("{HOOKS}/999/deliveries"),
        admin,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let created = create_hook(&server, good).await;
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    server.shutdown().await;
}

async fn the_project_stream_yields_the_events(db: TestDb) {
    let server = TestServer::start(db).await;
    let url = server.api("/projects/default/default/events");
    let client = awc::Client::builder().disable_timeout().finish();
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut events = Box::pin(response.eventsource());
    let id = run_job(&server, "streamed").await;
    let mut seen = Vec::new();
    let mut last_id = String::new();
    while seen.len() < 3 {
        let event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .unwrap_or_else(|_| panic!("no event within 10 s after {seen:?}"))
            .expect("the stream goes on")
            .expect("a well-formed event");
        let data: Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(data["job"], id);
        assert_eq!(data["event"], event.event);
        last_id = event.id.clone();
        seen.push(event.event);
    }
    assert_eq!(seen, ["queued", "started", "finished"]);

    // A reconnect from the last id gets what came after it.
    let second = server.submit(json!({})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let response = client
        .get(&url)
        .insert_header(("Last-Event-ID", last_id.as_str()))
        .send()
        .await
        .unwrap();
    let mut resumed = Box::pin(response.eventsource());
    let event = tokio::time::timeout(Duration::from_secs(10), resumed.next())
        .await
        .expect("the missed event")
        .unwrap()
        .unwrap();
    assert_eq!(event.event, "queued");
    assert_eq!(
        serde_json::from_str::<Value>(&event.data).unwrap()["job"],
        second
    );

    // Bad ids and unknown projects are refused.
    let response = client
        .get(&url)
        .insert_header(("Last-Event-ID", "nonsense"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = client
        .get(server.api("/projects/nobody/nothing/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    server.shutdown().await;
}
