//! `buildfleet project …`: create, list, show and change projects.

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::client::{parse, Api};
use super::exit::{CliError, Outcome};
use super::output::{print_fields, print_json, utc, Table};
use buildfleet_api::{Project, ProjectList};

#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// Create a project (and its organisation when new). Admin token.
    Create(CreateArgs),
    /// List the projects this token may see.
    List,
    /// Show one project.
    Show(ProjectRef),
    /// Change whether a project is public, its fair-share weight or how many independent
    /// builders reproduce its jobs by default. Admin token.
    Set(SetArgs),
    /// The project's webhooks and their deliveries.
    #[command(subcommand)]
    Webhook(super::notifications::WebhookCommand),
    /// Show how long the project's artifacts and logs are kept and what they take, or change
    /// it with the flags (the limits not given stay). The project's admin to change.
    Retention(super::notifications::RetentionArgs),
}

#[derive(Debug, Args)]
pub struct ProjectRef {
    /// `organisation/project`.
    #[arg(value_name = "ORG/NAME")]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// `organisation/project`.
    #[arg(value_name = "ORG/NAME")]
    pub name: String,
    /// Readable without a token (jobs, logs, artifacts). Default: private.
    #[arg(long)]
    pub public: bool,
    /// Fair-share weight, 1 to 1000 [default: 1].
    #[arg(long, value_name = "N")]
    pub weight: Option<i32>,
}

#[derive(Debug, Args)]
pub struct SetArgs {
    /// `organisation/project`.
    #[arg(value_name = "ORG/NAME")]
    pub name: String,
    /// Make it public (`true`) or private (`false`).
    #[arg(long, value_name = "true|false")]
    pub public: Option<bool>,
    /// Fair-share weight, 1 to 1000.
    #[arg(long, value_name = "N")]
    pub weight: Option<i32>,
    /// How many independent builders must build the project's jobs that name no
    /// `--reproduce` and agree before they publish, 1 to 5 (1: no reproduction).
    #[arg(long, value_name = "K")]
    pub reproduce: Option<i32>,
}

/// Refuses a name that cannot be a project's before sending it (exit 2).
pub fn check_name(name: &str) -> Result<(), CliError> {
    match name.split_once('/') {
        Some((org, project))
            if !org.is_empty() && !project.is_empty() && !project.contains('/') =>
        {
            Ok(())
        }
        _ => Err(CliError::Usage(format!(
            "{name:?} is not a project name: give organisation/project, e.g. acme/web"
        ))),
    }
}

pub async fn run(api: &Api, json: bool, command: ProjectCommand) -> Result<Outcome, CliError> {
    match command {
        ProjectCommand::Create(args) => {
            check_name(&args.name)?;
            let mut body = json!({ "name": args.name, "public": args.public });
            if let Some(weight) = args.weight {
                body["weight"] = json!(weight);
            }
            let created = api
                .post("/projects", Some(&body))
                .await?
                .unwrap_or(Value::Null);
            show(json, &created, "created ")
        }
        ProjectCommand::List => list(api, json).await,
        ProjectCommand::Webhook(command) => super::notifications::webhook(api, json, command).await,
        ProjectCommand::Retention(args) => super::notifications::retention(api, json, args).await,
        ProjectCommand::Show(p) => {
            check_name(&p.name)?;
            let project = api.get(&format!("/projects/{}", p.name)).await?;
            show(json, &project, "")
        }
        ProjectCommand::Set(args) => {
            check_name(&args.name)?;
            if args.public.is_none() && args.weight.is_none() && args.reproduce.is_none() {
                return Err(CliError::Usage(
                    "nothing to change: give --public true|false, --weight N or --reproduce K"
                        .into(),
                ));
            }
            let mut body = json!({});
            if let Some(public) = args.public {
                body["public"] = json!(public);
            }
            if let Some(weight) = args.weight {
                body["weight"] = json!(weight);
            }
            if let Some(reproduce) = args.reproduce {
                body["reproduce"] = json!(reproduce);
            }
            let changed = api
                .patch(&format!("/projects/{}", args.name), &body)
                .await?
                .unwrap_or(Value::Null);
            show(json, &changed, "changed ")
        }
    }
}

fn visibility(public: bool) -> &'static str {
    if public {
        "public"
    } else {
        "private"
    }
}

/// A project's default reproduction, as `project show` prints it.
fn reproduced_by(k: i32) -> String {
    if k <= 1 {
        "1 builder (no reproduction)".into()
    } else {
        format!("{k} independent builders")
    }
}

fn show(json: bool, answer: &Value, done: &str) -> Result<Outcome, CliError> {
    if json {
        print_json(answer);
        return Ok(Outcome::Success);
    }
    let project: Project = parse(answer)?;
    if !done.is_empty() {
        println!("{done}project {} (id {})", project.name, project.id);
    }
    print_fields(&[
        ("name", project.name),
        ("visibility", visibility(project.public).into()),
        ("weight", project.weight.to_string()),
        ("reproduced by", reproduced_by(project.reproduce)),
        ("created", utc(project.created_at)),
    ]);
    Ok(Outcome::Success)
}

async fn list(api: &Api, json: bool) -> Result<Outcome, CliError> {
    let answer = api.get("/projects").await?;
    if json {
        print_json(&answer);
        return Ok(Outcome::Success);
    }
    let list: ProjectList = parse(&answer)?;
    let mut table = Table::new(&["ID", "NAME", "VISIBILITY", "WEIGHT", "CREATED"]);
    for p in list.projects {
        table.row(vec![
            p.id.to_string(),
            p.name,
            visibility(p.public).into(),
            p.weight.to_string(),
            utc(p.created_at),
        ]);
    }
    table.print();
    Ok(Outcome::Success)
}
