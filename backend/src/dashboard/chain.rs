//! The job page's chain: the job a build follows from (a crate's metadata job) and the
//! builds a job queued when it succeeded.

use maud::{html, Markup};

use crate::store::JobId;

pub fn section(follows_from: Option<JobId>, follow_ups: &[JobId]) -> Markup {
    if follows_from.is_none() && follow_ups.is_empty() {
        return html! {};
    }
    html! {
        section.chain #job-chain aria-label="Related jobs" {
            h2 { "Chain" }
            @if let Some(parent) = follows_from {
                p { "Follows from " a href={ "/jobs/" (parent) } { "job #" (parent) } " (its metadata chose this build)." }
            }
            @if !follow_ups.is_empty() {
                p {
                    "Queued on success: "
                    @for (i, job) in follow_ups.iter().enumerate() {
                        @if i > 0 { ", " }
                        a href={ "/jobs/" (job) } { "#" (job) }
                    }
                }
            }
        }
    }
}
