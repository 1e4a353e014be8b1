//! Conversions between the store's domain types and the protocol's wire types. The two crates
//! define their own ids and enums so that neither depends on the other's concerns.

use buildfleet_protocol as wire;

use crate::store;

impl From<wire::JobId> for store::JobId {
    fn from(id: wire::JobId) -> Self {
        store::JobId(id.0)
    }
}

impl From<store::JobId> for wire::JobId {
    fn from(id: store::JobId) -> Self {
        wire::JobId(id.0)
    }
}

impl From<wire::Attempt> for store::Attempt {
    fn from(a: wire::Attempt) -> Self {
        store::Attempt(a.0)
    }
}

impl From<store::Attempt> for wire::Attempt {
    fn from(a: store::Attempt) -> Self {
        wire::Attempt(a.0)
    }
}

/// A job's mode as the builder protocol spells it (both enums live in other crates, so this
/// is a function rather than a `From`).
pub fn job_mode(mode: store::JobMode) -> wire::JobMode {
    match mode {
        store::JobMode::Build => wire::JobMode::Build,
        store::JobMode::Plan => wire::JobMode::Plan,
    }
}

impl From<wire::Outcome> for store::Outcome {
    fn from(outcome: wire::Outcome) -> Self {
        match outcome {
            wire::Outcome::Succeeded => store::Outcome::Succeeded,
            wire::Outcome::Failed => store::Outcome::Failed,
            wire::Outcome::Cancelled => store::Outcome::Cancelled,
            wire::Outcome::TimedOut => store::Outcome::TimedOut,
        }
    }
}

/// A (job, attempt) pair in store types.
pub fn job_ref(r: wire::JobRef) -> (store::JobId, store::Attempt) {
    (r.job_id.into(), r.attempt.into())
}
