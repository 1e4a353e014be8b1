//! The store's one error type. Domain refusals (illegal transition, stale attempt, ...) are
//! variants of their own so callers can map them to protocol replies and HTTP statuses.

use diesel::result::{DatabaseErrorKind, Error as DieselError};

use super::ids::{Attempt, BuilderId, JobId};
use super::state::JobState;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(DieselError),
    /// The group commit that carried this write failed, so the write was not kept.
    #[error("database error: the transaction holding this write failed: {0}")]
    BatchFailed(std::sync::Arc<str>),
    #[error("cannot connect to the database: {0}")]
    Connection(#[from] diesel::ConnectionError),
    #[error("database connection pool: {0}")]
    Pool(#[from] r2d2::Error),
    #[error("database migration failed: {0}")]
    Migration(String),
    #[error("unsupported database URL {0:?}: expected postgres://, postgresql://, sqlite:// or a file path")]
    UnsupportedUrl(String),
    #[error("{entity} {key} not found")]
    NotFound { entity: &'static str, key: String },
    #[error("{entity} {key} already exists")]
    AlreadyExists { entity: &'static str, key: String },
    #[error("job {job}: illegal transition {from} -> {to}")]
    IllegalTransition {
        job: JobId,
        from: JobState,
        to: JobState,
    },
    #[error("job {job}: attempt {attempt} is not live (current attempt {current})")]
    StaleAttempt {
        job: JobId,
        attempt: Attempt,
        current: Attempt,
    },
    #[error("job {job} was changed concurrently; try again")]
    Conflict { job: JobId },
    #[error("builder {builder} holds {active} active attempt(s)")]
    BuilderBusy { builder: BuilderId, active: usize },
    #[error("builder {0} is disabled")]
    BuilderDisabled(BuilderId),
    #[error("invalid job token for job {0}")]
    InvalidJobToken(JobId),
    #[error("job {job} attempt {attempt}: log chunk starting at {first_seq} overlaps stored logs up to {stored_last_seq}")]
    LogOverlap {
        job: JobId,
        attempt: Attempt,
        first_seq: i64,
        stored_last_seq: i64,
    },
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// A stable name for metrics, logs and error bodies.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Database(_) | StoreError::BatchFailed(_) => "database",
            StoreError::Connection(_) => "connection",
            StoreError::Pool(_) => "pool",
            StoreError::Migration(_) => "migration",
            StoreError::UnsupportedUrl(_) => "unsupported_url",
            StoreError::NotFound { .. } => "not_found",
            StoreError::AlreadyExists { .. } => "already_exists",
            StoreError::IllegalTransition { .. } => "illegal_transition",
            StoreError::StaleAttempt { .. } => "stale_attempt",
            StoreError::Conflict { .. } => "conflict",
            StoreError::BuilderBusy { .. } => "builder_busy",
            StoreError::BuilderDisabled(_) => "builder_disabled",
            StoreError::InvalidJobToken(_) => "invalid_job_token",
            StoreError::LogOverlap { .. } => "log_overlap",
            StoreError::InvalidInput(_) => "invalid_input",
            StoreError::Corrupt(_) => "corrupt",
        }
    }

    /// The database aborted the transaction to break a deadlock or a serialisation conflict
    /// (PostgreSQL SQLSTATE 40P01, 40001): running it again is the prescribed answer.
    pub fn is_retryable_conflict(&self) -> bool {
        match self {
            StoreError::Database(DieselError::DatabaseError(
                DatabaseErrorKind::SerializationFailure,
                _,
            )) => true,
            StoreError::Database(DieselError::DatabaseError(_, info)) => {
                info.message().contains("deadlock detected")
            }
            _ => false,
        }
    }

    /// The database is unreachable or went away mid-call (a restart, a network cut, an
    /// exhausted pool): the same request may well succeed shortly, so callers answer
    /// "unavailable, retry" rather than "internal error".
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Pool(_) | StoreError::Connection(_) => true,
            StoreError::Database(DieselError::DatabaseError(
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
                _,
            )) => true,
            StoreError::Database(DieselError::BrokenTransactionManager) => true,
            StoreError::Database(DieselError::DatabaseError(_, info)) => {
                let message = info.message();
                message.contains("terminating connection")
                    || message.contains("server closed the connection")
                    || message.contains("the database system is")
                    || message.contains("connection")
                        && (message.contains("refused") || message.contains("reset"))
            }
            StoreError::BatchFailed(message) => message.contains("connection"),
            _ => self.is_retryable_conflict(),
        }
    }

    pub(crate) fn not_found(entity: &'static str, key: impl ToString) -> Self {
        StoreError::NotFound {
            entity,
            key: key.to_string(),
        }
    }
}

impl From<DieselError> for StoreError {
    fn from(e: DieselError) -> Self {
        match e {
            // A unique index caught a race the explicit checks could not (PostgreSQL, two
            // writers at once); report it as the domain error it is.
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
                StoreError::AlreadyExists {
                    entity: "row",
                    key: info.message().to_owned(),
                }
            }
            other => StoreError::Database(other),
        }
    }
}
