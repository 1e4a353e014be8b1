//! `buildfleet job logs`: a job's stored log, or (with --follow) its live server-sent events
//! until the job ends.
//!
//! Following watches two things at once: the event stream, for lines, and the job (polled
//! every second), for its end. Once the job has ended the stored log is complete (the
//! backend flushes it before the job changes state), so a last read of it prints whatever
//! the stream had not delivered yet; records are deduplicated by their sequence number.

use std::io::IsTerminal;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use super::client::{Api, Response};
use super::exit::{CliError, Outcome, EXIT_CODES_HELP};
use super::jobs::POLL_INTERVAL;
use super::views::{parse, JobDetailView};
use crate::logs::LogRecord;
use crate::store::JobState;

/// Largest page of stored log read at once (the backend sends at most 8 MiB).
const MAX_PAGE_BYTES: usize = 16 * 1024 * 1024;
/// How long to wait before reconnecting a stream the backend closed.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

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
/// to stderr; with `--json` the records themselves (JSONL) to stdout.
struct Printer {
    json: bool,
    last_seq: Option<u64>,
    spinner: Option<ProgressBar>,
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
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
        } else if let Some(stage) = &record.stage {
            let name = serde_json::to_value(stage).unwrap_or_default();
            eprintln!("--- {}", name.as_str().unwrap_or("stage"));
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
    };
    if !args.follow {
        read_stored(api, args.id, args.attempt, &mut printer).await?;
        return Ok(Outcome::Success);
    }
    printer.spinner = spinner(&format!("job {}", args.id));
    follow(api, args.id, args.attempt, &mut printer).await
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

/// Why a stream was left.
enum Left {
    /// The backend closed it (or it broke): look at the job and reconnect.
    Closed,
    /// The followed attempt ended, or a new one began.
    AttemptOver(Box<JobDetailView>),
}

async fn job_detail(api: &Api, id: i64) -> Result<JobDetailView, CliError> {
    parse(&api.get(&format!("/jobs/{id}")).await?)
}

/// Whether `attempt` of the job can get no more log lines.
fn attempt_over(detail: &JobDetailView, attempt: i32) -> bool {
    detail.job.state.is_terminal() || detail.job.attempt != attempt
}

/// How the followed attempt ended: the job's state for its current attempt, the recorded
/// outcome for an earlier one.
fn outcome_of(detail: &JobDetailView, attempt: i32) -> (Outcome, String) {
    if detail.job.attempt == attempt {
        let error = detail
            .job
            .error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        let outcome = if detail.job.state == JobState::Succeeded {
            Outcome::Success
        } else {
            Outcome::JobUnsuccessful
        };
        return (
            outcome,
            format!("job {} {}{error}", detail.job.id, detail.job.state),
        );
    }
    let recorded = detail.attempts.iter().find(|a| a.attempt == attempt);
    let outcome_name = recorded
        .and_then(|a| a.outcome.clone())
        .unwrap_or_else(|| "lost".into());
    let outcome = if outcome_name == "succeeded" {
        Outcome::Success
    } else {
        Outcome::JobUnsuccessful
    };
    (
        outcome,
        format!("job {} attempt {attempt} {outcome_name}", detail.job.id),
    )
}

async fn follow(
    api: &Api,
    id: i64,
    wanted: Option<i32>,
    printer: &mut Printer,
) -> Result<Outcome, CliError> {
    let mut detail = job_detail(api, id).await?;
    let mut attempt = wanted.unwrap_or(detail.job.attempt);
    loop {
        if attempt_over(&detail, attempt) {
            // The stored log of an attempt that is over is complete.
            read_stored(api, id, Some(attempt), printer).await?;
            if wanted.is_none() && !detail.job.state.is_terminal() {
                attempt = detail.job.attempt;
                printer.last_seq = None;
                printer.note(&format!(
                    "--- job {id} was requeued; following attempt {attempt}"
                ));
                continue;
            }
            let (outcome, line) = outcome_of(&detail, attempt);
            printer.note(&line);
            return Ok(outcome);
        }
        printer.status(format!(
            "waiting for job {id} ({}, attempt {attempt})",
            detail.job.state
        ));
        let stream = api
            .get_response(&format!("/jobs/{id}/log/stream?attempt={attempt}"))
            .await?;
        match pump(api, id, attempt, stream, printer).await? {
            Left::AttemptOver(latest) => detail = *latest,
            Left::Closed => {
                tokio::time::sleep(RECONNECT_DELAY).await;
                detail = job_detail(api, id).await?;
            }
        }
    }
}

/// Prints the stream's records until it closes or the attempt is over.
async fn pump(
    api: &Api,
    id: i64,
    attempt: i32,
    mut stream: Response,
    printer: &mut Printer,
) -> Result<Left, CliError> {
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut pending: Vec<u8> = Vec::new();
    loop {
        tokio::select! {
            chunk = stream.next() => match chunk {
                Some(Ok(bytes)) => feed_sse(&mut pending, &bytes, printer),
                Some(Err(_)) | None => return Ok(Left::Closed),
            },
            _ = ticker.tick() => {
                let detail = job_detail(api, id).await?;
                if attempt_over(&detail, attempt) {
                    return Ok(Left::AttemptOver(Box::new(detail)));
                }
                printer.status(format!(
                    "waiting for job {id} ({}, attempt {attempt})",
                    detail.job.state
                ));
            }
        }
    }
}

/// Splits server-sent events into lines and prints each `data:` payload.
fn feed_sse(pending: &mut Vec<u8>, bytes: &Bytes, printer: &mut Printer) {
    pending.extend_from_slice(bytes);
    while let Some(end) = pending.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = pending.drain(..=end).collect();
        let line = line.strip_suffix(b"\n").unwrap_or(&line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(data) = line.strip_prefix(b"data:") {
            let data = data.strip_prefix(b" ").unwrap_or(data);
            printer.record(data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_lines_split_across_chunks_are_joined() {
        let mut printer = Printer {
            json: true,
            last_seq: None,
            spinner: None,
        };
        let mut pending = Vec::new();
        feed_sse(
            &mut pending,
            &Bytes::from_static(b": keepalive\n\ndata: {\"seq\":1,\"ts\":5,\"li"),
            &mut printer,
        );
        assert_eq!(printer.last_seq, None);
        feed_sse(
            &mut pending,
            &Bytes::from_static(b"ne\":\"a\"}\n\ndata: {\"seq\":1,\"ts\":5}\n\n"),
            &mut printer,
        );
        assert_eq!(printer.last_seq, Some(1));
        assert!(pending.is_empty());
    }
}
