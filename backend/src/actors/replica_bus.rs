//! The replica bus: wake-ups between backend replicas sharing one PostgreSQL database, over
//! `LISTEN`/`NOTIFY` (the channels and payloads are in [`crate::store::notify`]).
//!
//! Each replica keeps one dedicated connection (not from the pool: diesel's `PgConnection`
//! cannot wait on its socket) on which it listens to every channel and sends its own notices,
//! right after the change they announce has committed. Notices from this replica come back
//! to it too and are ignored (each payload names its sender). While the connection is down
//! the bus logs it once, drops what it would have sent, and reconnects with a back-off;
//! meanwhile the scheduler's sweep picks up jobs, cancels and standings as it always did, and
//! a sweep runs as soon as the bus is back. SQLite is one process: the bus is disabled there
//! and [`ReplicaBus::announce`] does nothing.

use std::time::Duration;

use actix::prelude::*;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

use super::log_sink::{LogAppendedElsewhere, LogSink};
use super::scheduler::{FromReplica, ReplicaBusUp, Scheduler};
use crate::store::notify::{listen_sql, Notice, NOTIFY_SQL};
use crate::store::{Backend, DatabaseUrl};

/// Notices waiting to be sent; beyond this they are dropped (the sweep is the safety net).
const OUTGOING_QUEUE: usize = 4096;
/// Notices sent in one round of pipelined statements.
const SEND_BATCH: usize = 256;
/// First and longest wait before reconnecting.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// What the listener's connection is called in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "buildfleet-replica-bus";

/// The sending side, held by the actors that announce changes. Cheap to clone.
#[derive(Clone, Default)]
pub struct ReplicaBus {
    outgoing: Option<mpsc::Sender<Notice>>,
}

impl ReplicaBus {
    /// A bus that sends nothing (SQLite, unit tests).
    pub fn disabled() -> ReplicaBus {
        ReplicaBus { outgoing: None }
    }

    /// The bus for the database at `database_url`: on PostgreSQL the sending side and the
    /// listener to start once the actors it wakes exist; on SQLite a disabled bus.
    pub fn for_database(database_url: &str) -> (ReplicaBus, Option<BusListener>) {
        let Ok(url) = DatabaseUrl::parse(database_url) else {
            return (ReplicaBus::disabled(), None);
        };
        if url.backend != Backend::Postgres {
            return (ReplicaBus::disabled(), None);
        }
        let (tx, rx) = mpsc::channel(OUTGOING_QUEUE);
        let replica = format!("{:016x}", rand::random::<u64>());
        let listener = BusListener {
            url: url.target,
            replica,
            outgoing: rx,
        };
        (ReplicaBus { outgoing: Some(tx) }, Some(listener))
    }

    /// Tells the other replicas, if any. Called after the change is committed; never waits.
    pub fn announce(&self, notice: Notice) {
        let Some(outgoing) = &self.outgoing else {
            return;
        };
        if let Err(e) = outgoing.try_send(notice) {
            // Full (the connection is down or slow) or closed (shutting down): the other
            // replicas' sweeps pick the change up.
            tracing::debug!(error = %e, "replica notice dropped; other replicas catch up at their sweep");
        }
    }

    /// Whether notices go anywhere (PostgreSQL).
    pub fn enabled(&self) -> bool {
        self.outgoing.is_some()
    }
}

/// The listening side: one per replica, run on the actors' arbiter.
pub struct BusListener {
    url: String,
    replica: String,
    outgoing: mpsc::Receiver<Notice>,
}

/// Why a bus connection ended.
#[derive(Debug, thiserror::Error)]
enum BusError {
    #[error("{0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("the connection closed")]
    Closed,
    #[error("{0}")]
    Unsupported(String),
}

impl BusListener {
    /// This replica's id in the notices it sends.
    pub fn replica_id(&self) -> &str {
        &self.replica
    }

    /// Listens and sends until the actors stop (the future is dropped with their arbiter).
    pub async fn run(mut self, scheduler: Addr<Scheduler>, log_sink: Addr<LogSink>) {
        let config = match self.config() {
            Ok(config) => config,
            Err(e) => {
                tracing::error!(error = %e, "the replica bus cannot use the database URL; wake-ups from other replicas wait for the sweep");
                // Keep draining so announcing never backs up.
                while self.outgoing.recv().await.is_some() {}
                return;
            }
        };
        let mut backoff = RECONNECT_MIN;
        let mut down_since: Option<std::time::Instant> = None;
        loop {
            let mut connected = false;
            let result = self
                .session(
                    &config,
                    &scheduler,
                    &log_sink,
                    &mut connected,
                    &mut down_since,
                )
                .await;
            if connected {
                backoff = RECONNECT_MIN;
            }
            match result {
                // The actors are gone (shutdown): nothing left to wake.
                Ok(()) => return,
                Err(e) => {
                    if down_since.is_none() {
                        down_since = Some(std::time::Instant::now());
                        tracing::warn!(error = %e, "replica bus down; wake-ups from other replicas wait for the sweep until it reconnects");
                    } else {
                        tracing::debug!(error = %e, retry_in = ?backoff, "replica bus still down");
                    }
                }
            }
            // What was queued while down would arrive late and out of step: the other
            // replicas' sweeps cover it.
            while self.outgoing.try_recv().is_ok() {}
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RECONNECT_MAX);
        }
    }

    fn config(&self) -> Result<tokio_postgres::Config, BusError> {
        let mut config: tokio_postgres::Config = self
            .url
            .parse()
            .map_err(|e| BusError::Unsupported(format!("parsing the URL: {e}")))?;
        if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            return Err(BusError::Unsupported(
                "sslmode=require: the replica bus's listener connects without TLS".into(),
            ));
        }
        config.application_name(APPLICATION_NAME);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        // A peer that vanished without closing is noticed within about a minute.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        Ok(config)
    }

    /// One connection's life: `LISTEN`, then deliver and send until it fails. `Ok` only
    /// when the actors are gone.
    async fn session(
        &mut self,
        config: &tokio_postgres::Config,
        scheduler: &Addr<Scheduler>,
        log_sink: &Addr<LogSink>,
        connected: &mut bool,
        down_since: &mut Option<std::time::Instant>,
    ) -> Result<(), BusError> {
        let (client, mut connection) = config.connect(NoTls).await?;
        // The connection is driven apart from the client: statements need it polled while
        // they are awaited. Notifications and its end come back on this channel.
        let (incoming_tx, mut incoming) = mpsc::unbounded_channel();
        let driver = actix_rt::spawn(async move {
            loop {
                let message = std::future::poll_fn(|cx| connection.poll_message(cx)).await;
                let stop = matches!(message, None | Some(Err(_)));
                if incoming_tx.send(message).is_err() || stop {
                    return;
                }
            }
        });
        let _abort = AbortOnDrop(driver);
        client.batch_execute(&listen_sql()).await?;
        *connected = true;
        if let Some(since) = down_since.take() {
            tracing::info!(down_for = ?since.elapsed(), "replica bus reconnected");
        } else {
            tracing::info!(replica = %self.replica, "replica bus listening");
        }
        // Anything announced while this replica was not listening is in the database.
        if scheduler.try_send(ReplicaBusUp).is_err() {
            return Ok(());
        }
        let mut batch = Vec::with_capacity(SEND_BATCH);
        loop {
            tokio::select! {
                message = incoming.recv() => match message {
                    Some(Some(Ok(AsyncMessage::Notification(n)))) => {
                        if !self.deliver(n.channel(), n.payload(), scheduler, log_sink) {
                            return Ok(());
                        }
                    }
                    Some(Some(Ok(_))) => {}
                    Some(Some(Err(e))) => return Err(e.into()),
                    Some(None) | None => return Err(BusError::Closed),
                },
                sent = self.outgoing.recv_many(&mut batch, SEND_BATCH) => {
                    if sent == 0 {
                        return Ok(()); // every sender is gone: shutting down
                    }
                    self.send(&client, &mut batch).await?;
                }
            }
        }
    }

    /// Sends a batch of notices, pipelined on the one connection.
    async fn send(
        &self,
        client: &tokio_postgres::Client,
        batch: &mut Vec<Notice>,
    ) -> Result<(), BusError> {
        let statement = client.prepare(NOTIFY_SQL).await?;
        let mut payloads = Vec::with_capacity(batch.len());
        for notice in batch.drain(..) {
            match notice.encode(&self.replica) {
                Ok(payload) => payloads.push((notice.channel(), payload)),
                Err(e) => tracing::warn!(error = %e, "replica notice not sent"),
            }
        }
        let statement = &statement;
        let sends = payloads.iter().map(|(channel, payload)| async move {
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [channel, payload];
            client.execute(statement, &params).await
        });
        for result in futures_util::future::join_all(sends).await {
            result?;
        }
        Ok(())
    }

    /// Hands a notification from another replica to the actor it wakes. `false` once the
    /// actors are gone.
    fn deliver(
        &self,
        channel: &str,
        payload: &str,
        scheduler: &Addr<Scheduler>,
        log_sink: &Addr<LogSink>,
    ) -> bool {
        let notice = match Notice::decode(channel, payload) {
            Ok((from, _)) if from == self.replica => return true,
            Ok((_, notice)) => notice,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a replica notification");
                return true;
            }
        };
        let sent = match notice {
            Notice::LogAppended { job, attempt, seq } => log_sink
                .try_send(LogAppendedElsewhere { job, attempt, seq })
                .map_err(|e| matches!(e, SendError::Closed(_))),
            other => scheduler
                .try_send(FromReplica(other))
                .map_err(|e| matches!(e, SendError::Closed(_))),
        };
        // A full mailbox only delays the wake-up to the sweep.
        !matches!(sent, Err(true))
    }
}

/// Stops the connection's driver with the session.
struct AbortOnDrop(actix_rt::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
