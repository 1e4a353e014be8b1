//! Jobs: submission, listing, a job with its history, its artifacts, and the data of the
//! state events its SSE streams carry.

use serde::{Deserialize, Serialize};

use crate::state::{AttemptCause, AttemptOutcome, JobMode, JobState, OnMismatch};
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
    /// Which failures retry automatically and the back-off before each retry; omitted: lost
    /// builders only, as for every job before this field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// `organisation/project` the job belongs to; omitted: the submitting token's project,
    /// else `default/default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Independent builders (1 to 5) that must build the job with identical artifacts before
    /// it is published; omitted: the project's default (1, an ordinary job, unless changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reproduce: Option<i32>,
    /// What a disagreement does: `fail` (the default: publish nothing) or `publish_first`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_mismatch: Option<OnMismatch>,
}

/// Which kinds of failed attempt put the job back in the queue by themselves, while fewer
/// than `max_attempts` attempts have failed (each retried kind counts). A cancel, a timeout,
/// a rejected source (digest mismatch, too large, unsafe archive), an unknown recipe, a
/// missing artifact and a refused build statement are never retried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// The builder's lease ran out (it died or stayed away past its grace period). Retried
    /// at once, without back-off: another builder can take it. Default true.
    #[serde(default = "RetryPolicy::default_lost_builder")]
    pub lost_builder: bool,
    /// The attempt failed for the platform's fault: the builder reported `source_fetch`,
    /// `upload` or `internal` (an I/O error of the builder, a command it could not spawn).
    /// Default false.
    #[serde(default)]
    pub infrastructure: bool,
    /// The job's commands failed (`command_failed`) with one of these exit statuses
    /// (`[1, 137]`), or with any (`"any"`, a death by signal included). Default `[]`.
    #[serde(default)]
    pub exit_codes: ExitCodes,
    /// Wait before the first automatic retry of an infrastructure or script failure, in
    /// milliseconds; each further one waits twice as long as the one before. Default 10,000.
    #[serde(default = "RetryPolicy::default_backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    /// The longest wait. Default 300,000 (5 minutes).
    #[serde(default = "RetryPolicy::default_backoff_max_ms")]
    pub backoff_max_ms: u64,
}

impl RetryPolicy {
    pub const DEFAULT_BACKOFF_INITIAL_MS: u64 = 10_000;
    pub const DEFAULT_BACKOFF_MAX_MS: u64 = 300_000;

    fn default_lost_builder() -> bool {
        true
    }

    fn default_backoff_initial_ms() -> u64 {
        Self::DEFAULT_BACKOFF_INITIAL_MS
    }

    fn default_backoff_max_ms() -> u64 {
        Self::DEFAULT_BACKOFF_MAX_MS
    }

    /// The wait before the automatic retry that follows `failed_before` counted failures
    /// (0 for the first retry): the initial back-off doubled each time, capped.
    pub fn backoff_ms(&self, failed_before: u32) -> u64 {
        let doubled = self
            .backoff_initial_ms
            .saturating_mul(1u64.checked_shl(failed_before).unwrap_or(u64::MAX));
        doubled.min(self.backoff_max_ms)
    }
}

impl Default for RetryPolicy {
    /// The policy of a job submitted without `retry`: lost builders only.
    fn default() -> Self {
        RetryPolicy {
            lost_builder: true,
            infrastructure: false,
            exit_codes: ExitCodes::default(),
            backoff_initial_ms: Self::DEFAULT_BACKOFF_INITIAL_MS,
            backoff_max_ms: Self::DEFAULT_BACKOFF_MAX_MS,
        }
    }
}

/// The exit statuses of a failed script that retry: a list, or `"any"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitCodes {
    Listed(Vec<i32>),
    /// Every failure of the job's commands, whatever the status (a signal included).
    Any,
}

impl Default for ExitCodes {
    fn default() -> Self {
        ExitCodes::Listed(Vec::new())
    }
}

impl ExitCodes {
    /// Whether a script that failed with `exit_status` (`None`: killed by a signal, or no
    /// status at all) is retried.
    pub fn retries(&self, exit_status: Option<i32>) -> bool {
        match (self, exit_status) {
            (ExitCodes::Any, _) => true,
            (ExitCodes::Listed(codes), Some(code)) => codes.contains(&code),
            (ExitCodes::Listed(_), None) => false,
        }
    }
}

impl Serialize for ExitCodes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ExitCodes::Listed(codes) => codes.serialize(serializer),
            ExitCodes::Any => serializer.serialize_str("any"),
        }
    }
}

impl<'de> Deserialize<'de> for ExitCodes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ExitCodes;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of exit statuses (such as [1, 137]) or \"any\"")
            }

            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<ExitCodes, E> {
                if value == "any" {
                    Ok(ExitCodes::Any)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(value), &self))
                }
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<ExitCodes, A::Error> {
                let mut codes = Vec::new();
                while let Some(code) = seq.next_element::<i32>()? {
                    codes.push(code);
                }
                Ok(ExitCodes::Listed(codes))
            }
        }

        deserializer.deserialize_any(Visitor)
    }
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
    /// Only jobs of this project (`organisation/project`), which the caller must see.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
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
    /// `organisation/project`: who may see and act on the job.
    pub project: String,
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
    /// Failed attempts counted against `max_attempts` (lost builders, and the failures
    /// `retry` retries) since submission or the last manual retry.
    pub failed_attempts: i32,
    /// Which failures retry automatically (the defaults filled in).
    pub retry: RetryPolicy,
    /// Set while the job waits out the back-off before an automatic retry: no builder gets
    /// it before then.
    pub retry_not_before: Option<i64>,
    /// Retries asked for through the API (`POST /jobs/{id}/retry`); not counted against
    /// `max_attempts`, and each one gives the job its automatic retries afresh.
    pub manual_retries: i32,
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
    /// Independent builders that must agree before the job is published (omitted: 1).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub reproduce: i32,
    /// What a disagreement does (omitted: `fail`).
    #[serde(default, skip_serializing_if = "is_fail")]
    pub on_mismatch: OnMismatch,
}

fn one() -> i32 {
    1
}

fn is_one(k: &i32) -> bool {
    *k == 1
}

fn is_fail(on_mismatch: &OnMismatch) -> bool {
    *on_mismatch == OnMismatch::Fail
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
    /// When retention (or an admin) deleted the job's artifacts: it had some.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts_expired_at: Option<i64>,
    /// When retention deleted the job's log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs_expired_at: Option<i64>,
    /// A job with `reproduce` above 1: its runs so far and, once decided, the verdict and
    /// its evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reproduction: Option<crate::reproduction::Reproduction>,
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
    /// Why it was started: the first attempt, an automatic retry (after which kind of
    /// failure), a manual retry, or a reassignment after a rejection.
    pub started_because: AttemptCause,
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
    fn a_retry_policy_fills_its_defaults_and_reads_exit_codes_either_way() {
        let policy: RetryPolicy = serde_json::from_str(r#"{"exit_codes": [1, 137]}"#).unwrap();
        assert!(policy.lost_builder && !policy.infrastructure);
        assert_eq!(policy.exit_codes, ExitCodes::Listed(vec![1, 137]));
        assert_eq!(
            policy.backoff_initial_ms,
            RetryPolicy::DEFAULT_BACKOFF_INITIAL_MS
        );
        let any: RetryPolicy = serde_json::from_str(r#"{"exit_codes": "any"}"#).unwrap();
        assert_eq!(any.exit_codes, ExitCodes::Any);
        assert!(any.exit_codes.retries(None));
        let json = serde_json::to_value(&any).unwrap();
        assert_eq!(json["exit_codes"], "any");
        assert_eq!(serde_json::from_value::<RetryPolicy>(json).unwrap(), any);
        let refused = serde_json::from_str::<RetryPolicy>(r#"{"exit_codes": "all"}"#);
        assert!(refused.unwrap_err().to_string().contains("\"any\""));
        let unknown = serde_json::from_str::<RetryPolicy>(r#"{"when": []}"#);
        assert!(unknown.is_err());
    }

    #[test]
    fn the_back_off_doubles_up_to_its_cap() {
        let policy = RetryPolicy {
            backoff_initial_ms: 200,
            backoff_max_ms: 1000,
            ..RetryPolicy::default()
        };
        let waits: Vec<u64> = (0..5).map(|n| policy.backoff_ms(n)).collect();
        assert_eq!(waits, [200, 400, 800, 1000, 1000]);
        assert_eq!(policy.backoff_ms(200), 1000, "no overflow");
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
