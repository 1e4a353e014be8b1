//! The registry follower's REST bodies: its status, a crate's versions and builds, backfills.

use serde::{Deserialize, Serialize};

use crate::JobState;

/// `POST /api/v1/registry/backfill`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backfill {
    #[serde(rename = "crate")]
    pub krate: String,
    /// A semver requirement (`>=1.2, <2`); every version when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<String>,
}

/// The answer to a backfill: the versions that matched (not yanked) and the jobs queued
/// (none for builds queued before).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillResult {
    #[serde(rename = "crate")]
    pub krate: String,
    pub versions: Vec<String>,
    pub queued_jobs: Vec<i64>,
}

/// `GET /api/v1/registry`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryStatus {
    pub name: String,
    /// `git` or `sparse`.
    pub protocol: String,
    pub index: String,
    /// The watch list (every crate of a git index when empty).
    pub crates: Vec<String>,
    /// The git index commit processed last.
    pub position: Option<String>,
    pub last_fetch_at: Option<i64>,
    pub last_error: Option<String>,
    /// The latest versions skipped (deny list), newest first.
    pub skipped: Vec<CrateVersion>,
    /// The latest versions queued, newest first.
    pub recent: Vec<CrateVersion>,
}

/// `GET /api/v1/crates/{name}`: what the follower saw of a crate and built of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrateDetail {
    #[serde(rename = "crate")]
    pub krate: String,
    pub registry: String,
    pub versions: Vec<CrateVersion>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrateVersion {
    #[serde(rename = "crate")]
    pub krate: String,
    pub version: String,
    /// The SHA-256 the index gives for the `.crate` file.
    pub cksum: String,
    pub yanked: bool,
    /// `existing` (published before following began), `queued`, `skipped`, `yanked`.
    pub status: String,
    pub reason: Option<String>,
    pub seen_at: i64,
    pub builds: Vec<CrateBuild>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrateBuild {
    /// Empty: the builder's own target.
    pub target: String,
    pub recipe: String,
    pub job: i64,
    pub state: JobState,
    pub backfill: bool,
}
