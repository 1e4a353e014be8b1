//! Server-sent event streams over real HTTP: the live log (ids, `Last-Event-ID`, `end`, no
//! subscriber left behind), a job's pushed state and every job's state, the CLI reading them
//! (`submit --wait`, `logs --follow` across a cut connection), and a SIGTERM with streams open.

use std::pin::Pin;
use std::process::Stdio;
use std::time::{Duration, Instant};

use awc::http::StatusCode;
use buildfleet_protocol::{CompletionResult, JobAssignment, JobRef, Outcome};
use buildfleet_testkit::builder_client::{job_ref, BuilderClient};
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::e2e::{
    start_server, wait_connected, E2eBuilder, TcpProxy, LINES_RECIPE, LINE_COUNT, QUICK_RECIPE,
};
use buildfleet_testkit::keys::TestKey;
use buildfleet_testkit::server::{error_code, wait_until, TestServer};
use buildfleet_testkit::server_tests;
use eventsource_stream::{Event, EventStreamError, Eventsource as _};
use futures_util::{Stream, StreamExt as _};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

server_tests! {
    a_viewer_that_reconnects_with_last_event_id_gets_every_line_once,
    views_of_finished_jobs_and_viewers_that_leave_keep_no_subscriber,
    streams_of_a_running_job_end_with_its_outcome,
    a_job_state_stream_goes_from_queued_to_end,
    the_all_jobs_stream_filters_and_resumes,
    bad_last_event_ids_and_filters_get_a_clear_400,
    submit_wait_returns_as_the_job_ends,
    follow_resumes_across_a_cut_connection,
    sigterm_with_streams_open_exits_at_once,
}

/// How long one expected event may take.
const EVENT_LIMIT: Duration = Duration::from_secs(10);

type Events =
    Pin<Box<dyn Stream<Item = Result<Event, EventStreamError<awc::error::PayloadError>>>>>;

/// One open SSE response.
struct Sse {
    events: Events,
}

fn stream_client() -> awc::Client {
    awc::Client::builder().disable_timeout().finish()
}

/// Opens `url` as an event stream, with `Last-Event-ID` when given; answers the status and
/// either the stream or the error body.
async fn open(url: &str, last_id: Option<&str>) -> Result<Sse, (StatusCode, Value)> {
    let mut request = stream_client().get(url);
    if let Some(id) = last_id {
        request = request.insert_header(("Last-Event-ID", id));
    }
    let mut response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    if !response.status().is_success() {
        let body = response.body().await.unwrap_or_default();
        return Err((
            response.status(),
            serde_json::from_slice(&body).unwrap_or(Value::Null),
        ));
    }
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    Ok(Sse {
        events: Box::pin(response.eventsource()),
    })
}

async fn open_ok(url: &str, last_id: Option<&str>) -> Sse {
    match open(url, last_id).await {
        Ok(sse) => sse,
        Err((status, body)) => panic!("GET {url}: {status} {body}"),
    }
}

impl Sse {
    /// The next event, or `None` once the server ended the stream.
    async fn next(&mut self) -> Option<Event> {
        match tokio::time::timeout(EVENT_LIMIT, self.events.next()).await {
            Ok(Some(Ok(event))) => Some(event),
            Ok(Some(Err(e))) => panic!("the event stream broke: {e}"),
            Ok(None) => None,
            Err(_) => panic!("no event within {EVENT_LIMIT:?}"),
        }
    }

    async fn expect(&mut self) -> Event {
        self.next().await.expect("the stream ended early")
    }

    /// Asserts the server closes the stream (no further event).
    async fn expect_closed(&mut self) {
        if let Some(event) = self.next().await {
            panic!("expected the stream to end, got {event:?}");
        }
    }
}

fn data(event: &Event) -> Value {
    serde_json::from_str(&event.data).unwrap_or_else(|e| panic!("{e}: {event:?}"))
}

fn line(seq: u64) -> String {
    format!("line {seq}")
}

/// A connected scripted builder running one fresh job (accepted and stored as running).
async fn running_job(
    server: &TestServer,
    name: &str,
) -> (BuilderClient, TestKey, JobAssignment, i64) {
    let key = TestKey::generate(name);
    server.admit(&key).await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    builder.request_jobs(1);
    let id = server.submit(json!({})).await;
    let job = builder.next_assignment().await;
    builder.accept(&job);
    server.wait_for_state(id, "running").await;
    (builder, key, job, id)
}

/// Logs `seqs` and waits until they are all stored.
async fn log_lines(builder: &mut BuilderClient, job: JobRef, seqs: std::ops::RangeInclusive<u64>) {
    let last = *seqs.end();
    for seq in seqs {
        builder.log(job, seq, &line(seq));
    }
    builder.expect_event_ack(job, last).await;
}

async fn gauge(server: &TestServer, name: &str) -> i64 {
    let metrics = server.metrics().await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{metrics}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

async fn wait_gauge(server: &TestServer, name: &str, value: i64) {
    wait_until(&format!("{name} = {value}"), || async {
        (gauge(server, name).await == value).then_some(())
    })
    .await;
}

/// Reads log records until `last` (by seq); answers the seqs, checking each id.
async fn read_records(sse: &mut Sse, attempt: i32, count: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    while seqs.len() < count {
        let event = sse.expect().await;
        assert_eq!(event.event, "message", "{event:?}");
        let seq = data(&event)["seq"].as_u64().expect("seq");
        assert_eq!(
            event.id,
            format!("{attempt}:{seq}"),
            "the id names the record"
        );
        assert_eq!(data(&event)["line"], line(seq));
        seqs.push(seq);
    }
    seqs
}

async fn a_viewer_that_reconnects_with_last_event_id_gets_every_line_once(db: TestDb) {
    let server = TestServer::start(db).await;
    let (mut builder, key, job, id) = running_job(&server, "resumed").await;
    let r = job_ref(&job);
    let url = server.api(&format!("/jobs/{id}/log/stream"));
    log_lines(&mut builder, r, 1..=40).await;

    // The first viewer leaves in the middle of the stored log.
    let mut first = open_ok(&url, None).await;
    let mut seen = read_records(&mut first, 1, 25).await;
    drop(first);

    // More lines while nobody watches, then a reconnect from the last id it saw.
    log_lines(&mut builder, r, 41..=80).await;
    let mut second = open_ok(&url, Some("1:25")).await;
    seen.extend(read_records(&mut second, 1, 55).await);
    // And live lines to the reconnected viewer.
    log_lines(&mut builder, r, 81..=120).await;
    seen.extend(read_records(&mut second, 1, 40).await);
    assert_eq!(
        builder
            .complete(&key, &job, Outcome::Succeeded, vec![])
            .await,
        CompletionResult::Accepted
    );
    let end = second.expect().await;
    assert_eq!(end.event, "end", "{end:?}");
    assert_eq!(data(&end)["outcome"], "succeeded");
    second.expect_closed().await;

    assert_eq!(
        seen,
        (1..=120).collect::<Vec<_>>(),
        "every line exactly once, in order"
    );
    server.shutdown().await;
}

async fn views_of_finished_jobs_and_viewers_that_leave_keep_no_subscriber(db: TestDb) {
    let server = TestServer::start(db).await;
    let (mut builder, key, job, id) = running_job(&server, "viewed").await;
    log_lines(&mut builder, job_ref(&job), 1..=5).await;

    // A viewer of the running job is a subscriber until it goes away (a browser closing its
    // tab closes the socket, as here).
    let url = server.api(&format!("/jobs/{id}/log/stream"));
    let mut viewer = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request = format!("GET /api/v1/jobs/{id}/log/stream HTTP/1.1\r\nHost: test\r\n\r\n");
    viewer.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    while !String::from_utf8_lossy(&received).contains("\"line 5\"") {
        let mut buffer = [0u8; 4096];
        let n = tokio::time::timeout(EVENT_LIMIT, viewer.read(&mut buffer))
            .await
            .expect("the stored lines")
            .unwrap();
        assert!(n > 0, "the stream closed early");
        received.extend_from_slice(&buffer[..n]);
    }
    wait_gauge(&server, "buildfleet_log_subscribers", 1).await;
    drop(viewer);
    // Noticed at the second keep-alive written to the closed socket (5 s apart).
    let deadline = Instant::now() + Duration::from_secs(20);
    while gauge(&server, "buildfleet_log_subscribers").await != 0 {
        assert!(
            Instant::now() < deadline,
            "the viewer that left is still a subscriber"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    builder
        .complete(&key, &job, Outcome::Succeeded, vec![])
        .await;
    server.wait_for_state(id, "succeeded").await;
    let views = futures_util::stream::iter(0..1000)
        .map(|_| {
            let url = url.clone();
            async move {
                let mut sse = open_ok(&url, None).await;
                assert_eq!(read_records(&mut sse, 1, 5).await, [1, 2, 3, 4, 5]);
                assert_eq!(sse.expect().await.event, "end");
                sse.expect_closed().await;
            }
        })
        .buffer_unordered(16);
    views.collect::<Vec<()>>().await;
    assert_eq!(gauge(&server, "buildfleet_log_subscribers").await, 0);
    wait_gauge(&server, "buildfleet_event_streams", 0).await;
    server.shutdown().await;
}

async fn streams_of_a_running_job_end_with_its_outcome(db: TestDb) {
    let server = TestServer::start(db).await;
    let (mut builder, key, job, id) = running_job(&server, "ending").await;
    let mut log = open_ok(&server.api(&format!("/jobs/{id}/log/stream")), None).await;
    let mut states = open_ok(&server.api(&format!("/jobs/{id}/events")), None).await;
    let running = states.expect().await;
    assert_eq!(
        (running.event.as_str(), running.id.as_str()),
        ("state", "1:running")
    );

    log_lines(&mut builder, job_ref(&job), 1..=3).await;
    assert_eq!(read_records(&mut log, 1, 3).await, [1, 2, 3]);
    builder.complete(&key, &job, Outcome::Failed, vec![]).await;

    for sse in [&mut log, &mut states] {
        let end = sse.expect().await;
        assert_eq!(end.event, "end", "{end:?}");
        let end = data(&end);
        assert_eq!(end["outcome"], "failed");
        assert_eq!(end["state"], "failed");
        assert_eq!(end["job"], id);
        assert_eq!(end["attempt"], 1);
        sse.expect_closed().await;
    }
    server.shutdown().await;
}

async fn a_job_state_stream_goes_from_queued_to_end(db: TestDb) {
    let server = TestServer::start(db).await;
    let id = server.submit(json!({})).await;
    let url = server.api(&format!("/jobs/{id}/events"));
    let mut states = open_ok(&url, None).await;
    let queued = states.expect().await;
    assert_eq!(
        (queued.event.as_str(), queued.id.as_str()),
        ("state", "1:queued")
    );
    assert_eq!(data(&queued)["recipe"], "cargo-build");

    let key = TestKey::generate("pushed");
    server.admit(&key).await;
    let mut builder = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    builder.request_jobs(1);
    let job = builder.next_assignment().await;
    let assigned = states.expect().await;
    assert_eq!(assigned.id, "1:assigned");
    assert!(data(&assigned)["builder"].is_i64(), "{assigned:?}");
    builder.accept(&job);
    assert_eq!(states.expect().await.id, "1:running");

    // A reconnect from the current state gets nothing until the next change.
    let mut resumed = open_ok(&url, Some("1:running")).await;
    builder
        .complete(&key, &job, Outcome::Succeeded, vec![])
        .await;
    for sse in [&mut states, &mut resumed] {
        let end = sse.expect().await;
        assert_eq!(
            (end.event.as_str(), end.id.as_str()),
            ("end", "1:succeeded")
        );
        assert_eq!(data(&end)["outcome"], "succeeded");
        sse.expect_closed().await;
    }
    // A finished job's stream is its end, whatever the client saw before.
    let mut late = open_ok(&url, Some("1:succeeded")).await;
    assert_eq!(late.expect().await.event, "end");
    late.expect_closed().await;
    server.shutdown().await;
}

async fn the_all_jobs_stream_filters_and_resumes(db: TestDb) {
    let server = TestServer::start(db).await;
    let url = server.api("/job-events?state=running,succeeded&recipe=cargo-build");
    let mut feed = open_ok(&url, None).await;
    let mut everything = open_ok(&server.api("/job-events"), None).await;

    let other = server.submit(json!({ "recipe": "other-recipe" })).await;
    let (mut builder, key, job, id) = running_job(&server, "fed").await;
    let running = feed.expect().await;
    assert_eq!(running.event, "state");
    assert_eq!(
        (
            data(&running)["job"].as_i64(),
            data(&running)["state"].as_str()
        ),
        (Some(id), Some("running"))
    );
    builder
        .complete(&key, &job, Outcome::Succeeded, vec![])
        .await;
    let succeeded = feed.expect().await;
    assert_eq!(
        (
            data(&succeeded)["job"].as_i64(),
            data(&succeeded)["state"].as_str()
        ),
        (Some(id), Some("succeeded"))
    );

    // Unfiltered: every change, until ours succeeded. A state already overtaken when it is
    // published (a sweep's claim can publish `assigned` before the submission's `queued`) is
    // not sent, so ours is a subsequence of the lifecycle that ends running, succeeded.
    let mut seen: Vec<(i64, String)> = Vec::new();
    while !seen.contains(&(id, "succeeded".to_owned())) {
        let event = everything.expect().await;
        let change = data(&event);
        seen.push((
            change["job"].as_i64().unwrap(),
            change["state"].as_str().unwrap().to_owned(),
        ));
    }
    assert_eq!(
        seen.first(),
        Some(&(other, "queued".to_owned())),
        "{seen:?}"
    );
    let ours: Vec<&str> = seen
        .iter()
        .filter(|(job, _)| *job == id)
        .map(|(_, state)| state.as_str())
        .collect();
    let lifecycle = ["queued", "assigned", "running", "succeeded"];
    let mut rest = lifecycle.iter();
    assert!(
        ours.iter().all(|state| rest.any(|l| l == state)),
        "states out of lifecycle order: {ours:?}"
    );
    assert!(ours.ends_with(&["running", "succeeded"]), "{ours:?}");

    // Resuming after the `running` event replays only what came after it, filtered.
    let mut resumed = open_ok(&url, Some(&running.id)).await;
    let replayed = resumed.expect().await;
    assert_eq!(replayed.id, succeeded.id);
    assert_eq!(data(&replayed), data(&succeeded));

    // An id of another server run: told to re-read, then live changes.
    let epoch = running.id.split_once(':').unwrap().0;
    let foreign = if epoch == "00000000" {
        "00000001:3"
    } else {
        "00000000:3"
    };
    let mut reset = open_ok(&url, Some(foreign)).await;
    let event = reset.expect().await;
    assert_eq!(event.event, "reset", "{event:?}");
    assert!(data(&event)["reason"]
        .as_str()
        .unwrap()
        .contains("GET /api/v1/jobs"));
    server.shutdown().await;
}

async fn bad_last_event_ids_and_filters_get_a_clear_400(db: TestDb) {
    let server = TestServer::start(db).await;
    let (_builder, _key, _job, id) = running_job(&server, "refused").await;
    let cases = [
        (format!("/jobs/{id}/log/stream"), Some("garbage")),
        (format!("/jobs/{id}/log/stream"), Some("0:3")),
        (format!("/jobs/{id}/log/stream"), Some("2:1")), // an attempt the job never had
        (format!("/jobs/{id}/events"), Some("1:sleeping")),
        (format!("/jobs/{id}/events"), Some("3:queued")), // ahead of the job
        ("/job-events".to_owned(), Some("not-an-id")),
        ("/job-events?state=sleeping".to_owned(), None),
        (format!("/jobs/{id}/log/stream?format=text"), None),
    ];
    for (path, last_id) in cases {
        match open(&server.api(&path), last_id).await {
            Ok(_) => panic!("{path} with Last-Event-ID {last_id:?} was accepted"),
            Err((status, body)) => {
                assert_eq!(
                    status,
                    StatusCode::BAD_REQUEST,
                    "{path} {last_id:?}: {body}"
                );
                assert_eq!(error_code(&body), "bad_request");
                let message = body["error"]["message"].as_str().unwrap();
                if let Some(id) = last_id {
                    assert!(
                        message.contains(id) || message.contains("attempt"),
                        "{message}"
                    );
                }
            }
        }
    }
    let (status, _) = server.get("/jobs/999999/events").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.shutdown().await;
}

fn source_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("source dir");
    std::fs::write(dir.path().join("README"), "a source\n").expect("writing the source");
    dir
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

async fn submit_wait_returns_as_the_job_ends(db: TestDb) {
    let server = start_server(db).await;
    let builder = E2eBuilder::start(&server, "waited-for", |_| {}).await;
    wait_connected(&server, &["waited-for"]).await;
    let source = source_dir();
    let source = source.path().to_str().unwrap();
    for _ in 0..3 {
        let waited = server
            .cli(&[
                "job",
                "submit",
                source,
                "--recipe",
                QUICK_RECIPE,
                "--wait",
                "--json",
            ])
            .await;
        let returned_at = now_ms();
        let waited = waited.ok().json();
        assert_eq!(waited["state"], "succeeded", "{waited}");
        assert_eq!(waited["artifacts"][0]["name"], "result.txt");
        // Polling once a second returned about a second after the end; pushed, it is the
        // time to read the finished job and exit.
        let lag = returned_at - waited["finished_at"].as_i64().expect("finished_at");
        assert!(lag < 400, "--wait returned {lag} ms after the job ended");
    }
    builder.stop().await;
    server.shutdown().await;
}

async fn follow_resumes_across_a_cut_connection(db: TestDb) {
    let server = start_server(db).await;
    let builder = E2eBuilder::start(&server, "followed", |_| {}).await;
    wait_connected(&server, &["followed"]).await;
    let proxy = TcpProxy::start(server.addr).await;
    let source = source_dir();
    let submitted = server
        .cli(&[
            "job",
            "submit",
            source.path().to_str().unwrap(),
            "--recipe",
            LINES_RECIPE,
            "--json",
        ])
        .await
        .ok()
        .json();
    let id = submitted["id"].as_i64().unwrap().to_string();
    let proxy_url = format!("http://{}", proxy.addr);
    let args = ["job", "logs", &id, "--follow"];
    let env = [("BUILDFLEET_URL", proxy_url.as_str())];
    let follow = server.cli_env(&args, &env);
    let cutter = async {
        // Cut the stream while lines are still coming.
        wait_until("the log to be half written", || async {
            let lines = server.log_lines(id.parse().unwrap()).await.len();
            (lines >= LINE_COUNT / 3).then_some(())
        })
        .await;
        proxy.cut();
    };
    let (followed, ()) = futures_util::join!(follow, cutter);
    let followed = followed.ok();
    let expected: Vec<String> = (1..=LINE_COUNT).map(|i| format!("line {i}")).collect();
    assert_eq!(
        followed.stdout.lines().collect::<Vec<_>>(),
        expected,
        "stderr:\n{}",
        followed.stderr
    );
    assert!(
        followed.stderr.contains(&format!("job {id} succeeded")),
        "{}",
        followed.stderr
    );
    assert!(
        proxy.accepted() >= 2,
        "the CLI reconnected through the proxy"
    );
    builder.stop().await;
    server.shutdown().await;
}

/// `buildfleet serve` as a subprocess on a free port; answers it and its base URL.
async fn serve(
    db: &TestDb,
    data_dir: &std::path::Path,
    token: &str,
) -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt as _;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_buildfleet"))
        .args(["serve", "--bind", "127.0.0.1:0", "--local-builders", "0"])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--database-url", db.url(), "--admin-token", token])
        .env("BUILDFLEET_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("starting buildfleet serve");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("reading its output") {
            if let Some(url) = line.strip_prefix("Buildfleet backend listening on ") {
                return url.trim().to_owned();
            }
        }
        panic!("buildfleet serve exited before listening");
    })
    .await
    .expect("buildfleet serve did not start");
    // Keep draining stdout so the process never blocks on it.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}

async fn sigterm_with_streams_open_exits_at_once(db: TestDb) {
    let data_dir = tempfile::tempdir().unwrap();
    let token = "streams-test-admin-token-0123456789";
    let (mut child, url) = serve(&db, data_dir.path(), token).await;
    let http = awc::Client::default();
    let api = |path: &str| format!("{url}/api/v1{path}");

    // A builder session and a running job, with each kind of stream open on it.
    let key = TestKey::generate("terminated");
    let mut admitted = http
        .post(api("/builders"))
        .bearer_auth(token)
        .send_json(&json!({ "name": key.name, "public_key": key.public_openssh }))
        .await
        .unwrap();
    assert_eq!(
        admitted.status(),
        StatusCode::CREATED,
        "{:?}",
        admitted.body().await
    );
    let ws_url = format!("{}/api/v1/builders/connect", url.replacen("http", "ws", 1));
    let mut builder = BuilderClient::connect_ready(&ws_url, &key).await;
    builder.request_jobs(1);
    let mut submitted = http
        .post(api("/jobs"))
        .bearer_auth(token)
        .send_json(&json!({
            "source_url": "https://example.invalid/crate-1.0.0.tar.gz",
            "source_sha256": buildfleet_testkit::server::SOURCE_SHA256,
            "recipe": "cargo-build",
        }))
        .await
        .unwrap();
    let job: Value = submitted.json().await.unwrap();
    let id = job["id"].as_i64().unwrap();
    let assignment = builder.next_assignment().await;
    builder.accept(&assignment);
    let mut states = open_ok(&api(&format!("/jobs/{id}/events")), None).await;
    while states.expect().await.id != "1:running" {}
    log_lines(&mut builder, job_ref(&assignment), 1..=2).await;
    let mut log = open_ok(&api(&format!("/jobs/{id}/log/stream")), None).await;
    assert_eq!(read_records(&mut log, 1, 2).await, [1, 2]);
    let mut feed = open_ok(&api("/job-events"), None).await;

    let started = Instant::now();
    let pid = child.id().expect("running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("buildfleet serve did not exit within 15 s of SIGTERM")
        .unwrap();
    let took = started.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(
        took < Duration::from_secs(2),
        "SIGTERM took {took:?} with streams open"
    );
    for sse in [&mut states, &mut log, &mut feed] {
        // Ended by the server: no `end` (the job did not end), the stream just closes.
        while let Some(event) = sse.events.next().await {
            if let Ok(event) = event {
                assert_ne!(event.event, "end", "{event:?}");
            } else {
                break;
            }
        }
    }
}
