//! Webhooks of projects and their deliveries: the durable half of the notifier
//! (`crate::webhooks`). A delivery row is written once per (webhook, job, attempt, event) with
//! its body fixed; it is due while `next_attempt_at` is set, so pending deliveries outlive a
//! restart, and each try is kept in `webhook_delivery_attempts` for the delivery log.

use diesel::prelude::*;

use super::error::StoreError;
use super::ids::{JobId, ProjectId};
use super::schema::{
    jobs, organisations, projects, webhook_deliveries, webhook_delivery_attempts, webhooks,
};
use super::Store;

/// The events a webhook can ask for, in the order they happen.
pub const WEBHOOK_EVENTS: [&str; 3] = ["queued", "started", "finished"];
/// Deliveries listed per webhook, newest first.
pub const DELIVERY_LOG_LIMIT: i64 = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub id: i64,
    pub project: ProjectId,
    pub url: String,
    pub secret: String,
    /// A subset of [`WEBHOOK_EVENTS`].
    pub events: Vec<String>,
    pub enabled: bool,
    pub created_at: i64,
}

impl Webhook {
    pub fn wants(&self, event: &str) -> bool {
        self.enabled && self.events.iter().any(|e| e == event)
    }
}

#[derive(Debug, Clone)]
pub struct NewWebhook {
    pub project: ProjectId,
    pub url: String,
    pub secret: String,
    pub events: Vec<String>,
    pub enabled: bool,
}

/// A delivery to write: `payload` is the exact body every try sends.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub webhook: i64,
    pub job: JobId,
    pub job_attempt: i32,
    pub event: String,
    pub payload: String,
}

/// A delivery whose time has come, with what sending it needs.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    pub id: i64,
    pub webhook: i64,
    pub url: String,
    pub secret: String,
    pub event: String,
    pub payload: String,
    /// Tries made before this one.
    pub attempts: i32,
}

/// One try of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryTry {
    pub attempt: i32,
    pub at: i64,
    pub status: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: i64,
    pub webhook: i64,
    pub job: JobId,
    pub job_attempt: i32,
    pub event: String,
    pub attempts: i32,
    pub next_attempt_at: Option<i64>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub delivered_at: Option<i64>,
    pub created_at: i64,
    pub tries: Vec<DeliveryTry>,
}

/// What a job's notifications say about it beyond its state change.
#[derive(Debug, Clone)]
pub struct NotifiedJob {
    pub id: JobId,
    pub project: ProjectId,
    /// `organisation/project`.
    pub project_slug: String,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

type WebhookRow = (i64, i64, String, String, String, bool, i64);

fn webhook_from_row(row: WebhookRow) -> Webhook {
    let (id, project, url, secret, events, enabled, created_at) = row;
    Webhook {
        id,
        project: ProjectId(project),
        url,
        secret,
        events: events
            .split(',')
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect(),
        enabled,
        created_at,
    }
}

fn webhook_columns() -> (
    webhooks::id,
    webhooks::project_id,
    webhooks::url,
    webhooks::secret,
    webhooks::events,
    webhooks::enabled,
    webhooks::created_at,
) {
    (
        webhooks::id,
        webhooks::project_id,
        webhooks::url,
        webhooks::secret,
        webhooks::events,
        webhooks::enabled,
        webhooks::created_at,
    )
}

impl Store {
    pub fn create_webhook(&self, new: &NewWebhook) -> Result<Webhook, StoreError> {
        let now = self.now_ms();
        let events = new.events.join(",");
        self.write(|conn| {
            let id = diesel::insert_into(webhooks::table)
                .values((
                    webhooks::project_id.eq(new.project.0),
                    webhooks::url.eq(&new.url),
                    webhooks::secret.eq(&new.secret),
                    webhooks::events.eq(&events),
                    webhooks::enabled.eq(new.enabled),
                    webhooks::created_at.eq(now),
                ))
                .returning(webhooks::id)
                .get_result::<i64>(conn)?;
            Ok(Webhook {
                id,
                project: new.project,
                url: new.url.clone(),
                secret: new.secret.clone(),
                events: new.events.clone(),
                enabled: new.enabled,
                created_at: now,
            })
        })
    }

    /// A project's webhooks, oldest first.
    pub fn webhooks(&self, project: ProjectId) -> Result<Vec<Webhook>, StoreError> {
        Ok(webhooks::table
            .filter(webhooks::project_id.eq(project.0))
            .order(webhooks::id.asc())
            .select(webhook_columns())
            .load::<WebhookRow>(&mut *self.conn()?)?
            .into_iter()
            .map(webhook_from_row)
            .collect())
    }

    /// The webhook `id` if it belongs to `project`.
    pub fn webhook(&self, project: ProjectId, id: i64) -> Result<Option<Webhook>, StoreError> {
        Ok(webhooks::table
            .filter(webhooks::id.eq(id))
            .filter(webhooks::project_id.eq(project.0))
            .select(webhook_columns())
            .first::<WebhookRow>(&mut *self.conn()?)
            .optional()?
            .map(webhook_from_row))
    }

    /// Deletes a project's webhook with its deliveries; false if there was none.
    pub fn delete_webhook(&self, project: ProjectId, id: i64) -> Result<bool, StoreError> {
        self.write(|conn| {
            let found = webhooks::table
                .filter(webhooks::id.eq(id))
                .filter(webhooks::project_id.eq(project.0))
                .select(webhooks::id)
                .first::<i64>(conn)
                .optional()?;
            if found.is_none() {
                return Ok(false);
            }
            // Explicitly, not by cascade: SQLite enforces foreign keys only when asked to.
            let deliveries = webhook_deliveries::table
                .filter(webhook_deliveries::webhook_id.eq(id))
                .select(webhook_deliveries::id);
            diesel::delete(
                webhook_delivery_attempts::table
                    .filter(webhook_delivery_attempts::delivery_id.eq_any(deliveries)),
            )
            .execute(conn)?;
            diesel::delete(webhook_deliveries::table.filter(webhook_deliveries::webhook_id.eq(id)))
                .execute(conn)?;
            diesel::delete(webhooks::table.filter(webhooks::id.eq(id))).execute(conn)?;
            Ok(true)
        })
    }

    /// Every enabled webhook (a short list: a few per project).
    pub fn enabled_webhooks(&self) -> Result<Vec<Webhook>, StoreError> {
        Ok(webhooks::table
            .filter(webhooks::enabled.eq(true))
            .order(webhooks::id.asc())
            .select(webhook_columns())
            .load::<WebhookRow>(&mut *self.conn()?)?
            .into_iter()
            .map(webhook_from_row)
            .collect())
    }

    /// The project and times of each of `jobs` that exists.
    pub fn notified_jobs(&self, ids: &[JobId]) -> Result<Vec<NotifiedJob>, StoreError> {
        let ids: Vec<i64> = ids.iter().map(|j| j.0).collect();
        let rows = jobs::table
            .inner_join(projects::table.inner_join(organisations::table))
            .filter(jobs::id.eq_any(ids))
            .select((
                jobs::id,
                jobs::project_id,
                organisations::name,
                projects::name,
                jobs::created_at,
                jobs::started_at,
                jobs::finished_at,
            ))
            .load::<(i64, i64, String, String, i64, Option<i64>, Option<i64>)>(
                &mut *self.conn()?,
            )?;
        Ok(rows
            .into_iter()
            .map(
                |(id, project, organisation, name, created_at, started_at, finished_at)| {
                    NotifiedJob {
                        id: JobId(id),
                        project: ProjectId(project),
                        project_slug: format!("{organisation}/{name}"),
                        created_at,
                        started_at,
                        finished_at,
                    }
                },
            )
            .collect())
    }

    /// Writes the deliveries not written before (the same job attempt's event for the same
    /// webhook is sent once), due now. Answers how many were new.
    pub fn insert_deliveries(&self, new: &[NewDelivery]) -> Result<usize, StoreError> {
        if new.is_empty() {
            return Ok(0);
        }
        let now = self.now_ms();
        self.write(|conn| {
            let mut written = 0;
            for delivery in new {
                let exists = webhook_deliveries::table
                    .filter(webhook_deliveries::job_id.eq(delivery.job.0))
                    .filter(webhook_deliveries::webhook_id.eq(delivery.webhook))
                    .filter(webhook_deliveries::event.eq(&delivery.event))
                    .filter(webhook_deliveries::job_attempt.eq(delivery.job_attempt))
                    .select(webhook_deliveries::id)
                    .first::<i64>(conn)
                    .optional()?;
                if exists.is_some() {
                    continue;
                }
                diesel::insert_into(webhook_deliveries::table)
                    .values((
                        webhook_deliveries::webhook_id.eq(delivery.webhook),
                        webhook_deliveries::job_id.eq(delivery.job.0),
                        webhook_deliveries::job_attempt.eq(delivery.job_attempt),
                        webhook_deliveries::event.eq(&delivery.event),
                        webhook_deliveries::payload.eq(&delivery.payload),
                        webhook_deliveries::attempts.eq(0),
                        webhook_deliveries::next_attempt_at.eq(Some(now)),
                        webhook_deliveries::created_at.eq(now),
                    ))
                    .execute(conn)?;
                written += 1;
            }
            Ok(written)
        })
    }

    /// Takes up to `limit` due deliveries of enabled webhooks, oldest first, moving each one's
    /// next attempt to `lease_until`: another pass (or replica) leaves them alone while they
    /// are sent, and one whose sender died is tried again after that.
    pub fn claim_due_deliveries(
        &self,
        limit: i64,
        lease_until: i64,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        let now = self.now_ms();
        self.write(|conn| {
            let due = webhook_deliveries::table
                .inner_join(webhooks::table)
                .filter(webhook_deliveries::next_attempt_at.le(now))
                .filter(webhooks::enabled.eq(true))
                .order(webhook_deliveries::next_attempt_at.asc())
                .limit(limit)
                .select((
                    webhook_deliveries::id,
                    webhook_deliveries::webhook_id,
                    webhooks::url,
                    webhooks::secret,
                    webhook_deliveries::event,
                    webhook_deliveries::payload,
                    webhook_deliveries::attempts,
                ))
                .load::<(i64, i64, String, String, String, String, i32)>(conn)?;
            let mut claimed = Vec::with_capacity(due.len());
            for (id, webhook, url, secret, event, payload, attempts) in due {
                // Conditional, so a replica that claimed it first keeps it.
                let taken = diesel::update(
                    webhook_deliveries::table
                        .filter(webhook_deliveries::id.eq(id))
                        .filter(webhook_deliveries::next_attempt_at.le(now)),
                )
                .set(webhook_deliveries::next_attempt_at.eq(Some(lease_until)))
                .execute(conn)?;
                if taken == 1 {
                    claimed.push(DueDelivery {
                        id,
                        webhook,
                        url,
                        secret,
                        event,
                        payload,
                        attempts,
                    });
                }
            }
            Ok(claimed)
        })
    }

    /// Records one try of a delivery: delivered (`next_attempt_at` None and a 2xx status),
    /// to be tried again at `next_attempt_at`, or given up (both None).
    pub fn record_delivery_try(
        &self,
        delivery: i64,
        outcome: &DeliveryTry,
        delivered: bool,
        next_attempt_at: Option<i64>,
    ) -> Result<(), StoreError> {
        self.write(|conn| {
            diesel::insert_into(webhook_delivery_attempts::table)
                .values((
                    webhook_delivery_attempts::delivery_id.eq(delivery),
                    webhook_delivery_attempts::attempt.eq(outcome.attempt),
                    webhook_delivery_attempts::at.eq(outcome.at),
                    webhook_delivery_attempts::status.eq(outcome.status),
                    webhook_delivery_attempts::error.eq(&outcome.error),
                    webhook_delivery_attempts::duration_ms.eq(outcome.duration_ms),
                ))
                .execute(conn)?;
            diesel::update(webhook_deliveries::table.filter(webhook_deliveries::id.eq(delivery)))
                .set((
                    webhook_deliveries::attempts.eq(outcome.attempt),
                    webhook_deliveries::last_status.eq(outcome.status),
                    webhook_deliveries::last_error.eq(&outcome.error),
                    webhook_deliveries::next_attempt_at.eq(next_attempt_at),
                    webhook_deliveries::delivered_at.eq(delivered.then_some(outcome.at)),
                ))
                .execute(conn)?;
            Ok(())
        })
    }

    /// A webhook's latest deliveries, newest first, each with its tries.
    pub fn webhook_deliveries(&self, webhook: i64) -> Result<Vec<Delivery>, StoreError> {
        let conn = &mut *self.conn()?;
        let rows = webhook_deliveries::table
            .filter(webhook_deliveries::webhook_id.eq(webhook))
            .order(webhook_deliveries::id.desc())
            .limit(DELIVERY_LOG_LIMIT)
            .select((
                webhook_deliveries::id,
                webhook_deliveries::job_id,
                webhook_deliveries::job_attempt,
                webhook_deliveries::event,
                webhook_deliveries::attempts,
                webhook_deliveries::next_attempt_at,
                webhook_deliveries::last_status,
                webhook_deliveries::last_error,
                webhook_deliveries::delivered_at,
                webhook_deliveries::created_at,
            ))
            .load::<(
                i64,
                i64,
                i32,
                String,
                i32,
                Option<i64>,
                Option<i32>,
                Option<String>,
                Option<i64>,
                i64,
            )>(conn)?;
        let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
        let tries = webhook_delivery_attempts::table
            .filter(webhook_delivery_attempts::delivery_id.eq_any(&ids))
            .order((
                webhook_delivery_attempts::delivery_id.asc(),
                webhook_delivery_attempts::attempt.asc(),
            ))
            .select((
                webhook_delivery_attempts::delivery_id,
                webhook_delivery_attempts::attempt,
                webhook_delivery_attempts::at,
                webhook_delivery_attempts::status,
                webhook_delivery_attempts::error,
                webhook_delivery_attempts::duration_ms,
            ))
            .load::<(i64, i32, i64, Option<i32>, Option<String>, i64)>(conn)?;
        Ok(rows
            .into_iter()
            .map(
                |(
                    id,
                    job,
                    job_attempt,
                    event,
                    attempts,
                    next_attempt_at,
                    last_status,
                    last_error,
                    delivered_at,
                    created_at,
                )| Delivery {
                    id,
                    webhook,
                    job: JobId(job),
                    job_attempt,
                    event,
                    attempts,
                    next_attempt_at,
                    last_status,
                    last_error,
                    delivered_at,
                    created_at,
                    tries: tries
                        .iter()
                        .filter(|t| t.0 == id)
                        .map(|(_, attempt, at, status, error, duration_ms)| DeliveryTry {
                            attempt: *attempt,
                            at: *at,
                            status: *status,
                            error: error.clone(),
                            duration_ms: *duration_ms,
                        })
                        .collect(),
                },
            )
            .collect())
    }
}
