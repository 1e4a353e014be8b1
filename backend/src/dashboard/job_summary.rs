//! What a job builds and where it stands, in words: the cell job lists show for a job (its
//! annotations' headline, message, author and links beside the recipe) and the job page's
//! head (state, duration, times in UTC, builder, and every attempt's log).

use std::collections::BTreeMap;

use maud::{html, Markup};

use super::pages::{format_duration, format_time};
use crate::store::{
    annotation_headline, BuilderId, Job, JobAttempt, JobMode, JobState, BOOST_PRIORITY,
};

/// Longest message line a list shows; the job page has the whole message.
const LIST_MESSAGE_CHARS: usize = 90;
/// Links a list shows per job.
const LIST_LINKS: usize = 4;

/// A job in a list: what it builds, then the recipe.
pub fn list_cell(job: &Job) -> Markup {
    let author = job.annotations.get("author");
    let commit = job
        .annotations
        .contains_key("crate")
        .then(|| job.annotations.get("commit"))
        .flatten();
    let links = links(job);
    html! {
        div.what-line {
            @if let Some(what) = annotation_headline(&job.annotations) { span.what { (what) } " " }
            span.recipe { (job.recipe) @if job.mode == JobMode::Plan { " · plan" } }
        }
        @if let Some(message) = message_line(job) {
            div.message-line { (cut(message, LIST_MESSAGE_CHARS)) }
        }
        @if author.is_some() || commit.is_some() || !links.is_empty() {
            div.by {
                @if let Some(author) = author { span { "by " (cut(author, 40)) } }
                @if let Some(commit) = commit { span.mono { "commit " (cut(commit, 12)) } }
                @for (label, url) in links.iter().take(LIST_LINKS) {
                    a href=(url) rel="nofollow noopener noreferrer" { (label) }
                }
            }
        }
    }
}

/// The page title's words for a job: `Job #7 · itoa@1.0.19`.
pub fn title(job: &Job) -> String {
    match annotation_headline(&job.annotations) {
        Some(what) => format!("Job #{} · {what}", job.id),
        None => format!("Job #{} · {}", job.id, job.recipe),
    }
}

/// The job page's head: heading with the state, what it builds, the actions, and the facts.
/// `may_boost`: the visitor is the admin, who may put a queued job ahead of all others.
pub fn head(
    job: &Job,
    project: &str,
    attempts: &[JobAttempt],
    names: &BTreeMap<BuilderId, String>,
    now: i64,
    may_boost: bool,
) -> Markup {
    let builder_name = |b: BuilderId| names.get(&b).map_or("(removed)", String::as_str);
    html! {
        h1.job-title {
            "Job #" (job.id) " "
            span #job-state data-job=(job.id) class={ "state state-" (job.state.as_str()) } { (job.state.as_str()) }
        }
        p.job-what {
            @if let Some(what) = annotation_headline(&job.annotations) { span.what { (what) } " · " }
            span.mono { (job.recipe) } " (" (job.mode.as_str()) ")"
        }
        @if let Some(message) = message_line(job) { p.job-message { (message) } }
        @if job.state.is_active() || job.state == JobState::Queued {
            p.actions {
                button.secondary type="button" data-action={ "/api/v1/jobs/" (job.id) "/cancel" } { "Cancel job" }
                @if may_boost && job.state == JobState::Queued && job.priority != BOOST_PRIORITY {
                    button.secondary #boost-job type="button" data-action={ "/api/v1/jobs/" (job.id) "/boost" }
                        data-error-box="boost-error" { "Boost" }
                    span.form-error #boost-error role="alert" hidden {}
                }
            }
        } @else if job.state != JobState::Succeeded {
            p.actions { button.secondary type="button" data-action={ "/api/v1/jobs/" (job.id) "/retry" } { "Retry job" } }
        }
        dl.facts {
            div { dt { "Project" } dd { a.mono href={ "/jobs?project=" (project) } { (project) } } }
            div { dt { "Duration" } dd #job-duration { (duration(job, now)) } }
            div { dt { "Started" } dd { (time_or(job.started_at, "not yet")) } }
            div { dt { "Finished" } dd { (time_or(job.finished_at, "not yet")) } }
            div {
                dt { "Builder" }
                dd { @match job.builder_id {
                    Some(b) => a href={ "/builders#builder-" (b) } { (builder_name(b)) },
                    None => span.muted { "none yet" },
                } }
            }
            div {
                dt { "Attempt" }
                dd {
                    (job.attempt)
                    // The attempt number counts every hand-over; the bound is on failures.
                    span.muted {
                        " · " (job.failed_attempts) " of " (job.max_attempts) " attempts failed"
                        @if job.manual_retries > 0 { " · " (job.manual_retries) " manual retries" }
                    }
                }
            }
            div { dt { "Submitted" } dd { (time(job.created_at)) " by " (job.submitter) } }
            div.wide {
                dt { "Logs" }
                dd {
                    @if attempts.is_empty() { span.muted { "none yet" } }
                    @for (i, a) in attempts.iter().enumerate() {
                        @if i > 0 { " · " }
                        a href={ "/api/v1/jobs/" (job.id) "/log?attempt=" (a.attempt) "&format=text" } {
                            "attempt " (a.attempt)
                        }
                        @if let Some(b) = a.builder { span.muted { " on " (builder_name(b)) } }
                        @if a.attempt.0 > 1 { span.muted.attempt-cause { " (" (a.started_because.describe()) ")" } }
                        @if let Some(outcome) = a.outcome { " " span class={ "state state-" (outcome.as_str()) } { (outcome.as_str()) } }
                    }
                }
            }
        }
        @if let Some(error) = &job.error {
            p.job-error role="note" { strong { "Error: " } span.mono { (error) } }
        }
    }
}

/// A time with its zone, in a `time` element a machine can read.
pub fn time(ms: i64) -> Markup {
    let text = format_time(ms);
    html! { time datetime={ (text.replacen(' ', "T", 1)) "Z" } { (text) " UTC" } }
}

fn time_or(ms: Option<i64>, otherwise: &str) -> Markup {
    match ms {
        Some(ms) => time(ms),
        None => html! { span.muted { (otherwise) } },
    }
}

fn duration(job: &Job, now: i64) -> Markup {
    match (job.started_at, job.finished_at) {
        (Some(start), Some(end)) => html! { (format_duration(end - start)) },
        (Some(start), None) => html! { (format_duration(now - start)) " so far" },
        (None, Some(_)) => html! { span.muted { "did not run" } },
        (None, None) => html! { span.muted { "not started" } },
    }
}

/// The first non-empty line of the `message` annotation.
fn message_line(job: &Job) -> Option<&str> {
    job.annotations
        .get("message")
        .and_then(|m| m.lines().map(str::trim).find(|l| !l.is_empty()))
}

/// The `links.*` annotations that are web links, labelled by what follows `links.`.
fn links(job: &Job) -> Vec<(&str, &str)> {
    job.annotations
        .iter()
        .filter_map(|(key, value)| {
            let label = key.strip_prefix("links.")?;
            is_web_link(value).then_some((label, value.as_str()))
        })
        .collect()
}

/// Only plain http(s) URLs become links: never `javascript:` and the like.
pub fn is_web_link(value: &str) -> bool {
    (value.starts_with("https://") || value.starts_with("http://"))
        && !value.chars().any(char::is_whitespace)
}

fn cut(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_at_a_character() {
        assert_eq!(cut("Zoë", 2), "Zo…");
        assert_eq!(cut("Zoë", 3), "Zoë");
    }

    #[test]
    fn only_web_addresses_are_links() {
        assert!(is_web_link("https://ci.invalid/run/7"));
        assert!(!is_web_link("javascript:alert(1)"));
        assert!(!is_web_link("https://a.invalid/ b"));
    }
}
