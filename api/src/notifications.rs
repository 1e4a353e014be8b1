//! Notifications and retention: project webhooks, the body they are sent (also the data of
//! the project event stream), their delivery log, and a project's retention and disk usage.

use serde::{Deserialize, Serialize};

use crate::state::JobState;

/// `POST /api/v1/projects/{organisation}/{project}/webhooks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// `http://` or `https://`; deliveries are POSTed here.
    pub url: String,
    /// The HMAC-SHA256 key of `X-Buildfleet-Signature`; generated (and answered once) when
    /// left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Some of `queued`, `started`, `finished`; all three when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
}

fn enabled_by_default() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    pub id: i64,
    /// `organisation/project`.
    pub project: String,
    pub url: String,
    pub events: Vec<String>,
    pub enabled: bool,
    pub created_at: i64,
}

/// The answer to a create: the webhook and its secret, shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedWebhook {
    #[serde(flatten)]
    pub webhook: Webhook,
    pub secret: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookList {
    pub webhooks: Vec<Webhook>,
}

/// One try of a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryTry {
    pub attempt: i32,
    pub at: i64,
    /// The receiver's HTTP status, when it answered.
    pub status: Option<i32>,
    /// Why there was no 2xx answer (timeout, connection refused, the status).
    pub error: Option<String>,
    pub duration_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub id: i64,
    pub webhook: i64,
    pub job: i64,
    pub job_attempt: i32,
    /// `queued`, `started` or `finished`.
    pub event: String,
    /// `pending` (another try is due at `next_attempt_at`), `delivered` or `failed` (given
    /// up after the last try).
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: Option<i64>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub delivered_at: Option<i64>,
    pub created_at: i64,
    pub tries: Vec<DeliveryTry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryList {
    pub deliveries: Vec<Delivery>,
}

/// The body of a webhook delivery, and the data of a project stream's event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobNotification {
    /// `queued`, `started` or `finished`.
    pub event: String,
    pub job: i64,
    /// `organisation/project`.
    pub project: String,
    pub state: JobState,
    /// The terminal state of a `finished` event.
    pub outcome: Option<JobState>,
    pub attempt: i32,
    pub recipe: String,
    /// Why the job ended unsuccessfully.
    pub error: Option<String>,
    /// When the change was committed (ms since the epoch).
    pub at: i64,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// The job in the API (`/api/v1/jobs/{id}`).
    pub url: String,
    /// The job's dashboard page.
    pub html_url: String,
}

/// Retention limits of one kind of data; a `null` limit is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionLimits {
    /// Delete once the job finished longer ago than this (0: at the janitor's next pass).
    #[serde(default)]
    pub max_age_days: Option<i32>,
    /// Keep only the newest N finished jobs' data.
    #[serde(default)]
    pub keep_last: Option<i32>,
}

/// `PUT /api/v1/projects/{organisation}/{project}/retention`, and its answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    #[serde(default)]
    pub artifacts: RetentionLimits,
    #[serde(default)]
    pub logs: RetentionLimits,
}

/// `GET /api/v1/projects/{organisation}/{project}/retention`: the policy and what the project
/// stores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionStatus {
    pub project: String,
    pub artifacts: RetentionLimits,
    pub logs: RetentionLimits,
    pub updated_at: Option<i64>,
    pub artifact_bytes: i64,
    pub log_bytes: i64,
}

/// `DELETE /api/v1/jobs/{id}/artifacts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedArtifacts {
    pub job: i64,
    pub deleted: usize,
    pub artifacts_expired_at: Option<i64>,
}
