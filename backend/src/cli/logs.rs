//! `buildfleet job logs`: a job's stored log, or (with --follow) its live server-sent events
//! until the job ends.
//!
//! Following reads one stream: the stored lines, the live ones, and an `end` event with the
//! outcome once the job is over; a dropped stream is resumed from the last event id. Records
//! are still deduplicated by their sequence number.

use std::io::IsTerminal;
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;

use super::client::Api;
use super::exit::{CliError, Outcome, EXIT_CODES_HELP};
use super::output::{colour_allowed, strip_escapes};
use super::sse::Events;
use buildfleet_api::{AttemptOutcome, JobDetail};

use super::client::parse;
use crate::http::logs::{attempt_exists, attempts_had};
use crate::logs::LogRecord;
use crate::store::JobState;

/// Largest page of stored log read at once (the backend sends at most 8 MiB).
const MAX_PAGE_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Args)]
#[command(after_long_help = EXIT_CODES_HELP)]
pub struct LogsArgs {
    /// The job's id.
    pub id: i64,
    /// Stream the log live until the job ends, then exit with its outcome (0 succeeded,
    /// 1 failed, cancelled or timed out).
    #[arg(long, short)]
    pub follow: bool,
    /// Which attempt's log [default: the job's current attempt].
    #[arg(long)]
    pub attempt: Option<i32>,
}

/// A spinner on stderr, only when stderr is a terminal.
pub fn spinner(what: &str) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let spinner = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        spinner.set_style(style);
    }
    spinner.set_message(format!("waiting for {what}"));
    spinner.enable_steady_tick(Duration::from_millis(100));
    Some(spinner)
}

/// Prints log records once each: lines to stdout or stderr by their stream, stage changes
/// to stderr; with `--json` the records themselves (JSONL) to stdout. A build's colour
/// escapes reach a terminal only: a file or a pipe gets plain text.
struct Printer {
    json: bool,
    last_seq: Option<u64>,
    spinner: Option<ProgressBar>,
    colour_stdout: bool,
    colour_stderr: bool,
}

impl Printer {
    fn record(&mut self, raw: &[u8]) {
        let Ok(record) = serde_json::from_slice::<LogRecord>(raw) else {
            return;
        };
        if self.last_seq.is_some_and(|last| record.seq <= last) {
            return;
        }
        self.last_seq = Some(record.seq);
        if let Some(spinner) = self.spinner.take() {
            spinner.finish_and_clear();
        }
        if self.json {
            println!("{}", String::from_utf8_lossy(raw));
        } else if let Some(line) = &record.line {
            if record.stream.as_deref() == Some("stderr") {
                eprintln!("{}", self.shown(line, self.colour_stderr));
            } else {
                println!("{}", self.shown(line, self.colour_stdout));
            }
        } else if let Some(stage) = &record.stage {
            let name = serde_json::to_value(stage).unwrap_or_default();
            eprintln!("--- {}", name.as_str().unwrap_or("stage"));
        }
    }

    fn shown<'a>(&self, line: &'a str, colour: bool) -> std::borrow::Cow<'a, str> {
        if colour {
            std::borrow::Cow::Borrowed(line)
        } else {
            strip_escapes(line)
        }
    }

    fn jsonl(&mut self, bytes: &[u8]) {
        for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            self.record(line);
        }
    }

    fn status(&self, message: String) {
        if let Some(spinner) = &self.spinner {
            spinner.set_message(message);
        }
    }

    fn note(&mut self, message: &str) {
        if let Some(spinner) = self.spinner.take() {
            spinner.finish_and_clear();
        }
        eprintln!("{message}");
    }
}

pub async fn run(api: &Api, json: bool, args: LogsArgs) -> Result<Outcome, CliError> {
    let mut printer = Printer {
        json,
        last_seq: None,
        spinner: None,
        colour_stdout: colour_allowed(std::io::stdout().is_terminal()),
        colour_stderr: colour_allowed(std::io::stderr().is_terminal()),
    };
    // The job first: a clear "not found", and an attempt it has not had is an error rather
    // than an empty log (the backend answers 404 for it too; see `missing_attempt`).
    let detail = job_detail(api, args.id).await?;
    let job = &detail.job;
    let had: Vec<i32> = detail.attempts.iter().map(|a| a.attempt).collect();
    let recorded = |attempt: i32| had.contains(&attempt);
    if let Some(attempt) = args.attempt {
        if !attempt_exists(job.state, job.attempt, &had, attempt) {
            return Err(CliError::NoSuchAttempt {
                job: args.id,
                attempt,
                had: attempts_had(job.state, job.attempt, &had),
            });
        }
    }
    if !args.follow {
        let attempt = args.attempt.unwrap_or(job.attempt);
        if !recorded(attempt) {
            printer.note(&if job.state.is_terminal() {
                format!("job {} never ran ({}): it has no log", args.id, job.state)
            } else {
                format!(
                    "job {} attempt {attempt} has not started yet ({}): no log so far",
                    args.id, job.state
                )
            });
            return Ok(Outcome::Success);
        }
        read_stored(api, args.id, Some(attempt), &mut printer)
            .await
            .map_err(|e| missing_attempt(e, args.id, attempt))?;
        return Ok(Outcome::Success);
    }
    printer.spinner = spinner(&format!("job {}", args.id));
    let followed = follow(api, args.id, args.attempt, &mut printer).await;
    match args.attempt {
        Some(attempt) => followed.map_err(|e| missing_attempt(e, args.id, attempt)),
        None => followed,
    }
}

/// The backend's 404 for an attempt the job has not had (`job 5 has no attempt 3: …`) as
/// the CLI's own error, exit 4 like its own check: the job may have changed since.
fn missing_attempt(error: CliError, job: i64, attempt: i32) -> CliError {
    let CliError::Api { code, message, .. } = error.inner() else {
        return error;
    };
    let prefix = format!("job {job} has no attempt {attempt}: ");
    match message.strip_prefix(&prefix) {
        Some(had) if code == "not_found" => CliError::NoSuchAttempt {
            job,
            attempt,
            had: had.to_owned(),
        },
        _ => error,
    }
}

fn payload_error(e: impl std::fmt::Display) -> CliError {
    CliError::Network(format!("reading the log: {e}"))
}

/// Prints the stored log of an attempt, page by page.
async fn read_stored(
    api: &Api,
    id: i64,
    attempt: Option<i32>,
    printer: &mut Printer,
) -> Result<(), CliError> {
    let mut offset = 0u64;
    loop {
        let mut path = format!("/jobs/{id}/log?offset={offset}");
        if let Some(attempt) = attempt {
            path.push_str(&format!("&attempt={attempt}"));
        }
        let mut response = api.get_response(&path).await?;
        let next = response
            .headers()
            .get("x-next-offset")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let page = response
            .body()
            .limit(MAX_PAGE_BYTES)
            .await
            .map_err(payload_error)?;
        printer.jsonl(&page);
        match next {
            Some(next) if !page.is_empty() && next > offset => offset = next,
            _ => return Ok(()),
        }
    }
}

async fn job_detail(api: &Api, id: i64) -> Result<JobDetail, CliError> {
    parse(&api.get(&format!("/jobs/{id}")).await?)
}

/// How an earlier attempt ended, as the job's attempts record it.
fn outcome_of(detail: &JobDetail, attempt: i32) -> (Outcome, String) {
    let recorded = detail.attempts.iter().find(|a| a.attempt == attempt);
    let outcome_name = recorded
        .and_then(|a| a.outcome)
        .unwrap_or(AttemptOutcome::Lost);
    let outcome = if outcome_name == AttemptOutcome::Succeeded {
        Outcome::Success
    } else {
        Outcome::JobUnsuccessful
    };
    (
        outcome,
        format!("job {} attempt {attempt} {outcome_name}", detail.job.id),
    )
}

/// The data of the stream's `attempt` and `end` events.
#[derive(Deserialize)]
struct AttemptEvent {
    attempt: i32,
}

#[derive(Deserialize)]
struct EndEvent {
    outcome: JobState,
    error: Option<String>,
}

/// Prints the live log stream until its `end` (or, with `--attempt`, until that attempt is
/// over), then answers the outcome. Lines come once each: a dropped stream is resumed with
/// `Last-Event-ID`.
async fn follow(
    api: &Api,
    id: i64,
    wanted: Option<i32>,
    printer: &mut Printer,
) -> Result<Outcome, CliError> {
    let mut path = format!("/jobs/{id}/log/stream");
    if let Some(attempt) = wanted {
        path.push_str(&format!("?attempt={attempt}"));
    }
    printer.status(format!("waiting for job {id}"));
    let mut events = Events::new(api, path);
    loop {
        let event = events.next().await?;
        match event.event.as_str() {
            "message" => printer.record(event.data.as_bytes()),
            "attempt" => {
                let next: AttemptEvent = serde_json::from_str(&event.data)
                    .map_err(|e| CliError::Network(format!("a bad attempt event: {e}")))?;
                if let Some(wanted) = wanted {
                    // The followed attempt is over: its log is complete.
                    let (outcome, line) = outcome_of(&job_detail(api, id).await?, wanted);
                    printer.note(&line);
                    return Ok(outcome);
                }
                printer.last_seq = None;
                printer.note(&format!(
                    "--- job {id} was requeued; following attempt {}",
                    next.attempt
                ));
            }
            "end" => {
                let end: EndEvent = serde_json::from_str(&event.data)
                    .map_err(|e| CliError::Network(format!("a bad end event: {e}")))?;
                let error = end.error.map(|e| format!(": {e}")).unwrap_or_default();
                printer.note(&format!("job {id} {}{error}", end.outcome));
                return Ok(if end.outcome == JobState::Succeeded {
                    Outcome::Success
                } else {
                    Outcome::JobUnsuccessful
                });
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(message: &str) -> CliError {
        CliError::Api {
            status: 404,
            code: "not_found".into(),
            message: message.into(),
        }
    }

    #[test]
    fn the_backends_missing_attempt_is_the_clis_own_error() {
        let mapped = missing_attempt(refusal("job 5 has no attempt 3: it has had 1 so far"), 5, 3);
        assert_eq!(mapped.exit_code(), 4);
        assert_eq!(
            mapped.to_string(),
            "job 5 has no attempt 3: it has had 1 so far"
        );
        // Another 404 (the job itself) stays what it is.
        let other = missing_attempt(refusal("job 5 not found"), 5, 3);
        assert_eq!(other.exit_code(), 3);
    }
}
