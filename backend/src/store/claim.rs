//! The claim: hand queued jobs to a builder, atomically, on either backend.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;

use super::builders::require_builder;
use super::connection::DbConnection;
use super::error::StoreError;
use super::fair_share::{self, FairShare, MAX_SUBMIT_PRIORITY};
use super::ids::{Attempt, BuilderId, JobId, ProjectId};
use super::jobs::{load_job_row, Job, JobRow};
use super::labels::{self, Labels};
use super::reproduction;
use super::schema::{job_attempts, jobs};
use super::secret;
use super::state::JobState;
use super::transitions::{apply_transition, JobChanges};
use super::Store;

/// A builder asking for work.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub builder: BuilderId,
    /// Recipes the builder knows.
    pub recipes: Vec<String>,
    /// Labels the builder offers now.
    pub labels: Labels,
    /// At most this many jobs (the builder's free slots).
    pub limit: usize,
    pub lease_ms: i64,
    pub now_ms: i64,
    /// Jobs this builder must not get now (it rejected them a moment ago).
    pub exclude: Vec<super::ids::JobId>,
    /// The projects whose jobs the builder may run: `None` for a shared builder (every
    /// project), `Some` for one private to those projects.
    pub projects: Option<Vec<ProjectId>>,
    /// The sliding window of builder time that fair share between projects looks at.
    pub fair_share_window_ms: i64,
}

/// A job handed to a builder.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    /// The job, now `assigned`.
    pub job: Job,
    pub attempt: Attempt,
    /// The job token in plain text: shown this once, only its hash is stored.
    pub job_token: String,
    pub lease_expires_at: i64,
}

/// Candidates fetched per round: a few more than wanted, since some may need labels the
/// builder lacks.
fn batch_size(limit: usize) -> i64 {
    i64::try_from(limit.saturating_mul(4).clamp(16, 512)).unwrap_or(512)
}

/// How far down the queue one claim looks for jobs whose labels match, so a long run of
/// jobs for other builders can't make a claim scan the whole table.
const MAX_SCANNED: usize = 2048;

const JOB_TOKEN_PREFIX: &str = "bfjob_";

impl Store {
    /// Up to `limit` queued jobs this builder can run (recipe known, required labels
    /// offered), highest priority first, then oldest. Each becomes `assigned` with a new
    /// attempt row, a fresh job token and a lease until `now + lease_ms`.
    ///
    /// Atomic on both backends: PostgreSQL locks the candidates with `FOR UPDATE SKIP
    /// LOCKED`, so concurrent claims (also from other replicas) take disjoint jobs without
    /// waiting; SQLite runs the whole claim in one `BEGIN IMMEDIATE` transaction.
    pub fn claim_jobs(&self, request: &ClaimRequest) -> Result<Vec<ClaimedJob>, StoreError> {
        self.claim(request, false)
    }

    /// Claims as [`Store::claim_jobs`] does, for a builder that accepts every assignment
    /// (`accepts_every_assignment` in its capabilities): each job goes `queued → assigned →
    /// running` in the claim's transaction (both transitions recorded, started at the
    /// claim), so no `work_ack` and no second write are needed.
    pub fn claim_jobs_started(
        &self,
        request: &ClaimRequest,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        self.claim(request, true)
    }

    fn claim(&self, request: &ClaimRequest, start: bool) -> Result<Vec<ClaimedJob>, StoreError> {
        if request.limit == 0 || request.recipes.is_empty() {
            return Ok(Vec::new());
        }
        if request.lease_ms <= 0 {
            return Err(StoreError::InvalidInput("lease_ms must be positive".into()));
        }
        self.write(|conn| {
            if let DbConnection::Postgresql(pg) = conn {
                // The claim's commit is on the dispatch path; a claim lost in a crash is
                // harmless (the job is still queued and the attempt number fences the
                // builder that got it), so it does not wait for the WAL flush.
                pg.batch_execute("SET LOCAL synchronous_commit = off")?;
            }
            let builder = require_builder(conn, request.builder)?;
            if !builder.enabled {
                return Err(StoreError::BuilderDisabled(builder.id));
            }
            let chosen = choose_jobs(conn, request, &builder.labels)?;
            chosen
                .into_iter()
                .map(|row| {
                    let claimed = assign(conn, request, &row)?;
                    if start {
                        start_attempt(conn, request, claimed)
                    } else {
                        Ok(claimed)
                    }
                })
                .collect()
        })
    }
}

/// Which queued jobs one walk of the queue looks at.
#[derive(Debug, Clone, Copy)]
struct QueueScope<'a> {
    recipes: &'a [String],
    /// Only these projects' jobs; `None`: every project.
    projects: Option<&'a [i64]>,
    /// Only boosted jobs (priority above what a submission may ask for).
    boosted_only: bool,
}

/// Picks up to `limit` jobs for the builder. With queued work of one project only (or of
/// none), the queue is walked in claim order as it always was. With several, boosted jobs go
/// first, then slot by slot the project with the lowest standing (builder time over its
/// weight, see `fair_share.rs`) gives its next job, in claim order within the project.
fn choose_jobs(
    conn: &mut DbConnection,
    request: &ClaimRequest,
    operator_labels: &Labels,
) -> Result<Vec<JobRow>, StoreError> {
    let allowed: Option<Vec<i64>> = request
        .projects
        .as_ref()
        .map(|projects| projects.iter().map(|p| p.0).collect());
    if allowed.as_ref().is_some_and(Vec::is_empty) {
        return Ok(Vec::new());
    }
    let scope = QueueScope {
        recipes: &request.recipes,
        projects: allowed.as_deref(),
        boosted_only: false,
    };
    let waiting = fair_share::projects_with_work(conn, &request.recipes, allowed.as_deref())?;
    let mut chosen = Vec::with_capacity(request.limit);
    if waiting.len() <= 1 {
        walk_queue(
            conn,
            request,
            operator_labels,
            scope,
            &mut QueueCursor::default(),
            &mut chosen,
            request.limit,
        )?;
        return Ok(chosen);
    }
    let boosted = QueueScope {
        boosted_only: true,
        ..scope
    };
    walk_queue(
        conn,
        request,
        operator_labels,
        boosted,
        &mut QueueCursor::default(),
        &mut chosen,
        request.limit,
    )?;
    let ids: Vec<i64> = waiting.iter().map(|(project, _)| *project).collect();
    let usage = fair_share::window_usage(conn, &ids, request.now_ms, request.fair_share_window_ms)?;
    let mut share = FairShare::new(fair_share::standings(&waiting, &usage));
    let mut cursors: std::collections::HashMap<i64, QueueCursor> = Default::default();
    while chosen.len() < request.limit {
        let Some(project) = share.next() else { break };
        let cursor = cursors.entry(project).or_default();
        let projects = [project];
        let one_project = QueueScope {
            projects: Some(&projects),
            ..scope
        };
        let before = chosen.len();
        walk_queue(
            conn,
            request,
            operator_labels,
            one_project,
            cursor,
            &mut chosen,
            before + 1,
        )?;
        if chosen.len() > before {
            share.charge(project);
        } else {
            share.remove(project);
        }
    }
    Ok(chosen)
}

/// Where a walk of the queue stopped: rows fetched but not yet looked at, the keyset
/// position after them, and how far it went.
#[derive(Debug, Default)]
struct QueueCursor {
    pending: std::collections::VecDeque<JobRow>,
    after: Option<(i32, i64)>,
    scanned: usize,
    exhausted: bool,
}

/// Walks the queue of `scope` in claim order, batch by batch, adding the jobs whose labels
/// match to `chosen` until it holds `until`. Jobs already chosen (a boosted job is also its
/// project's first) are skipped, and so is a reproducible job's next run for a builder not
/// independent of its earlier runs (`operator_labels`: the builder's labels as its operator
/// set them, which a builder cannot declare for itself).
#[allow(clippy::too_many_arguments)]
fn walk_queue(
    conn: &mut DbConnection,
    request: &ClaimRequest,
    operator_labels: &Labels,
    scope: QueueScope<'_>,
    cursor: &mut QueueCursor,
    chosen: &mut Vec<JobRow>,
    until: usize,
) -> Result<(), StoreError> {
    while chosen.len() < until {
        let Some(row) = cursor.pending.pop_front() else {
            if cursor.exhausted || cursor.scanned >= MAX_SCANNED {
                return Ok(());
            }
            let batch = lock_queued_batch(conn, scope, cursor.after, batch_size(request.limit))?;
            let Some(last) = batch.last() else {
                cursor.exhausted = true;
                return Ok(());
            };
            cursor.after = Some((last.priority, last.id));
            cursor.scanned += batch.len();
            cursor.pending.extend(batch);
            continue;
        };
        if request.exclude.iter().any(|job| job.0 == row.id)
            || chosen.iter().any(|c| c.id == row.id)
        {
            continue;
        }
        let required = labels::decode("jobs.required_labels", &row.required_labels)?;
        if !labels::satisfies(&request.labels, &required) {
            continue;
        }
        // Only a job that has completed runs can be held back (one read for those alone).
        if row.reproduce > 1 && row.attempt > 1 {
            let runs = reproduction::runs_of(conn, JobId(row.id))?;
            if !reproduction::is_independent(request.builder, operator_labels, &runs) {
                continue;
            }
        }
        chosen.push(row);
    }
    Ok(())
}

/// The next `batch` queued jobs of `scope` after the `(priority, id)` position `after`, in
/// claim order. The one place where the SQL differs by backend: PostgreSQL locks the rows
/// and skips ones another claim holds; SQLite's immediate transaction already excludes
/// every other writer.
fn lock_queued_batch(
    conn: &mut DbConnection,
    scope: QueueScope<'_>,
    after: Option<(i32, i64)>,
    batch: i64,
) -> Result<Vec<JobRow>, StoreError> {
    // Keyset position: lower priority, or same priority and younger.
    let (after_priority, after_id) = after.unwrap_or((i32::MAX, i64::MIN));
    let past_position = jobs::priority
        .lt(after_priority)
        .or(jobs::priority.eq(after_priority).and(jobs::id.gt(after_id)));
    // A job waiting out a retry's back-off is skipped; the sweep clears the mark when due.
    let queued = jobs::state
        .eq(JobState::Queued.as_str())
        .and(jobs::retry_not_before.is_null());
    let order = (jobs::priority.desc(), jobs::id.asc());
    // The scope's optional conditions, as one boxed condition per backend: a boxed query
    // cannot lock its rows.
    macro_rules! scoped {
        ($db:ty) => {{
            let mut condition: Box<
                dyn BoxableExpression<jobs::table, $db, SqlType = diesel::sql_types::Bool>,
            > = Box::new(past_position);
            if let Some(projects) = scope.projects {
                condition = Box::new(condition.and(jobs::project_id.eq_any(projects.to_vec())));
            }
            if scope.boosted_only {
                condition = Box::new(condition.and(jobs::priority.gt(MAX_SUBMIT_PRIORITY)));
            }
            condition
        }};
    }
    let rows = match conn {
        DbConnection::Postgresql(pg) => jobs::table
            .filter(queued)
            .filter(jobs::recipe.eq_any(scope.recipes))
            .filter(scoped!(diesel::pg::Pg))
            .order(order)
            .limit(batch)
            .select(JobRow::as_select())
            .for_update()
            .skip_locked()
            .load(pg)?,
        DbConnection::Sqlite(lite) => jobs::table
            .filter(queued)
            .filter(jobs::recipe.eq_any(scope.recipes))
            .filter(scoped!(diesel::sqlite::Sqlite))
            .order(order)
            .limit(batch)
            .select(JobRow::as_select())
            .load(lite)?,
    };
    Ok(rows)
}

/// `assigned → running` at the claim's time, for a builder that never turns work down.
fn start_attempt(
    conn: &mut DbConnection,
    request: &ClaimRequest,
    claimed: ClaimedJob,
) -> Result<ClaimedJob, StoreError> {
    let now = request.now_ms;
    let row = load_job_row(conn, claimed.job.id)?;
    let changes = JobChanges {
        started_at: Some(Some(now)),
        ..JobChanges::default()
    };
    let job = apply_transition(conn, &row, JobState::Running, changes, now, None)?;
    diesel::update(
        job_attempts::table
            .filter(job_attempts::job_id.eq(row.id))
            .filter(job_attempts::attempt.eq(row.attempt)),
    )
    .set(job_attempts::started_at.eq(now))
    .execute(conn)?;
    Ok(ClaimedJob { job, ..claimed })
}

fn assign(
    conn: &mut DbConnection,
    request: &ClaimRequest,
    row: &JobRow,
) -> Result<ClaimedJob, StoreError> {
    let now = request.now_ms;
    let lease_expires_at = now.saturating_add(request.lease_ms);
    let changes = JobChanges {
        builder_id: Some(Some(request.builder.0)),
        ..JobChanges::default()
    };
    let job = apply_transition(conn, row, JobState::Assigned, changes, now, None)?;
    let job_token = secret::generate(JOB_TOKEN_PREFIX);
    diesel::insert_into(job_attempts::table)
        .values((
            job_attempts::job_id.eq(row.id),
            job_attempts::attempt.eq(row.attempt),
            job_attempts::builder_id.eq(request.builder.0),
            job_attempts::job_token_hash.eq(secret::hash(&job_token)),
            job_attempts::lease_expires_at.eq(lease_expires_at),
            job_attempts::assigned_at.eq(now),
        ))
        .execute(conn)?;
    Ok(ClaimedJob {
        attempt: job.attempt,
        job,
        job_token,
        lease_expires_at,
    })
}
