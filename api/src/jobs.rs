//! Jobs: submission, listing, a job with its history, its artifacts, and the data of the
//! state events its SSE streams carry.

use serde::{Deserialize, Serialize};

use crate::state::{AttemptOutcome, JobMode, JobState};
use crate::{Annotations, Labels};

/// `POST /api/v1/jobs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitJob {
    /// Where builders fetch the source; omitted for a source uploaded to `/api/v1/sources`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_url: Option<String>,
    /// Lowercase hex SHA-256 of the source archive; omitted with `crate`.
    #[serde(default)]
    pub source_sha256: String,
    /// `name@version` of a crate in the followed registry: the server fills the source URL
    /// and SHA-256 from the index and annotates `crate` and `version`.
    #[serde(rename = "crate", default, skip_serializing_if = "Option::is_none")]
    pub krate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_max_bytes: Option<u64>,
    pub recipe: String,
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub parameters: Labels,
    /// Labels a builder must have to take the job.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// What the job builds, for people and filters (`crate`, `version`, `target`, `commit`,
    /// `branch`, …): keys of `[a-z0-9_.-]`, at most 64 bytes; values of 1 to 1,024 bytes
    /// (`message`: 4,096); at most 32. Signed into the build statement.
    #[serde(default, skip_serializing_if = "Annotations::is_empty")]
    pub annotations: Annotations,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<JobMode>,
    #[serde(default)]
    pub priority: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<i32>,
}

impl SubmitJob {
    /// A job of `recipe` on the source with this digest, everything else defaulted.
    pub fn new(source_sha256: impl Into<String>, recipe: impl Into<String>) -> Self {
        SubmitJob {
            source_sha256: source_sha256.into(),
            recipe: recipe.into(),
            ..SubmitJob::default()
        }
    }
}

/// `GET /api/v1/jobs?state=&recipe=&builder=&annotation=&before=&limit=`, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListJobs {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipe: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub builder: Option<i64>,
    /// `key:value` (the job has this annotation) or `key` (the job has the key, any value);
    /// repeatable, and a job must match every one. In a query string the parameter repeats
    /// (`annotation=crate:itoa&annotation=version:1.0.14`), which a struct field cannot take
    /// from a form decoder: the server reads these from the query string itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub annotation: Vec<String>,
    /// Keyset paging: the previous page's `next_before`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// A job and where it stands. Times are milliseconds since the epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: i64,
    pub source_url: String,
    pub source_sha256: String,
    pub source_max_bytes: i64,
    pub recipe: String,
    pub parameters: Labels,
    pub required_labels: Labels,
    /// What the job builds (see [`SubmitJob::annotations`]); `{}` when none were given.
    pub annotations: Annotations,
    pub mode: JobMode,
    pub priority: i32,
    pub state: JobState,
    /// The current attempt: the live one while assigned or running, the next one while
    /// queued, the last one once terminal.
    pub attempt: i32,
    pub max_attempts: i32,
    /// Attempts lost to expired leases since submission or the last retry.
    pub failed_attempts: i32,
    pub timeout_secs: i64,
    pub submitter: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// Set when a cancel was asked for while a builder held the job.
    pub cancel_requested_at: Option<i64>,
    pub error: Option<String>,
    /// Builder of the current attempt (or of the last one, once terminal).
    pub builder_id: Option<i64>,
}

/// `GET /api/v1/jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobList {
    pub jobs: Vec<Job>,
    /// Pass as `before` for the next page; `None` on the last page.
    pub next_before: Option<i64>,
}

/// `GET /api/v1/jobs/{id}`: the job with its attempts, transitions and published artifacts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobDetail {
    #[serde(flatten)]
    pub job: Job,
    pub attempts: Vec<Attempt>,
    pub events: Vec<Transition>,
    pub artifacts: Vec<Artifact>,
    /// `GET /api/v1/jobs/{id}/plan`, once a plan-mode attempt reported its plan.
    pub plan_url: Option<String>,
    /// Why the job waits and roughly for how long; only while it is queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueStanding>,
    /// The job this one follows from (a crate's metadata job for its builds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follows_from: Option<i64>,
    /// The jobs queued because this one succeeded (a metadata job's builds).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub follow_ups: Vec<i64>,
}

/// Where a queued job stands: what is ahead of it on the builders that can run it, and an
/// estimate of when it starts. Computed on request from the queue and the connected
/// builders, so it is a snapshot, not a promise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStanding {
    /// 1 for the job those builders take next: counts the queued jobs before it in claim
    /// order (higher priority, or older at the same priority) that they could also take.
    pub position: u64,
    /// The count stopped at its cap; `position` is a lower bound.
    pub position_capped: bool,
    /// Connected builders that offer the recipe and the required labels, and are neither
    /// paused nor draining.
    pub matching_builders_online: u32,
    /// Slots of those builders that are not running anything now.
    pub free_slots: u32,
    /// Admitted, enabled builders whose labels fit but that are not connected.
    pub matching_builders_offline: u32,
    /// Median run time of recent successful jobs of the same recipe (and crate, where
    /// annotated), in seconds.
    pub typical_duration_secs: Option<u64>,
    /// Seconds until a slot is likely free for it; `None` without a typical duration or
    /// while no builder matches.
    pub estimated_start_secs: Option<u64>,
    /// Set when no connected builder can run the job, saying why ("no builder matches: …").
    pub blocked: Option<String>,
}

/// One hand-over of a job to a builder; live while `finished_at` is `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub job: i64,
    pub attempt: i32,
    /// `None` once the builder was removed.
    pub builder: Option<i64>,
    /// False once the job token was revoked (the attempt ended).
    pub token_valid: bool,
    pub lease_expires_at: i64,
    pub outcome: Option<AttemptOutcome>,
    pub exit_status: Option<i32>,
    pub error: Option<String>,
    pub assigned_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

/// One recorded state change of a job; `from` is `None` for the submission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub id: i64,
    pub job: i64,
    pub attempt: i32,
    pub from: Option<JobState>,
    pub to: JobState,
    pub at: i64,
    pub detail: Option<String>,
}

/// A published artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub name: String,
    pub size: u64,
    pub sha256: String,
    pub attempt: i32,
    pub url: String,
}

/// `GET /api/v1/jobs/{id}/artifacts`: the artifacts and where their signed statement is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactList {
    pub artifacts: Vec<Artifact>,
    /// The attempt whose statement `statement_url` serves; `None` before one was published.
    pub statement_attempt: Option<i32>,
    pub statement_url: Option<String>,
    pub signature_url: Option<String>,
    pub allowed_signers_url: String,
}

/// `PUT /api/v1/jobs/{id}/artifacts/{name}` (the builder's upload), once stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadedArtifact {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// A job's state after a committed change: the data of a `state` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobChange {
    pub job: i64,
    pub state: JobState,
    pub attempt: i32,
    pub recipe: String,
    pub builder: Option<i64>,
    /// Set once the job ended unsuccessfully (and for a cancel).
    pub error: Option<String>,
    /// When the change was committed.
    pub at: i64,
}

/// The data of a stream's `end` event: the terminal change, its state repeated as the
/// outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEnd {
    #[serde(flatten)]
    pub change: JobChange,
    pub outcome: JobState,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_submission_with_an_unknown_field_is_refused() {
        let body = r#"{"source_sha256": "00", "recipe": "r", "recipes": []}"#;
        let error = serde_json::from_str::<SubmitJob>(body).unwrap_err();
        assert!(
            error.to_string().contains("unknown field `recipes`"),
            "{error}"
        );
    }

    #[test]
    fn a_minimal_submission_serialises_only_what_was_given() {
        let submit = SubmitJob {
            source_sha256: "ab".into(),
            recipe: "noop".into(),
            ..SubmitJob::default()
        };
        let json = serde_json::to_value(&submit).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"source_sha256": "ab", "recipe": "noop", "priority": 0})
        );
        assert_eq!(serde_json::from_value::<SubmitJob>(json).unwrap(), submit);
    }

    #[test]
    fn annotations_go_out_only_when_given() {
        let mut submit = SubmitJob::new("ab", "noop");
        submit.annotations.insert("crate".into(), "itoa".into());
        let json = serde_json::to_value(&submit).unwrap();
        assert_eq!(json["annotations"], serde_json::json!({"crate": "itoa"}));
        assert_eq!(serde_json::from_value::<SubmitJob>(json).unwrap(), submit);
        let listing = serde_json::to_value(ListJobs::default()).unwrap();
        assert_eq!(listing, serde_json::json!({}), "no empty annotation filter");
    }

    #[test]
    fn an_end_event_reads_back_with_its_change() {
        let data = r#"{"job":7,"state":"failed","attempt":2,"recipe":"r","builder":null,"error":"x","at":5,"outcome":"failed"}"#;
        let end: JobEnd = serde_json::from_str(data).unwrap();
        assert_eq!(end.change.job, 7);
        assert_eq!(end.outcome, JobState::Failed);
        assert_eq!(serde_json::to_string(&end).unwrap(), data);
    }
}
