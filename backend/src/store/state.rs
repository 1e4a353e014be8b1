//! Typed job states, modes and outcomes. The states, modes and attempt outcomes are the API's
//! own (`buildfleet_api::state`, with the one transition table of the job lifecycle); a
//! builder's outcome is the store's.

pub use buildfleet_api::string_enum;
pub use buildfleet_api::{
    AttemptCause, AttemptOutcome, JobMode, JobState, OnMismatch, UnknownValue, MAX_REPRODUCE,
};

string_enum!(
    /// How a builder says an attempt ended.
    Outcome, "outcome" {
        Succeeded => "succeeded",
        Failed => "failed",
        Cancelled => "cancelled",
        TimedOut => "timed_out",
    }
);

impl Outcome {
    /// The terminal job state this outcome leads to.
    pub fn job_state(self) -> JobState {
        match self {
            Outcome::Succeeded => JobState::Succeeded,
            Outcome::Failed => JobState::Failed,
            Outcome::Cancelled => JobState::Cancelled,
            Outcome::TimedOut => JobState::TimedOut,
        }
    }
}

impl From<Outcome> for AttemptOutcome {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Succeeded => AttemptOutcome::Succeeded,
            Outcome::Failed => AttemptOutcome::Failed,
            Outcome::Cancelled => AttemptOutcome::Cancelled,
            Outcome::TimedOut => AttemptOutcome::TimedOut,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_leads_to_the_terminal_state_of_its_spelling() {
        for outcome in Outcome::ALL {
            let state = outcome.job_state();
            assert!(state.is_terminal());
            assert_eq!(state.as_str(), outcome.as_str());
            assert_eq!(AttemptOutcome::from(*outcome).as_str(), outcome.as_str());
        }
    }
}
