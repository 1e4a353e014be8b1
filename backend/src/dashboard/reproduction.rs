//! The job page's reproduction box for a job built by several independent builders:
//! "reproduced by k of k builders" or "unreproducible", each run's builder and digests, and
//! the evidence of a disagreement (the artifacts and files that differ, text diffs).

use buildfleet_api::{Reproduction, ReproductionVerdict};
use maud::{html, Markup};

use super::pages::format_time;

pub fn section(reproduction: Option<&Reproduction>) -> Markup {
    let Some(r) = reproduction else {
        return html! {};
    };
    let class = match r.verdict {
        Some(ReproductionVerdict::Reproduced) => "reproduced",
        Some(_) => "unreproducible",
        None => "pending",
    };
    html! {
        section #reproduction class={ "reproduction " (class) } aria-label="Reproduction" {
            h2 { "Reproduction" }
            p role="status" {
                strong { (r.describe()) }
                @if r.verdict.is_none() {
                    " · " (r.required) " independent builders required"
                }
            }
            @if let Some(evidence) = &r.evidence {
                p.job-error { (evidence.summary) }
                @if let Some(failure) = &evidence.failure {
                    p.mono { "failure: " (failure) }
                }
            }
            @if !r.runs.is_empty() {
                div.table-wrap { table.stack {
                    thead { tr { th { "Run" } th { "Attempt" } th { "Builder" } th { "Owner" } th { "Finished (UTC)" } th { "Artifacts (SHA-256)" } } }
                    tbody { @for run in &r.runs {
                        tr {
                            td data-label="Run" { (run.run) }
                            td data-label="Attempt" { (run.attempt) }
                            td data-label="Builder" { (run.builder_name.clone().unwrap_or_else(|| format!("#{}", run.builder))) }
                            td data-label="Owner" { @if let Some(owner) = &run.owner { (run.owner_label) "=" (owner) } @else { span.muted { "none" } } }
                            td data-label="Finished" { (format_time(run.finished_at)) }
                            td.mono data-label="Artifacts" {
                                @for a in &run.artifacts { (a.name) " " (a.sha256) br; }
                            }
                        }
                    } }
                } }
            }
            @if let Some(evidence) = &r.evidence {
                @for artifact in &evidence.artifacts {
                    h3 { (artifact.name) " differs" }
                    p.mono { @for (i, d) in artifact.sha256.iter().enumerate() {
                        "run " (i + 1) ": " (d.clone().unwrap_or_else(|| "absent".into())) br;
                    } }
                    @if let Some(note) = &artifact.note { p.muted { (note) } }
                    @if !artifact.entries.is_empty() {
                        div.table-wrap { table.stack {
                            thead { tr { th { "File" } th { "In each run (size, SHA-256)" } } }
                            tbody { @for e in &artifact.entries {
                                tr {
                                    td.mono data-label="File" { (e.path) }
                                    td.mono data-label="Runs" {
                                        @for (i, side) in e.runs.iter().enumerate() {
                                            "run " (i + 1) ": "
                                            @match side {
                                                Some(s) => { (s.size) " bytes " (s.sha256.clone().unwrap_or_else(|| s.kind.clone())) }
                                                None => { "absent" }
                                            }
                                            br;
                                        }
                                    }
                                }
                                @if let Some(diff) = &e.text_diff {
                                    tr { td colspan="2" { pre.log { (diff) } } }
                                }
                            } }
                        } }
                        @if artifact.entries_truncated { p.muted { "More files differ than are listed." } }
                    }
                }
            }
        }
    }
}
