//! Store rows into the API's bodies ([`buildfleet_api`]): the one place the wire shape of an
//! answer is made, so a store change cannot change an answer unnoticed (the snapshot tests
//! in `tests/server_snapshots.rs` pin them).

use std::collections::{BTreeSet, HashMap};

use buildfleet_api as api;

use crate::actors::scheduler::LiveBuilder;
use crate::error::ApiError;
use crate::http::auth::Access;
use crate::job_feed::JobChange;
use crate::store::{
    Artifact, Builder, EnrolmentToken, Job, JobAttempt, JobTransition, ProjectId, Store, StoreError,
};

/// Project names (`organisation/project`) by id, read once per request: names never change,
/// and a job names its project by id.
pub struct ProjectNames(HashMap<ProjectId, String>);

impl ProjectNames {
    pub fn load(store: &Store) -> Result<ProjectNames, StoreError> {
        Ok(ProjectNames(
            store
                .list_projects()?
                .into_iter()
                .map(|p| (p.id, p.slug()))
                .collect(),
        ))
    }

    /// The name of `id`. Every job's project exists (the store checks it on insert), so a
    /// missing one is corruption, said as such.
    pub fn name(&self, id: ProjectId) -> Result<String, ApiError> {
        self.0.get(&id).cloned().ok_or_else(|| {
            ApiError::internal(anyhow::anyhow!("project {id} of a job does not exist"))
        })
    }

    /// The names of the projects `access` sees.
    pub fn seen_by(&self, access: &Access) -> BTreeSet<String> {
        self.0
            .iter()
            .filter(|(id, _)| access.sees(**id))
            .map(|(_, name)| name.clone())
            .collect()
    }

    /// A job as the API shows it.
    pub fn job(&self, job: Job) -> Result<api::Job, ApiError> {
        let project = self.name(job.project)?;
        Ok(job_view(job, project))
    }

    pub fn jobs(&self, jobs: Vec<Job>) -> Result<Vec<api::Job>, ApiError> {
        jobs.into_iter().map(|j| self.job(j)).collect()
    }
}

/// A job as the API shows it, with its project's name.
pub fn job_view(job: Job, project: String) -> api::Job {
    api::Job {
        project,
        id: job.id.0,
        source_url: job.source_url,
        source_sha256: job.source_sha256,
        source_max_bytes: job.source_max_bytes,
        recipe: job.recipe,
        parameters: job.parameters,
        required_labels: job.required_labels,
        annotations: job.annotations,
        mode: job.mode,
        priority: job.priority,
        state: job.state,
        attempt: job.attempt.0,
        max_attempts: job.max_attempts,
        failed_attempts: job.failed_attempts,
        retry: job.retry,
        retry_not_before: job.retry_not_before,
        manual_retries: job.manual_retries,
        timeout_secs: job.timeout_secs,
        submitter: job.submitter,
        created_at: job.created_at,
        updated_at: job.updated_at,
        started_at: job.started_at,
        finished_at: job.finished_at,
        cancel_requested_at: job.cancel_requested_at,
        error: job.error,
        builder_id: job.builder_id.map(|b| b.0),
        reproduce: job.reproduce,
        on_mismatch: job.on_mismatch,
    }
}

impl From<JobAttempt> for api::Attempt {
    fn from(a: JobAttempt) -> Self {
        api::Attempt {
            job: a.job.0,
            attempt: a.attempt.0,
            builder: a.builder.map(|b| b.0),
            token_valid: a.token_valid,
            lease_expires_at: a.lease_expires_at,
            outcome: a.outcome,
            exit_status: a.exit_status,
            error: a.error,
            started_because: a.started_because,
            assigned_at: a.assigned_at,
            started_at: a.started_at,
            finished_at: a.finished_at,
        }
    }
}

impl From<JobTransition> for api::Transition {
    fn from(t: JobTransition) -> Self {
        api::Transition {
            id: t.id,
            job: t.job.0,
            attempt: t.attempt.0,
            from: t.from,
            to: t.to,
            at: t.at,
            detail: t.detail,
        }
    }
}

/// A published artifact with its download URL. A negative stored size is corruption, and
/// an error rather than a plausible number.
pub fn artifact(public_url: &str, a: Artifact) -> Result<api::Artifact, ApiError> {
    let size = u64::try_from(a.size).map_err(|_| {
        ApiError::internal(anyhow::anyhow!(
            "artifact {} of job {} has a negative stored size {}",
            a.name,
            a.job,
            a.size
        ))
    })?;
    Ok(api::Artifact {
        url: format!("{public_url}/api/v1/jobs/{}/artifacts/{}", a.job, a.name),
        name: a.name,
        size,
        sha256: a.sha256,
        attempt: a.attempt.0,
    })
}

impl From<Builder> for api::BuilderRecord {
    fn from(b: Builder) -> Self {
        api::BuilderRecord {
            id: b.id.0,
            name: b.name,
            public_key: b.public_key,
            fingerprint: b.fingerprint,
            enabled: b.enabled,
            labels: b.labels,
            created_at: b.created_at,
            last_seen_at: b.last_seen_at,
        }
    }
}

impl From<LiveBuilder> for api::LiveBuilder {
    fn from(l: LiveBuilder) -> Self {
        api::LiveBuilder {
            id: l.id.0,
            recipes: l.recipes,
            max_concurrent: l.max_concurrent,
            active_jobs: l.active_jobs,
            credits: l.credits,
            paused: l.paused,
            draining: l.draining,
            declared_labels: l.declared_labels,
            effective_labels: l.effective_labels,
        }
    }
}

/// A builder with what the scheduler sees of it while connected.
pub fn builder(record: Builder, live: Option<LiveBuilder>) -> api::Builder {
    api::Builder {
        record: record.into(),
        connected: live.is_some(),
        live: live.map(Into::into),
        projects: Vec::new(),
    }
}

/// An enrolment token as seen at `now`.
pub fn enrolment_token(token: EnrolmentToken, now: i64) -> api::EnrolmentToken {
    api::EnrolmentToken {
        usable: token.is_usable(now),
        id: token.id.0,
        labels: token.labels,
        max_uses: token.max_uses,
        uses: token.uses,
        created_at: token.created_at,
        expires_at: token.expires_at,
        revoked_at: token.revoked_at,
        last_used_at: token.last_used_at,
    }
}

impl From<&JobChange> for api::JobChange {
    fn from(c: &JobChange) -> Self {
        api::JobChange {
            job: c.job.0,
            state: c.state,
            attempt: c.attempt.0,
            recipe: c.recipe.clone(),
            builder: c.builder.map(|b| b.0),
            error: c.error.clone(),
            at: c.at,
        }
    }
}
