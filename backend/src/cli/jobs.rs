//! `buildfleet job …`: submit (from a directory, an archive, a URL or a crate), list, show,
//! cancel, retry, print a plan-mode job's plan, and wait for the end.

use std::collections::BTreeMap;
use std::path::Path;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::builders::parse_key_value;
use super::client::{encode, Api};
use super::exit::{CliError, Outcome, EXIT_CODES_HELP};
use super::logs::{self, LogsArgs};
use super::output::{age, or_dash, pairs, print_fields, print_json, size, utc, Table};
use super::source::{self, LocalArchive};
use super::wait;
use buildfleet_api::{Builder, Job, JobDetail, JobMode};
use buildfleet_protocol::Sha256Digest;

use super::client::parse;
use crate::store::{annotation_headline, JobState};

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Queue a build: upload the source (a directory, an archive or a crate) or name a URL.
    Submit(Box<SubmitArgs>),
    /// List jobs, newest first.
    List(ListArgs),
    /// Show one job: its settings, attempts, artifacts and state changes.
    Show(JobRef),
    /// Cancel a job: at once when queued, through its builder when running.
    Cancel(JobRef),
    /// Queue a finished (failed, cancelled or timed-out) job again, with a fresh attempt.
    Retry(JobRef),
    /// Put a queued job ahead of every project's work (the admin token only).
    Boost(JobRef),
    /// Print a job's log; --follow streams it live and exits with the job's outcome.
    Logs(LogsArgs),
    /// Print the plan a plan-mode job (`submit --plan`) reported.
    Plan(JobRef),
}

#[derive(Debug, Args)]
pub struct JobRef {
    /// The job's id.
    pub id: i64,
}

#[derive(Debug, Args)]
#[command(after_long_help = EXIT_CODES_HELP)]
pub struct SubmitArgs {
    /// A directory (packed as a .tar.gz without `target/` and `.git/`), an archive file
    /// (.tar.gz, .tgz, .tar, .crate), or an http(s):// URL builders fetch (with --sha256).
    #[arg(
        value_name = "SOURCE",
        required_unless_present_any = ["krate", "source_url"],
        conflicts_with_all = ["krate", "source_url"]
    )]
    pub source: Option<String>,
    /// A published crate, NAME@VERSION: taken from the local cargo cache
    /// (~/.cargo/registry/cache) when there, else downloaded from crates.io; then uploaded.
    #[arg(
        long = "crate",
        value_name = "NAME@VERSION",
        conflicts_with = "source_url"
    )]
    pub krate: Option<String>,
    /// The URL builders fetch the source archive from (needs --sha256). Same as giving the
    /// URL as SOURCE; `--url` is the backend's address.
    #[arg(long, value_name = "URL")]
    pub source_url: Option<String>,
    /// SHA-256 (64 lowercase hex digits) of the archive at the URL.
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// The recipe builders run (a builder must offer it).
    #[arg(long, default_value = "cargo-build")]
    pub recipe: String,
    /// A recipe parameter `key=value`; repeat for more.
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub params: Vec<(String, String)>,
    /// A label `key=value` the builder must have; repeat for more.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub labels: Vec<(String, String)>,
    /// An annotation `key=value` saying what the job builds (commit, branch, author,
    /// message, …): shown in lists, filterable, signed into the build statement; repeat for
    /// more. `--crate` adds `crate` and `version` itself.
    #[arg(long = "annotate", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub annotations: Vec<(String, String)>,
    /// Dry run: the builder reports its plan instead of building.
    #[arg(long)]
    pub plan: bool,
    /// The project (`organisation/project`) the job belongs to [default: the token's
    /// project, else default/default].
    #[arg(long, value_name = "ORG/NAME")]
    pub project: Option<String>,
    /// Higher runs first (-1000..=1000).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    /// Time limit of one attempt: seconds, or with a unit (90s, 30m, 2h) [default: 1h].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_secs)]
    pub timeout: Option<u64>,
    /// Attempts before the job fails when builders are lost (1..=20) [default: 3].
    #[arg(long)]
    pub max_attempts: Option<i32>,
    /// Retry automatically when the job's commands fail with this exit status (1..=255), or
    /// with any (`any`); repeat for more. Bounded by --max-attempts.
    #[arg(long = "retry-exit-code", value_name = "STATUS|any", value_parser = parse_retry_exit_code)]
    pub retry_exit_codes: Vec<RetryExitCode>,
    /// Retry automatically after an infrastructure error (source fetch, upload, builder
    /// internal error).
    #[arg(long)]
    pub retry_infra: bool,
    /// Fail the job at once when its builder is lost instead of retrying it.
    #[arg(long)]
    pub no_retry_lost_builder: bool,
    /// Wait before the first automatic retry, in milliseconds (doubling after each)
    /// [default: 10000].
    #[arg(long, value_name = "MS")]
    pub retry_backoff_ms: Option<u64>,
    /// The longest wait between automatic retries, in milliseconds [default: 300000].
    #[arg(long, value_name = "MS")]
    pub retry_backoff_max_ms: Option<u64>,
    /// Build the job on K independent builders (2..=5: other builders of other owners, one
    /// after the other) and publish only if their artifacts agree; 1 is an ordinary job
    /// [default: the project's].
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(i32).range(1..=5))]
    pub reproduce: Option<i32>,
    /// With --reproduce: when the builders disagree, publish the first run's artifacts anyway
    /// (the job is still flagged unreproducible) instead of nothing.
    #[arg(long, requires = "reproduce")]
    pub publish_first: bool,
    /// Wait until the job ends; the exit code tells how (0 succeeded, 1 otherwise).
    #[arg(long)]
    pub wait: bool,
    /// Where crates are downloaded from when not cached.
    #[arg(
        long,
        hide = true,
        env = "BUILDFLEET_CRATES_URL",
        default_value = "https://static.crates.io/crates"
    )]
    pub crates_url: String,
}

/// One `--retry-exit-code`: a status, or every failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryExitCode {
    Status(i32),
    Any,
}

fn parse_retry_exit_code(given: &str) -> Result<RetryExitCode, String> {
    if given == "any" {
        return Ok(RetryExitCode::Any);
    }
    match given.parse::<i32>() {
        Ok(status) if (1..=255).contains(&status) => Ok(RetryExitCode::Status(status)),
        _ => Err(format!(
            "{given:?} is not an exit status of a failed command: give 1 to 255, or any"
        )),
    }
}

impl SubmitArgs {
    /// The submission's `retry`, when a retry flag was given.
    fn retry_policy(&self) -> Option<Value> {
        let given = !self.retry_exit_codes.is_empty()
            || self.retry_infra
            || self.no_retry_lost_builder
            || self.retry_backoff_ms.is_some()
            || self.retry_backoff_max_ms.is_some();
        if !given {
            return None;
        }
        let exit_codes: Value = if self.retry_exit_codes.contains(&RetryExitCode::Any) {
            "any".into()
        } else {
            self.retry_exit_codes
                .iter()
                .filter_map(|code| match code {
                    RetryExitCode::Status(status) => Some(*status),
                    RetryExitCode::Any => None,
                })
                .collect::<Vec<_>>()
                .into()
        };
        let mut retry = json!({
            "lost_builder": !self.no_retry_lost_builder,
            "infrastructure": self.retry_infra,
            "exit_codes": exit_codes,
        });
        if let Some(ms) = self.retry_backoff_ms {
            retry["backoff_initial_ms"] = ms.into();
        }
        if let Some(ms) = self.retry_backoff_max_ms {
            retry["backoff_max_ms"] = ms.into();
        }
        Some(retry)
    }
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only jobs in this state (queued, assigned, running, succeeded, failed, cancelled,
    /// timed_out).
    #[arg(long)]
    pub state: Option<JobState>,
    /// Only jobs of this recipe.
    #[arg(long)]
    pub recipe: Option<String>,
    /// Only jobs whose current (or last) attempt ran on this builder (its name or id).
    #[arg(long, value_name = "NAME")]
    pub builder: Option<String>,
    /// Only jobs with this annotation, `key:value` (or `key` for any value); repeat to
    /// require several.
    #[arg(long = "annotation", value_name = "KEY:VALUE")]
    pub annotations: Vec<String>,
    /// Only jobs of this project (`organisation/project`).
    #[arg(long, value_name = "ORG/NAME")]
    pub project: Option<String>,
    /// At most this many jobs (1..=1000).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Only jobs older than this job id (the next page).
    #[arg(long, value_name = "ID")]
    pub before: Option<i64>,
}

/// `90`, `90s`, `30m`, `2h`, `1d` → seconds.
fn parse_duration_secs(raw: &str) -> Result<u64, String> {
    let raw = raw.trim();
    let (digits, unit) = raw
        .find(|c: char| !c.is_ascii_digit())
        .map_or((raw, ""), |i| raw.split_at(i));
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("{raw:?} is not a duration like 90, 90s, 30m or 2h"))?;
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{raw:?}: the unit is s, m, h or d")),
    };
    value
        .checked_mul(factor)
        .ok_or_else(|| format!("{raw:?} is too long"))
}

pub async fn run(api: &Api, json: bool, command: JobCommand) -> Result<Outcome, CliError> {
    match command {
        JobCommand::Submit(args) => submit(api, json, *args).await,
        JobCommand::List(args) => list(api, json, args).await,
        JobCommand::Show(job) => show(api, json, job.id).await,
        JobCommand::Cancel(job) => cancel(api, json, job.id).await,
        JobCommand::Retry(job) => retry(api, json, job.id).await,
        JobCommand::Boost(job) => boost(api, json, job.id).await,
        JobCommand::Logs(args) => logs::run(api, json, args).await,
        JobCommand::Plan(job) => plan(api, json, job.id).await,
    }
}

fn is_url(source: &str) -> bool {
    source.starts_with("http://") || source.starts_with("https://")
}

/// Uploads a local archive and checks the backend stored what we hashed.
async fn upload(api: &Api, archive: &LocalArchive) -> Result<String, CliError> {
    eprintln!(
        "uploading {} ({}, sha256 {})",
        archive.description,
        size(archive.size),
        archive.sha256
    );
    let answer = api.upload("/sources", &archive.path).await?;
    let stored = answer["sha256"].as_str().unwrap_or_default();
    if stored != archive.sha256 {
        return Err(CliError::Network(format!(
            "the backend stored sha256 {stored:?}, but the archive has {}",
            archive.sha256
        )));
    }
    Ok(archive.sha256.clone())
}

/// Resolves the source: `(source_url, sha256)`, the URL `None` for an uploaded archive.
async fn prepare_source(
    api: &Api,
    args: &SubmitArgs,
) -> Result<(Option<String>, String), CliError> {
    let url = match (&args.source, &args.source_url) {
        (Some(source), _) if is_url(source) => Some(source.clone()),
        (_, Some(url)) => Some(url.clone()),
        _ => None,
    };
    if let Some(url) = url {
        if !is_url(&url) {
            return Err(CliError::Usage(format!(
                "--source-url {url:?}: use an http:// or https:// URL"
            )));
        }
        let sha256 = args.sha256.as_deref().ok_or_else(|| {
            CliError::Usage("a source URL needs --sha256 HEX (the archive's SHA-256)".into())
        })?;
        return Ok((Some(url), checked_sha256(sha256)?));
    }
    if args.sha256.is_some() {
        return Err(CliError::Usage(
            "--sha256 goes with a source URL; a local source is hashed here".into(),
        ));
    }
    let archive = if let Some(spec) = &args.krate {
        let (name, version) = source::parse_crate(spec)?;
        match source::cached_crate(&name, &version) {
            Some(path) => {
                let path2 = path.clone();
                let mut archive = blocking(move || source::archive_file(&path2)).await?;
                archive.description = format!("crate {spec} from {}", path.display());
                archive
            }
            None => {
                eprintln!("{spec} is not in the local cargo cache; downloading it");
                source::download_crate(api.http(), &args.crates_url, &name, &version).await?
            }
        }
    } else {
        let source = args.source.clone().unwrap_or_default();
        let path = Path::new(&source).to_owned();
        let metadata = std::fs::metadata(&path)
            .map_err(|e| CliError::Usage(format!("source {source:?}: {e}")))?;
        if metadata.is_dir() {
            blocking(move || source::pack_directory(&path)).await?
        } else {
            blocking(move || source::archive_file(&path)).await?
        }
    };
    let sha256 = upload(api, &archive).await?;
    Ok((None, sha256))
}

/// `--sha256` as the API wants it (lowercase), refused here when it is not a digest.
fn checked_sha256(given: &str) -> Result<String, CliError> {
    let sha256 = given.trim().to_ascii_lowercase();
    sha256.parse::<Sha256Digest>().map_err(|_| {
        CliError::Usage(format!(
            "--sha256 {given:?} is not a SHA-256 digest: give the 64 hex digits that \
             `sha256sum` prints for the archive"
        ))
    })?;
    Ok(sha256)
}

/// Runs file work off the async thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CliError> + Send + 'static,
) -> Result<T, CliError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CliError::Io(format!("background task failed: {e}")))?
}

/// The submission's annotations: those given, plus `crate` and `version` of `--crate` (a
/// given one that says otherwise is a mistake, refused before anything is uploaded).
fn annotations(args: &SubmitArgs) -> Result<BTreeMap<String, String>, CliError> {
    let mut annotations: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in &args.annotations {
        if annotations.insert(key.clone(), value.clone()).is_some() {
            return Err(CliError::Usage(format!(
                "--annotate {key}=…: the key is given twice"
            )));
        }
    }
    if let Some(spec) = &args.krate {
        let (name, version) = source::parse_crate(spec)?;
        for (key, value) in [("crate", name), ("version", version)] {
            match annotations.get(key) {
                Some(given) if *given != value => {
                    return Err(CliError::Usage(format!(
                        "--annotate {key}={given} contradicts --crate {spec}"
                    )))
                }
                _ => {
                    annotations.insert(key.to_owned(), value);
                }
            }
        }
    }
    Ok(annotations)
}

async fn submit(api: &Api, json: bool, args: SubmitArgs) -> Result<Outcome, CliError> {
    let annotations = annotations(&args)?;
    let (source_url, sha256) = prepare_source(api, &args).await?;
    let parameters: BTreeMap<_, _> = args.params.iter().cloned().collect();
    let labels: BTreeMap<_, _> = args.labels.iter().cloned().collect();
    let mut body = json!({
        "source_sha256": sha256,
        "recipe": args.recipe,
        "parameters": parameters,
        "labels": labels,
        "annotations": annotations,
        "mode": if args.plan { "plan" } else { "build" },
        "priority": args.priority,
    });
    if let Some(url) = source_url {
        body["source_url"] = url.into();
    }
    if let Some(timeout) = args.timeout {
        body["timeout_secs"] = timeout.into();
    }
    if let Some(max) = args.max_attempts {
        body["max_attempts"] = max.into();
    }
    if let Some(retry) = args.retry_policy() {
        body["retry"] = retry;
    }
    if let Some(k) = args.reproduce {
        body["reproduce"] = k.into();
    }
    if args.publish_first {
        body["on_mismatch"] = "publish_first".into();
    }
    if let Some(project) = &args.project {
        super::projects::check_name(project)?;
        body["project"] = project.as_str().into();
    }
    let answer = api.post("/jobs", Some(&body)).await?.unwrap_or(Value::Null);
    let job: Job = parse(&answer)?;
    if !args.wait {
        if json {
            print_json(&answer);
        } else {
            let what = annotation_headline(&job.annotations)
                .map(|h| format!("{h}, "))
                .unwrap_or_default();
            println!(
                "submitted job {} ({what}{}, {})",
                job.id, job.recipe, job.state
            );
        }
        return Ok(Outcome::Success);
    }
    eprintln!("submitted job {}; waiting for it to end", job.id);
    let detail = wait::wait_for_end(api, job.id).await?;
    report_end(json, job.id, &detail)
}

/// Prints how a finished job ended and answers the matching outcome.
pub fn report_end(json: bool, id: i64, answer: &Value) -> Result<Outcome, CliError> {
    let detail: JobDetail = parse(answer)?;
    if json {
        print_json(answer);
    }
    let job = &detail.job;
    let outcome = if job.state == JobState::Succeeded {
        Outcome::Success
    } else {
        Outcome::JobUnsuccessful
    };
    let error = job
        .error
        .as_deref()
        .map(|e| format!(": {e}"))
        .unwrap_or_default();
    let line = format!("job {id} {}{error}", job.state);
    if let (false, Some(reproduction)) = (json, &detail.reproduction) {
        print_reproduction(reproduction);
    }
    match (json, outcome) {
        (true, _) => eprintln!("{line}"),
        (false, Outcome::Success) => {
            println!("{line}");
            if job.mode == JobMode::Plan {
                println!("  plan: buildfleet job plan {id}");
            }
            for artifact in &detail.artifacts {
                println!(
                    "  artifact {} ({}): buildfleet artifact download {id} {}",
                    artifact.name,
                    size(artifact.size),
                    artifact.name
                );
            }
        }
        (false, Outcome::JobUnsuccessful) => eprintln!("{line}"),
    }
    Ok(outcome)
}

async fn list(api: &Api, json: bool, args: ListArgs) -> Result<Outcome, CliError> {
    let mut query = vec![format!("limit={}", args.limit)];
    if let Some(state) = args.state {
        query.push(format!("state={state}"));
    }
    if let Some(recipe) = &args.recipe {
        query.push(format!("recipe={}", encode(recipe)));
    }
    if let Some(builder) = &args.builder {
        let builder = super::builders::resolve(api, builder).await?;
        query.push(format!("builder={}", builder.record.id));
    }
    for annotation in &args.annotations {
        query.push(format!("annotation={}", encode(annotation)));
    }
    if let Some(before) = args.before {
        query.push(format!("before={before}"));
    }
    if let Some(project) = &args.project {
        super::projects::check_name(project)?;
        query.push(format!("project={}", encode(project)));
    }
    let answer = api.get(&format!("/jobs?{}", query.join("&"))).await?;
    if json {
        print_json(&answer);
        return Ok(Outcome::Success);
    }
    let jobs: Vec<Job> = parse(&answer["jobs"])?;
    let names = if jobs.iter().any(|j| j.builder_id.is_some()) {
        builder_names(api).await?
    } else {
        BuilderNames::default()
    };
    let mut table = Table::new(&[
        "ID", "STATE", "RECIPE", "WHAT", "MODE", "ATTEMPT", "BUILDER", "CREATED", "SOURCE",
    ]);
    for job in &jobs {
        table.row(vec![
            job.id.to_string(),
            job.state.to_string(),
            job.recipe.clone(),
            or_dash(annotation_headline(&job.annotations)),
            job.mode.to_string(),
            format!("{}/{}", job.attempt, job.max_attempts),
            names.of(job.builder_id),
            age(job.created_at),
            short_sha(&job.source_sha256),
        ]);
    }
    table.print();
    if let Some(next) = answer["next_before"].as_i64() {
        eprintln!("(more: --before {next})");
    }
    Ok(Outcome::Success)
}

fn short_sha(sha: &str) -> String {
    sha.chars().take(12).collect()
}

async fn show(api: &Api, json: bool, id: i64) -> Result<Outcome, CliError> {
    let answer = api.get(&format!("/jobs/{id}")).await?;
    if json {
        print_json(&answer);
        return Ok(Outcome::Success);
    }
    let detail: JobDetail = parse(&answer)?;
    let job = &detail.job;
    let names = if job.builder_id.is_some() || detail.attempts.iter().any(|a| a.builder.is_some()) {
        builder_names(api).await?
    } else {
        BuilderNames::default()
    };
    let mut fields: Vec<(&str, String)> = vec![("job", job.id.to_string())];
    let mut field = |name: &'static str, value: String| fields.push((name, value));
    field("project", job.project.clone());
    field("state", job.state.to_string());
    if let (JobState::Queued, Some(standing)) = (job.state, &detail.queue) {
        field("queue", wait::standing_words(standing));
    }
    if let Some(error) = &job.error {
        field("error", error.clone());
    }
    field("recipe", format!("{} ({})", job.recipe, job.mode));
    field("parameters", pairs(&job.parameters));
    field("labels", pairs(&job.required_labels));
    field("source", job.source_url.clone());
    field("sha256", job.source_sha256.clone());
    field("attempt", attempt_summary(job));
    field("builder", names.of(job.builder_id));
    field("priority", job.priority.to_string());
    field("timeout", format!("{}s", job.timeout_secs));
    field("submitter", job.submitter.clone());
    field("created", utc(job.created_at));
    field("started", or_dash(job.started_at.map(utc)));
    field("finished", or_dash(job.finished_at.map(utc)));
    if let Some(at) = job.cancel_requested_at {
        field("cancel asked", utc(at));
    }
    print_fields(&fields);
    print_annotations(&job.annotations);
    if let Some(reproduction) = &detail.reproduction {
        println!();
        print_reproduction(reproduction);
    }

    if !detail.attempts.is_empty() {
        println!();
        let mut table = Table::new(&[
            "ATTEMPT",
            "STARTED AS",
            "BUILDER",
            "OUTCOME",
            "EXIT",
            "ASSIGNED",
            "FINISHED",
            "ERROR",
        ]);
        for a in &detail.attempts {
            table.row(vec![
                a.attempt.to_string(),
                a.started_because.describe().to_owned(),
                names.of(a.builder),
                or_dash(a.outcome),
                or_dash(a.exit_status),
                utc(a.assigned_at),
                or_dash(a.finished_at.map(utc)),
                or_dash(a.error.as_deref()),
            ]);
        }
        table.print();
    }
    if !detail.artifacts.is_empty() {
        println!();
        let mut table = Table::new(&["ARTIFACT", "SIZE", "ATTEMPT", "SHA256"]);
        for a in &detail.artifacts {
            table.row(vec![
                a.name.clone(),
                size(a.size),
                a.attempt.to_string(),
                a.sha256.clone(),
            ]);
        }
        table.print();
    }
    if !detail.events.is_empty() {
        println!();
        let mut table = Table::new(&["AT", "ATTEMPT", "CHANGE", "DETAIL"]);
        for e in &detail.events {
            table.row(vec![
                utc(e.at),
                e.attempt.to_string(),
                format!("{} → {}", e.from.map_or("∅", |s| s.as_str()), e.to),
                or_dash(e.detail.as_deref()),
            ]);
        }
        table.print();
    }
    Ok(Outcome::Success)
}

/// The attempt number with what bounds it, as the dashboard's job page says it: the
/// number counts every hand-over, `max_attempts` bounds the failures since submission or
/// the last manual retry, and manual retries are counted apart (`3 · 1 of 2 attempts failed
/// · 2 manual retries`).
fn attempt_summary(job: &Job) -> String {
    let mut summary = format!(
        "{} · {} of {} attempts failed",
        job.attempt, job.failed_attempts, job.max_attempts
    );
    match job.manual_retries {
        0 => {}
        1 => summary.push_str(" · 1 manual retry"),
        n => summary.push_str(&format!(" · {n} manual retries")),
    }
    summary
}

/// A reproducible job: "reproduced by k of k builders" or "unreproducible", each run's
/// builder and digests, and a summary of the evidence (the artifacts and files that differ;
/// `--json` has the whole evidence, text diffs included).
fn print_reproduction(r: &buildfleet_api::Reproduction) {
    println!("reproduction: {}", r.describe());
    if let Some(evidence) = &r.evidence {
        println!("  {}", evidence.summary);
    }
    for run in &r.runs {
        let builder = run
            .builder_name
            .clone()
            .unwrap_or_else(|| format!("#{}", run.builder));
        let owner = run
            .owner
            .as_ref()
            .map(|o| format!(", {}={o}", run.owner_label))
            .unwrap_or_default();
        println!(
            "  run {} (attempt {}) on {builder}{owner}:",
            run.run, run.attempt
        );
        for a in &run.artifacts {
            let bytes = u64::try_from(a.size).unwrap_or(0);
            println!("    {}  sha256:{}  {}", a.name, a.sha256, size(bytes));
        }
    }
    let Some(evidence) = &r.evidence else { return };
    if let Some(failure) = &evidence.failure {
        println!("  failure: {failure}");
    }
    for artifact in &evidence.artifacts {
        let digests: Vec<String> = artifact
            .sha256
            .iter()
            .map(|d| d.clone().unwrap_or_else(|| "absent".into()))
            .collect();
        println!("  {} differs: {}", artifact.name, digests.join(" vs "));
        if let Some(note) = &artifact.note {
            println!("    ({note})");
        }
        for entry in &artifact.entries {
            let sides: Vec<String> = entry
                .runs
                .iter()
                .map(|e| match e {
                    Some(e) => match &e.sha256 {
                        Some(sha) => format!("{} bytes {}", e.size, sha.get(..12).unwrap_or(sha)),
                        None => e.kind.clone(),
                    },
                    None => "absent".into(),
                })
                .collect();
            let text = if entry.text_diff.is_some() {
                " (text diff in --json)"
            } else {
                ""
            };
            println!("    {}: {}{text}", entry.path, sides.join(" vs "));
        }
        if artifact.entries_truncated {
            println!("    … more files differ");
        }
    }
}

/// Every annotation on its own line, keys aligned; a multi-line value (a commit message)
/// keeps its lines, indented under its first.
fn print_annotations(annotations: &BTreeMap<String, String>) {
    if annotations.is_empty() {
        return;
    }
    println!();
    println!("annotations:");
    let width = annotations.keys().map(|k| k.len()).max().unwrap_or(0);
    for (key, value) in annotations {
        let mut lines = value.lines();
        println!("  {key:width$}  {}", lines.next().unwrap_or_default());
        for line in lines {
            let line = format!("  {:width$}  {line}", "");
            println!("{}", line.trim_end());
        }
    }
}

async fn plan(api: &Api, json: bool, id: i64) -> Result<Outcome, CliError> {
    // Said here, by the job's own state, rather than by the bare 404 of `/plan`.
    let detail: JobDetail = parse(&api.get(&format!("/jobs/{id}")).await?)?;
    let no_plan = |message: String| CliError::Api {
        status: 404,
        code: "not_found".into(),
        message,
    };
    if detail.job.mode != JobMode::Plan {
        return Err(no_plan(format!(
            "job {id} is a build-mode job: only a job submitted with --plan has a plan"
        )));
    }
    if detail.plan_url.is_none() {
        return Err(no_plan(format!(
            "job {id} has no plan yet: it is {} and no attempt has reported one",
            detail.job.state
        ))
        .hint(format!(
            "buildfleet job logs {id} --follow waits for the job to end"
        )));
    }
    let text = api.get_bytes(&format!("/jobs/{id}/plan")).await?;
    let text = String::from_utf8_lossy(&text);
    if json {
        print_json(&json!({ "job": id, "plan": text }));
    } else {
        print!("{text}");
        if !text.is_empty() && !text.ends_with('\n') {
            println!();
        }
    }
    Ok(Outcome::Success)
}

async fn cancel(api: &Api, json: bool, id: i64) -> Result<Outcome, CliError> {
    let answer = match api.post(&format!("/jobs/{id}/cancel"), None).await {
        Ok(answer) => answer.unwrap_or(Value::Null),
        Err(e) => {
            return Err(explain_conflict(api, id, e, |state| {
                state.is_terminal().then(|| {
                    format!("job {id} has already ended ({state}): there is nothing to cancel")
                })
            })
            .await)
        }
    };
    if json {
        print_json(&answer);
        return Ok(Outcome::Success);
    }
    let job: Job = parse(&answer)?;
    if job.state.is_terminal() {
        println!("job {id} {}", job.state);
    } else {
        let builder = match job.builder_id {
            Some(builder) => builder_name(api, builder).await,
            None => "its builder".to_owned(),
        };
        println!("job {id}: cancel requested; {builder} is stopping it");
    }
    Ok(Outcome::Success)
}

async fn boost(api: &Api, json: bool, id: i64) -> Result<Outcome, CliError> {
    let answer = match api.post(&format!("/jobs/{id}/boost"), None).await {
        Ok(answer) => answer.unwrap_or(Value::Null),
        Err(e) => {
            return Err(explain_conflict(api, id, e, |state| {
                (state != JobState::Queued)
                    .then(|| format!("job {id} is {state}: only a queued job can be boosted"))
            })
            .await)
        }
    };
    if json {
        print_json(&answer);
        return Ok(Outcome::Success);
    }
    let job: Job = parse(&answer)?;
    println!(
        "job {id} boosted: priority {}, ahead of every project's work",
        job.priority
    );
    Ok(Outcome::Success)
}

async fn retry(api: &Api, json: bool, id: i64) -> Result<Outcome, CliError> {
    let answer = match api.post(&format!("/jobs/{id}/retry"), None).await {
        Ok(answer) => answer.unwrap_or(Value::Null),
        Err(e) => {
            return Err(explain_conflict(api, id, e, |state| {
                (!matches!(
                    state,
                    JobState::Failed | JobState::Cancelled | JobState::TimedOut
                ))
                .then(|| {
                    format!(
                        "job {id} is {state}: only a job that failed, was cancelled or timed \
                         out can be retried"
                    )
                })
            })
            .await)
        }
    };
    if json {
        print_json(&answer);
        return Ok(Outcome::Success);
    }
    let job: Job = parse(&answer)?;
    println!("job {id} {} again (attempt {})", job.state, job.attempt);
    Ok(Outcome::Success)
}

/// A conflict over a job's state, said by the state the job is in (the API names the
/// refused transition); any other error as it is.
async fn explain_conflict(
    api: &Api,
    id: i64,
    error: CliError,
    explain: impl FnOnce(JobState) -> Option<String>,
) -> CliError {
    if error.api_code() != Some("conflict") {
        return error;
    }
    let Ok(answer) = api.get(&format!("/jobs/{id}")).await else {
        return error;
    };
    match parse::<Job>(&answer)
        .ok()
        .and_then(|job| explain(job.state))
    {
        Some(message) => error.map_api_message(|_| message),
        None => error,
    }
}

/// `builder NAME` of a builder id, for a message; `builder ID` if it cannot be looked up
/// (removed since), since the message is about something that already happened.
pub(super) async fn builder_name(api: &Api, id: i64) -> String {
    match api.get(&format!("/builders/{id}")).await {
        Ok(answer) => match parse::<Builder>(&answer) {
            Ok(builder) => format!("builder {}", builder.record.name),
            Err(_) => format!("builder {id}"),
        },
        Err(_) => format!("builder {id}"),
    }
}

/// Builder names by id, for the BUILDER columns.
#[derive(Default)]
struct BuilderNames(BTreeMap<i64, String>);

impl BuilderNames {
    /// The builder's name; `#ID` for one no longer admitted; `-` for none.
    fn of(&self, id: Option<i64>) -> String {
        match id {
            Some(id) => self.0.get(&id).cloned().unwrap_or_else(|| format!("#{id}")),
            None => "-".to_owned(),
        }
    }
}

async fn builder_names(api: &Api) -> Result<BuilderNames, CliError> {
    let answer = api.get("/builders").await?;
    let builders: Vec<Builder> = parse(&answer["builders"])?;
    Ok(BuilderNames(
        builders
            .into_iter()
            .map(|b| (b.record.id, b.record.name))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_checked_before_sending() {
        let digest = "AB".repeat(32);
        assert_eq!(checked_sha256(&digest).unwrap(), "ab".repeat(32));
        let refused = checked_sha256("xyz").unwrap_err();
        assert_eq!(refused.exit_code(), 2);
        assert!(refused.to_string().contains("is not a SHA-256 digest"));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration_secs("90"), Ok(90));
        assert_eq!(parse_duration_secs("30m"), Ok(1800));
        assert_eq!(parse_duration_secs("2h"), Ok(7200));
        assert!(parse_duration_secs("2w").is_err());
        assert!(parse_duration_secs("m").is_err());
    }
}
