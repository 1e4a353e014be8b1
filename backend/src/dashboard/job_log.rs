//! The job page's log pane. The stored log is rendered on the server (the tail of one
//! attempt, so a large log does not make a huge page), so a finished job's page needs no
//! script; while the job is active, the pane names the stream and the byte offset where the
//! live tail (`app.js`) goes on from what the page already shows.
//!
//! Records render the same way here and in `app.js` (`appendRecord`): one block per record
//! with its number (the record's `seq`), its UTC time and its text; standard error is marked
//! by a gutter, and only lines that start like a compiler's `error:` or `warning:` are
//! coloured, since cargo writes everything, progress included, to standard error.

use maud::{html, Markup};

use super::pages::format_time;
use crate::cli::output::size;
use crate::logs::{read_attempt_log, LogRecord};
use crate::storage::Storage;
use crate::store::{Attempt, Job, JobAttempt, JobState, LogChunk};

/// Most stored log the page shows; the rest is one link away.
const SHOWN_BYTES: u64 = 512 * 1024;

/// The stored tail of one attempt's log.
#[derive(Debug, Default)]
pub struct StoredLog {
    pub records: Vec<LogRecord>,
    /// Bytes stored for the attempt when the page was read.
    pub total_bytes: u64,
    /// Where the shown records start (0: the whole log is shown).
    pub shown_from: u64,
    /// The byte offset after the last shown record: where a live tail goes on.
    pub end: u64,
}

/// Reads the last [`SHOWN_BYTES`] of `attempt`'s stored log, whole records only.
pub fn read_tail(
    storage: &dyn Storage,
    chunks: &[LogChunk],
    attempt: Attempt,
) -> std::io::Result<StoredLog> {
    read_last(storage, chunks, attempt, SHOWN_BYTES)
}

fn read_last(
    storage: &dyn Storage,
    chunks: &[LogChunk],
    attempt: Attempt,
    shown_bytes: u64,
) -> std::io::Result<StoredLog> {
    let total_bytes: u64 = chunks
        .iter()
        .filter(|c| c.attempt == attempt)
        .map(|c| u64::try_from(c.length).unwrap_or(0))
        .sum();
    // One byte before the cut shows whether the cut falls on a record's start.
    let from = total_bytes.saturating_sub(shown_bytes).saturating_sub(1);
    let (bytes, _) = read_attempt_log(storage, chunks, attempt, from, total_bytes - from)?;
    let skip = match from {
        0 => 0,
        _ => bytes
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |i| i + 1),
    };
    let whole = bytes[skip..]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let records = bytes[skip..skip + whole]
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .filter_map(|line| serde_json::from_slice::<LogRecord>(line).ok())
        .collect();
    Ok(StoredLog {
        records,
        total_bytes,
        shown_from: from + skip as u64,
        end: from + (skip + whole) as u64,
    })
}

/// What the pane shows: which attempt, whether its tail is live, and the search.
pub struct LogView<'a> {
    pub job: &'a Job,
    pub attempts: &'a [JobAttempt],
    pub attempt: Attempt,
    pub log: &'a StoredLog,
    /// Only records whose text holds this (ASCII case ignored).
    pub search: Option<&'a str>,
}

impl LogView<'_> {
    /// The stream goes on only for the job's current attempt while the job has not ended.
    fn is_live(&self) -> bool {
        !self.job.state.is_terminal() && self.attempt == self.job.attempt
    }

    fn status(&self, shown: usize) -> String {
        let matching = if self.search.is_some() {
            " matching"
        } else {
            ""
        };
        let lines = match shown {
            1 => format!("1{matching} line"),
            n => format!("{n}{matching} lines"),
        };
        if self.attempt != self.job.attempt {
            let outcome = self
                .attempts
                .iter()
                .find(|a| a.attempt == self.attempt)
                .and_then(|a| a.outcome)
                .map_or("ended", |o| o.as_str());
            return format!("{lines} · attempt {} {}", self.attempt, words(outcome));
        }
        match self.job.state {
            JobState::Queued if self.log.records.is_empty() => "waiting for a builder".into(),
            state if state.is_terminal() => format!("{lines} · {}", words(state.as_str())),
            _ => format!("{lines} so far"),
        }
    }

    pub fn render(&self) -> Markup {
        let job = self.job.id;
        let shown: Vec<&LogRecord> = self
            .log
            .records
            .iter()
            .filter(|r| self.search.is_none_or(|q| matches(r, q)))
            .collect();
        let stream = self.is_live().then(|| {
            let mut url = format!("/api/v1/jobs/{job}/log/stream?attempt={}", self.attempt);
            if self.log.end > 0 {
                url.push_str(&format!("&offset={}", self.log.end));
            }
            url
        });
        let text_url = format!(
            "/api/v1/jobs/{job}/log?attempt={}&format=text",
            self.attempt
        );
        html! {
            section #log aria-labelledby="log-heading" {
                div.log-head {
                    h2 #log-heading { "Log" }
                    span.muted #log-status { (self.status(shown.iter().filter(|r| r.stage.is_none()).count())) }
                }
                @if self.attempts.len() > 1 {
                    nav.attempt-tabs aria-label="Log of attempt" {
                        @for a in self.attempts {
                            @if a.attempt == self.attempt {
                                a href={ "/jobs/" (job) "?attempt=" (a.attempt) "#log" } aria-current="page" { "Attempt " (a.attempt) }
                            } @else {
                                a href={ "/jobs/" (job) "?attempt=" (a.attempt) "#log" } { "Attempt " (a.attempt) }
                            }
                        }
                    }
                }
                form.log-tools method="get" action={ "/jobs/" (job) "#log" } role="search" {
                    @if self.attempt != self.job.attempt {
                        input type="hidden" name="attempt" value=(self.attempt);
                    }
                    label.search {
                        span { "Search the log" }
                        input #log-search type="search" name="q" value=(self.search.unwrap_or_default()) placeholder="e.g. error";
                    }
                    button.secondary type="submit" { "Search" }
                    label.toggle { input #log-show-numbers type="checkbox"; " Line numbers" }
                    label.toggle { input #log-show-times type="checkbox"; " Times (UTC)" }
                    // Following is the live tail's, which needs the script: it shows the toggle.
                    @if stream.is_some() {
                        label.toggle #log-follow-toggle hidden { input #log-follow type="checkbox" checked; " Follow" }
                    }
                    span.legend.muted { span.err-mark aria-hidden="true" {} "standard error" }
                }
                pre.log #live-log tabindex="0" aria-label="Log lines"
                    data-stream=[stream] data-job=(job)
                {
                    @for record in &shown { (record_markup(record, self.search)) }
                }
                p.muted.log-links {
                    @if self.log.shown_from > 0 {
                        "Showing the last " (size(self.log.total_bytes - self.log.shown_from)) " of " (size(self.log.total_bytes)) ". "
                    }
                    "Attempt " (self.attempt) " as "
                    a href=(text_url) { "text" } " · "
                    a href={ "/api/v1/jobs/" (job) "/log?attempt=" (self.attempt) } { "JSONL" }
                }
            }
        }
    }
}

/// `timed_out` as `timed out`.
fn words(state: &str) -> String {
    state.replace('_', " ")
}

fn matches(record: &LogRecord, search: &str) -> bool {
    record
        .line
        .as_deref()
        .is_some_and(|line| find_ascii_ci(line, search, 0).is_some())
}

/// The byte index of `needle` in `hay` at or after `from`, ignoring ASCII case (so byte
/// indices stay those of `hay`; `app.js` searches the same way).
fn find_ascii_ci(hay: &str, needle: &str, from: usize) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    let (hay, needle) = (hay.as_bytes(), needle.as_bytes());
    (from..=hay.len().checked_sub(needle.len())?)
        .find(|&i| hay[i..i + needle.len()].eq_ignore_ascii_case(needle))
}

/// `error:`, `error[E0425]:`, `warning:` and the like at the start of a line.
pub fn severity(line: &str) -> Option<&'static str> {
    let line = line.trim_start();
    ["error", "warning"].into_iter().find(|word| {
        line.get(..word.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(word))
            && matches!(line.as_bytes().get(word.len()), Some(b':' | b'['))
    })
}

/// Milliseconds as the UTC time of day, `HH:MM:SS.mmm`.
fn time_of_day(ms: i64) -> String {
    let day_ms = ms.rem_euclid(86_400_000);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

fn record_markup(record: &LogRecord, search: Option<&str>) -> Markup {
    let (class, text) = match (&record.stage, &record.line) {
        (Some(stage), _) => {
            let name = serde_json::to_string(stage).unwrap_or_default();
            (
                "stage".to_owned(),
                format!("--- {}", words(name.trim_matches('"'))),
            )
        }
        (None, line) => {
            let line = line.clone().unwrap_or_default();
            let stream = match record.stream.as_deref() {
                Some("stderr") => "err",
                Some("system") => "system",
                _ => "out",
            };
            let class = match severity(&line) {
                Some(level) => format!("{stream} lvl-{level}"),
                None => stream.to_owned(),
            };
            (class, line)
        }
    };
    html! {
        span class={ "rec " (class) } title=[(class.starts_with("err")).then_some("standard error")] {
            span.ln { (record.seq) }
            span.ts title=(format!("{} UTC", format_time(record.ts))) { (time_of_day(record.ts)) }
            span.tx { (highlighted(&text, search)) }
        }
    }
}

/// `text` with each match of `search` in a `mark`.
fn highlighted(text: &str, search: Option<&str>) -> Markup {
    let Some(search) = search else {
        return html! { (text) };
    };
    let mut parts = Vec::new();
    let mut at = 0;
    while let Some(found) = find_ascii_ci(text, search, at) {
        let end = found + search.len();
        // ASCII case folding keeps byte positions, so these are char boundaries of `text`.
        parts.push((&text[at..found], &text[found..end]));
        at = end;
    }
    html! {
        @for (before, hit) in &parts { (before) mark { (hit) } }
        (&text[at..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiler_severities_are_recognised_only_at_the_start() {
        assert_eq!(severity("error: could not compile `x`"), Some("error"));
        assert_eq!(severity("error[E0425]: cannot find value"), Some("error"));
        assert_eq!(severity("  warning: unused variable"), Some("warning"));
        assert_eq!(severity("   Compiling itoa v1.0.19"), None);
        assert_eq!(severity("no errors: fine"), None);
        assert_eq!(severity("errors: 0"), None);
    }

    #[test]
    fn searches_ignore_ascii_case_and_keep_byte_positions() {
        assert_eq!(find_ascii_ci("Zoë ERROR here", "error", 0), Some(5));
        assert_eq!(find_ascii_ci("abc", "abcd", 0), None);
        assert_eq!(find_ascii_ci("abc", "", 0), None);
        let marked = highlighted("Error, error", Some("ERROR")).into_string();
        assert_eq!(marked, "<mark>Error</mark>, <mark>error</mark>");
        assert_eq!(highlighted("<b>", Some("x")).into_string(), "&lt;b&gt;");
    }

    /// The tail starts at a whole record: one cut in the middle of a record drops it, one
    /// that falls on a record's start keeps it; `end` is where a live tail goes on.
    #[test]
    fn the_tail_holds_whole_records_only() {
        use crate::storage::FsStorage;
        use crate::store::JobId;

        let dir = tempfile::tempdir().unwrap();
        let storage = FsStorage::new(dir.path()).unwrap();
        let records: Vec<Vec<u8>> = (1..=4)
            .map(|seq| LogRecord {
                seq,
                ts: 1_700_000_000_000,
                stream: Some("stdout".into()),
                line: Some(format!("line {seq}")),
                stage: None,
            })
            .map(|r| r.to_jsonl())
            .collect();
        let chunks: Vec<LogChunk> = records
            .iter()
            .zip(1..)
            .map(|(bytes, seq)| {
                let span = storage.append_log(bytes).unwrap();
                LogChunk {
                    job: JobId(1),
                    attempt: Attempt(1),
                    first_seq: seq,
                    last_seq: seq,
                    location: span.key,
                    byte_offset: span.offset as i64,
                    length: bytes.len() as i64,
                    created_at: 0,
                }
            })
            .collect();
        let len = records[0].len() as u64; // every record has the same length
        let seqs = |log: &StoredLog| log.records.iter().map(|r| r.seq).collect::<Vec<_>>();

        let all = read_last(&storage, &chunks, Attempt(1), 100 * len).unwrap();
        assert_eq!(
            (seqs(&all), all.shown_from, all.end),
            (vec![1, 2, 3, 4], 0, 4 * len)
        );
        let two = read_last(&storage, &chunks, Attempt(1), 2 * len).unwrap();
        assert_eq!(
            (seqs(&two), two.shown_from, two.end),
            (vec![3, 4], 2 * len, 4 * len)
        );
        let cut = read_last(&storage, &chunks, Attempt(1), 2 * len + 3).unwrap();
        assert_eq!(seqs(&cut), vec![3, 4], "the record cut in two is left out");
        assert_eq!(cut.total_bytes, 4 * len);
        let other = read_last(&storage, &chunks, Attempt(2), len).unwrap();
        assert_eq!((other.records.len(), other.end), (0, 0));
    }

    #[test]
    fn times_of_day_are_utc() {
        assert_eq!(time_of_day(1_700_000_000_123), "22:13:20.123");
        assert_eq!(time_of_day(-1), "23:59:59.999");
    }
}
