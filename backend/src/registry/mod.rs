//! The registry follower: an actor of its own (off unless `[registry]` is configured) that
//! follows a Cargo registry's index and queues the configured builds of every version
//! published after following began. A git index is followed whole (fetched and diffed each
//! round, as docs.rs does); a sparse index (RFC 2789) is followed for a watch list of
//! crates. Each version's `.crate` URL comes from the index's `config.json` and its SHA-256
//! from the index's `cksum`, so the builder verifies exactly what the registry published.
//!
//! The store keeps what it has seen and where it stands: a version is recorded and its
//! builds queued in one transaction keyed by (registry, crate, version), and each build by
//! (crate, version, target, recipe), so a second fetch, a restart or another replica never
//! queues twice; the position (git commit, sparse ETags) is written after what it covers,
//! so a restart resumes without missing a version.

mod git;
pub mod index;
pub mod metadata;
mod settings;
mod sparse;

pub use settings::{BuildSpec, IndexSource, RegistryFile, RegistrySettings};

use std::io::Read as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use buildfleet_builder::recipes::CRATE_METADATA;

use crate::actors::scheduler::{JobQueued, Scheduler};
use crate::job_feed::JobFeed;
use crate::offload;
use crate::storage::Storage;
use crate::store::{
    Annotations, AwaitingPlan, FirstSight, IndexVersion, Job, JobId, JobMode, JobState, NewJob,
    Observation, ProjectId, RegistryBuild, Store, StoreError, VersionPlan,
};
use git::GitIndex;
use index::{IndexError, RegistryConfig};
use metadata::{Decision, PlannedBuild};
use sparse::Fetched;

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("fetching {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error("git index: {0}")]
    Git(String),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("crate {0:?} is not in the index")]
    UnknownCrate(String),
    #[error("{0} has no version {1} in the index")]
    UnknownVersion(String, String),
    #[error("{0}@{1} is yanked")]
    Yanked(String, String),
    #[error("version requirement {0:?}: {1}")]
    VersionReq(String, String),
    #[error("{0}")]
    Offload(String),
}

/// Runs a store call off the async threads.
async fn in_store<T, F>(f: F) -> Result<T, FollowError>
where
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    offload::store(f)
        .await
        .map_err(|e| FollowError::Offload(e.to_string()))?
        .map_err(FollowError::from)
}

/// Cursor names in the store.
const GIT_HEAD: &str = "git-head";
const LAST_FETCH: &str = "last-fetch";
const LAST_ERROR: &str = "last-error";
fn sparse_cursor(krate: &str) -> String {
    format!("sparse:{}", krate.to_ascii_lowercase())
}

pub struct RegistryFollower {
    store: Store,
    storage: Arc<dyn Storage>,
    job_feed: Arc<JobFeed>,
    scheduler: Addr<Scheduler>,
    settings: RegistrySettings,
    client: awc::Client,
    git: Option<std::rc::Rc<GitIndex>>,
    polling: bool,
    planning: bool,
    /// A metadata job ended during a planning pass: plan once more after it.
    plan_again: bool,
    /// Rounds failed in a row, and until when the follower rests because of them.
    failures: u32,
    resting_until: Option<Instant>,
}

/// What the follower works with besides its settings.
pub struct FollowerParts {
    pub store: Store,
    pub storage: Arc<dyn Storage>,
    pub job_feed: Arc<JobFeed>,
    pub scheduler: Addr<Scheduler>,
}

impl RegistryFollower {
    pub fn new(
        parts: FollowerParts,
        settings: RegistrySettings,
        data_dir: PathBuf,
        client: awc::Client,
    ) -> Self {
        let git = match &settings.index {
            IndexSource::Git(url) => Some(std::rc::Rc::new(GitIndex::new(
                data_dir
                    .join("registry")
                    .join(format!("{}.git", settings.name)),
                url.clone(),
            ))),
            IndexSource::Sparse(_) => None,
        };
        RegistryFollower {
            store: parts.store,
            storage: parts.storage,
            job_feed: parts.job_feed,
            scheduler: parts.scheduler,
            settings,
            client,
            git,
            polling: false,
            planning: false,
            plan_again: false,
            failures: 0,
            resting_until: None,
        }
    }

    /// After a failed round the next ones wait twice as long each time (from the poll
    /// interval up to [`MAX_BACKOFF`]); a good round ends the rest.
    fn note_round(&mut self, succeeded: bool) {
        if succeeded {
            self.failures = 0;
            self.resting_until = None;
            return;
        }
        self.failures = self.failures.saturating_add(1);
        let factor = 2u32.saturating_pow(self.failures.min(16));
        let rest = self
            .settings
            .poll_interval
            .saturating_mul(factor)
            .min(MAX_BACKOFF);
        self.resting_until = Some(Instant::now() + rest);
    }

    fn follower(&self) -> Follow {
        Follow {
            store: self.store.clone(),
            storage: self.storage.clone(),
            settings: self.settings.clone(),
            client: self.client.clone(),
            git: self.git.clone(),
        }
    }
}

impl Actor for RegistryFollower {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.notify(Poll);
        ctx.run_interval(self.settings.poll_interval, |_, ctx| ctx.notify(Poll));
        // A finished metadata job is planned at once; the poll round plans whatever a
        // lagging subscription or a restart missed.
        let mut changes = self.job_feed.subscribe();
        let follower = ctx.address();
        ctx.spawn(
            async move {
                loop {
                    match changes.recv().await {
                        Ok(published)
                            if published.change.recipe == CRATE_METADATA
                                && published.change.state.is_terminal() =>
                        {
                            follower.do_send(PlanFollowUps);
                        }
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            follower.do_send(PlanFollowUps);
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    }
                }
            }
            .into_actor(self),
        );
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Poll;

impl Handler<Poll> for RegistryFollower {
    type Result = ();

    fn handle(&mut self, _: Poll, ctx: &mut Self::Context) {
        // A slow round is not overlapped by the next tick, and a failing registry (or
        // database) is asked less often until it answers again.
        if self.polling
            || self
                .resting_until
                .is_some_and(|until| Instant::now() < until)
        {
            return;
        }
        self.polling = true;
        let follow = self.follower();
        let scheduler = self.scheduler.clone();
        let round = async move {
            let outcome = follow.round().await;
            let succeeded = outcome.is_ok();
            let queued = follow.record_round(outcome).await;
            if !queued.is_empty() {
                scheduler.do_send(JobQueued(queued));
            }
            succeeded
        };
        ctx.spawn(round.into_actor(self).map(|succeeded, actor, ctx| {
            actor.polling = false;
            actor.note_round(succeeded);
            ctx.notify(PlanFollowUps);
        }));
    }
}

/// Queue the follow-up builds of versions whose metadata job ended.
#[derive(Message)]
#[rtype(result = "()")]
struct PlanFollowUps;

impl Handler<PlanFollowUps> for RegistryFollower {
    type Result = ();

    fn handle(&mut self, _: PlanFollowUps, ctx: &mut Self::Context) {
        if self.planning {
            self.plan_again = true;
            return;
        }
        self.planning = true;
        self.plan_again = false;
        let follow = self.follower();
        let scheduler = self.scheduler.clone();
        let planning = async move {
            match follow.plan_follow_ups().await {
                Ok(queued) if !queued.is_empty() => scheduler.do_send(JobQueued(queued)),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "planning the builds of crate versions"),
            }
        };
        ctx.spawn(planning.into_actor(self).map(|(), actor, ctx| {
            actor.planning = false;
            if actor.plan_again {
                ctx.notify(PlanFollowUps);
            }
        }));
    }
}

/// Queue the builds of existing versions of one crate at the backfill priority.
#[derive(Message)]
#[rtype(result = "Result<Backfilled, FollowError>")]
pub struct Backfill {
    pub krate: String,
    /// A semver requirement (`>=1.2, <2`); every version when `None`.
    pub versions: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Backfilled {
    /// Versions that matched and are not yanked.
    pub versions: Vec<String>,
    pub queued: Vec<Job>,
}

impl Handler<Backfill> for RegistryFollower {
    type Result = ResponseFuture<Result<Backfilled, FollowError>>;

    fn handle(&mut self, msg: Backfill, _: &mut Self::Context) -> Self::Result {
        let follow = self.follower();
        let scheduler = self.scheduler.clone();
        Box::pin(async move {
            let done = follow.backfill(&msg.krate, msg.versions.as_deref()).await?;
            if !done.queued.is_empty() {
                scheduler.do_send(JobQueued(done.queued.clone()));
            }
            Ok(done)
        })
    }
}

/// One round's work, apart from the actor so it runs as a future.
struct Follow {
    store: Store,
    storage: Arc<dyn Storage>,
    settings: RegistrySettings,
    client: awc::Client,
    git: Option<std::rc::Rc<GitIndex>>,
}

impl Follow {
    async fn round(&self) -> Result<Vec<Job>, FollowError> {
        match (&self.settings.index, &self.git) {
            (IndexSource::Git(_), Some(git)) => self.git_round(git).await,
            _ => self.sparse_round().await,
        }
    }

    /// Notes the round's time and error (cleared by a good round); returns what it queued.
    async fn record_round(&self, outcome: Result<Vec<Job>, FollowError>) -> Vec<Job> {
        let store = self.store.clone();
        let name = self.settings.name.clone();
        let now = store.now_ms().to_string();
        let (queued, error) = match outcome {
            Ok(queued) => (queued, None),
            Err(e) => {
                tracing::warn!(registry = %name, error = %e, "following the registry");
                (Vec::new(), Some(e.to_string()))
            }
        };
        let noted = in_store(move || {
            store.set_registry_cursor(&name, LAST_FETCH, &now)?;
            match error {
                Some(error) => store.set_registry_cursor(&name, LAST_ERROR, &error),
                None => store.delete_registry_cursor(&name, LAST_ERROR),
            }
        })
        .await;
        if let Err(e) = noted {
            tracing::warn!(error = %e, "recording the registry round");
        }
        queued
    }

    async fn config(&self) -> Result<RegistryConfig, FollowError> {
        let text = match (&self.settings.index, &self.git) {
            (IndexSource::Git(_), Some(git)) => git
                .file_at(GIT_FOLLOWED, "config.json")
                .await?
                .ok_or_else(|| IndexError::Config("missing from the git index".into()))?,
            _ => {
                let url = format!("{}config.json", self.settings.index.base());
                match sparse::fetch(&self.client, &url, None).await? {
                    Fetched::Body { text, .. } => text,
                    _ => return Err(IndexError::Config(format!("{url} is missing")).into()),
                }
            }
        };
        Ok(RegistryConfig::parse(&text)?)
    }

    async fn sparse_round(&self) -> Result<Vec<Job>, FollowError> {
        let mut config = None;
        let mut queued = Vec::new();
        for krate in &self.settings.crates {
            let cursor = sparse_cursor(krate);
            let (store, name, key) = (
                self.store.clone(),
                self.settings.name.clone(),
                cursor.clone(),
            );
            let etag = in_store(move || store.registry_cursor(&name, &key)).await?;
            let first_sight = etag.is_none();
            let url = format!("{}{}", self.settings.index.base(), index::file_path(krate));
            let conditional = etag.as_deref().filter(|e| !e.is_empty());
            let (text, new_etag) = match sparse::fetch(&self.client, &url, conditional).await? {
                Fetched::NotModified => continue,
                Fetched::NotFound => {
                    tracing::info!(krate, "a watched crate is not in the index (yet)");
                    continue;
                }
                Fetched::Body { text, etag } => (text, etag),
            };
            let versions = index::parse_file(krate, &text)?;
            let spelled = index::spelled_name(&text).unwrap_or_else(|| krate.clone());
            if config.is_none() {
                config = Some(self.config().await?);
            }
            let Some(config) = &config else { continue };
            let observations = self.observe(&spelled, &versions, first_sight, config);
            queued.extend(self.record(&spelled, observations).await?);
            let (store, name) = (self.store.clone(), self.settings.name.clone());
            let etag = new_etag.unwrap_or_default();
            in_store(move || store.set_registry_cursor(&name, &cursor, &etag)).await?;
        }
        Ok(queued)
    }

    async fn git_round(&self, git: &GitIndex) -> Result<Vec<Job>, FollowError> {
        let head = git.fetch().await?;
        let (store, name) = (self.store.clone(), self.settings.name.clone());
        let processed = in_store(move || store.registry_cursor(&name, GIT_HEAD)).await?;
        let mut queued = Vec::new();
        match processed {
            // Following begins here: what the index holds now is existing work.
            None => {}
            Some(old) if old == head => return Ok(queued),
            Some(old) => {
                let config = self.config().await?;
                for path in git.changed_files(&old, &head).await? {
                    let Some(file_name) = crate_file(&path) else {
                        continue;
                    };
                    let Some(now_text) = git.file_at(&head, &path).await? else {
                        continue;
                    };
                    let before = git.file_at(&old, &path).await?.unwrap_or_default();
                    let spelled = index::spelled_name(&now_text).unwrap_or(file_name);
                    if !self.settings.follows(&spelled) {
                        continue;
                    }
                    let now = index::parse_file(&spelled, &now_text)?;
                    let earlier = index::parse_file(&spelled, &before)?;
                    // Only what the diff added or re-flagged: versions from before following
                    // began are not in the store and must not look new.
                    let changed: Vec<IndexVersion> =
                        now.into_iter().filter(|v| !earlier.contains(v)).collect();
                    let observations = changed
                        .iter()
                        .map(|v| {
                            let was_there = earlier.iter().any(|e| e.version == v.version);
                            self.observation(&spelled, v, was_there, &config)
                        })
                        .collect();
                    queued.extend(self.record(&spelled, observations).await?);
                }
            }
        }
        let (store, name) = (self.store.clone(), self.settings.name.clone());
        in_store(move || store.set_registry_cursor(&name, GIT_HEAD, &head)).await?;
        Ok(queued)
    }

    fn observe(
        &self,
        krate: &str,
        versions: &[IndexVersion],
        existing: bool,
        config: &RegistryConfig,
    ) -> Vec<Observation> {
        versions
            .iter()
            .map(|v| self.observation(krate, v, existing, config))
            .collect()
    }

    fn observation(
        &self,
        krate: &str,
        version: &IndexVersion,
        existing: bool,
        config: &RegistryConfig,
    ) -> Observation {
        let first_sight = if existing {
            FirstSight::Existing
        } else if self.settings.is_denied(krate) {
            FirstSight::Skipped("denied by registry.deny".into())
        } else {
            FirstSight::Build(vec![self.metadata_build(
                krate,
                version,
                config,
                self.settings.priority,
            )])
        };
        Observation {
            version: version.clone(),
            first_sight,
        }
    }

    /// A version's first job: read its manifest, so its metadata can choose the builds.
    fn metadata_build(
        &self,
        krate: &str,
        version: &IndexVersion,
        config: &RegistryConfig,
        priority: i32,
    ) -> RegistryBuild {
        let mut annotations = Annotations::new();
        annotations.insert("crate".into(), krate.to_owned());
        annotations.insert("version".into(), version.version.clone());
        annotations.insert("registry".into(), self.settings.name.clone());
        RegistryBuild {
            target: String::new(),
            job: NewJob {
                source_url: config.download_url(krate, &version.version, &version.cksum),
                source_sha256: version.cksum.clone(),
                source_max_bytes: self.settings.max_crate_bytes,
                recipe: CRATE_METADATA.into(),
                parameters: Default::default(),
                required_labels: Default::default(),
                annotations,
                mode: JobMode::Build,
                priority,
                max_attempts: self.settings.max_attempts,
                retry: None,
                timeout_secs: METADATA_TIMEOUT_SECS,
                submitter: format!("registry:{}", self.settings.name),
                project: ProjectId::DEFAULT,
                reproduce: None,
                on_mismatch: Default::default(),
            },
        }
    }

    /// A build that follows from a metadata job: same source, annotations and priority.
    fn follow_up(&self, metadata_job: &Job, planned: &PlannedBuild) -> RegistryBuild {
        let mut annotations = metadata_job.annotations.clone();
        if !planned.spec.target.is_empty() {
            annotations.insert("target".into(), planned.spec.target.clone());
        }
        RegistryBuild {
            target: planned.spec.target.clone(),
            job: NewJob {
                source_url: metadata_job.source_url.clone(),
                source_sha256: metadata_job.source_sha256.clone(),
                source_max_bytes: metadata_job.source_max_bytes,
                recipe: planned.spec.recipe.clone(),
                parameters: planned.parameters.clone(),
                required_labels: planned.spec.labels.clone(),
                annotations,
                mode: JobMode::Build,
                priority: metadata_job.priority,
                max_attempts: self.settings.max_attempts,
                retry: None,
                timeout_secs: self.settings.timeout_secs,
                submitter: metadata_job.submitter.clone(),
                project: metadata_job.project,
                reproduce: None,
                on_mismatch: Default::default(),
            },
        }
    }

    /// Plans every version whose metadata job ended: its follow-up builds, or why none.
    async fn plan_follow_ups(&self) -> Result<Vec<Job>, FollowError> {
        let (store, name) = (self.store.clone(), self.settings.name.clone());
        let awaiting =
            in_store(move || store.awaiting_plan(&name, CRATE_METADATA, PLAN_BATCH)).await?;
        let mut queued = Vec::new();
        for version in awaiting {
            let store = self.store.clone();
            let id = JobId(version.metadata_job);
            let Some(job) = in_store(move || store.job(id)).await? else {
                continue;
            };
            let plan = match job.state {
                JobState::Succeeded => self.plan_from_metadata(&version, &job).await,
                state if state.is_terminal() => VersionPlan::Failed(format!(
                    "metadata job {id} ended {}: {}",
                    state.as_str(),
                    job.error.clone().unwrap_or_default()
                )),
                _ => continue,
            };
            let (store, name) = (self.store.clone(), self.settings.name.clone());
            queued.extend(in_store(move || store.plan_version(&name, &version, &plan)).await?);
        }
        Ok(queued)
    }

    async fn plan_from_metadata(&self, version: &AwaitingPlan, job: &Job) -> VersionPlan {
        let (store, storage, id) = (self.store.clone(), self.storage.clone(), job.id);
        let read = in_store(move || {
            let Some(artifact) = store
                .artifacts(id, true)?
                .into_iter()
                .find(|a| a.name == "metadata.json")
            else {
                return Ok(None);
            };
            let mut bytes = Vec::new();
            storage
                .open(&artifact.storage_key)
                .and_then(|file| {
                    file.take(metadata::MAX_METADATA_BYTES)
                        .read_to_end(&mut bytes)
                })
                .map_err(|e| {
                    StoreError::Corrupt(format!("reading metadata.json of job {id}: {e}"))
                })?;
            Ok(Some(bytes))
        })
        .await;
        let bytes = match read {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                return VersionPlan::Failed(format!("metadata job {id} published no metadata.json"))
            }
            Err(e) => return VersionPlan::Failed(e.to_string()),
        };
        match metadata::decide(&bytes, &version.crate_name, &self.settings.builds) {
            Ok(Decision::Build(planned)) => {
                VersionPlan::Builds(planned.iter().map(|p| self.follow_up(job, p)).collect())
            }
            Ok(Decision::Library) => VersionPlan::Library,
            Ok(Decision::Nothing(reason)) => VersionPlan::Failed(reason),
            Err(e) => VersionPlan::Failed(e.to_string()),
        }
    }

    async fn record(
        &self,
        krate: &str,
        observations: Vec<Observation>,
    ) -> Result<Vec<Job>, FollowError> {
        if observations.is_empty() {
            return Ok(Vec::new());
        }
        let (store, name, krate) = (
            self.store.clone(),
            self.settings.name.clone(),
            krate.to_owned(),
        );
        in_store(move || store.record_versions(&name, &krate, &observations)).await
    }

    async fn backfill(
        &self,
        krate: &str,
        versions: Option<&str>,
    ) -> Result<Backfilled, FollowError> {
        index::check_crate_name(krate)?;
        let requirement = versions
            .map(|raw| {
                semver::VersionReq::parse(raw)
                    .map_err(|e| FollowError::VersionReq(raw.to_owned(), e.to_string()))
            })
            .transpose()?;
        let text = self.index_file(krate).await?;
        let spelled = index::spelled_name(&text).unwrap_or_else(|| krate.to_owned());
        let config = self.config().await?;
        let mut done = Backfilled::default();
        for version in index::parse_file(&spelled, &text)? {
            let matches = requirement.as_ref().is_none_or(|req| {
                semver::Version::parse(&version.version).is_ok_and(|v| req.matches(&v))
            });
            if version.yanked || !matches {
                continue;
            }
            let builds = vec![self.metadata_build(
                &spelled,
                &version,
                &config,
                self.settings.backfill_priority,
            )];
            let (store, name, krate, v) = (
                self.store.clone(),
                self.settings.name.clone(),
                spelled.clone(),
                version.clone(),
            );
            let queued =
                in_store(move || store.backfill_version(&name, &krate, &v, &builds)).await?;
            done.versions.push(version.version);
            done.queued.extend(queued);
        }
        Ok(done)
    }
}

impl Follow {
    /// A crate's index file as the registry has it now.
    async fn index_file(&self, krate: &str) -> Result<String, FollowError> {
        index::check_crate_name(krate)?;
        let path = index::file_path(krate);
        match (&self.settings.index, &self.git) {
            (IndexSource::Git(_), Some(git)) => {
                git.fetch().await?;
                git.file_at(GIT_FOLLOWED, &path).await?
            }
            _ => {
                let url = format!("{}{path}", self.settings.index.base());
                match sparse::fetch(&self.client, &url, None).await? {
                    Fetched::Body { text, .. } => Some(text),
                    _ => None,
                }
            }
        }
        .ok_or_else(|| FollowError::UnknownCrate(krate.to_owned()))
    }

    /// Where one published version is and its digest, as the index says.
    async fn resolve(&self, krate: &str, version: &str) -> Result<Resolved, FollowError> {
        let text = self.index_file(krate).await?;
        let spelled = index::spelled_name(&text).unwrap_or_else(|| krate.to_owned());
        let found = index::parse_file(&spelled, &text)?
            .into_iter()
            .find(|v| v.version == version)
            .ok_or_else(|| FollowError::UnknownVersion(spelled.clone(), version.to_owned()))?;
        if found.yanked {
            return Err(FollowError::Yanked(spelled, version.to_owned()));
        }
        let config = self.config().await?;
        Ok(Resolved {
            source_url: config.download_url(&spelled, &found.version, &found.cksum),
            source_sha256: found.cksum,
            krate: spelled,
            version: found.version,
        })
    }
}

/// A published version, resolved through the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub krate: String,
    pub version: String,
    pub source_url: String,
    pub source_sha256: String,
}

/// Look up `crate@version` in the followed registry (a submission's `crate` field).
#[derive(Message)]
#[rtype(result = "Result<Resolved, FollowError>")]
pub struct Resolve {
    pub krate: String,
    pub version: String,
}

impl Handler<Resolve> for RegistryFollower {
    type Result = ResponseFuture<Result<Resolved, FollowError>>;

    fn handle(&mut self, msg: Resolve, _: &mut Self::Context) -> Self::Result {
        let follow = self.follower();
        Box::pin(async move { follow.resolve(&msg.krate, &msg.version).await })
    }
}

/// The ref a git round reads files at (what the last fetch brought).
const GIT_FOLLOWED: &str = "refs/heads/followed";

/// The crate a changed index path is the file of; `None` for `config.json` and dotfiles.
fn crate_file(path: &str) -> Option<String> {
    let name = path.rsplit('/').next()?;
    if name.starts_with('.') || path == "config.json" || index::check_crate_name(name).is_err() {
        return None;
    }
    Some(name.to_owned())
}

/// The longest rest after failed rounds.
const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// A metadata job only unpacks and reads a manifest.
const METADATA_TIMEOUT_SECS: i64 = 600;
/// Versions planned per pass.
const PLAN_BATCH: i64 = 200;

/// How often the follower fetches when the config does not say.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(60);
