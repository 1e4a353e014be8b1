//! Waiting for a job's end (`job submit --wait`), saying on stderr why it waits while it is
//! queued (its place in line and its matching builders, or why no builder matches) and where
//! each attempt started. Stdout stays for the result (`--json`).

use std::time::Duration;

use buildfleet_api::{JobDetail, QueueStanding};
use indicatif::ProgressBar;
use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;

use super::client::{parse, Api};
use super::exit::CliError;
use super::jobs::builder_name;
use super::logs;
use super::sse::Events;
use crate::store::JobState;

/// How often a queued job's standing is read again between the job's own events. Its place
/// moves when other jobs start or end and builders come and go, none of which its event
/// stream carries; one small `GET` this often shows that without weighing on the server.
/// Each event of the job itself reads it at once, and nothing is read once the job left
/// the queue.
const STANDING_RECHECK: Duration = Duration::from_secs(3);

/// A state event of `/jobs/{id}/events`.
#[derive(Deserialize)]
struct StateEvent {
    state: JobState,
    attempt: i32,
}

/// Waits for the job's end on its pushed state stream (it returns as soon as the backend
/// commits the end), then reads the finished job; a spinner on a terminal shows the state
/// meanwhile, and [`Progress`] says why the job waits.
pub async fn wait_for_end(api: &Api, id: i64) -> Result<Value, CliError> {
    let mut progress = Progress {
        id,
        spinner: logs::spinner(&format!("job {id}")),
        standing: None,
        started: None,
    };
    let mut events = Events::new(api, format!("/jobs/{id}/events"));
    // The first reading is at once: a job no builder matches says so without delay.
    let mut recheck = Some(Instant::now());
    loop {
        let due = async {
            match recheck {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        // Dropping an unfinished `events.next()` loses no event: they wait in the stream (or
        // the connection is made again, resuming after the last event seen).
        tokio::select! {
            biased;
            event = events.next() => {
                let event = event?;
                if event.event == "end" {
                    break;
                }
                let state = serde_json::from_str::<StateEvent>(&event.data).ok();
                if let (Some(spinner), Some(state)) = (&progress.spinner, &state) {
                    spinner.set_message(format!(
                        "job {id}: {} (attempt {})",
                        state.state, state.attempt
                    ));
                }
                recheck = progress.refresh(api, state.as_ref()).await;
            }
            () = due => recheck = progress.refresh(api, None).await,
        }
    }
    if let Some(spinner) = progress.spinner {
        spinner.finish_and_clear();
    }
    api.get(&format!("/jobs/{id}")).await
}

/// What was last said about the job, so a line is printed only when something changes.
struct Progress {
    id: i64,
    spinner: Option<ProgressBar>,
    standing: Option<Said>,
    /// The attempt whose start was reported.
    started: Option<i32>,
}

/// The parts of a standing worth a new line when they change. Free slots and estimates move
/// all the time on a busy fleet; they are printed, but do not trigger a line of their own.
#[derive(Debug, PartialEq, Eq)]
enum Said {
    Blocked(String),
    Queued {
        position: u64,
        capped: bool,
        online: u32,
        offline: u32,
    },
}

impl Progress {
    /// Reads the job and says what changed; answers when to read it again (`None` once it
    /// left the queue: its next event says what comes next). `event` is the state event
    /// that prompted the reading, if one did: a start is told from it, since a short job may
    /// have ended by the time the job is read.
    async fn refresh(&mut self, api: &Api, event: Option<&StateEvent>) -> Option<Instant> {
        let again = Some(Instant::now() + STANDING_RECHECK);
        // A failed reading is not worth ending the wait for: the event stream carries the
        // outcome, and the next reading may work.
        let Ok(answer) = api.get(&format!("/jobs/{}", self.id)).await else {
            return again;
        };
        let Ok(detail) = parse::<JobDetail>(&answer) else {
            return again;
        };
        if let Some(started) = event.filter(|e| e.state == JobState::Running) {
            if self.started != Some(started.attempt) {
                self.started = Some(started.attempt);
                self.say_started(api, &detail, started.attempt).await;
            }
        }
        if detail.job.state != JobState::Queued {
            // A requeued job's standing is told again when it waits again.
            self.standing = None;
            return None;
        }
        if let Some(standing) = &detail.queue {
            let said = Said::of(standing);
            if self.standing.as_ref() != Some(&said) {
                self.say(&standing_line(self.id, standing));
                self.standing = Some(said);
            }
        }
        again
    }

    async fn say_started(&self, api: &Api, detail: &JobDetail, attempt: i32) {
        let builder = detail
            .attempts
            .iter()
            .find(|a| a.attempt == attempt)
            .and_then(|a| a.builder);
        let on = match builder {
            Some(builder) => builder_name(api, builder).await,
            None => "a builder".to_owned(),
        };
        let which = if attempt > 1 {
            format!(" (attempt {attempt})")
        } else {
            String::new()
        };
        self.say(&format!("job {} started on {on}{which}", self.id));
    }

    /// One line on stderr, above the spinner when there is one.
    fn say(&self, line: &str) {
        match &self.spinner {
            Some(spinner) => spinner.println(line),
            None => eprintln!("{line}"),
        }
    }
}

impl Said {
    fn of(standing: &QueueStanding) -> Said {
        match &standing.blocked {
            Some(reason) => Said::Blocked(reason.clone()),
            None => Said::Queued {
                position: standing.position,
                capped: standing.position_capped,
                online: standing.matching_builders_online,
                offline: standing.matching_builders_offline,
            },
        }
    }
}

/// `job 12 is queued: 3rd in line for 2 matching builders (1 online, 1 offline, 0 free
/// slots); starts in about 40 s`, or `job 12 cannot start: no builder matches: …` (or
/// `job 12 is queued: waiting for a builder: …` when an admitted one is offline).
fn standing_line(id: i64, s: &QueueStanding) -> String {
    let words = standing_words(s);
    // With an admitted builder offline that may match, the reason says it waits for one.
    if s.blocked.is_some() && s.matching_builders_offline == 0 {
        format!(
            "job {id} cannot start: {words}; still waiting, in case a matching builder connects"
        )
    } else {
        format!("job {id} is queued: {words}")
    }
}

/// Where a queued job stands, as `job show` prints it and `--wait` says it: `3rd in line for
/// 2 matching builders (1 online, 1 offline, 0 free slots); starts in about 40 s`, or the
/// reason no builder takes it (`no builder matches: …`, `waiting for a builder: …`).
pub(super) fn standing_words(s: &QueueStanding) -> String {
    if let Some(blocked) = &s.blocked {
        return blocked.clone();
    }
    let place = if s.position_capped {
        format!("{} or later", ordinal(s.position))
    } else {
        ordinal(s.position)
    };
    let matching = s
        .matching_builders_online
        .saturating_add(s.matching_builders_offline);
    let offline = if s.matching_builders_offline > 0 {
        format!(", {} offline", s.matching_builders_offline)
    } else {
        String::new()
    };
    let start = match s.estimated_start_secs {
        Some(0) => "should start at once".to_owned(),
        Some(secs) => format!("starts in about {}", rough(secs)),
        None => "no estimate yet (no recent run of this recipe)".to_owned(),
    };
    format!(
        "{place} in line for {matching} matching builder{} ({} online{offline}, {} free slot{}); {start}",
        plural(u64::from(matching)),
        s.matching_builders_online,
        s.free_slots,
        plural(u64::from(s.free_slots)),
    )
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// 1st, 2nd, 3rd, 4th, 11th, 12th, 13th, 21st, 112th.
fn ordinal(n: u64) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
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

    fn standing() -> QueueStanding {
        QueueStanding {
            position: 3,
            position_capped: false,
            matching_builders_online: 1,
            free_slots: 0,
            matching_builders_offline: 1,
            typical_duration_secs: Some(20),
            estimated_start_secs: Some(40),
            blocked: None,
        }
    }

    #[test]
    fn ordinals_read_naturally() {
        let got: Vec<_> = [1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 112]
            .into_iter()
            .map(ordinal)
            .collect();
        assert_eq!(
            got,
            [
                "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st",
                "112th"
            ]
        );
    }

    #[test]
    fn a_queued_job_says_its_place_builders_and_estimate() {
        assert_eq!(
            standing_line(12, &standing()),
            "job 12 is queued: 3rd in line for 2 matching builders (1 online, 1 offline, 0 free slots); starts in about 40 s"
        );
        let s = QueueStanding {
            position: 1000,
            position_capped: true,
            matching_builders_online: 1,
            matching_builders_offline: 0,
            free_slots: 1,
            estimated_start_secs: None,
            ..standing()
        };
        assert_eq!(
            standing_line(7, &s),
            "job 7 is queued: 1000th or later in line for 1 matching builder (1 online, 1 free slot); no estimate yet (no recent run of this recipe)"
        );
    }

    #[test]
    fn a_blocked_job_says_why() {
        let s = QueueStanding {
            blocked: Some("no builder matches: no connected builder offers recipe \"foo\"".into()),
            matching_builders_offline: 0,
            ..standing()
        };
        assert!(standing_line(12, &s).starts_with(
            "job 12 cannot start: no builder matches: no connected builder offers recipe \"foo\";"
        ));
        let s = QueueStanding {
            blocked: Some("waiting for a builder: no builder is connected; 1 admitted builder that may match is offline".into()),
            matching_builders_online: 0,
            ..standing()
        };
        assert_eq!(
            standing_line(12, &s),
            "job 12 is queued: waiting for a builder: no builder is connected; 1 admitted builder that may match is offline"
        );
    }

    #[test]
    fn only_place_builders_and_reason_changes_are_news() {
        let a = standing();
        let moving_estimate = QueueStanding {
            estimated_start_secs: Some(10),
            free_slots: 1,
            ..standing()
        };
        assert_eq!(Said::of(&a), Said::of(&moving_estimate));
        let moved_up = QueueStanding {
            position: 2,
            ..standing()
        };
        assert_ne!(Said::of(&a), Said::of(&moved_up));
        let builder_left = QueueStanding {
            matching_builders_online: 0,
            matching_builders_offline: 2,
            ..standing()
        };
        assert_ne!(Said::of(&a), Said::of(&builder_left));
    }
}
