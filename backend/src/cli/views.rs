//! The parts of the API's JSON answers the CLI renders. `--json` prints the answers
//! themselves, so these only need the fields the tables show.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::store::JobState;

#[derive(Debug, Clone, Deserialize)]
pub struct BuilderView {
    pub id: i64,
    pub name: String,
    pub fingerprint: String,
    pub enabled: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub last_seen_at: Option<i64>,
    #[serde(default)]
    pub connected: bool,
    pub live: Option<LiveView>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LiveView {
    #[serde(default)]
    pub recipes: Vec<String>,
    pub max_concurrent: u32,
    pub active_jobs: usize,
    #[serde(default)]
    pub paused: bool,
    #[serde(default)]
    pub draining: bool,
    #[serde(default)]
    pub declared_labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct JobView {
    pub id: i64,
    pub source_url: String,
    pub source_sha256: String,
    pub recipe: String,
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    #[serde(default)]
    pub required_labels: BTreeMap<String, String>,
    pub mode: String,
    pub priority: i32,
    pub state: JobState,
    pub attempt: i32,
    pub max_attempts: i32,
    pub timeout_secs: i64,
    pub submitter: String,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub cancel_requested_at: Option<i64>,
    pub error: Option<String>,
    pub builder_id: Option<i64>,
}

/// `GET /jobs/{id}`: the job with its attempts, transitions and published artifacts.
#[derive(Debug, Clone, Deserialize)]
pub struct JobDetailView {
    #[serde(flatten)]
    pub job: JobView,
    #[serde(default)]
    pub attempts: Vec<AttemptView>,
    #[serde(default)]
    pub events: Vec<EventView>,
    #[serde(default)]
    pub artifacts: Vec<ArtifactView>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AttemptView {
    pub attempt: i32,
    pub builder: Option<i64>,
    pub outcome: Option<String>,
    pub exit_status: Option<i32>,
    pub error: Option<String>,
    pub assigned_at: i64,
    pub finished_at: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EventView {
    pub attempt: i32,
    pub from: Option<String>,
    pub to: String,
    pub at: i64,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ArtifactView {
    pub name: String,
    pub size: u64,
    pub sha256: String,
    pub attempt: i32,
}

/// Parses an API answer into a view; a shape we do not understand is the server's fault.
pub fn parse<T: serde::de::DeserializeOwned>(
    value: &serde_json::Value,
) -> Result<T, super::CliError> {
    T::deserialize(value)
        .map_err(|e| super::CliError::Network(format!("unexpected answer from the backend: {e}")))
}
