//! The REST API's bodies, one definition for every side: the server serialises these, and
//! the CLI, the benchmarks and the tests read them. Field order and names are the wire
//! format (`docs/api.md`); the server converts its store rows into these at the edge, so a
//! store change cannot change an answer by accident.
//!
//! Identifiers are plain integers here: typed ids are the server's business.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod builders;
pub mod error;
pub mod jobs;
pub mod notifications;
pub mod projects;
pub mod registry;
pub mod reproduction;
pub mod sources;
pub mod state;

pub use builders::{
    AdmitBuilder, Builder, BuilderList, BuilderRecord, CreateEnrolmentToken, CreatedEnrolmentToken,
    Enrol, Enrolled, EnrolmentToken, EnrolmentTokenList, LiveBuilder, SetBuilderProjects,
};
pub use error::{ErrorBody, ErrorDetail};
pub use jobs::{
    Artifact, ArtifactList, Attempt, ExitCodes, Job, JobChange, JobDetail, JobEnd, JobList,
    ListJobs, QueueStanding, RetryPolicy, SubmitJob, Transition, UploadedArtifact,
};
pub use projects::{
    ApiToken, CreateProject, CreateToken, CreatedToken, Project, ProjectList, TokenList,
    TokenScope, UpdateProject,
};
pub use registry::{
    Backfill, BackfillResult, CrateBuild, CrateDetail, CrateVersion, RegistryStatus,
};
pub use reproduction::{
    ArchiveEntry, ArtifactDiff, EntryDiff, Reproduction, ReproductionEvidence, ReproductionRun,
    ReproductionVerdict, RunArtifact,
};
pub use sources::UploadedSource;
pub use state::{
    AttemptCause, AttemptOutcome, JobMode, JobState, OnMismatch, UnknownValue, MAX_REPRODUCE,
};

/// Labels, parameters: ordered so answers are stable.
pub type Labels = std::collections::BTreeMap<String, String>;

/// A job's annotations (`crate`, `version`, `commit`, …): ordered so answers and signed
/// statements are stable.
pub type Annotations = std::collections::BTreeMap<String, String>;
