//! The CLI's failures and the exit codes scripts can rely on.

/// Shown under `--help` of every admin command, and repeated in `docs/cli.md`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  the job did not succeed: failed, cancelled, timed out or unreproducible (job
     submit --wait, job logs --follow)
  2  usage error: bad arguments, or a local input that cannot be read
  3  the API refused the request (HTTP 4xx): not found, a missing or wrong token,
     a conflict, a bad value; its message and error code are printed
  4  server error (HTTP 5xx), network or TLS failure, an answer that is not the
     API's, a job attempt that does not exist (job logs --attempt), or local I/O
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
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// The API answered 5xx.
    #[error("the backend failed: {message} ({code}, HTTP {status})")]
    Server {
        status: u16,
        code: String,
        message: String,
    },
    #[error("{0}")]
    Network(String),
    /// A TLS handshake the client refused (an untrusted certificate): no retry helps.
    #[error("{0}")]
    Tls(String),
    #[error("{0}")]
    Io(String),
    /// `job logs --attempt N` for an attempt the job has not had.
    #[error("job {job} has no attempt {attempt}: {had}")]
    NoSuchAttempt {
        job: i64,
        attempt: i32,
        /// What it has had, as a phrase ("it has had 2 so far").
        had: String,
    },
    #[error("verification failed: {0}")]
    Verification(String),
    /// Another error and what to do about it, printed on a line of its own.
    #[error("{error}")]
    Hinted { error: Box<CliError>, hint: String },
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Api { .. } => 3,
            CliError::Server { .. }
            | CliError::Network(_)
            | CliError::Tls(_)
            | CliError::Io(_)
            | CliError::NoSuchAttempt { .. } => 4,
            CliError::Verification(_) => 5,
            CliError::Hinted { error, .. } => error.exit_code(),
        }
    }

    /// A local I/O failure, with what we were doing.
    pub fn io(context: impl std::fmt::Display, e: impl std::fmt::Display) -> CliError {
        CliError::Io(format!("{context}: {e}"))
    }

    /// This error with advice on what to do (replacing any advice it had).
    pub fn hint(self, hint: impl Into<String>) -> CliError {
        let error = match self {
            CliError::Hinted { error, .. } => error,
            other => Box::new(other),
        };
        CliError::Hinted {
            error,
            hint: hint.into(),
        }
    }

    /// The advice printed under the error, if any.
    pub fn advice(&self) -> Option<&str> {
        match self {
            CliError::Hinted { hint, .. } => Some(hint),
            _ => None,
        }
    }

    /// The error without its advice.
    pub fn inner(&self) -> &CliError {
        match self {
            CliError::Hinted { error, .. } => error,
            other => other,
        }
    }

    /// Whether trying again cannot help: the API refused, the arguments are wrong, or TLS
    /// refused the backend.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self.inner(),
            CliError::Api { .. } | CliError::Usage(_) | CliError::Tls(_)
        )
    }

    /// The API's error code, when the API refused the request.
    pub fn api_code(&self) -> Option<&str> {
        match self.inner() {
            CliError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The same error with its API message rewritten (a refusal only; others unchanged).
    pub fn map_api_message(self, rewrite: impl FnOnce(&str) -> String) -> CliError {
        match self {
            CliError::Api {
                status,
                code,
                message,
            } => CliError::Api {
                status,
                code,
                message: rewrite(&message),
            },
            CliError::Hinted { error, hint } => CliError::Hinted {
                error: Box::new(error.map_api_message(rewrite)),
                hint,
            },
            other => other,
        }
    }
}
