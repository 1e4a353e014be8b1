//! What backend replicas sharing one PostgreSQL database tell each other with
//! `LISTEN`/`NOTIFY`: the channels, and the payload of each notice.
//!
//! A notice is only a wake-up: the database stays the truth, and a replica that misses one
//! (its listener was down) catches up at its next sweep. Every payload names the replica that
//! sent it, so a replica ignores its own. SQLite is one process: nothing is sent there.

use serde::{Deserialize, Serialize};

use super::ids::{Attempt, BuilderId, JobId, ProjectId};

/// A job became queued (submitted, retried, requeued after a lost lease).
pub const CHANNEL_JOB_QUEUED: &str = "buildfleet_job_queued";
/// A cancel was recorded for an attempt a builder holds.
pub const CHANNEL_CANCEL: &str = "buildfleet_cancel";
/// An operator changed a builder's standing (drain, pause, resume), its projects, or
/// disabled or removed it.
pub const CHANNEL_BUILDER: &str = "buildfleet_builder";
/// Log lines of an attempt were stored, up to a sequence number.
pub const CHANNEL_LOG: &str = "buildfleet_log_appended";

/// Every channel a replica listens on.
pub const CHANNELS: [&str; 4] = [
    CHANNEL_JOB_QUEUED,
    CHANNEL_CANCEL,
    CHANNEL_BUILDER,
    CHANNEL_LOG,
];

/// PostgreSQL refuses payloads of 8000 bytes or more.
pub const MAX_PAYLOAD_BYTES: usize = 7999;

/// What changed about a builder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuilderChange {
    /// Its stored standing (`builders.control`) changed: read it and tell the builder.
    Control,
    /// The projects it serves changed: read them again.
    Projects,
    /// Disabled, removed, or its key revoked: close its session (it authenticates again).
    Revoke,
}

/// One wake-up between replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    JobQueued {
        project: ProjectId,
        recipe: String,
    },
    Cancel {
        job: JobId,
        attempt: Attempt,
        builder: BuilderId,
    },
    Builder {
        builder: BuilderId,
        change: BuilderChange,
    },
    LogAppended {
        job: JobId,
        attempt: Attempt,
        seq: u64,
    },
}

/// The JSON payloads, each with the sending replica's id (`r`).
#[derive(Serialize, Deserialize)]
struct JobQueuedPayload {
    r: String,
    project: ProjectId,
    recipe: String,
}

#[derive(Serialize, Deserialize)]
struct CancelPayload {
    r: String,
    job: JobId,
    attempt: Attempt,
    builder: BuilderId,
}

#[derive(Serialize, Deserialize)]
struct BuilderPayload {
    r: String,
    builder: BuilderId,
    change: BuilderChange,
}

#[derive(Serialize, Deserialize)]
struct LogPayload {
    r: String,
    job: JobId,
    attempt: Attempt,
    seq: u64,
}

/// A payload that could not be read (another version's, or not ours).
#[derive(Debug, thiserror::Error)]
pub enum NoticeError {
    #[error("notification on unknown channel {0:?}")]
    UnknownChannel(String),
    #[error("unreadable notification on {channel}: {source}")]
    Payload {
        channel: String,
        source: serde_json::Error,
    },
    #[error("a notification payload of {0} bytes is over PostgreSQL's limit")]
    TooLong(usize),
}

impl Notice {
    /// The channel this notice travels on.
    pub fn channel(&self) -> &'static str {
        match self {
            Notice::JobQueued { .. } => CHANNEL_JOB_QUEUED,
            Notice::Cancel { .. } => CHANNEL_CANCEL,
            Notice::Builder { .. } => CHANNEL_BUILDER,
            Notice::LogAppended { .. } => CHANNEL_LOG,
        }
    }

    /// The payload sent by replica `replica`.
    pub fn encode(&self, replica: &str) -> Result<String, NoticeError> {
        let r = replica.to_owned();
        let json = match self {
            Notice::JobQueued { project, recipe } => serde_json::to_string(&JobQueuedPayload {
                r,
                project: *project,
                recipe: recipe.clone(),
            }),
            Notice::Cancel {
                job,
                attempt,
                builder,
            } => serde_json::to_string(&CancelPayload {
                r,
                job: *job,
                attempt: *attempt,
                builder: *builder,
            }),
            Notice::Builder { builder, change } => serde_json::to_string(&BuilderPayload {
                r,
                builder: *builder,
                change: *change,
            }),
            Notice::LogAppended { job, attempt, seq } => serde_json::to_string(&LogPayload {
                r,
                job: *job,
                attempt: *attempt,
                seq: *seq,
            }),
        }
        .map_err(|source| NoticeError::Payload {
            channel: self.channel().to_owned(),
            source,
        })?;
        if json.len() > MAX_PAYLOAD_BYTES {
            return Err(NoticeError::TooLong(json.len()));
        }
        Ok(json)
    }

    /// Reads a notification: the sending replica and the notice.
    pub fn decode(channel: &str, payload: &str) -> Result<(String, Notice), NoticeError> {
        let bad = |source| NoticeError::Payload {
            channel: channel.to_owned(),
            source,
        };
        Ok(match channel {
            CHANNEL_JOB_QUEUED => {
                let p: JobQueuedPayload = serde_json::from_str(payload).map_err(bad)?;
                let notice = Notice::JobQueued {
                    project: p.project,
                    recipe: p.recipe,
                };
                (p.r, notice)
            }
            CHANNEL_CANCEL => {
                let p: CancelPayload = serde_json::from_str(payload).map_err(bad)?;
                let notice = Notice::Cancel {
                    job: p.job,
                    attempt: p.attempt,
                    builder: p.builder,
                };
                (p.r, notice)
            }
            CHANNEL_BUILDER => {
                let p: BuilderPayload = serde_json::from_str(payload).map_err(bad)?;
                let notice = Notice::Builder {
                    builder: p.builder,
                    change: p.change,
                };
                (p.r, notice)
            }
            CHANNEL_LOG => {
                let p: LogPayload = serde_json::from_str(payload).map_err(bad)?;
                let notice = Notice::LogAppended {
                    job: p.job,
                    attempt: p.attempt,
                    seq: p.seq,
                };
                (p.r, notice)
            }
            other => return Err(NoticeError::UnknownChannel(other.to_owned())),
        })
    }
}

/// The statement that sends one notice: `pg_notify` takes the channel as a value, so no
/// identifier is quoted into SQL.
pub const NOTIFY_SQL: &str = "SELECT pg_notify($1, $2)";

/// The statement that subscribes a connection to every channel.
pub fn listen_sql() -> String {
    CHANNELS
        .iter()
        .map(|channel| format!("LISTEN {channel};"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_survive_the_round_trip_with_their_sender() {
        let notices = [
            Notice::JobQueued {
                project: ProjectId(3),
                recipe: "crate".into(),
            },
            Notice::Cancel {
                job: JobId(7),
                attempt: Attempt(2),
                builder: BuilderId(9),
            },
            Notice::Builder {
                builder: BuilderId(9),
                change: BuilderChange::Control,
            },
            Notice::LogAppended {
                job: JobId(7),
                attempt: Attempt(2),
                seq: 41,
            },
        ];
        for notice in notices {
            let payload = notice.encode("replica-a").expect("encode");
            let (from, back) = Notice::decode(notice.channel(), &payload).expect("decode");
            assert_eq!((from.as_str(), back), ("replica-a", notice));
        }
    }

    #[test]
    fn bad_notifications_are_errors_not_panics() {
        assert!(matches!(
            Notice::decode("other_channel", "{}"),
            Err(NoticeError::UnknownChannel(_))
        ));
        assert!(matches!(
            Notice::decode(CHANNEL_CANCEL, "{\"r\":\"x\"}"),
            Err(NoticeError::Payload { .. })
        ));
        let huge = Notice::JobQueued {
            project: ProjectId(1),
            recipe: "x".repeat(MAX_PAYLOAD_BYTES),
        };
        assert!(matches!(huge.encode("a"), Err(NoticeError::TooLong(_))));
        assert_eq!(
            listen_sql(),
            "LISTEN buildfleet_job_queued; LISTEN buildfleet_cancel; \
             LISTEN buildfleet_builder; LISTEN buildfleet_log_appended;"
        );
    }
}
