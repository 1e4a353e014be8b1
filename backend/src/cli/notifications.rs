//! `buildfleet project webhook …` and `buildfleet project retention …`: a project's webhooks
//! with their delivery log, and how long its artifacts and logs are kept.

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::client::{parse, Api};
use super::exit::{CliError, Outcome};
use super::output::{print_fields, print_json, utc, Table};
use super::projects::check_name;
use buildfleet_api::notifications::{
    CreatedWebhook, DeliveryList, RetentionLimits, RetentionStatus, WebhookList,
};

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Add a webhook: job state changes of the project are POSTed to URL, signed with
    /// HMAC-SHA256 (`X-Buildfleet-Signature: sha256=…`). The project's admin.
    Add(AddWebhookArgs),
    /// List the project's webhooks.
    List(ProjectName),
    /// Remove a webhook; its pending deliveries are dropped.
    Remove(WebhookRef),
    /// A webhook's deliveries, newest first, with every try.
    Deliveries(WebhookRef),
}

#[derive(Debug, Args)]
pub struct ProjectName {
    /// `organisation/project`.
    #[arg(value_name = "ORG/NAME")]
    pub project: String,
}

#[derive(Debug, Args)]
pub struct AddWebhookArgs {
    /// `organisation/project`.
    #[arg(value_name = "ORG/NAME")]
    pub project: String,
    /// Where deliveries are POSTed (`http://` or `https://`). Not named `url`: that is the
    /// global option naming the backend.
    #[arg(value_name = "URL")]
    pub endpoint: String,
    /// The HMAC key; generated and printed once when left out.
    #[arg(long)]
    pub secret: Option<String>,
    /// Only these events (`queued`, `started`, `finished`); repeatable. Default: all three.
    #[arg(long = "event", value_name = "EVENT")]
    pub events: Vec<String>,
}

#[derive(Debug, Args)]
pub struct WebhookRef {
    /// `organisation/project`.
    #[arg(value_name = "ORG/NAME")]
    pub project: String,
    /// The webhook's id (`project webhook list`).
    pub id: i64,
}

#[derive(Debug, Args)]
pub struct RetentionArgs {
    /// `organisation/project`.
    #[arg(value_name = "ORG/NAME")]
    pub project: String,
    /// Delete a finished job's artifacts this many days after it ended (`none`: no limit).
    #[arg(long, value_name = "DAYS|none")]
    pub artifacts_max_age_days: Option<Limit>,
    /// Keep only the newest N finished jobs' artifacts (`none`: no limit).
    #[arg(long, value_name = "N|none")]
    pub artifacts_keep_last: Option<Limit>,
    /// Delete a finished job's logs this many days after it ended (`none`: no limit).
    #[arg(long, value_name = "DAYS|none")]
    pub logs_max_age_days: Option<Limit>,
    /// Keep only the newest N finished jobs' logs (`none`: no limit).
    #[arg(long, value_name = "N|none")]
    pub logs_keep_last: Option<Limit>,
}

/// A retention limit on the command line: a number, or `none` to lift it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(pub Option<i32>);

impl std::str::FromStr for Limit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "none" {
            return Ok(Limit(None));
        }
        s.parse::<i32>()
            .ok()
            .filter(|n| *n >= 0)
            .map(|n| Limit(Some(n)))
            .ok_or_else(|| format!("{s:?} is not a number of 0 or more, or none"))
    }
}

impl RetentionArgs {
    fn changes(&self) -> bool {
        [
            self.artifacts_max_age_days,
            self.artifacts_keep_last,
            self.logs_max_age_days,
            self.logs_keep_last,
        ]
        .iter()
        .any(Option::is_some)
    }

    /// The policy to store: `current` with the limits given on the command line (the API
    /// replaces the whole policy, so the others are sent as they are).
    fn applied_to(&self, current: &RetentionStatus) -> Value {
        let pick = |given: Option<Limit>, now: Option<i32>| given.map_or(now, |Limit(v)| v);
        json!({
            "artifacts": {
                "max_age_days": pick(self.artifacts_max_age_days, current.artifacts.max_age_days),
                "keep_last": pick(self.artifacts_keep_last, current.artifacts.keep_last),
            },
            "logs": {
                "max_age_days": pick(self.logs_max_age_days, current.logs.max_age_days),
                "keep_last": pick(self.logs_keep_last, current.logs.keep_last),
            },
        })
    }
}

pub async fn webhook(api: &Api, json: bool, command: WebhookCommand) -> Result<Outcome, CliError> {
    match command {
        WebhookCommand::Add(args) => {
            check_name(&args.project)?;
            let mut body = json!({ "url": args.endpoint });
            if let Some(secret) = args.secret {
                body["secret"] = json!(secret);
            }
            if !args.events.is_empty() {
                body["events"] = json!(args.events);
            }
            let answer = api
                .post(&format!("/projects/{}/webhooks", args.project), Some(&body))
                .await?
                .unwrap_or(Value::Null);
            if json {
                print_json(&answer);
                return Ok(Outcome::Success);
            }
            let created: CreatedWebhook = parse(&answer)?;
            println!(
                "added webhook {} of {}: {} on {}",
                created.webhook.id,
                created.webhook.project,
                created.webhook.url,
                created.webhook.events.join(", ")
            );
            // The secret on a line of its own, the one time it is shown.
            eprintln!("its signing secret (shown once; keep it to check X-Buildfleet-Signature):");
            println!("{}", created.secret);
            Ok(Outcome::Success)
        }
        WebhookCommand::List(p) => {
            check_name(&p.project)?;
            let answer = api
                .get(&format!("/projects/{}/webhooks", p.project))
                .await?;
            if json {
                print_json(&answer);
                return Ok(Outcome::Success);
            }
            let list: WebhookList = parse(&answer)?;
            let mut table = Table::new(&["ID", "URL", "EVENTS", "ENABLED", "CREATED"]);
            for w in list.webhooks {
                table.row(vec![
                    w.id.to_string(),
                    w.url,
                    w.events.join(","),
                    w.enabled.to_string(),
                    utc(w.created_at),
                ]);
            }
            table.print();
            Ok(Outcome::Success)
        }
        WebhookCommand::Remove(w) => {
            check_name(&w.project)?;
            let answer = api
                .delete(&format!("/projects/{}/webhooks/{}", w.project, w.id))
                .await?;
            if json {
                print_json(&answer.unwrap_or(Value::Null));
            } else {
                println!("removed webhook {} of {}", w.id, w.project);
            }
            Ok(Outcome::Success)
        }
        WebhookCommand::Deliveries(w) => {
            check_name(&w.project)?;
            let answer = api
                .get(&format!(
                    "/projects/{}/webhooks/{}/deliveries",
                    w.project, w.id
                ))
                .await?;
            if json {
                print_json(&answer);
                return Ok(Outcome::Success);
            }
            let list: DeliveryList = parse(&answer)?;
            let mut table = Table::new(&["ID", "JOB", "EVENT", "STATUS", "TRIES", "LAST"]);
            for d in list.deliveries {
                let last = match (d.last_status, d.last_error) {
                    (_, Some(error)) => error,
                    (Some(status), None) => format!("HTTP {status}"),
                    (None, None) => "-".into(),
                };
                table.row(vec![
                    d.id.to_string(),
                    d.job.to_string(),
                    d.event,
                    d.status,
                    d.attempts.to_string(),
                    last,
                ]);
            }
            table.print();
            Ok(Outcome::Success)
        }
    }
}

pub async fn retention(api: &Api, json: bool, args: RetentionArgs) -> Result<Outcome, CliError> {
    check_name(&args.project)?;
    let path = format!("/projects/{}/retention", args.project);
    let mut answer = api.get(&path).await?;
    if args.changes() {
        let current: RetentionStatus = parse(&answer)?;
        answer = api
            .patch(&path, &args.applied_to(&current))
            .await?
            .unwrap_or(Value::Null);
    }
    if json {
        print_json(&answer);
        return Ok(Outcome::Success);
    }
    let status: RetentionStatus = parse(&answer)?;
    print_fields(&[
        ("project", status.project),
        ("artifacts", limits(status.artifacts)),
        ("logs", limits(status.logs)),
        ("artifact bytes", status.artifact_bytes.to_string()),
        ("log bytes", status.log_bytes.to_string()),
    ]);
    Ok(Outcome::Success)
}

fn limits(l: RetentionLimits) -> String {
    match (l.max_age_days, l.keep_last) {
        (None, None) => "kept forever".into(),
        (Some(days), None) => format!("deleted {days} days after the job ended"),
        (None, Some(n)) => format!("the newest {n} finished jobs' kept"),
        (Some(days), Some(n)) => {
            format!("deleted {days} days after the job ended, or beyond the newest {n} jobs")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_numbers_and_none() {
        assert_eq!("30".parse::<Limit>(), Ok(Limit(Some(30))));
        assert_eq!("none".parse::<Limit>(), Ok(Limit(None)));
        assert!("-1".parse::<Limit>().is_err());
        assert!("soon".parse::<Limit>().is_err());
    }

    #[test]
    fn the_given_limits_change_and_the_others_stay() {
        let args = RetentionArgs {
            project: "acme/web".into(),
            artifacts_max_age_days: Some(Limit(Some(30))),
            artifacts_keep_last: None,
            logs_max_age_days: None,
            logs_keep_last: Some(Limit(None)),
        };
        assert!(args.changes());
        let current = RetentionStatus {
            project: "acme/web".into(),
            artifacts: RetentionLimits {
                max_age_days: Some(7),
                keep_last: Some(5),
            },
            logs: RetentionLimits {
                max_age_days: Some(90),
                keep_last: Some(100),
            },
            updated_at: None,
            artifact_bytes: 0,
            log_bytes: 0,
        };
        assert_eq!(
            args.applied_to(&current),
            json!({
                "artifacts": { "max_age_days": 30, "keep_last": 5 },
                "logs": { "max_age_days": 90, "keep_last": null },
            })
        );
    }
}
