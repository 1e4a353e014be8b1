//! The CLI's failures and the exit codes scripts can rely on.

/// Shown under `--help` of every admin command, and repeated in `docs/cli.md`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  the job did not succeed: failed, cancelled or timed out (job submit --wait,
     job logs --follow)
  2  usage error: bad arguments, or a local input that cannot be read
  3  the API refused the request (HTTP 4xx); its error code and message are printed
  4  server error (HTTP 5xx), network failure, or local I/O failure
  5  verification failed: signature, statement, SHA-256 or size of an artifact";

/// How a command that did its work ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The job the command waited for ended in another state than `succeeded`.
    JobUnsuccessful,
}

impl Outcome {
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Success => 0,
            Outcome::JobUnsuccessful => 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    /// The API answered 4xx with its `{"error": {"code", "message"}}` body.
    #[error("{code}: {message} (HTTP {status})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// The API answered 5xx.
    #[error("server error {code}: {message} (HTTP {status})")]
    Server {
        status: u16,
        code: String,
        message: String,
    },
    #[error("{0}")]
    Network(String),
    #[error("{0}")]
    Io(String),
    #[error("verification failed: {0}")]
    Verification(String),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Api { .. } => 3,
            CliError::Server { .. } | CliError::Network(_) | CliError::Io(_) => 4,
            CliError::Verification(_) => 5,
        }
    }

    /// A local I/O failure, with what we were doing.
    pub fn io(context: impl std::fmt::Display, e: impl std::fmt::Display) -> CliError {
        CliError::Io(format!("{context}: {e}"))
    }
}
