//! `buildfleet token …`: create (the secret is printed once), list and revoke API tokens.

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

use super::client::{parse, Api};
use super::exit::{CliError, Outcome};
use super::output::{or_dash, print_json, utc, Table};
use super::projects::check_name;
use buildfleet_api::{ApiToken, CreatedToken, TokenList};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token; its secret is printed this once (only its hash is kept).
    Create(CreateArgs),
    /// List the tokens this token manages (all, for the admin; its project's, for a
    /// project's admin token).
    List,
    /// Revoke a token: it is refused from now on (revoking twice changes nothing).
    Revoke(TokenRef),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Scope {
    Read,
    Submit,
    Admin,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Submit => "submit",
            Scope::Admin => "admin",
        }
    }
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The project (`organisation/project`) the token acts in; omitted: a token of the
    /// whole service (admin scope, admin token only).
    #[arg(long, value_name = "ORG/NAME")]
    pub project: Option<String>,
    /// What it may do: read, submit (and read), admin (and manage the project's tokens).
    #[arg(long, value_enum)]
    pub scope: Scope,
    /// What the token is for, shown in listings.
    #[arg(long, value_name = "TEXT")]
    pub description: String,
    /// Lifetime: a number with s, m, h or d (e.g. 30d); omitted: until revoked.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub expires_in: Option<u64>,
}

#[derive(Debug, Args)]
pub struct TokenRef {
    /// The token's id (from `token list`), not its secret.
    #[arg(value_name = "ID")]
    pub id: i64,
}

/// `30d`, `12h`, `90m`, `3600s` (or bare seconds) into seconds.
pub fn parse_duration(raw: &str) -> Result<u64, String> {
    let raw = raw.trim();
    let (number, unit) = match raw.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => raw.split_at(at),
        None => (raw, "s"),
    };
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{raw:?}: give a number with s, m, h or d, e.g. 30d"
            ))
        }
    };
    let count: u64 = number
        .parse()
        .map_err(|_| format!("{raw:?}: give a number with s, m, h or d, e.g. 30d"))?;
    match count.checked_mul(factor) {
        Some(0) => Err(format!("{raw:?}: a lifetime must be longer than nothing")),
        Some(secs) => Ok(secs),
        None => Err(format!("{raw:?} is too long")),
    }
}

pub async fn run(api: &Api, json: bool, command: TokenCommand) -> Result<Outcome, CliError> {
    match command {
        TokenCommand::Create(args) => create(api, json, args).await,
        TokenCommand::List => list(api, json).await,
        TokenCommand::Revoke(t) => {
            let answer = api
                .delete(&format!("/tokens/{}", t.id))
                .await?
                .unwrap_or(Value::Null);
            if json {
                print_json(&answer);
            } else {
                let token: ApiToken = parse(&answer)?;
                println!("revoked token {} ({})", token.id, token.description);
            }
            Ok(Outcome::Success)
        }
    }
}

async fn create(api: &Api, json: bool, args: CreateArgs) -> Result<Outcome, CliError> {
    if let Some(project) = &args.project {
        check_name(project)?;
    }
    let mut body = json!({ "scope": args.scope.as_str(), "description": args.description });
    if let Some(project) = &args.project {
        body["project"] = json!(project);
    }
    if let Some(secs) = args.expires_in {
        body["expires_in_secs"] = json!(secs);
    }
    let answer = api
        .post("/tokens", Some(&body))
        .await?
        .unwrap_or(Value::Null);
    if json {
        print_json(&answer);
        return Ok(Outcome::Success);
    }
    let created: CreatedToken = parse(&answer)?;
    let token = &created.token;
    eprintln!(
        "created token {} ({} scope, {}{}); its secret is shown this once:",
        token.id,
        scope_name(token),
        token.project.as_deref().unwrap_or("no project"),
        token
            .expires_at
            .map(|at| format!(", expires {}", utc(at)))
            .unwrap_or_default()
    );
    // The secret alone on stdout, so `$(buildfleet token create …)` captures it.
    println!("{}", created.secret);
    Ok(Outcome::Success)
}

fn scope_name(token: &ApiToken) -> &'static str {
    match token.scope {
        buildfleet_api::TokenScope::Read => "read",
        buildfleet_api::TokenScope::Submit => "submit",
        buildfleet_api::TokenScope::Admin => "admin",
    }
}

async fn list(api: &Api, json: bool) -> Result<Outcome, CliError> {
    let answer = api.get("/tokens").await?;
    if json {
        print_json(&answer);
        return Ok(Outcome::Success);
    }
    let list: TokenList = parse(&answer)?;
    let mut table = Table::new(&[
        "ID",
        "PROJECT",
        "SCOPE",
        "STATUS",
        "CREATED",
        "EXPIRES",
        "DESCRIPTION",
    ]);
    for t in &list.tokens {
        let status = if t.revoked_at.is_some() {
            "revoked"
        } else if t.live {
            "live"
        } else {
            "expired"
        };
        table.row(vec![
            t.id.to_string(),
            t.project.clone().unwrap_or_else(|| "-".into()),
            scope_name(t).into(),
            status.into(),
            utc(t.created_at),
            or_dash(t.expires_at.map(utc)),
            t.description.clone(),
        ]);
    }
    table.print();
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_duration("30d"), Ok(30 * 86_400));
        assert_eq!(parse_duration("12h"), Ok(12 * 3600));
        assert_eq!(parse_duration("90m"), Ok(5400));
        assert_eq!(parse_duration("45"), Ok(45));
        for bad in ["", "0d", "3w", "d", "-1d", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
