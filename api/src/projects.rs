//! Projects (owned by organisations) and the API tokens scoped to them.
//!
//! A project is named `organisation/project` everywhere (`name` in these bodies, `project` in
//! a job submission and on a job).

use serde::{Deserialize, Serialize};

/// `POST /api/v1/projects` (admin): creates the project, and its organisation when new.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    /// `organisation/project`: each part 1 to 64 bytes of `[a-z0-9_.-]`, starting with a
    /// letter or digit.
    pub name: String,
    /// Readable without a token (jobs, logs, artifacts, statements). Default: private.
    #[serde(default)]
    pub public: bool,
    /// Fair-share weight, 1 to 1000 (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
}

/// `PATCH /api/v1/projects/{organisation}/{project}` (admin); absent fields stay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateProject {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
    /// How many independent builders must reproduce the project's jobs that name no
    /// `reproduce` (1 to 5; 1: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reproduce: Option<i32>,
}

/// A project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    pub id: i64,
    /// `organisation/project`.
    pub name: String,
    pub organisation: String,
    pub public: bool,
    pub weight: i32,
    pub created_at: i64,
    /// The default `reproduce` of its jobs (omitted: 1, no reproduction).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub reproduce: i32,
}

fn one() -> i32 {
    1
}

fn is_one(k: &i32) -> bool {
    *k == 1
}

/// `GET /api/v1/projects`: the projects the caller may see, by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectList {
    pub projects: Vec<Project>,
}

/// What an API token may do, within its project (or everywhere, for a token of no project).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenScope {
    /// See the project's jobs, logs, artifacts and builders.
    Read,
    /// Read, and submit, cancel and retry jobs.
    Submit,
    /// Submit, and manage the project's tokens; for a token of no project, everything the
    /// admin token may do.
    Admin,
}

/// `POST /api/v1/tokens`: a project's admin token may create tokens of its project (up to its
/// own scope); the admin token may create any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// `organisation/project`; omitted: a token of the whole service (admin token only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    pub scope: TokenScope,
    /// What the token is for, shown in listings (1 to 200 bytes).
    pub description: String,
    /// Lifetime in seconds; omitted: the token lives until revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<u64>,
}

/// An API token, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    pub id: i64,
    /// `organisation/project`, or `None` for a token of the whole service.
    pub project: Option<String>,
    pub scope: TokenScope,
    pub description: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// Whether it is accepted now (neither expired nor revoked).
    pub live: bool,
}

/// The answer to creating a token: the only time its secret is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub token: ApiToken,
    /// The bearer secret (`bfapi_…`); only its SHA-256 is stored.
    pub secret: String,
}

/// `GET /api/v1/tokens`: the tokens the caller may manage, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenList {
    pub tokens: Vec<ApiToken>,
}
