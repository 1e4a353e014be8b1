//! Builders: admission, enrolment, and what the scheduler sees of a connected one.

use serde::{Deserialize, Serialize};

use crate::Labels;

/// `POST /api/v1/builders`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmitBuilder {
    pub name: String,
    /// One OpenSSH public key line (`ssh-ed25519 AAAA… comment`).
    pub public_key: String,
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
}

/// An admitted builder as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuilderRecord {
    pub id: i64,
    pub name: String,
    /// The OpenSSH public key line, as admitted.
    pub public_key: String,
    /// `SHA256:…` as `ssh-keygen -lf` prints it.
    pub fingerprint: String,
    pub enabled: bool,
    /// Set by the operator; authoritative over what the builder declares.
    pub labels: Labels,
    pub created_at: i64,
    pub last_seen_at: Option<i64>,
}

/// `GET /api/v1/builders/{id}`: the record and, while connected, what the scheduler sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Builder {
    #[serde(flatten)]
    pub record: BuilderRecord,
    pub connected: bool,
    pub live: Option<LiveBuilder>,
    /// The projects (`organisation/project`) the builder is private to; empty when it is
    /// shared by all projects.
    #[serde(default)]
    pub projects: Vec<String>,
}

/// `PUT /api/v1/builders/{id}/projects`: make a builder private to these projects (`[]`:
/// shared by all again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetBuilderProjects {
    /// `organisation/project` names.
    pub projects: Vec<String>,
}

/// `GET /api/v1/builders`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuilderList {
    pub builders: Vec<Builder>,
}

/// A connected builder's session as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveBuilder {
    pub id: i64,
    pub recipes: Vec<String>,
    pub max_concurrent: u32,
    pub active_jobs: usize,
    pub credits: u32,
    pub paused: bool,
    pub draining: bool,
    /// What the builder announced, and what matching uses of it with the operator's labels.
    pub declared_labels: Labels,
    pub effective_labels: Labels,
}

/// `POST /api/v1/enrolment-tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEnrolmentToken {
    pub max_uses: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    /// Labels every builder enrolled with this token gets.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
}

/// An enrolment token, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolmentToken {
    pub id: i64,
    /// Labels given to every builder enrolled with this token.
    pub labels: Labels,
    pub max_uses: i32,
    pub uses: i32,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
    /// Whether a builder could enrol with it now.
    pub usable: bool,
}

/// The answer to creating a token: the only time its secret is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedEnrolmentToken {
    #[serde(flatten)]
    pub token: EnrolmentToken,
    #[serde(rename = "token")]
    pub secret: String,
}

/// `GET /api/v1/enrolment-tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolmentTokenList {
    pub enrolment_tokens: Vec<EnrolmentToken>,
}

/// `POST /api/v1/enrol`: a builder admits itself with a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrol {
    pub token: String,
    pub name: String,
    /// One OpenSSH public key line (`ssh-ed25519 AAAA… comment`).
    pub public_key: String,
}

/// The answer to an enrolment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrolled {
    pub builder: BuilderRecord,
    pub enrolment_token: i64,
}

/// `POST /api/v1/builders/{id}/keys` (admin): rotate the builder to this key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateBuilderKey {
    /// One OpenSSH public key line (`ssh-ed25519 AAAA… comment`).
    pub public_key: String,
}

/// `POST /api/v1/builders/{id}/keys/{fingerprint}/revoke` (admin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeBuilderKey {
    /// Why (shown beside every job the key signed); one line, at most 500 bytes.
    pub reason: String,
}

/// One key of a builder's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuilderKey {
    /// The OpenSSH public key line, as admitted.
    pub public_key: String,
    /// `SHA256:…` as `ssh-keygen -lf` prints it.
    pub fingerprint: String,
    /// Unix milliseconds from which the key signs for the builder.
    pub valid_after: i64,
    /// Unix milliseconds until which it did: set when it was rotated out.
    pub valid_before: Option<i64>,
    pub revoked_at: Option<i64>,
    pub revoked_reason: Option<String>,
    /// The key the builder authenticates with now.
    pub current: bool,
}

/// `GET /api/v1/builders/{id}/keys`: the builder's keys, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuilderKeyList {
    pub builder: i64,
    pub name: String,
    pub keys: Vec<BuilderKey>,
}
