//! Two backend replicas on one PostgreSQL database (and one data directory), woken by each
//! other over `LISTEN`/`NOTIFY`: a job submitted through A reaches an idle builder on B, a
//! cancel and an operator's pause or drain issued on A reach the builder on B, a live log
//! viewer on A sees the lines the builder on B streams, and after the listener's connection
//! is killed it reconnects and wake-ups work again.
//!
//! Both replicas sweep only every 30 s here, so anything that arrives within the limits below
//! came by notification, not by the sweep. PostgreSQL only: SQLite is one process.

use std::pin::Pin;
use std::time::{Duration, Instant};

use buildfleet_backend::actors::replica_bus::APPLICATION_NAME;
use buildfleet_backend::config::ServerConfig;
use buildfleet_backend::server::{self, RunningServer};
use buildfleet_protocol::{
    BuildError, BuildErrorKind, ClientMessage, CompletionResult, ControlCommand, JobAssignment,
    Outcome, ServerMessage,
};
use buildfleet_testkit::builder_client::{job_ref, BuilderClient};
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::keys::TestKey;
use buildfleet_testkit::server::{test_timings, TestServer};
use diesel::prelude::*;
use eventsource_stream::{Event, EventStreamError, Eventsource as _};
use futures_util::{Stream, StreamExt as _};
use serde_json::{json, Value};

/// The sweep is out of the picture: everything below must come sooner.
const SWEEP: Duration = Duration::from_secs(30);
/// A generous bound on a notification's delivery (they take milliseconds), far below
/// [`SWEEP`].
const WAKE_LIMIT: Duration = Duration::from_secs(5);
const ADMIN_TOKEN: &str = "bfa_replicas_test_admin_token_0123456789";

macro_rules! postgres_tests {
    ($($name:ident),+ $(,)?) => {
        $(
            #[actix_rt::test]
            async fn $name() {
                if let Some(db) = buildfleet_testkit::db::TestDb::postgres() {
                    super::$name(db).await;
                }
            }
        )+
    };
}

mod postgres {
    postgres_tests! {
        a_job_submitted_on_one_replica_reaches_a_builder_on_the_other,
        a_cancel_on_one_replica_reaches_the_builder_on_the_other,
        pause_and_drain_on_one_replica_reach_the_builder_on_the_other,
        a_live_log_on_one_replica_shows_lines_streamed_to_the_other,
        wake_ups_work_again_after_the_listener_connection_is_killed,
        an_automatic_retry_on_one_replica_reaches_a_builder_on_the_other,
    }
}

/// Replica A (a `TestServer`) and replica B (a second backend on the same database, data
/// directory and admin token).
struct Replicas {
    a: TestServer,
    b: Option<RunningServer>,
    database_url: String,
}

impl Replicas {
    async fn start(db: TestDb) -> Replicas {
        let database_url = db.url().to_owned();
        let a = TestServer::start_with(db, |config| {
            config.timings.sweep_interval = SWEEP;
            config.admin_token = Some(ADMIN_TOKEN.into());
        })
        .await;
        let mut config = ServerConfig::with_data_dir(a.data_dir());
        config.bind = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        config.database_url = database_url.clone();
        config.limits.db_pool_size = 4;
        config.timings = test_timings();
        config.timings.sweep_interval = SWEEP;
        config.admin_token = Some(ADMIN_TOKEN.into());
        let b = server::start(config).await.expect("starting replica B");
        let replicas = Replicas {
            a,
            b: Some(b),
            database_url,
        };
        replicas.wait_for_listeners(&[]).await;
        replicas
    }

    fn b(&self) -> &RunningServer {
        self.b.as_ref().expect("replica B runs")
    }

    fn b_ws_url(&self) -> String {
        format!("ws://{}/api/v1/builders/connect", self.b().addr)
    }

    /// The pids of the replicas' bus connections.
    fn listener_pids(&self) -> Vec<i32> {
        #[derive(QueryableByName)]
        struct Pid {
            #[diesel(sql_type = diesel::sql_types::Integer)]
            pid: i32,
        }
        let mut conn =
            PgConnection::establish(&self.database_url).expect("connecting to the test database");
        let mut pids: Vec<i32> = diesel::sql_query(
            "SELECT pid FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = $1",
        )
        .bind::<diesel::sql_types::Text, _>(APPLICATION_NAME)
        .load::<Pid>(&mut conn)
        .expect("listing the bus connections")
        .into_iter()
        .map(|p| p.pid)
        .collect();
        pids.sort();
        pids
    }

    /// Waits until both replicas listen, on connections other than `old`.
    async fn wait_for_listeners(&self, old: &[i32]) -> Vec<i32> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let pids = self.listener_pids();
            if pids.len() == 2 && pids.iter().all(|p| !old.contains(p)) {
                // LISTEN runs right after the connection opens; give it its round trip.
                tokio::time::sleep(Duration::from_millis(200)).await;
                return pids;
            }
            assert!(
                Instant::now() < deadline,
                "the replicas' bus connections: {pids:?} (old: {old:?})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn shutdown(mut self) {
        if let Some(b) = self.b.take() {
            b.stop(false).await;
        }
        self.a.shutdown().await;
    }
}

/// A builder admitted through A, connected to B, asking for `credits` jobs.
async fn builder_on_b(replicas: &Replicas, name: &str, credits: u32) -> (BuilderClient, i64) {
    let key = TestKey::generate(name);
    let id = replicas.a.admit(&key).await;
    let mut builder = BuilderClient::connect_ready(&replicas.b_ws_url(), &key).await;
    // Its standing is told once, at the first heartbeat; afterwards the replica is idle.
    assert_eq!(control(&mut builder).await, ControlCommand::Resume);
    builder.request_jobs(credits);
    (builder, id)
}

async fn control(builder: &mut BuilderClient) -> ControlCommand {
    builder
        .expect("a control frame", |m| match m {
            ServerMessage::Control(c) => Some(c.command),
            _ => None,
        })
        .await
}

/// The next assignment, within [`WAKE_LIMIT`].
async fn assignment_within_limit(builder: &mut BuilderClient, what: &str) -> JobAssignment {
    let started = Instant::now();
    let jobs = builder
        .try_expect(WAKE_LIMIT, what, |m| match m {
            ServerMessage::Jobs(jobs) => Some(jobs.jobs.clone()),
            _ => None,
        })
        .await
        .unwrap_or_else(|| panic!("{what}: no assignment within {WAKE_LIMIT:?}"));
    eprintln!("{what}: assigned after {:?}", started.elapsed());
    jobs.into_iter().next().expect("one job")
}

async fn a_job_submitted_on_one_replica_reaches_a_builder_on_the_other(db: TestDb) {
    let replicas = Replicas::start(db).await;
    let (mut builder, _) = builder_on_b(&replicas, "on-b", 1).await;
    // Nothing is queued yet: the builder waits.
    let early = builder
        .try_expect(Duration::from_millis(300), "nothing yet", |m| {
            matches!(m, ServerMessage::Jobs(_)).then_some(())
        })
        .await;
    assert_eq!(early, None);

    let job = replicas.a.submit(json!({})).await;
    let assigned = assignment_within_limit(&mut builder, "a job submitted on A").await;
    assert_eq!(assigned.job_id.0, job);
    replicas.shutdown().await;
}

async fn a_cancel_on_one_replica_reaches_the_builder_on_the_other(db: TestDb) {
    let replicas = Replicas::start(db).await;
    let (mut builder, _) = builder_on_b(&replicas, "cancelled", 1).await;
    let job = replicas.a.submit(json!({})).await;
    let assigned = assignment_within_limit(&mut builder, "the job to cancel").await;
    builder.accept(&assigned);
    replicas.a.wait_for_state(job, "running").await;

    let started = Instant::now();
    let (status, body) = replicas
        .a
        .post_admin(&format!("/jobs/{job}/cancel"), &json!({}))
        .await;
    assert!(status.is_success(), "cancel: {body}");
    let cancel = builder
        .try_expect(WAKE_LIMIT, "the cancel from A", |m| match m {
            ServerMessage::Cancel(c) => Some(c.clone()),
            _ => None,
        })
        .await
        .unwrap_or_else(|| panic!("no cancel within {WAKE_LIMIT:?}"));
    eprintln!("cancel arrived after {:?}", started.elapsed());
    assert_eq!(cancel.job_id.0, job);
    assert_eq!(
        serde_json::to_value(cancel.reason).expect("reason"),
        "requested"
    );
    replicas.shutdown().await;
}

async fn pause_and_drain_on_one_replica_reach_the_builder_on_the_other(db: TestDb) {
    let replicas = Replicas::start(db).await;
    let (mut builder, id) = builder_on_b(&replicas, "steered", 1).await;
    for (action, command) in [
        ("pause", ControlCommand::Pause),
        ("resume", ControlCommand::Resume),
        ("drain", ControlCommand::Drain),
    ] {
        let started = Instant::now();
        let (status, body) = replicas
            .a
            .post_admin(&format!("/builders/{id}/{action}"), &json!({}))
            .await;
        assert!(status.is_success(), "{action} on A: {body}");
        let told = builder
            .try_expect(WAKE_LIMIT, action, |m| match m {
                ServerMessage::Control(c) => Some(c.command),
                _ => None,
            })
            .await
            .unwrap_or_else(|| panic!("{action}: no control frame within {WAKE_LIMIT:?}"));
        eprintln!("{action} arrived after {:?}", started.elapsed());
        assert_eq!(told, command, "{action}");
    }
    // Drained on B: a job submitted on A is not given to it.
    replicas.a.submit(json!({})).await;
    let given = builder
        .try_expect(Duration::from_millis(500), "no job while draining", |m| {
            matches!(m, ServerMessage::Jobs(_)).then_some(())
        })
        .await;
    assert_eq!(given, None, "a draining builder takes no new job");
    replicas.shutdown().await;
}

type Events =
    Pin<Box<dyn Stream<Item = Result<Event, EventStreamError<awc::error::PayloadError>>>>>;

async fn next_event(events: &mut Events) -> Event {
    match tokio::time::timeout(WAKE_LIMIT, events.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(e))) => panic!("the log stream broke: {e}"),
        Ok(None) => panic!("the log stream ended early"),
        Err(_) => panic!("no log event within {WAKE_LIMIT:?}"),
    }
}

async fn a_live_log_on_one_replica_shows_lines_streamed_to_the_other(db: TestDb) {
    let replicas = Replicas::start(db).await;
    let (mut builder, _) = builder_on_b(&replicas, "logging", 1).await;
    let job = replicas.a.submit(json!({})).await;
    let assigned = assignment_within_limit(&mut builder, "the logging job").await;
    builder.accept(&assigned);
    replicas.a.wait_for_state(job, "running").await;
    let r = job_ref(&assigned);

    // The viewer on A opens before any line exists; every line comes live, from B.
    let url = replicas.a.api(&format!("/jobs/{job}/log/stream"));
    let response = awc::Client::builder()
        .disable_timeout()
        .finish()
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert!(response.status().is_success(), "{}", response.status());
    let mut events: Events = Box::pin(response.eventsource());
    // Subscribed on A before the first line is stored on B.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut seen = Vec::new();
    for round in 0..3u64 {
        for seq in round * 10 + 1..=round * 10 + 10 {
            builder.log(r, seq, &format!("line {seq}"));
        }
        let started = Instant::now();
        while seen.len() < usize::try_from(round * 10 + 10).expect("small") {
            let event = next_event(&mut events).await;
            if event.event != "message" && !event.event.is_empty() {
                continue;
            }
            let record: Value = serde_json::from_str(&event.data).expect("a JSON record");
            assert_eq!(event.id, format!("1:{}", record["seq"]));
            seen.push(record["line"].as_str().expect("line").to_owned());
        }
        eprintln!("round {round}: lines on A after {:?}", started.elapsed());
    }
    let expected: Vec<String> = (1..=30).map(|seq| format!("line {seq}")).collect();
    assert_eq!(seen, expected, "every line once, in order, through A");
    replicas.shutdown().await;
}

async fn wake_ups_work_again_after_the_listener_connection_is_killed(db: TestDb) {
    let replicas = Replicas::start(db).await;
    let (mut builder, _) = builder_on_b(&replicas, "after-kill", 2).await;
    let first = replicas.a.submit(json!({})).await;
    let assigned = assignment_within_limit(&mut builder, "before the kill").await;
    assert_eq!(assigned.job_id.0, first);

    // Both replicas' listeners lose their connection, as on a PostgreSQL failover.
    let old = replicas.listener_pids();
    replicas.a.execute_sql(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = '{APPLICATION_NAME}'"
    ));
    let new = replicas.wait_for_listeners(&old).await;
    assert_ne!(old, new);

    let second = replicas.a.submit(json!({})).await;
    let assigned = assignment_within_limit(&mut builder, "after the reconnect").await;
    assert_eq!(assigned.job_id.0, second);
    replicas.shutdown().await;
}

/// A job retried automatically by A's completion (no back-off) reaches the idle builder on B
/// by notice: A's own builder is busy asking for nothing.
async fn an_automatic_retry_on_one_replica_reaches_a_builder_on_the_other(db: TestDb) {
    let replicas = Replicas::start(db).await;
    let key_a = TestKey::generate("fails-on-a");
    replicas.a.admit(&key_a).await;
    let mut on_a = BuilderClient::connect_ready(&replicas.a.ws_url(), &key_a).await;
    assert_eq!(control(&mut on_a).await, ControlCommand::Resume);
    on_a.request_jobs(1);
    let job = replicas
        .a
        .submit(json!({ "retry": { "exit_codes": [3], "backoff_initial_ms": 0 } }))
        .await;
    let first = assignment_within_limit(&mut on_a, "the first run on A").await;
    assert_eq!(first.job_id.0, job);
    // Only now B's builder is there: the submission's notice is long gone.
    let (mut on_b, _) = builder_on_b(&replicas, "retries-on-b", 1).await;

    on_a.accept(&first);
    let mut response = on_a.job_response(&key_a, &first, Outcome::Failed, vec![]);
    response.exit_status = Some(3);
    response.error = Some(BuildError {
        kind: BuildErrorKind::CommandFailed,
        message: "exit status 3 in the test".into(),
    });
    on_a.send(ClientMessage::JobResponse(response));
    assert_eq!(
        on_a.expect_completion_ack(job_ref(&first)).await,
        CompletionResult::Accepted
    );

    let retried = assignment_within_limit(&mut on_b, "the automatic retry from A").await;
    assert_eq!((retried.job_id.0, retried.attempt.0), (job, 2));
    replicas.shutdown().await;
}
