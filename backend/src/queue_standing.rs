//! Why a queued job waits: its place among the work that the same builders could take, the
//! builders that match it (or why none does), and an estimate of its start from the run
//! times of recent similar jobs. Computed on request; nothing here is stored.

use std::collections::{BTreeMap, BTreeSet};

use buildfleet_api::QueueStanding;

use crate::actors::scheduler::LiveBuilder;
use crate::store::{
    is_independent, labels_satisfy, Builder, BuilderId, Job, JobRun, Labels, ANY_LABEL_VALUE,
};

/// Counting the jobs ahead stops here: past it the position is shown as a lower bound.
pub const AHEAD_CAP: i64 = 10_000;
/// Recent successful jobs whose run times make the typical duration.
pub const RUN_TIME_SAMPLES: i64 = 20;
/// Fewer crate-specific samples than this and the recipe's run times are used instead.
pub const MIN_CRATE_SAMPLES: usize = 3;

/// The connected builders that can take `job` now.
pub fn matching_online<'a>(
    job: &Job,
    live: &'a BTreeMap<BuilderId, LiveBuilder>,
) -> Vec<&'a LiveBuilder> {
    live.values()
        .filter(|b| !b.paused && !b.draining)
        .filter(|b| offers(b, job))
        .collect()
}

fn offers(builder: &LiveBuilder, job: &Job) -> bool {
    builder.recipes.contains(&job.recipe)
        && labels_satisfy(&builder.effective_labels, &job.required_labels)
        && serves(builder, job)
}

/// A shared builder serves every project; a private one only those it was given.
fn serves(builder: &LiveBuilder, job: &Job) -> bool {
    builder
        .projects
        .as_ref()
        .is_none_or(|projects| projects.contains(&job.project))
}

/// The recipes whose queued jobs compete with `job` for the same builders.
pub fn competing_recipes(matching: &[&LiveBuilder]) -> Vec<String> {
    let recipes: BTreeSet<&String> = matching.iter().flat_map(|b| &b.recipes).collect();
    recipes.into_iter().cloned().collect()
}

/// Everything [`standing`] needs besides the job and the connected builders.
pub struct QueueFacts<'a> {
    /// Enabled and disabled admitted builders, connected or not.
    pub admitted: &'a [Builder],
    /// Required labels of the queued jobs ahead of it, of the competing recipes.
    pub ahead: &'a [Labels],
    /// Run times (ms) of recent successful jobs like it.
    pub run_times: &'a [i64],
    /// The job's project as `organisation/project`, for the reason no builder matches.
    pub project: &'a str,
    /// Now, to tell how much of a retry's back-off is left.
    pub now_ms: i64,
    /// A reproducible job's completed runs: its next run needs a builder independent of
    /// them (empty for an ordinary job).
    pub runs: &'a [JobRun],
}

/// The builders of `matching` independent of every earlier run (by their operator's labels
/// in `admitted`); all of them when there are no runs.
fn independent<'a>(
    matching: Vec<&'a LiveBuilder>,
    admitted: &[Builder],
    runs: &[JobRun],
) -> Vec<&'a LiveBuilder> {
    if runs.is_empty() {
        return matching;
    }
    let none = Labels::new();
    matching
        .into_iter()
        .filter(|b| {
            let operator = admitted
                .iter()
                .find(|a| a.id == b.id)
                .map_or(&none, |a| &a.labels);
            is_independent(b.id, operator, runs)
        })
        .collect()
}

pub fn standing(
    job: &Job,
    live: &BTreeMap<BuilderId, LiveBuilder>,
    facts: &QueueFacts<'_>,
) -> QueueStanding {
    let candidates = matching_online(job, live);
    let any_candidate = !candidates.is_empty();
    let matching = independent(candidates, facts.admitted, facts.runs);
    // A job ahead counts when one of this job's builders could take it instead.
    let ahead = facts
        .ahead
        .iter()
        .filter(|required| {
            matching
                .iter()
                .any(|b| labels_satisfy(&b.effective_labels, required))
        })
        .count();
    let position = u64::try_from(ahead).unwrap_or(u64::MAX).saturating_add(1);
    let free_slots: u32 = matching
        .iter()
        .map(|b| {
            b.max_concurrent
                .saturating_sub(u32::try_from(b.active_jobs).unwrap_or(u32::MAX))
        })
        .sum();
    let total_slots: u32 = matching.iter().map(|b| b.max_concurrent).sum();
    let offline = offline_candidates(job, live, facts.admitted);
    let typical = median(facts.run_times).map(|ms| u64::try_from(ms / 1000).unwrap_or(0));
    // Waiting out a retry's back-off: no builder takes it before then, whatever is free.
    let backoff_secs = job
        .retry_not_before
        .filter(|at| *at > facts.now_ms)
        .map(|at| u64::try_from((at - facts.now_ms + 999) / 1000).unwrap_or(0));
    let blocked = if matching.is_empty() && any_candidate {
        Some(format!(
            "no builder matches: {}; every connected builder that could take it built an \
             earlier run or shares its {}",
            crate::store::explain_dependence(facts.runs),
            facts
                .runs
                .first()
                .map_or("owner", |r| r.owner_label.as_str())
        ))
    } else if matching.is_empty() {
        Some(why_none_matches(job, live, offline, facts.project))
    } else {
        backoff_secs
            .map(|secs| format!("retrying after a failed attempt: its back-off ends in {secs} s"))
    };
    let estimated_start_secs = match (typical, matching.is_empty()) {
        (Some(typical), false) => Some(
            estimate_start(position, free_slots, total_slots, typical)
                .max(backoff_secs.unwrap_or(0)),
        ),
        (None, false) => backoff_secs,
        _ => None,
    };
    QueueStanding {
        position,
        position_capped: i64::try_from(facts.ahead.len()).unwrap_or(i64::MAX) >= AHEAD_CAP,
        matching_builders_online: u32::try_from(matching.len()).unwrap_or(u32::MAX),
        free_slots,
        matching_builders_offline: offline,
        typical_duration_secs: typical,
        estimated_start_secs,
        blocked,
    }
}

/// Starts now when a free slot is left for it; otherwise after as many rounds of the
/// matching slots as the jobs ahead of it fill, each round a typical run. A rough figure:
/// running jobs are assumed to be half done.
fn estimate_start(position: u64, free_slots: u32, total_slots: u32, typical_secs: u64) -> u64 {
    if position <= u64::from(free_slots) || total_slots == 0 {
        return 0;
    }
    let waiting = position - u64::from(free_slots);
    let rounds = waiting.div_ceil(u64::from(total_slots));
    (rounds.saturating_mul(typical_secs)).saturating_sub(typical_secs / 2)
}

/// Admitted, enabled builders that are not connected and whose operator labels could fit
/// (a label set to "any" fits every value). Their recipes are unknown until they connect.
fn offline_candidates(
    job: &Job,
    live: &BTreeMap<BuilderId, LiveBuilder>,
    admitted: &[Builder],
) -> u32 {
    let count = admitted
        .iter()
        .filter(|b| b.enabled && !live.contains_key(&b.id))
        .filter(|b| {
            job.required_labels.iter().all(|(k, v)| {
                b.labels
                    .get(k)
                    .is_some_and(|have| have == v || have == ANY_LABEL_VALUE)
            })
        })
        .count();
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// Says which part of the job no connected builder offers: the recipe, the labels, or a
/// free hand (all paused or draining).
fn why_none_matches(
    job: &Job,
    live: &BTreeMap<BuilderId, LiveBuilder>,
    offline: u32,
    project: &str,
) -> String {
    let offering_recipe: Vec<&LiveBuilder> = live
        .values()
        .filter(|b| b.recipes.contains(&job.recipe))
        .collect();
    let with_recipe: Vec<&LiveBuilder> = offering_recipe
        .iter()
        .copied()
        .filter(|b| serves(b, job))
        .collect();
    let reason = if live.is_empty() {
        "no builder is connected".to_owned()
    } else if !offering_recipe.is_empty() && with_recipe.is_empty() {
        // Builders offer the recipe, but all are private to other projects.
        format!("no builder serves project {project}")
    } else if with_recipe.is_empty() {
        let offered: BTreeSet<&str> = live
            .values()
            .flat_map(|b| b.recipes.iter().map(String::as_str))
            .collect();
        format!(
            "no connected builder offers recipe {:?} (they offer: {})",
            job.recipe,
            offered.into_iter().collect::<Vec<_>>().join(", ")
        )
    } else if let Some(missing) = labels_nobody_has(&job.required_labels, &with_recipe) {
        format!(
            "no connected builder with recipe {:?} has the labels {missing}",
            job.recipe
        )
    } else {
        "every matching builder is paused or draining".to_owned()
    };
    match offline {
        0 => format!("no builder matches: {reason}"),
        n => format!(
            "waiting for a builder: {reason}; {n} admitted builder{} that may match {} offline",
            if n == 1 { "" } else { "s" },
            if n == 1 { "is" } else { "are" }
        ),
    }
}

/// The required labels that no builder of the recipe satisfies fully, shown as `k=v`;
/// `None` when some builder has them all.
fn labels_nobody_has(required: &Labels, builders: &[&LiveBuilder]) -> Option<String> {
    if builders
        .iter()
        .any(|b| labels_satisfy(&b.effective_labels, required))
    {
        return None;
    }
    let missing: Vec<String> = required
        .iter()
        .filter(|(k, v)| {
            !builders
                .iter()
                .any(|b| b.effective_labels.get(*k) == Some(v))
        })
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    Some(if missing.is_empty() {
        // Each label is offered somewhere, but never all on one builder.
        required
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
            + " together"
    } else {
        missing.join(", ")
    })
}

fn median(values: &[i64]) -> Option<i64> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Attempt, JobId, JobMode, JobState};

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn job(recipe: &str, required: &[(&str, &str)]) -> Job {
        Job {
            id: JobId(100),
            source_url: "https://example.test/x.crate".into(),
            source_sha256: "ab".repeat(32),
            source_max_bytes: 1 << 20,
            recipe: recipe.into(),
            parameters: Labels::new(),
            required_labels: labels(required),
            annotations: Default::default(),
            mode: JobMode::Build,
            priority: 0,
            state: JobState::Queued,
            attempt: Attempt(1),
            max_attempts: 3,
            failed_attempts: 0,
            retry: Default::default(),
            retry_not_before: None,
            manual_retries: 0,
            timeout_secs: 3600,
            submitter: "admin".into(),
            created_at: 0,
            updated_at: 0,
            started_at: None,
            finished_at: None,
            cancel_requested_at: None,
            error: None,
            builder_id: None,
            project: crate::store::ProjectId::DEFAULT,
            reproduce: 1,
            on_mismatch: Default::default(),
        }
    }

    fn live(
        id: i64,
        recipes: &[&str],
        effective: &[(&str, &str)],
        slots: u32,
        active: usize,
    ) -> (BuilderId, LiveBuilder) {
        let id = BuilderId(id);
        (
            id,
            LiveBuilder {
                id,
                recipes: recipes.iter().map(|r| (*r).to_owned()).collect(),
                max_concurrent: slots,
                active_jobs: active,
                credits: slots,
                paused: false,
                draining: false,
                declared_labels: Labels::new(),
                effective_labels: labels(effective),
                projects: None,
            },
        )
    }

    fn admitted(id: i64, operator: &[(&str, &str)], enabled: bool) -> Builder {
        Builder {
            id: BuilderId(id),
            name: format!("b{id}"),
            public_key: String::new(),
            fingerprint: String::new(),
            enabled,
            labels: labels(operator),
            created_at: 0,
            last_seen_at: None,
            control: Default::default(),
        }
    }

    fn facts<'a>(
        admitted: &'a [Builder],
        ahead: &'a [Labels],
        run_times: &'a [i64],
    ) -> QueueFacts<'a> {
        QueueFacts {
            admitted,
            ahead,
            run_times,
            project: "default/default",
            now_ms: 0,
            runs: &[],
        }
    }

    #[test]
    fn a_reproducible_job_waits_for_a_builder_of_another_owner() {
        let mut job = job("cargo-build", &[]);
        job.reproduce = 2;
        let fleet: BTreeMap<_, _> = [
            live(1, &["cargo-build"], &[], 2, 2),
            live(2, &["cargo-build"], &[], 2, 2),
        ]
        .into();
        let same_owner = [
            admitted(1, &[("owner", "alice")], true),
            admitted(2, &[("owner", "alice")], true),
        ];
        let run = JobRun {
            job: job.id,
            run: 1,
            attempt: Attempt(1),
            builder: BuilderId(1),
            owner_label: "owner".into(),
            owner: Some("alice".into()),
            signer_fingerprint: None,
            artifacts: vec![],
            finished_at: 0,
        };
        let runs = [run];
        let mut f = facts(&same_owner, &[], &[]);
        f.runs = &runs;
        let s = standing(&job, &fleet, &f);
        assert_eq!(s.matching_builders_online, 0);
        let blocked = s.blocked.unwrap();
        assert!(
            blocked.starts_with("no builder matches: run 2 needs a builder independent of the earlier runs: another builder, and not owner=alice"),
            "{blocked}"
        );
        // A builder of another owner comes: it is the one that matches.
        let other_owner = [
            admitted(1, &[("owner", "alice")], true),
            admitted(2, &[("owner", "bob")], true),
        ];
        let mut f = facts(&other_owner, &[], &[]);
        f.runs = &runs;
        let s = standing(&job, &fleet, &f);
        assert_eq!(s.matching_builders_online, 1);
        assert_eq!(s.blocked, None);
    }

    #[test]
    fn counts_only_the_jobs_its_builders_could_take_instead() {
        let job = job("cargo-build", &[("os", "linux")]);
        let fleet: BTreeMap<_, _> = [
            live(1, &["cargo-build"], &[("os", "linux")], 2, 2),
            live(2, &["cargo-build"], &[("os", "mac")], 4, 0),
        ]
        .into();
        // Two jobs its builder could take, one only the mac builder could.
        let ahead = [
            labels(&[]),
            labels(&[("os", "linux")]),
            labels(&[("os", "mac")]),
        ];
        let s = standing(
            &job,
            &fleet,
            &facts(&[], &ahead, &[60_000, 120_000, 90_000]),
        );
        assert_eq!(s.position, 3);
        assert_eq!(s.matching_builders_online, 1);
        assert_eq!(s.free_slots, 0);
        assert_eq!(s.typical_duration_secs, Some(90));
        // Two ahead fill one round of its two slots, then it starts: 3 waiting → 2 rounds.
        assert_eq!(s.estimated_start_secs, Some(2 * 90 - 45));
        assert_eq!(s.blocked, None);
        assert!(!s.position_capped);
    }

    #[test]
    fn a_job_in_its_retry_back_off_says_so_and_starts_no_sooner() {
        let mut job = job("cargo-build", &[]);
        job.retry_not_before = Some(40_500);
        let fleet: BTreeMap<_, _> = [live(1, &["cargo-build"], &[], 2, 0)].into();
        let mut at = facts(&[], &[], &[10_000]);
        at.now_ms = 10_000;
        let s = standing(&job, &fleet, &at);
        assert_eq!(
            s.blocked.as_deref(),
            Some("retrying after a failed attempt: its back-off ends in 31 s")
        );
        assert_eq!(s.estimated_start_secs, Some(31));
        // Once the back-off has passed, a free slot means now.
        at.now_ms = 41_000;
        let s = standing(&job, &fleet, &at);
        assert_eq!(s.blocked, None);
        assert_eq!(s.estimated_start_secs, Some(0));
    }

    #[test]
    fn a_free_slot_means_it_starts_now() {
        let job = job("cargo-build", &[]);
        let fleet: BTreeMap<_, _> = [live(1, &["cargo-build"], &[], 4, 1)].into();
        let s = standing(&job, &fleet, &facts(&[], &[labels(&[])], &[10_000]));
        assert_eq!((s.position, s.free_slots), (2, 3));
        assert_eq!(s.estimated_start_secs, Some(0));
    }

    #[test]
    fn without_history_there_is_no_estimate() {
        let job = job("cargo-build", &[]);
        let fleet: BTreeMap<_, _> = [live(1, &["cargo-build"], &[], 1, 1)].into();
        let s = standing(&job, &fleet, &facts(&[], &[], &[]));
        assert_eq!(s.typical_duration_secs, None);
        assert_eq!(s.estimated_start_secs, None);
    }

    #[test]
    fn an_unknown_recipe_says_no_builder_matches_and_what_is_offered() {
        let job = job("cargo-miri", &[]);
        let fleet: BTreeMap<_, _> = [live(1, &["cargo-build", "cargo-doc"], &[], 1, 0)].into();
        let s = standing(
            &job,
            &fleet,
            &facts(&[admitted(1, &[], true)], &[], &[1000]),
        );
        assert_eq!(
            s.blocked.as_deref(),
            Some("no builder matches: no connected builder offers recipe \"cargo-miri\" (they offer: cargo-build, cargo-doc)")
        );
        assert_eq!(s.estimated_start_secs, None);
        assert_eq!(s.matching_builders_online, 0);
    }

    #[test]
    fn labels_nobody_has_are_named() {
        let job = job("cargo-build", &[("os", "linux"), ("arch", "riscv64")]);
        let fleet: BTreeMap<_, _> = [live(
            1,
            &["cargo-build"],
            &[("os", "linux"), ("arch", "x86_64")],
            1,
            0,
        )]
        .into();
        let s = standing(&job, &fleet, &facts(&[], &[], &[]));
        assert_eq!(
            s.blocked.as_deref(),
            Some("no builder matches: no connected builder with recipe \"cargo-build\" has the labels arch=riscv64")
        );
    }

    #[test]
    fn builders_private_to_other_projects_do_not_match() {
        use crate::store::ProjectId;
        let job = job("cargo-build", &[]);
        let (id, mut private) = live(1, &["cargo-build"], &[], 2, 0);
        private.projects = Some(vec![ProjectId(7)]);
        let fleet: BTreeMap<_, _> = [(id, private.clone())].into();
        let s = standing(&job, &fleet, &facts(&[], &[], &[]));
        assert_eq!(s.matching_builders_online, 0);
        assert_eq!(
            s.blocked.as_deref(),
            Some("no builder matches: no builder serves project default/default")
        );
        // Private to the job's own project, it matches.
        private.projects = Some(vec![ProjectId(7), ProjectId::DEFAULT]);
        let fleet: BTreeMap<_, _> = [(id, private)].into();
        let s = standing(&job, &fleet, &facts(&[], &[], &[]));
        assert_eq!(s.matching_builders_online, 1);
        assert_eq!(s.blocked, None);
    }

    #[test]
    fn an_offline_builder_that_may_match_is_a_wait_not_a_dead_end() {
        let job = job("cargo-build", &[("os", "linux")]);
        let builders = [
            admitted(1, &[("os", "*")], true),
            admitted(2, &[("os", "linux")], false),
            admitted(3, &[("os", "mac")], true),
        ];
        let s = standing(&job, &BTreeMap::new(), &facts(&builders, &[], &[]));
        assert_eq!(s.matching_builders_offline, 1);
        assert_eq!(
            s.blocked.as_deref(),
            Some("waiting for a builder: no builder is connected; 1 admitted builder that may match is offline")
        );
    }

    #[test]
    fn paused_and_draining_builders_do_not_count() {
        let job = job("cargo-build", &[]);
        let (id, mut paused) = live(1, &["cargo-build"], &[], 1, 0);
        paused.paused = true;
        let fleet: BTreeMap<_, _> = [(id, paused)].into();
        let s = standing(&job, &fleet, &facts(&[], &[], &[]));
        assert_eq!(
            s.blocked.as_deref(),
            Some("no builder matches: every matching builder is paused or draining")
        );
    }

    #[test]
    fn a_full_count_is_flagged_as_a_lower_bound() {
        let job = job("cargo-build", &[]);
        let fleet: BTreeMap<_, _> = [live(1, &["cargo-build"], &[], 1, 1)].into();
        let ahead = vec![Labels::new(); usize::try_from(AHEAD_CAP).unwrap()];
        let s = standing(&job, &fleet, &facts(&[], &ahead, &[]));
        assert!(s.position_capped);
        assert_eq!(s.position, u64::try_from(AHEAD_CAP).unwrap() + 1);
    }
}
