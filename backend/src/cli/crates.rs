//! `buildfleet crate …` and `buildfleet registry …`: the registry follower from the command
//! line. Backfill a crate's published versions, show what was seen and built of a crate, and
//! the follower's standing.
//!
//! A 404 from these routes means one of two things: the backend follows no registry, or it
//! does and does not know the crate. The status route tells them apart, so each is said with
//! what to do about it.

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::client::{encode, parse, Api};
use super::exit::{CliError, Outcome, EXIT_CODES_HELP};
use super::output::{age, or_dash, print_fields, print_json, utc, Table};
use crate::registry::index::check_crate_name;
use buildfleet_api::{BackfillResult, CrateDetail, CrateVersion, RegistryStatus};

#[derive(Debug, Subcommand)]
pub enum CrateCommand {
    /// Queue the builds of versions published before following began (or missed): one
    /// metadata job per unyanked version, at the backfill priority, each version once.
    #[command(after_long_help = EXIT_CODES_HELP)]
    Backfill(BackfillArgs),
    /// Show every version the follower saw of a crate, newest first, with its status and
    /// builds (target, recipe, job, state).
    #[command(after_long_help = EXIT_CODES_HELP)]
    Show(CrateRef),
}

#[derive(Debug, Args)]
pub struct BackfillArgs {
    /// The crate's name, as published.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Only versions matching this semver requirement, e.g. '>=14' or '^1.2, <1.5'
    /// [default: every version].
    #[arg(long, value_name = "REQ")]
    pub versions: Option<String>,
}

#[derive(Debug, Args)]
pub struct CrateRef {
    /// The crate's name, as published.
    #[arg(value_name = "NAME")]
    pub name: String,
}

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// The registry followed: its index, watch list, position, last fetch and error, and
    /// the latest queued and skipped versions.
    #[command(after_long_help = EXIT_CODES_HELP)]
    Status,
}

pub async fn run(api: &Api, json: bool, command: CrateCommand) -> Result<Outcome, CliError> {
    match command {
        CrateCommand::Backfill(args) => backfill(api, json, args).await,
        CrateCommand::Show(args) => show(api, json, &args.name).await,
    }
}

pub async fn run_registry(
    api: &Api,
    json: bool,
    command: RegistryCommand,
) -> Result<Outcome, CliError> {
    match command {
        RegistryCommand::Status => status(api, json).await,
    }
}

/// A name the registry could not hold is refused here: nothing is sent.
fn checked_name(name: &str) -> Result<(), CliError> {
    check_crate_name(name).map_err(|e| CliError::Usage(e.to_string()))
}

/// `--versions` as the backend parses it (a semver requirement), refused here otherwise.
fn checked_requirement(versions: &str) -> Result<(), CliError> {
    semver::VersionReq::parse(versions).map(drop).map_err(|e| {
        CliError::Usage(format!(
            "--versions {versions:?} is not a semver requirement ({e}); e.g. '>=1.2', \
             '^1.2, <1.5' or '=1.2.3'"
        ))
    })
}

/// The follower's status as the API answered it; this backend's not following any registry
/// as an error that says how to set one up.
async fn follower_answer(api: &Api) -> Result<Value, CliError> {
    api.get("/registry").await.map_err(|e| {
        if e.api_code() == Some("not_found") {
            no_registry(e)
        } else {
            e
        }
    })
}

async fn follower_status(api: &Api) -> Result<RegistryStatus, CliError> {
    parse(&follower_answer(api).await?)
}

fn no_registry(e: CliError) -> CliError {
    e.map_api_message(|_| "this backend follows no registry".to_owned())
        .hint(
            "the registry follower runs when the backend's config file has a [registry] table \
             (index, crates, builds; see docs/registry.md); add one and restart the backend",
        )
}

/// What a 404 about a crate means: no registry followed at all, or a crate the follower does
/// not know (said by `unknown`, given its status). Any other error is passed on as it is.
async fn explain_not_found(
    api: &Api,
    error: CliError,
    unknown: impl FnOnce(&RegistryStatus) -> (String, Option<String>),
) -> CliError {
    if error.api_code() != Some("not_found") {
        return error;
    }
    match follower_status(api).await {
        Ok(status) => {
            let (message, hint) = unknown(&status);
            let error = error.map_api_message(|_| message);
            match hint {
                Some(hint) => error.hint(hint),
                None => error,
            }
        }
        Err(no_registry) if no_registry.api_code() == Some("not_found") => no_registry,
        // The status could not be read: the first answer is all there is.
        Err(_) => error,
    }
}

async fn backfill(api: &Api, json: bool, args: BackfillArgs) -> Result<Outcome, CliError> {
    checked_name(&args.name)?;
    if let Some(versions) = &args.versions {
        checked_requirement(versions)?;
    }
    let mut body = json!({ "crate": args.name });
    if let Some(versions) = &args.versions {
        body["versions"] = versions.clone().into();
    }
    let answer = match api.post("/registry/backfill", Some(&body)).await {
        Ok(answer) => answer.unwrap_or(Value::Null),
        Err(e) => {
            return Err(explain_not_found(api, e, |status| {
                (
                    format!(
                        "crate {:?} is not in the index of registry {} ({})",
                        args.name, status.name, status.index
                    ),
                    Some("check the crate's name as it was published".to_owned()),
                )
            })
            .await)
        }
    };
    if json {
        print_json(&answer);
        return Ok(Outcome::Success);
    }
    let done: BackfillResult = parse(&answer)?;
    if done.versions.is_empty() {
        match &args.versions {
            Some(versions) => println!(
                "crate {}: no unyanked version matches {versions:?}; nothing queued",
                done.krate
            ),
            None => println!(
                "crate {}: every version is yanked (never built); nothing queued",
                done.krate
            ),
        }
        return Ok(Outcome::Success);
    }
    if done.queued_jobs.is_empty() {
        println!(
            "crate {}: the {} matching version(s) ({}) were queued before; nothing new queued",
            done.krate,
            done.versions.len(),
            done.versions.join(", ")
        );
        return Ok(Outcome::Success);
    }
    println!(
        "crate {}: {} metadata job(s) queued for {} matching version(s)",
        done.krate,
        done.queued_jobs.len(),
        done.versions.len()
    );
    match versions_of_jobs(api, &done).await {
        Some(jobs) => {
            let mut table = Table::new(&["VERSION", "JOB"]);
            for version in &done.versions {
                let job = jobs
                    .iter()
                    .find(|(_, v)| v == version)
                    .map_or_else(|| "queued before".to_owned(), |(job, _)| job.to_string());
                table.row(vec![version.clone(), job]);
            }
            table.print();
        }
        // The versions could not be matched to their jobs: both lists as they came.
        None => {
            println!("versions: {}", done.versions.join(", "));
            let ids: Vec<String> = done.queued_jobs.iter().map(i64::to_string).collect();
            println!("jobs:     {}", ids.join(", "));
        }
    }
    eprintln!("follow them with: buildfleet crate show {}", done.krate);
    Ok(Outcome::Success)
}

/// `(job, version)` for each job a backfill queued, read from the crate's builds; `None` if
/// the crate cannot be read now (the backfill is done either way).
async fn versions_of_jobs(api: &Api, done: &BackfillResult) -> Option<Vec<(i64, String)>> {
    let answer = api
        .get(&format!("/crates/{}", encode(&done.krate)))
        .await
        .ok()?;
    let detail: CrateDetail = parse(&answer).ok()?;
    Some(
        detail
            .versions
            .iter()
            .flat_map(|v| v.builds.iter().map(move |b| (b.job, v.version.clone())))
            .filter(|(job, _)| done.queued_jobs.contains(job))
            .collect(),
    )
}

async fn show(api: &Api, json: bool, name: &str) -> Result<Outcome, CliError> {
    checked_name(name)?;
    let answer = match api.get(&format!("/crates/{}", encode(name))).await {
        Ok(answer) => answer,
        Err(e) => {
            return Err(explain_not_found(api, e, |status| unseen(name, status)).await);
        }
    };
    if json {
        print_json(&answer);
        return Ok(Outcome::Success);
    }
    let detail: CrateDetail = parse(&answer)?;
    println!(
        "crate {} (registry {}): {} version(s) seen",
        detail.krate,
        detail.registry,
        detail.versions.len()
    );
    println!();
    let mut table = Table::new(&[
        "VERSION", "STATUS", "SEEN", "TARGET", "RECIPE", "JOB", "STATE", "BACKFILL", "REASON",
    ]);
    for version in &detail.versions {
        let status = version_status(version);
        let reason = or_dash(version.reason.as_deref());
        if version.builds.is_empty() {
            table.row(vec![
                version.version.clone(),
                status,
                age(version.seen_at),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                reason,
            ]);
            continue;
        }
        // The version's own cells on its first build's row only.
        for (i, build) in version.builds.iter().enumerate() {
            let first = i == 0;
            table.row(vec![
                if first {
                    version.version.clone()
                } else {
                    String::new()
                },
                if first { status.clone() } else { String::new() },
                if first {
                    age(version.seen_at)
                } else {
                    String::new()
                },
                if build.target.is_empty() {
                    "(own)".to_owned()
                } else {
                    build.target.clone()
                },
                build.recipe.clone(),
                build.job.to_string(),
                build.state.to_string(),
                if build.backfill { "yes" } else { "no" }.to_owned(),
                if first { reason.clone() } else { String::new() },
            ]);
        }
    }
    table.print();
    Ok(Outcome::Success)
}

/// A version's status, with `yanked` when it was yanked after it was queued.
fn version_status(version: &CrateVersion) -> String {
    if version.yanked && version.status != "yanked" {
        format!("{}, yanked", version.status)
    } else {
        version.status.clone()
    }
}

/// Why the follower has no record of `name`, and what would give it one.
fn unseen(name: &str, status: &RegistryStatus) -> (String, Option<String>) {
    let message = format!(
        "crate {name:?} has not been seen by the follower of registry {}",
        status.name
    );
    let watched = status.crates.is_empty() || status.crates.iter().any(|c| c == name);
    let hint = if watched {
        format!(
            "the follower records versions as they are published (and a watched crate's at \
             its first fetch); `buildfleet crate backfill {name}` queues the versions the \
             index has"
        )
    } else {
        format!(
            "the follower watches only the crates in [registry] crates ({}); add {name} there, \
             or `buildfleet crate backfill {name}` queues the versions the index has",
            status.crates.join(", ")
        )
    };
    (message, Some(hint))
}

async fn status(api: &Api, json: bool) -> Result<Outcome, CliError> {
    let answer = follower_answer(api).await?;
    if json {
        print_json(&answer);
        return Ok(Outcome::Success);
    }
    let status: RegistryStatus = parse(&answer)?;
    let mut fields: Vec<(&str, String)> = vec![
        ("registry", status.name.clone()),
        ("index", format!("{} ({})", status.index, status.protocol)),
        (
            "crates",
            if status.crates.is_empty() {
                "every crate of the index".to_owned()
            } else {
                status.crates.join(", ")
            },
        ),
    ];
    if status.protocol == "git" {
        fields.push((
            "position",
            status
                .position
                .clone()
                .unwrap_or_else(|| "none yet".to_owned()),
        ));
    }
    fields.push((
        "last fetch",
        status.last_fetch_at.map_or_else(
            || "none yet".to_owned(),
            |at| format!("{} ({})", utc(at), age(at)),
        ),
    ));
    fields.push(("last error", or_dash(status.last_error.as_deref())));
    print_fields(&fields);
    for (title, versions, reasons) in [
        ("queued", &status.recent, false),
        ("skipped", &status.skipped, true),
    ] {
        println!();
        if versions.is_empty() {
            println!("no {title} versions");
            continue;
        }
        println!("latest {title} versions:");
        let mut table = if reasons {
            Table::new(&["CRATE", "VERSION", "SEEN", "REASON"])
        } else {
            Table::new(&["CRATE", "VERSION", "SEEN"])
        };
        for v in versions.iter() {
            let mut row = vec![v.krate.clone(), v.version.clone(), age(v.seen_at)];
            if reasons {
                row.push(or_dash(v.reason.as_deref()));
            }
            table.row(row);
        }
        table.print();
    }
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_requirements_are_checked_before_sending() {
        assert!(checked_name("bf-hello").is_ok());
        let refused = checked_name("../etc").unwrap_err();
        assert_eq!(refused.exit_code(), 2);
        assert!(refused.to_string().starts_with("crate name \"../etc\": "));
        assert!(checked_requirement(">=1.2, <2").is_ok());
        let refused = checked_requirement("not a req").unwrap_err();
        assert_eq!(refused.exit_code(), 2);
        assert!(refused
            .to_string()
            .starts_with("--versions \"not a req\" is not a semver requirement"));
    }

    #[test]
    fn an_unwatched_crate_is_said_to_be_unwatched() {
        let status = RegistryStatus {
            name: "local".into(),
            protocol: "sparse".into(),
            index: "sparse+http://127.0.0.1:1/".into(),
            crates: vec!["itoa".into()],
            position: None,
            last_fetch_at: None,
            last_error: None,
            skipped: Vec::new(),
            recent: Vec::new(),
        };
        let (message, hint) = unseen("serde", &status);
        assert_eq!(
            message,
            "crate \"serde\" has not been seen by the follower of registry local"
        );
        assert!(hint
            .unwrap()
            .contains("watches only the crates in [registry] crates (itoa)"));
        let (_, hint) = unseen("itoa", &status);
        assert!(hint
            .unwrap()
            .contains("records versions as they are published"));
    }
}
