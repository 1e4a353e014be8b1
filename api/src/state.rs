//! Job states, modes and attempt outcomes as the API spells them, and the one transition
//! table of the job lifecycle.

use std::fmt;

/// A spelling this enum does not know (a bad query parameter, or a corrupt stored column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownValue {
    pub kind: &'static str,
    pub value: String,
}

impl fmt::Display for UnknownValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown {} {:?}", self.kind, self.value)
    }
}

impl std::error::Error for UnknownValue {}

/// An enum with one lowercase spelling per variant, used alike in JSON, query strings and
/// database columns.
#[macro_export]
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident, $kind:literal { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ::serde::Serialize, ::serde::Deserialize,
        )]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored (and serialized) spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::UnknownValue;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err($crate::UnknownValue { kind: $kind, value: s.to_owned() }),
                }
            }
        }
    };
}

string_enum!(
    /// Where a job is in its lifecycle.
    JobState, "job state" {
        Queued => "queued",
        Assigned => "assigned",
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        Cancelled => "cancelled",
        TimedOut => "timed_out",
        /// A reproducible job (`reproduce` above 1) whose independent runs did not agree: their
        /// artifacts differ, or a run failed after an earlier one succeeded.
        Unreproducible => "unreproducible",
    }
);

string_enum!(
    /// What a job asks of its builder: a real build or a dry run that reports its plan.
    JobMode, "job mode" {
        Build => "build",
        Plan => "plan",
    }
);

string_enum!(
    /// What a reproducible job does when its runs disagree.
    #[derive(Default)]
    OnMismatch, "on_mismatch" {
        /// Publish nothing: the job ends `unreproducible`.
        #[default]
        Fail => "fail",
        /// Publish the first run's artifacts, and flag the job `unreproducible`.
        PublishFirst => "publish_first",
    }
);

/// The most independent builders a job may ask to reproduce it.
pub const MAX_REPRODUCE: i32 = 5;

string_enum!(
    /// How an attempt ended: a builder's outcome, or one of the ways the backend ends it.
    AttemptOutcome, "attempt outcome" {
        Succeeded => "succeeded",
        Failed => "failed",
        Cancelled => "cancelled",
        TimedOut => "timed_out",
        /// The builder turned the assignment down.
        Rejected => "rejected",
        /// The builder's lease ran out (`forgiven_at` is set when the builder later came
        /// back still holding it: a network loss, not counted against `max_attempts`).
        Lost => "lost",
    }
);

string_enum!(
    /// Why an attempt was started.
    AttemptCause, "attempt cause" {
        /// The job's first attempt.
        First => "first",
        /// Offered again after a builder turned it down, or lost before any builder accepted
        /// it: not a retry, nothing counted.
        Reassigned => "reassigned",
        /// Automatic: the attempt before lost its builder (its lease ran out).
        RetryAfterLostBuilder => "retry_after_lost_builder",
        /// Automatic: the attempt before failed for the platform's fault (see
        /// [`crate::jobs::RetryPolicy::infrastructure`]).
        RetryAfterInfrastructureError => "retry_after_infrastructure_error",
        /// Automatic: the attempt before failed in the job's own commands with an exit status
        /// the job's `retry` names.
        RetryAfterScriptFailure => "retry_after_script_failure",
        /// Asked for through `POST /api/v1/jobs/{id}/retry`.
        ManualRetry => "manual_retry",
        /// The next independent run of a reproducible job (`reproduce` above 1) after a
        /// run succeeded.
        ReproductionRun => "reproduction_run",
    }
);

impl AttemptCause {
    /// For people: why the attempt was started.
    pub fn describe(self) -> &'static str {
        match self {
            AttemptCause::First => "first attempt",
            AttemptCause::Reassigned => "reassigned",
            AttemptCause::RetryAfterLostBuilder => "automatic retry after a lost builder",
            AttemptCause::RetryAfterInfrastructureError => {
                "automatic retry after an infrastructure error"
            }
            AttemptCause::RetryAfterScriptFailure => "automatic retry after a script failure",
            AttemptCause::ManualRetry => "manual retry",
            AttemptCause::ReproductionRun => "next independent run",
        }
    }

    /// Whether the attempt is an automatic retry (one counted against `max_attempts`).
    pub fn is_automatic_retry(self) -> bool {
        matches!(
            self,
            AttemptCause::RetryAfterLostBuilder
                | AttemptCause::RetryAfterInfrastructureError
                | AttemptCause::RetryAfterScriptFailure
        )
    }
}

impl JobState {
    /// A terminal job stays put unless an operator retries it.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded
                | JobState::Failed
                | JobState::Cancelled
                | JobState::TimedOut
                | JobState::Unreproducible
        )
    }

    /// A job whose attempt is held by a builder.
    pub fn is_active(self) -> bool {
        matches!(self, JobState::Assigned | JobState::Running)
    }

    /// The transition table. Everything not listed here is refused.
    pub fn can_become(self, to: JobState) -> bool {
        use JobState::*;
        matches!(
            (self, to),
            (Queued, Assigned | Cancelled)
                // Rejection or lease loss sends it back; lease loss past the budget fails it.
                // A completion may overtake its accept (a work_ack lost in a crash). A
                // reproducible job's run that disagrees with an earlier one ends it
                // unreproducible.
                | (
                    Assigned,
                    Running | Queued | Cancelled | Failed | Succeeded | TimedOut | Unreproducible
                )
                | (Running, Succeeded | Failed | Cancelled | TimedOut | Queued | Unreproducible)
                // Retry by an operator.
                | (Failed | Cancelled | TimedOut, Queued)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_round_trips_through_its_spelling() {
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse::<JobState>(), Ok(*state));
            let json = serde_json::to_string(state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
        let refused = "done".parse::<JobState>().unwrap_err();
        assert_eq!(refused.to_string(), "unknown job state \"done\"");
    }

    #[test]
    fn terminal_states_only_go_back_to_queued() {
        for from in JobState::ALL.iter().filter(|s| s.is_terminal()) {
            for to in JobState::ALL {
                // A success and an unreproducible verdict are final; the rest may be retried.
                let expected = *to == JobState::Queued
                    && !matches!(from, JobState::Succeeded | JobState::Unreproducible);
                assert_eq!(from.can_become(*to), expected, "{from} -> {to}");
            }
        }
    }
}
