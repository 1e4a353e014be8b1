//! Reads behind a queued job's standing: the work ahead of it and how long similar jobs ran.

use diesel::prelude::*;

use super::error::StoreError;
use super::labels::{self, Labels};
use super::schema::{job_annotations, jobs};
use super::{annotations, Job, JobState, Store};

impl Store {
    /// The required labels of the queued jobs before `job` in claim order (higher priority,
    /// or the same priority and older) whose recipe is one of `recipes`; at most `cap`.
    pub fn queued_ahead(
        &self,
        job: &Job,
        recipes: &[String],
        cap: i64,
    ) -> Result<Vec<Labels>, StoreError> {
        let ahead = jobs::priority
            .gt(job.priority)
            .or(jobs::priority.eq(job.priority).and(jobs::id.lt(job.id.0)));
        jobs::table
            .filter(jobs::state.eq(JobState::Queued.as_str()))
            .filter(jobs::recipe.eq_any(recipes))
            .filter(ahead)
            .order((jobs::priority.desc(), jobs::id.asc()))
            .limit(cap)
            .select(jobs::required_labels)
            .load::<String>(&mut *self.conn()?)?
            .iter()
            .map(|raw| labels::decode("jobs.required_labels", raw))
            .collect()
    }

    /// Run times in milliseconds of the latest `limit` successful jobs of `recipe`, only
    /// those annotated `crate=<krate>` when a crate is given.
    pub fn recent_run_times(
        &self,
        recipe: &str,
        krate: Option<&str>,
        limit: i64,
    ) -> Result<Vec<i64>, StoreError> {
        let mut query = jobs::table
            .filter(jobs::state.eq(JobState::Succeeded.as_str()))
            .filter(jobs::recipe.eq(recipe.to_owned()))
            .select((jobs::started_at, jobs::finished_at))
            .into_boxed();
        if let Some(krate) = krate {
            query = query.filter(
                jobs::id.eq_any(
                    job_annotations::table
                        .select(job_annotations::job_id)
                        .filter(job_annotations::key.eq("crate"))
                        .filter(job_annotations::value_sha256.eq(annotations::value_digest(krate))),
                ),
            );
        }
        Ok(query
            .order(jobs::id.desc())
            .limit(limit)
            .load::<(Option<i64>, Option<i64>)>(&mut *self.conn()?)?
            .into_iter()
            .filter_map(|(started, finished)| Some(finished? - started?))
            .filter(|ms| *ms >= 0)
            .collect())
    }
}
