//! The backend's actors and the small messages between them. See ARCHITECTURE.md for who
//! sends what to whom.

pub mod admission;
pub mod auth;
pub mod log_sink;
pub mod replica_bus;
pub mod scheduler;
pub mod session;

use actix::prelude::*;
use buildfleet_protocol::{ErrorCode, ServerMessage};

/// Send a frame to the builder of a session.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Push(pub ServerMessage);

/// Send an `error` frame, then close the session.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct CloseSession {
    pub code: ErrorCode,
    pub message: String,
}

/// How other actors reach one builder session without depending on its WebSocket type.
#[derive(Clone)]
pub struct SessionHandle {
    /// Unique per connection, so a stale session cannot act for a newer one.
    pub id: u64,
    pub push: Recipient<Push>,
    pub close: Recipient<CloseSession>,
}

impl SessionHandle {
    pub fn push(&self, message: ServerMessage) {
        self.push.do_send(Push(message));
    }

    pub fn close(&self, code: ErrorCode, message: impl Into<String>) {
        self.close.do_send(CloseSession {
            code,
            message: message.into(),
        });
    }
}

/// Runs a blocking store call off the actor's thread, within the store's admission limit
/// ([`crate::offload::store`]).
pub(crate) async fn blocking<T, E, F>(f: F) -> Result<T, anyhow::Error>
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: Into<anyhow::Error> + Send + 'static,
{
    crate::offload::store(f).await?.map_err(Into::into)
}

/// [`blocking`] for a session coming or going, within the sessions' share of the permits
/// ([`crate::offload::store_for_sessions`]).
pub(crate) async fn blocking_for_sessions<T, E, F>(f: F) -> Result<T, anyhow::Error>
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: Into<anyhow::Error> + Send + 'static,
{
    crate::offload::store_for_sessions(f)
        .await?
        .map_err(Into::into)
}
