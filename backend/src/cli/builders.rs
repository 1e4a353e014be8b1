//! `buildfleet builder …`: admit, list and steer builders.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::client::Api;
use super::exit::{CliError, Outcome};
use super::output::{age, or_dash, pairs, print_fields, print_json, utc, Table};
use buildfleet_api::{Builder, BuilderRecord};

use super::client::parse;

#[derive(Debug, Subcommand)]
pub enum BuilderCommand {
    /// Admit a builder: trust its SSH public key under a name. It can connect from then on.
    Admit(AdmitArgs),
    /// List the admitted builders, whether each is connected, and the projects it serves.
    List,
    /// Show one builder: its state, labels, recipes, keys' fingerprint and the projects it
    /// serves.
    Show(BuilderRef),
    /// Make a builder serve only the named projects' jobs (private to them), or every
    /// project's again with --shared (admin token). Without either, print what it serves.
    Projects(ProjectsArgs),
    /// Let a disabled builder connect and take jobs again.
    Enable(BuilderRef),
    /// Refuse a builder: its session is closed and it gets no jobs until enabled.
    Disable(BuilderRef),
    /// Ask a connected builder to finish its running jobs and take no new ones.
    Drain(BuilderRef),
    /// Ask a connected builder to take no new jobs for now (running jobs go on).
    Pause(BuilderRef),
    /// Let a paused or draining builder take jobs again.
    Resume(BuilderRef),
    /// Forget a builder and its key. Its signed statements no longer verify.
    Remove(BuilderRef),
    /// A builder's signing keys: list, rotate to a new one, revoke one.
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// List a builder's keys, oldest first, with each one's validity and revocation.
    List(BuilderRef),
    /// Make a new key the one the builder authenticates and signs with (admin). The old key
    /// stays in the allowed-signers file, valid until now, so what it signed keeps verifying
    /// at its signing time; the builder's session is closed and it connects with the new key.
    Rotate(RotateArgs),
    /// Revoke one of a builder's keys (admin): it leaves the allowed-signers file, so what it
    /// signed no longer verifies, and the dashboard marks those jobs. Revoking the current key
    /// keeps the builder out until a new key is rotated in.
    Revoke(RevokeArgs),
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("public_key").required(true))]
pub struct RotateArgs {
    /// The builder's id, or its name.
    #[arg(value_name = "ID")]
    pub builder: String,
    /// File with the new OpenSSH public key (e.g. `builder.key.pub`).
    #[arg(long, value_name = "PATH", group = "public_key")]
    pub key_file: Option<PathBuf>,
    /// The new OpenSSH public key itself: 'ssh-ed25519 AAAA… comment'.
    #[arg(long, value_name = "KEY", group = "public_key")]
    pub key: Option<String>,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The builder's id, or its name.
    #[arg(value_name = "ID")]
    pub builder: String,
    /// The key's fingerprint, `SHA256:…` (buildfleet builder key list shows them).
    pub fingerprint: String,
    /// Why the key is revoked (shown beside the jobs it signed).
    #[arg(long)]
    pub reason: String,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("public_key").required(true))]
pub struct AdmitArgs {
    /// The builder's name (its principal in the allowed-signers file).
    pub name: String,
    /// File with the builder's OpenSSH public key (e.g. `builder.key.pub`).
    #[arg(long, value_name = "PATH", group = "public_key")]
    pub key_file: Option<PathBuf>,
    /// The OpenSSH public key itself: 'ssh-ed25519 AAAA… comment'.
    #[arg(long, value_name = "KEY", group = "public_key")]
    pub key: Option<String>,
    /// A label `key=value` the builder offers to jobs; repeat for more.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub labels: Vec<(String, String)>,
}

#[derive(Debug, Args)]
pub struct ProjectsArgs {
    /// The builder's id, or its name.
    #[arg(value_name = "ID")]
    pub builder: String,
    /// The projects (`organisation/project`) whose jobs it runs, and no others'.
    #[arg(value_name = "ORG/NAME")]
    pub projects: Vec<String>,
    /// Serve every project again (no longer private).
    #[arg(long, conflicts_with = "projects")]
    pub shared: bool,
}

#[derive(Debug, Args)]
pub struct BuilderRef {
    /// The builder's id, or its name.
    #[arg(value_name = "ID")]
    pub builder: String,
}

/// `key=value` with a non-empty key.
pub fn parse_key_value(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("{raw:?} is not key=value")),
    }
}

pub async fn run(api: &Api, json: bool, command: BuilderCommand) -> Result<Outcome, CliError> {
    match command {
        BuilderCommand::Admit(args) => admit(api, json, args).await,
        BuilderCommand::List => list(api, json).await,
        BuilderCommand::Show(b) => show(api, json, &b).await,
        BuilderCommand::Projects(args) => projects(api, json, args).await,
        BuilderCommand::Enable(b) => act(api, json, &b, "enable").await,
        BuilderCommand::Disable(b) => act(api, json, &b, "disable").await,
        BuilderCommand::Drain(b) => act(api, json, &b, "drain").await,
        BuilderCommand::Pause(b) => act(api, json, &b, "pause").await,
        BuilderCommand::Resume(b) => act(api, json, &b, "resume").await,
        BuilderCommand::Remove(b) => remove(api, json, &b).await,
        BuilderCommand::Key(command) => key(api, json, command).await,
    }
}

/// The one-line public key of --key-file or --key.
fn one_key_line(key_file: Option<&PathBuf>, key: Option<&String>) -> Result<String, CliError> {
    let key = match (key_file, key) {
        (Some(path), _) => std::fs::read_to_string(path)
            .map_err(|e| CliError::Usage(format!("--key-file {}: {e}", path.display())))?,
        (None, Some(key)) => key.clone(),
        (None, None) => return Err(CliError::Usage("give --key-file or --key".into())),
    };
    let key = key.trim();
    if key.lines().count() != 1 {
        return Err(CliError::Usage(
            "the public key must be one line: 'ssh-ed25519 AAAA… comment'".into(),
        ));
    }
    Ok(key.to_owned())
}

async fn key(api: &Api, json: bool, command: KeyCommand) -> Result<Outcome, CliError> {
    let (answer, done) = match command {
        KeyCommand::List(b) => {
            let target = resolve(api, &b.builder).await?.record;
            (
                api.get(&format!("/builders/{}/keys", target.id)).await?,
                None,
            )
        }
        KeyCommand::Rotate(args) => {
            let key = one_key_line(args.key_file.as_ref(), args.key.as_ref())?;
            let target = resolve(api, &args.builder).await?.record;
            let answer = api
                .post(
                    &format!("/builders/{}/keys", target.id),
                    Some(&json!({ "public_key": key })),
                )
                .await
                .map_err(|e| {
                    let taken = e.api_code() == Some("conflict");
                    let e = e.map_api_message(|m| name_in_message(m, &target));
                    if taken {
                        e.hint("a key belongs to one builder once: generate a new key pair")
                    } else {
                        e
                    }
                })?
                .unwrap_or(Value::Null);
            (answer, Some("rotated"))
        }
        KeyCommand::Revoke(args) => {
            let target = resolve(api, &args.builder).await?.record;
            let answer = api
                .post(
                    &format!(
                        "/builders/{}/keys/{}/revoke",
                        target.id,
                        super::client::encode(&args.fingerprint)
                    ),
                    Some(&json!({ "reason": args.reason })),
                )
                .await
                .map_err(|e| e.map_api_message(|m| name_in_message(m, &target)))?
                .unwrap_or(Value::Null);
            (answer, Some("revoked"))
        }
    };
    if json {
        print_json(&answer);
        return Ok(Outcome::Success);
    }
    let list: buildfleet_api::builders::BuilderKeyList = parse(&answer)?;
    if let Some(done) = done {
        println!("builder {}: key {done}", list.name);
    }
    let mut table = Table::new(&[
        "FINGERPRINT",
        "STATE",
        "VALID AFTER",
        "VALID BEFORE",
        "REVOKED",
    ]);
    for k in &list.keys {
        let state = match (&k.revoked_reason, k.current) {
            (Some(reason), _) => format!("revoked: {reason}"),
            (None, true) => "current".to_owned(),
            (None, false) => "rotated out".to_owned(),
        };
        table.row(vec![
            k.fingerprint.clone(),
            state,
            utc(k.valid_after),
            or_dash(k.valid_before.map(utc)),
            or_dash(k.revoked_at.map(utc)),
        ]);
    }
    table.print();
    Ok(Outcome::Success)
}

async fn admit(api: &Api, json: bool, args: AdmitArgs) -> Result<Outcome, CliError> {
    let key = match (&args.key_file, &args.key) {
        (Some(path), _) => std::fs::read_to_string(path)
            .map_err(|e| CliError::Usage(format!("--key-file {}: {e}", path.display())))?,
        (None, Some(key)) => key.clone(),
        (None, None) => return Err(CliError::Usage("give --key-file or --key".into())),
    };
    let key = key.trim();
    if key.lines().count() != 1 {
        return Err(CliError::Usage(
            "the public key must be one line: 'ssh-ed25519 AAAA… comment'".into(),
        ));
    }
    let labels: BTreeMap<String, String> = args.labels.into_iter().collect();
    let body = json!({ "name": args.name, "public_key": key, "labels": labels });
    let admitted = api
        .post("/builders", Some(&body))
        .await
        .map_err(|e| match e.api_code() {
            Some("conflict") => e.hint(
                "a name and a key are admitted once each; buildfleet builder list shows \
                 the admitted builders (remove one to admit it anew)",
            ),
            _ => e,
        })?
        .unwrap_or(Value::Null);
    if json {
        print_json(&admitted);
    } else {
        let builder: Builder = parse(&admitted)?;
        let builder = builder.record;
        println!(
            "admitted builder {} (id {}), key {}",
            builder.name, builder.id, builder.fingerprint
        );
    }
    Ok(Outcome::Success)
}

async fn list(api: &Api, json: bool) -> Result<Outcome, CliError> {
    let answer = api.get("/builders").await?;
    if json {
        print_json(&answer);
        return Ok(Outcome::Success);
    }
    let builders: Vec<Builder> = parse(&answer["builders"])?;
    let mut table = Table::new(&[
        "ID",
        "NAME",
        "STATE",
        "CONNECTED",
        "JOBS",
        "RECIPES",
        "LABELS",
        "DECLARED",
        "PROJECTS",
        "LAST SEEN",
        "FINGERPRINT",
    ]);
    for b in &builders {
        table.row(vec![
            b.record.id.to_string(),
            b.record.name.clone(),
            state(b),
            if b.connected { "yes" } else { "no" }.into(),
            b.live.as_ref().map_or_else(
                || "-".to_owned(),
                |l| format!("{}/{}", l.active_jobs, l.max_concurrent),
            ),
            b.live
                .as_ref()
                .filter(|l| !l.recipes.is_empty())
                .map_or_else(|| "-".to_owned(), |l| l.recipes.join(",")),
            pairs(&b.record.labels),
            b.live
                .as_ref()
                .filter(|l| !l.declared_labels.is_empty())
                .map_or_else(|| "-".to_owned(), |l| pairs(&l.declared_labels)),
            served(b),
            or_dash(b.record.last_seen_at.map(age)),
            b.record.fingerprint.clone(),
        ]);
    }
    table.print();
    Ok(Outcome::Success)
}

/// The projects a builder serves, for a table cell: `shared` when it serves all.
fn served(b: &Builder) -> String {
    if b.projects.is_empty() {
        "shared".into()
    } else {
        b.projects.join(",")
    }
}

/// The projects a builder serves, in a sentence's words.
fn serves(b: &Builder) -> String {
    if b.projects.is_empty() {
        "every project (shared)".into()
    } else {
        format!("only {} (private)", b.projects.join(", "))
    }
}

async fn show(api: &Api, json: bool, builder: &BuilderRef) -> Result<Outcome, CliError> {
    let id = resolve(api, &builder.builder).await?.record.id;
    // Read by id, as `--json` prints the API's own answer for the one builder.
    let answer = api.get(&format!("/builders/{id}")).await?;
    if json {
        print_json(&answer);
        return Ok(Outcome::Success);
    }
    let b: Builder = parse(&answer)?;
    let live = b.live.as_ref();
    print_fields(&[
        ("builder", format!("{} (id {})", b.record.name, b.record.id)),
        ("state", state(&b)),
        ("connected", if b.connected { "yes" } else { "no" }.into()),
        (
            "jobs",
            live.map_or_else(
                || "-".to_owned(),
                |l| format!("{} running, at most {}", l.active_jobs, l.max_concurrent),
            ),
        ),
        (
            "recipes",
            live.filter(|l| !l.recipes.is_empty())
                .map_or_else(|| "-".to_owned(), |l| l.recipes.join(", ")),
        ),
        ("labels", pairs(&b.record.labels)),
        (
            "declared",
            live.filter(|l| !l.declared_labels.is_empty())
                .map_or_else(|| "-".to_owned(), |l| pairs(&l.declared_labels)),
        ),
        ("projects", serves(&b)),
        ("fingerprint", b.record.fingerprint.clone()),
        ("admitted", utc(b.record.created_at)),
        ("last seen", or_dash(b.record.last_seen_at.map(utc))),
    ]);
    Ok(Outcome::Success)
}

/// `builder projects`: sets the projects a builder serves (`PUT /builders/{id}/projects`),
/// or prints them when none are given and not `--shared`.
async fn projects(api: &Api, json: bool, args: ProjectsArgs) -> Result<Outcome, CliError> {
    // Refused before anything is sent, the builder looked up included.
    for project in &args.projects {
        super::projects::check_name(project)?;
    }
    let target = resolve(api, &args.builder).await?;
    if args.projects.is_empty() && !args.shared {
        if json {
            // The API's answer, as every --json prints: the builder, with its `projects`.
            print_json(&api.get(&format!("/builders/{}", target.record.id)).await?);
        } else {
            println!("builder {} serves {}", target.record.name, serves(&target));
        }
        return Ok(Outcome::Success);
    }
    let target = target.record;
    let answer = api
        .put(
            &format!("/builders/{}/projects", target.id),
            &json!({ "projects": args.projects }),
        )
        .await
        .map_err(|e| {
            let unknown_project =
                e.api_code() == Some("not_found") && e.to_string().contains("there is no project");
            let e = e.map_api_message(|m| name_in_message(m, &target));
            if unknown_project {
                e.hint("buildfleet project list shows the projects (nothing was changed)")
            } else {
                e
            }
        })?
        .unwrap_or(Value::Null);
    if json {
        print_json(&answer);
        return Ok(Outcome::Success);
    }
    let b: Builder = parse(&answer)?;
    println!("builder {} now serves {}", b.record.name, serves(&b));
    Ok(Outcome::Success)
}

fn state(b: &Builder) -> String {
    match &b.live {
        _ if !b.record.enabled => "disabled".into(),
        Some(live) if live.draining => "draining".into(),
        Some(live) if live.paused => "paused".into(),
        _ => "enabled".into(),
    }
}

/// The builder given by id or by name (a name that is all digits is taken as an id).
pub async fn resolve(api: &Api, given: &str) -> Result<Builder, CliError> {
    if let Ok(id) = given.parse::<i64>() {
        return parse(&api.get(&format!("/builders/{id}")).await?);
    }
    let answer = api.get("/builders").await?;
    let builders: Vec<Builder> = parse(&answer["builders"])?;
    builders
        .into_iter()
        .find(|b| b.record.name == given)
        .ok_or_else(|| {
            CliError::Api {
                status: 404,
                code: "not_found".into(),
                message: format!("no builder named {given:?}"),
            }
            .hint("buildfleet builder list shows the admitted builders")
        })
}

/// `builder 3` in an API message about this builder becomes `builder NAME`.
fn name_in_message(message: &str, builder: &BuilderRecord) -> String {
    let by_id = format!("builder {}", builder.id);
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(&by_id) {
        let after = &rest[at + by_id.len()..];
        out.push_str(&rest[..at]);
        if after.starts_with(|c: char| c.is_ascii_digit()) {
            out.push_str(&by_id);
        } else {
            out.push_str(&format!("builder {}", builder.name));
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

async fn act(
    api: &Api,
    json: bool,
    builder: &BuilderRef,
    action: &str,
) -> Result<Outcome, CliError> {
    let target = resolve(api, &builder.builder).await?.record;
    let answer = api
        .post(&format!("/builders/{}/{action}", target.id), None)
        .await
        .map_err(|e| {
            let not_connected = e.api_code() == Some("conflict");
            let e = e.map_api_message(|m| name_in_message(m, &target));
            if not_connected {
                e.hint(format!(
                    "drain, pause and resume reach a connected builder only; buildfleet \
                     builder list shows whether {} is connected",
                    target.name
                ))
            } else {
                e
            }
        })?
        .unwrap_or(Value::Null);
    if json {
        print_json(&answer);
    } else {
        let b: Builder = parse(&answer)?;
        let done = match action {
            "enable" => "enabled",
            "disable" => "disabled",
            "drain" => "asked to drain",
            "pause" => "paused",
            _ => "resumed",
        };
        println!("builder {} {done}; now {}", b.record.name, state(&b));
    }
    Ok(Outcome::Success)
}

async fn remove(api: &Api, json: bool, builder: &BuilderRef) -> Result<Outcome, CliError> {
    let target = resolve(api, &builder.builder).await?.record;
    api.delete(&format!("/builders/{}", target.id))
        .await
        .map_err(|e| {
            let busy = e.api_code() == Some("conflict");
            let e = e.map_api_message(|m| name_in_message(m, &target));
            if busy {
                e.hint(format!(
                    "a builder with running jobs cannot be removed: disable it (buildfleet \
                     builder disable {}), let its jobs end or cancel them, then remove it",
                    target.name
                ))
            } else {
                e
            }
        })?;
    if json {
        print_json(&json!({ "removed": target.id }));
    } else {
        println!("removed builder {} (id {})", target.name, target.id);
    }
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_builder() {
        let record = BuilderRecord {
            id: 1,
            name: "ci-1".into(),
            public_key: String::new(),
            fingerprint: String::new(),
            enabled: true,
            labels: BTreeMap::new(),
            created_at: 0,
            last_seen_at: None,
        };
        assert_eq!(
            name_in_message("builder 1 is not connected", &record),
            "builder ci-1 is not connected"
        );
        assert_eq!(
            name_in_message("builder 12 and builder 1", &record),
            "builder 12 and builder ci-1"
        );
    }
}
