//! The job page's "why it waits" box for a queued job: its position, the matching builders
//! and the estimate, or the reason no builder can take it.

use buildfleet_api::QueueStanding;
use maud::{html, Markup};

pub fn section(standing: Option<&QueueStanding>) -> Markup {
    let Some(s) = standing else {
        return html! {};
    };
    html! {
        section.waiting #queue-standing aria-label="Why this job waits" {
            h2 { "Waiting" }
            @if let Some(blocked) = &s.blocked {
                p.blocked role="status" { (blocked) }
            } @else {
                p {
                    "Position " strong { (s.position) @if s.position_capped { "+" } }
                    " among the jobs its builders can take · "
                    (s.matching_builders_online) " matching builder" (plural(s.matching_builders_online)) " online, "
                    (s.free_slots) " free slot" (plural(s.free_slots))
                    @if s.matching_builders_offline > 0 {
                        " · " (s.matching_builders_offline) " offline"
                    }
                }
                p.muted #queue-estimate {
                    @match (s.estimated_start_secs, s.typical_duration_secs) {
                        (Some(0), _) => "Should start at once.",
                        (Some(start), Some(typical)) => {
                            "Likely to start in about " (duration(start)) "; similar jobs took " (duration(typical)) "."
                        }
                        _ => "No estimate yet: no recent successful job of this recipe.",
                    }
                }
            }
        }
    }
}

fn plural(n: u32) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// A span of seconds in words, with the exact figure for machines (an ISO 8601 duration).
fn duration(secs: u64) -> Markup {
    html! { time datetime={ "PT" (secs) "S" } { (rough(secs)) } }
}

/// Seconds as "45 s", "12 min", "3 h 20 min".
fn rough(secs: u64) -> String {
    match secs {
        0..90 => format!("{secs} s"),
        90..5400 => format!("{} min", secs.div_ceil(60)),
        _ => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rough_durations_read_naturally() {
        assert_eq!(rough(0), "0 s");
        assert_eq!(rough(89), "89 s");
        assert_eq!(rough(90), "2 min");
        assert_eq!(rough(3 * 3600 + 20 * 60), "3 h 20 min");
    }
}
