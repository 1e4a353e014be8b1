//! The wire messages: one enum per direction, internally tagged JSON (`{"type": "hello", ...}`).
//!
//! Unknown fields are ignored so that a newer peer can add optional fields within a protocol
//! version; unknown `type`s and missing required fields are errors.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::types::{Attempt, Fingerprint, JobId, Sha256Digest};

/// Builder → backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// First frame of every connection.
    Hello(Hello),
    /// The SSHSIG over the challenge (see [`crate::signing::challenge_message`]).
    ChallengeResponse(ChallengeResponse),
    /// What this builder can run; first frame after `auth_accepted`.
    Capabilities(Capabilities),
    /// The jobs this builder still holds from an earlier connection; second frame after
    /// `auth_accepted` (an empty list when it holds none).
    Resume(Resume),
    /// Credits: how many more jobs the builder can take now.
    JobRequest(JobRequest),
    /// Accept or reject one assignment.
    WorkAck(WorkAck),
    /// A log line or stage change of a job, numbered per attempt.
    JobEvent(JobEvent),
    /// Liveness of the jobs the builder runs; renews their leases.
    Heartbeat(Heartbeat),
    /// Completion of one attempt, with the signed build statement.
    JobResponse(JobResponse),
}

/// Backend → builder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Fresh random bytes to sign, bound to this backend.
    ChallengeRequest(ChallengeRequest),
    /// Authentication succeeded: the session's negotiated settings.
    AuthAccepted(AuthAccepted),
    /// Authentication failed; the connection closes after this frame.
    AuthRejected(AuthRejected),
    /// The answer to `resume`: for each held job, continue or cancel.
    ResumeResult(ResumeResult),
    /// One or more assignments, never more than the builder's outstanding credits.
    Jobs(Jobs),
    /// Stop an attempt (API cancellation or timeout).
    Cancel(Cancel),
    /// Drain, pause or resume this builder.
    Control(Control),
    /// The highest event sequence of an attempt that is durably stored.
    EventAck(EventAck),
    /// The backend stored (or refused) a `job_response`.
    CompletionAck(CompletionAck),
    /// A protocol error; the backend closes the connection after this frame.
    Error(ErrorFrame),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u32,
    pub fingerprint: Fingerprint,
    pub builder_name: String,
    pub builder_version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeRequest {
    /// 32 random bytes, lowercase hex.
    pub challenge: String,
    /// Identifies this backend (its public URL or configured id); signed with the challenge.
    pub backend_id: String,
    pub expires_in_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeResponse {
    /// Armored SSHSIG (`-----BEGIN SSH SIGNATURE-----`).
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthAccepted {
    pub builder_id: i64,
    pub settings: SessionSettings,
}

/// Limits and timings the backend imposes on this session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSettings {
    /// The protocol version both sides speak from now on.
    pub protocol_version: u32,
    /// How often the builder sends `heartbeat`.
    pub heartbeat_interval_ms: u64,
    /// Silence after which the backend considers the builder lost.
    pub heartbeat_timeout_ms: u64,
    /// Largest text frame the backend accepts, in bytes.
    pub max_frame_bytes: u64,
    /// Longer log lines are truncated by the builder.
    pub max_log_line_bytes: u64,
    /// Log bytes stored per attempt; later lines are dropped after a marker.
    pub max_log_bytes_per_job: u64,
    /// How long the backend keeps a lost builder's jobs before requeueing them.
    pub reconnect_grace_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthRejected {
    pub code: ErrorCode,
    pub reason: String,
    /// With `too_many_attempts`: do not try again (with this key, or from this address for
    /// an unknown key) for at least this long. Optional within protocol version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    pub recipes: Vec<RecipeCapability>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub max_concurrent_jobs: u32,
    /// The builder never turns an assignment down (it asks only for credits it will use,
    /// and reports a job it cannot run as failed): each assignment is `running` from the
    /// moment it is sent, and no `work_ack` is expected (one that comes is harmless).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub accepts_every_assignment: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RecipeCapability {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    pub jobs: Vec<HeldJob>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldJob {
    pub job_id: JobId,
    pub attempt: Attempt,
    /// The highest sequence the backend acknowledged, if any.
    pub last_acked_seq: Option<u64>,
    /// True when the build finished and only its `job_response` awaits acknowledgment.
    #[serde(default)]
    pub finished: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeResult {
    pub jobs: Vec<ResumeDecision>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeDecision {
    pub job_id: JobId,
    pub attempt: Attempt,
    pub decision: ResumeAction,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ResumeAction {
    /// Keep going; resend events from `next_seq` on (those before it are stored).
    Continue { next_seq: u64 },
    /// Stop the build and forget the job; the backend no longer holds its lease.
    Cancel { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRequest {
    pub credits: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jobs {
    pub jobs: Vec<JobAssignment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobAssignment {
    pub job_id: JobId,
    pub attempt: Attempt,
    pub source: SourceSpec,
    pub recipe: String,
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    /// What the job builds (`crate`, `version`, `commit`, …), as submitted; the builder
    /// copies them into the build statement it signs. Absent when the job has none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    pub mode: JobMode,
    pub timeout_secs: u64,
    /// Authorises this attempt's HTTP calls (`Authorization: Bearer <token>`).
    pub job_token: String,
    /// Artifacts go to `PUT {upload_url}/{name}`.
    pub upload_url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceSpec {
    pub url: String,
    pub sha256: Sha256Digest,
    pub max_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobMode {
    /// Build and upload artifacts.
    Build,
    /// Report what would be built; upload nothing.
    Plan,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkAck {
    pub job_id: JobId,
    pub attempt: Attempt,
    pub decision: WorkDecision,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WorkDecision {
    Accept,
    /// The backend gives the job to another builder.
    Reject {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel {
    pub job_id: JobId,
    pub attempt: Attempt,
    pub reason: CancelReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// Someone cancelled the job through the API.
    Requested,
    /// The job ran past its timeout.
    TimedOut,
    /// The attempt is no longer current (requeued, or the job finished elsewhere).
    Superseded,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Control {
    pub command: ControlCommand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlCommand {
    /// Finish running jobs, take no new ones.
    Drain,
    /// Take no new jobs until `resume`.
    Pause,
    /// Take jobs again after `pause` or `drain`.
    Resume,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    pub job_id: JobId,
    pub attempt: Attempt,
    /// Starts at 1 for each attempt and increases by 1 per event.
    pub seq: u64,
    /// Unix time in milliseconds, taken on the builder.
    pub timestamp_ms: i64,
    pub event: JobEventKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobEventKind {
    Log { stream: LogStream, line: String },
    Stage { stage: Stage },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    FetchingSource,
    Unpacking,
    Running,
    Uploading,
    Finishing,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventAck {
    pub job_id: JobId,
    pub attempt: Attempt,
    /// Every event with `seq <= acked_seq` is stored; the builder may drop them.
    pub acked_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub active_jobs: Vec<JobRef>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobRef {
    pub job_id: JobId,
    pub attempt: Attempt,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResponse {
    pub job_id: JobId,
    pub attempt: Attempt,
    pub outcome: Outcome,
    pub exit_status: Option<i32>,
    pub error: Option<BuildError>,
    pub artifacts: Vec<ArtifactDigest>,
    /// What the recipe would produce; present in plan mode only.
    pub plan: Option<String>,
    pub statement: SignedStatement,
    /// The DSSE signature (base64 of the raw signature, `crate::dsse`) by the same key over
    /// PAE(`application/vnd.in-toto+json`, the statement text). Sent by builders that write
    /// in-toto statements; absent from older builders' responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dsse_signature: Option<String>,
    /// The reproduction statement (`crate::provenance::reproduction_statement`), signed both
    /// ways; sent with every succeeded build-mode attempt by builders that write in-toto
    /// statements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reproduction: Option<SignedReproduction>,
}

/// The reproduction statement of a succeeded build and its two signatures by the builder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedReproduction {
    /// The exact text signed.
    pub statement: String,
    /// Armored SSHSIG, namespace `buildfleet-statement`.
    pub signature: String,
    /// Base64 DSSE signature over PAE of the text.
    pub dsse_signature: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
            Outcome::TimedOut => "timed_out",
        }
    }
}

/// Why a build did not succeed, with a stable `kind` for metrics and the dashboard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildError {
    pub kind: BuildErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildErrorKind {
    SourceFetch,
    SourceDigestMismatch,
    SourceTooLarge,
    UnsafeArchive,
    UnknownRecipe,
    CommandFailed,
    ArtifactMissing,
    Upload,
    TimedOut,
    Cancelled,
    Internal,
}

impl BuildErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildErrorKind::SourceFetch => "source_fetch",
            BuildErrorKind::SourceDigestMismatch => "source_digest_mismatch",
            BuildErrorKind::SourceTooLarge => "source_too_large",
            BuildErrorKind::UnsafeArchive => "unsafe_archive",
            BuildErrorKind::UnknownRecipe => "unknown_recipe",
            BuildErrorKind::CommandFailed => "command_failed",
            BuildErrorKind::ArtifactMissing => "artifact_missing",
            BuildErrorKind::Upload => "upload",
            BuildErrorKind::TimedOut => "timed_out",
            BuildErrorKind::Cancelled => "cancelled",
            BuildErrorKind::Internal => "internal",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactDigest {
    pub name: String,
    pub size: u64,
    pub sha256: Sha256Digest,
}

/// The exact bytes that were signed, and their armored SSHSIG. The bytes are kept verbatim
/// (not re-serialised) so that `ssh-keygen -Y verify` checks what is served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedStatement {
    pub statement: String,
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletionAck {
    pub job_id: JobId,
    pub attempt: Attempt,
    pub result: CompletionResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CompletionResult {
    /// Stored; the builder forgets the job.
    Accepted,
    /// Refused for good (stale attempt, bad statement); the builder forgets the job too.
    Refused { code: ErrorCode, message: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    pub code: ErrorCode,
    pub message: String,
}

/// Stable error codes of `error` and `auth_rejected` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, or not a known message.
    MalformedFrame,
    /// Larger than `max_frame_bytes`.
    FrameTooLarge,
    /// A binary frame; the protocol uses text frames only.
    UnsupportedFrame,
    /// A valid message at the wrong time (e.g. `job_request` before authentication).
    UnexpectedMessage,
    /// A message naming a job or attempt this session does not hold.
    UnknownJob,
    UnsupportedVersion,
    UnknownBuilder,
    BuilderDisabled,
    /// Bad signature, or a challenge answered twice.
    AuthFailed,
    ChallengeExpired,
    /// Too many failed attempts from this address; try again later.
    TooManyAttempts,
    /// The attempt is not the job's current one.
    StaleAttempt,
    /// The build statement does not verify or does not match the uploads.
    InvalidStatement,
    /// No heartbeat or pong within the timeout.
    HeartbeatTimeout,
    /// A newer connection of the same builder took over.
    SessionReplaced,
    /// The builder was disabled or removed by an operator.
    BuilderRevoked,
    ShuttingDown,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedFrame => "malformed_frame",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::UnsupportedFrame => "unsupported_frame",
            ErrorCode::UnexpectedMessage => "unexpected_message",
            ErrorCode::UnknownJob => "unknown_job",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::UnknownBuilder => "unknown_builder",
            ErrorCode::BuilderDisabled => "builder_disabled",
            ErrorCode::AuthFailed => "auth_failed",
            ErrorCode::ChallengeExpired => "challenge_expired",
            ErrorCode::TooManyAttempts => "too_many_attempts",
            ErrorCode::StaleAttempt => "stale_attempt",
            ErrorCode::InvalidStatement => "invalid_statement",
            ErrorCode::HeartbeatTimeout => "heartbeat_timeout",
            ErrorCode::SessionReplaced => "session_replaced",
            ErrorCode::BuilderRevoked => "builder_revoked",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal",
        }
    }
}

impl ClientMessage {
    /// Every `type` tag of this direction, for documentation coverage checks.
    pub const TYPES: &'static [&'static str] = &[
        "hello",
        "challenge_response",
        "capabilities",
        "resume",
        "job_request",
        "work_ack",
        "job_event",
        "heartbeat",
        "job_response",
    ];

    /// The `type` tag of this message (exhaustive, so a new variant must be named here).
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientMessage::Hello(_) => "hello",
            ClientMessage::ChallengeResponse(_) => "challenge_response",
            ClientMessage::Capabilities(_) => "capabilities",
            ClientMessage::Resume(_) => "resume",
            ClientMessage::JobRequest(_) => "job_request",
            ClientMessage::WorkAck(_) => "work_ack",
            ClientMessage::JobEvent(_) => "job_event",
            ClientMessage::Heartbeat(_) => "heartbeat",
            ClientMessage::JobResponse(_) => "job_response",
        }
    }
}

impl ServerMessage {
    /// Every `type` tag of this direction, for documentation coverage checks.
    pub const TYPES: &'static [&'static str] = &[
        "challenge_request",
        "auth_accepted",
        "auth_rejected",
        "resume_result",
        "jobs",
        "cancel",
        "control",
        "event_ack",
        "completion_ack",
        "error",
    ];

    /// The `type` tag of this message (exhaustive, so a new variant must be named here).
    pub fn type_name(&self) -> &'static str {
        match self {
            ServerMessage::ChallengeRequest(_) => "challenge_request",
            ServerMessage::AuthAccepted(_) => "auth_accepted",
            ServerMessage::AuthRejected(_) => "auth_rejected",
            ServerMessage::ResumeResult(_) => "resume_result",
            ServerMessage::Jobs(_) => "jobs",
            ServerMessage::Cancel(_) => "cancel",
            ServerMessage::Control(_) => "control",
            ServerMessage::EventAck(_) => "event_ack",
            ServerMessage::CompletionAck(_) => "completion_ack",
            ServerMessage::Error(_) => "error",
        }
    }
}
