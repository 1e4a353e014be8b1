//! Fair share between projects: the builder time each project used over a sliding window,
//! and the arithmetic that gives a free slot to the project furthest below its share.
//!
//! Hydra's jobset scheduling shares are the model: a project's standing is the builder time
//! it used in the window divided by its weight, and the project with the lowest standing
//! goes next. Unlike Hydra, work handed out but not finished counts too (at the project's
//! recent mean run time), so a claim of several slots, or claims in quick succession, do not
//! all go to the project that was lowest before any of them.

use std::collections::BTreeMap;

use diesel::prelude::*;
use diesel::sql_types::BigInt;

use super::connection::DbConnection;
use super::error::StoreError;
use super::ids::{Attempt, BuilderId, JobId};
use super::schema::{builder_projects, job_attempts, jobs, organisations, project_usage, projects};
use super::state::JobState;
use super::Store;

/// Usage is summed per minute: a window is a range of buckets, and a project's usage rows
/// stay few.
pub const USAGE_BUCKET_MS: i64 = 60_000;
/// The longest window the configuration accepts; usage older than it is deleted.
pub const MAX_WINDOW_MS: i64 = 7 * 24 * 3600 * 1000;
/// The default `[scheduler] fair_share_window_secs`, in ms.
pub const DEFAULT_WINDOW_MS: i64 = 3600 * 1000;
/// Expected run time of an attempt when no project finished one in the window.
pub const DEFAULT_EXPECTED_MS: i64 = 60_000;
/// Submissions take priorities up to this; above it is the admin's global boost, served
/// before every project's work whatever the shares say.
pub const MAX_SUBMIT_PRIORITY: i32 = 1000;
/// The priority `POST /jobs/{id}/boost` gives a job.
pub const BOOST_PRIORITY: i32 = MAX_SUBMIT_PRIORITY + 1;

/// A project with queued work, and how much of the builders' time it has had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProjectStanding {
    pub project: i64,
    pub weight: i32,
    /// Builder time used in the window plus the expected time of its unfinished attempts.
    pub charged_ms: i64,
    /// What one more attempt is expected to take.
    pub expected_ms: i64,
}

/// Hands slots out one at a time to the project with the lowest `charged / weight`,
/// charging each pick its expected time.
#[derive(Debug, Clone)]
pub struct FairShare {
    standings: Vec<ProjectStanding>,
}

impl FairShare {
    pub fn new(standings: Vec<ProjectStanding>) -> FairShare {
        FairShare { standings }
    }

    /// The project that should get the next slot: lowest standing; on a tie the heavier
    /// weight, then the lower id, so the choice is deterministic.
    pub fn next(&self) -> Option<i64> {
        self.standings
            .iter()
            .min_by(|a, b| {
                // charged_a / weight_a against charged_b / weight_b without division.
                let left = i128::from(a.charged_ms) * i128::from(b.weight);
                let right = i128::from(b.charged_ms) * i128::from(a.weight);
                left.cmp(&right)
                    .then(b.weight.cmp(&a.weight))
                    .then(a.project.cmp(&b.project))
            })
            .map(|s| s.project)
    }

    /// The project got a slot: its standing grows by one expected run.
    pub fn charge(&mut self, project: i64) {
        if let Some(s) = self.standings.iter_mut().find(|s| s.project == project) {
            s.charged_ms = s.charged_ms.saturating_add(s.expected_ms);
        }
    }

    /// The project has no more work this builder can take.
    pub fn remove(&mut self, project: i64) {
        self.standings.retain(|s| s.project != project);
    }
}

/// Builder time of a project in the window: what ended there, and how many attempts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowUsage {
    pub used_ms: i64,
    pub attempts: i64,
    /// Attempts handed out and not finished.
    pub unfinished: i64,
}

/// Turns each project's usage into its standing. A project's expected run time is its own
/// mean in the window, else the mean of all of them (a new project's first jobs cost what
/// everyone's do), else [`DEFAULT_EXPECTED_MS`]; never below 1 ms, so every pick counts.
pub fn standings(
    waiting: &[(i64, i32)],
    usage: &BTreeMap<i64, WindowUsage>,
) -> Vec<ProjectStanding> {
    let (total_ms, total_attempts) = usage.values().fold((0i64, 0i64), |(ms, n), u| {
        (ms.saturating_add(u.used_ms), n.saturating_add(u.attempts))
    });
    let overall = mean(total_ms, total_attempts).unwrap_or(DEFAULT_EXPECTED_MS);
    waiting
        .iter()
        .map(|&(project, weight)| {
            let u = usage.get(&project).copied().unwrap_or_default();
            let expected_ms = mean(u.used_ms, u.attempts).unwrap_or(overall).max(1);
            ProjectStanding {
                project,
                weight: weight.max(1),
                charged_ms: u
                    .used_ms
                    .saturating_add(u.unfinished.saturating_mul(expected_ms)),
                expected_ms,
            }
        })
        .collect()
}

fn mean(total_ms: i64, count: i64) -> Option<i64> {
    (count > 0).then(|| total_ms / count)
}

fn bucket_of(now: i64) -> i64 {
    now - now.rem_euclid(USAGE_BUCKET_MS)
}

/// Adds an ended attempt's slot time (assignment to `now`) to its project's usage. Called in
/// the transaction that ends the attempt, so usage and attempts never disagree.
pub(crate) fn record_attempt_usage(
    conn: &mut DbConnection,
    job: JobId,
    attempt: Attempt,
    now: i64,
) -> Result<(), StoreError> {
    let Some((project, assigned_at)) = jobs::table
        .inner_join(job_attempts::table)
        .filter(jobs::id.eq(job.0))
        .filter(job_attempts::attempt.eq(attempt.0))
        .select((jobs::project_id, job_attempts::assigned_at))
        .first::<(i64, i64)>(conn)
        .optional()?
    else {
        return Ok(());
    };
    let used = now.saturating_sub(assigned_at).max(0);
    let bucket = bucket_of(now);
    // The usual case, a bucket that exists, is one update; the first attempt of a minute
    // inserts (racing inserts of other transactions meet in ON CONFLICT) and prunes the
    // project's usage older than any window.
    let updated = diesel::update(
        project_usage::table
            .filter(project_usage::project_id.eq(project))
            .filter(project_usage::bucket_start.eq(bucket)),
    )
    .set((
        project_usage::used_ms.eq(project_usage::used_ms + used),
        project_usage::attempts.eq(project_usage::attempts + 1),
    ))
    .execute(conn)?;
    if updated > 0 {
        return Ok(());
    }
    let upsert = |placeholder: fn(usize) -> String| {
        format!(
            "INSERT INTO project_usage (project_id, bucket_start, used_ms, attempts) \
             VALUES ({}, {}, {}, 1) ON CONFLICT (project_id, bucket_start) DO UPDATE SET \
             used_ms = project_usage.used_ms + excluded.used_ms, \
             attempts = project_usage.attempts + 1",
            placeholder(1),
            placeholder(2),
            placeholder(3)
        )
    };
    match conn {
        DbConnection::Postgresql(pg) => diesel::sql_query(upsert(|n| format!("${n}")))
            .bind::<BigInt, _>(project)
            .bind::<BigInt, _>(bucket)
            .bind::<BigInt, _>(used)
            .execute(pg)?,
        DbConnection::Sqlite(lite) => diesel::sql_query(upsert(|_| "?".to_owned()))
            .bind::<BigInt, _>(project)
            .bind::<BigInt, _>(bucket)
            .bind::<BigInt, _>(used)
            .execute(lite)?,
    };
    diesel::delete(
        project_usage::table
            .filter(project_usage::project_id.eq(project))
            .filter(project_usage::bucket_start.lt(bucket - MAX_WINDOW_MS - USAGE_BUCKET_MS)),
    )
    .execute(conn)?;
    Ok(())
}

/// The projects (with their weights) that have queued work of `recipes`, among `allowed`
/// when the builder is private. One query: a probe of the project queue index per project.
pub(crate) fn projects_with_work(
    conn: &mut DbConnection,
    recipes: &[String],
    allowed: Option<&[i64]>,
) -> Result<Vec<(i64, i32)>, StoreError> {
    let queued = jobs::table
        .filter(jobs::project_id.eq(projects::id))
        .filter(jobs::state.eq(JobState::Queued.as_str()))
        // As the claim does: a job waiting out a retry's back-off is not work yet.
        .filter(jobs::retry_not_before.is_null())
        .filter(jobs::recipe.eq_any(recipes));
    let mut query = projects::table
        .filter(diesel::dsl::exists(queued))
        .select((projects::id, projects::weight))
        .order(projects::id.asc())
        .into_boxed();
    if let Some(allowed) = allowed {
        query = query.filter(projects::id.eq_any(allowed.to_vec()));
    }
    Ok(query.load(conn)?)
}

/// Each project's usage in the window ending at `now`, and its unfinished attempts.
pub(crate) fn window_usage(
    conn: &mut DbConnection,
    projects_of_interest: &[i64],
    now: i64,
    window_ms: i64,
) -> Result<BTreeMap<i64, WindowUsage>, StoreError> {
    let since = bucket_of(now.saturating_sub(window_ms.clamp(0, MAX_WINDOW_MS)));
    let ids = projects_of_interest.to_vec();
    let rows: Vec<(i64, i64, i64)> = project_usage::table
        .filter(project_usage::project_id.eq_any(ids.clone()))
        .filter(project_usage::bucket_start.ge(since))
        .select((
            project_usage::project_id,
            project_usage::used_ms,
            project_usage::attempts,
        ))
        .load(conn)?;
    let mut usage: BTreeMap<i64, WindowUsage> = BTreeMap::new();
    for (project, used_ms, attempts) in rows {
        let u = usage.entry(project).or_default();
        u.used_ms = u.used_ms.saturating_add(used_ms);
        u.attempts = u.attempts.saturating_add(attempts);
    }
    let active = [JobState::Assigned.as_str(), JobState::Running.as_str()];
    let unfinished: Vec<i64> = jobs::table
        .filter(jobs::state.eq_any(active))
        .filter(jobs::project_id.eq_any(ids))
        .select(jobs::project_id)
        .load(conn)?;
    for project in unfinished {
        let u = usage.entry(project).or_default();
        u.unfinished = u.unfinished.saturating_add(1);
    }
    Ok(usage)
}

/// Why a boost was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum BoostRefused {
    NoSuchJob,
    /// Only a queued job can be put ahead of the queue.
    NotQueued(JobState),
}

impl Store {
    /// Puts a queued job ahead of every project's work (the admin's global boost): its
    /// priority becomes [`BOOST_PRIORITY`], so among boosted jobs the older goes first.
    pub fn boost_job(&self, job: JobId) -> Result<Result<(), BoostRefused>, StoreError> {
        let now = self.now_ms();
        self.write(|conn| {
            let state: Option<String> = jobs::table
                .find(job.0)
                .select(jobs::state)
                .first(conn)
                .optional()?;
            let Some(state) = state else {
                return Ok(Err(BoostRefused::NoSuchJob));
            };
            let state: JobState = super::jobs::parse_column(&state)?;
            if state != JobState::Queued {
                return Ok(Err(BoostRefused::NotQueued(state)));
            }
            diesel::update(jobs::table.find(job.0))
                .set((jobs::priority.eq(BOOST_PRIORITY), jobs::updated_at.eq(now)))
                .execute(conn)?;
            Ok(Ok(()))
        })
    }

    /// Builder time (ms) each of `projects` used in the window ending now, by project id.
    pub fn project_usage_in_window(
        &self,
        projects: &[super::ids::ProjectId],
        window_ms: i64,
    ) -> Result<BTreeMap<i64, i64>, StoreError> {
        let ids: Vec<i64> = projects.iter().map(|p| p.0).collect();
        let usage = window_usage(&mut *self.conn()?, &ids, self.now_ms(), window_ms)?;
        Ok(ids
            .iter()
            .map(|id| (*id, usage.get(id).map_or(0, |u| u.used_ms)))
            .collect())
    }

    /// Project slugs (`organisation/project`) of every private builder, by builder.
    pub fn builder_project_slugs(&self) -> Result<BTreeMap<BuilderId, Vec<String>>, StoreError> {
        let rows: Vec<(i64, String, String)> = builder_projects::table
            .inner_join(projects::table.inner_join(organisations::table))
            .order((
                builder_projects::builder_id.asc(),
                organisations::name.asc(),
                projects::name.asc(),
            ))
            .select((
                builder_projects::builder_id,
                organisations::name,
                projects::name,
            ))
            .load(&mut *self.conn()?)?;
        let mut slugs: BTreeMap<BuilderId, Vec<String>> = BTreeMap::new();
        for (builder, organisation, project) in rows {
            slugs
                .entry(BuilderId(builder))
                .or_default()
                .push(format!("{organisation}/{project}"));
        }
        Ok(slugs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standing(project: i64, weight: i32, charged_ms: i64, expected_ms: i64) -> ProjectStanding {
        ProjectStanding {
            project,
            weight,
            charged_ms,
            expected_ms,
        }
    }

    /// Hands out `slots` picks and counts them per project.
    fn picks(share: &mut FairShare, slots: usize) -> BTreeMap<i64, usize> {
        let mut counts = BTreeMap::new();
        for _ in 0..slots {
            let project = share.next().expect("a project");
            share.charge(project);
            *counts.entry(project).or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn the_lowest_standing_goes_first_and_weights_divide() {
        // 3000 ms at weight 3 stands at 1000; 1500 ms at weight 1 at 1500.
        let share = FairShare::new(vec![standing(1, 3, 3000, 10), standing(2, 1, 1500, 10)]);
        assert_eq!(share.next(), Some(1));
        let share = FairShare::new(vec![standing(1, 1, 3000, 10), standing(2, 1, 1500, 10)]);
        assert_eq!(share.next(), Some(2));
    }

    #[test]
    fn ties_go_to_the_heavier_weight_then_the_lower_id() {
        let share = FairShare::new(vec![standing(1, 1, 0, 10), standing(2, 3, 0, 10)]);
        assert_eq!(share.next(), Some(2));
        let share = FairShare::new(vec![standing(2, 1, 0, 10), standing(1, 1, 0, 10)]);
        assert_eq!(share.next(), Some(1));
        assert_eq!(FairShare::new(Vec::new()).next(), None);
    }

    #[test]
    fn weights_three_to_one_split_slots_three_to_one() {
        let mut share = FairShare::new(vec![standing(1, 3, 0, 100), standing(2, 1, 0, 100)]);
        let counts = picks(&mut share, 400);
        assert_eq!(counts.get(&1), Some(&300));
        assert_eq!(counts.get(&2), Some(&100));
    }

    #[test]
    fn a_newcomer_catches_up_before_the_busy_project_gets_more() {
        // Project 1 used 100 runs' worth; project 2 just queued: it gets the next 100 slots.
        let mut share = FairShare::new(vec![standing(1, 1, 100 * 50, 50), standing(2, 1, 0, 50)]);
        let counts = picks(&mut share, 100);
        assert_eq!(counts.get(&2), Some(&100));
        assert_eq!(counts.get(&1), None);
    }

    #[test]
    fn a_removed_project_is_not_picked() {
        let mut share = FairShare::new(vec![standing(1, 1, 0, 10), standing(2, 1, 5, 10)]);
        share.remove(1);
        assert_eq!(share.next(), Some(2));
        share.remove(2);
        assert_eq!(share.next(), None);
    }

    #[test]
    fn standings_count_unfinished_work_at_the_recent_mean() {
        let usage = BTreeMap::from([
            (
                1,
                WindowUsage {
                    used_ms: 1000,
                    attempts: 10,
                    unfinished: 4,
                },
            ),
            (
                2,
                WindowUsage {
                    used_ms: 0,
                    attempts: 0,
                    unfinished: 2,
                },
            ),
        ]);
        let got = standings(&[(1, 2), (2, 1), (3, 5)], &usage);
        // Project 1: 1000 ms + 4 unfinished × its mean of 100 ms.
        assert_eq!(got[0], standing(1, 2, 1400, 100));
        // Project 2 has no finished attempt: everyone's mean (100 ms) stands in.
        assert_eq!(got[1], standing(2, 1, 200, 100));
        // Project 3 has used nothing.
        assert_eq!(got[2], standing(3, 5, 0, 100));
        // Nobody finished anything: the default.
        let got = standings(&[(1, 1)], &BTreeMap::new());
        assert_eq!(got[0], standing(1, 1, 0, DEFAULT_EXPECTED_MS));
    }

    #[test]
    fn a_zero_mean_still_charges_each_pick() {
        let usage = BTreeMap::from([(
            1,
            WindowUsage {
                used_ms: 0,
                attempts: 5,
                unfinished: 0,
            },
        )]);
        assert_eq!(standings(&[(1, 1)], &usage)[0].expected_ms, 1);
    }

    #[test]
    fn buckets_are_minutes() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(59_999), 0);
        assert_eq!(bucket_of(60_000), 60_000);
        assert_eq!(bucket_of(-1), -60_000);
    }
}
