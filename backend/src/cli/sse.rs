//! Reads the backend's server-sent event streams (`eventsource-stream` over awc's body) and
//! reconnects with `Last-Event-ID` when one drops before its `end`, so nothing is missed and
//! nothing repeats.

use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt};

use super::client::Api;
use super::exit::CliError;

/// Reconnects in a row without an event in between before giving up (about 10 s in all).
const MAX_RECONNECTS: u32 = 10;
const MAX_BACKOFF: Duration = Duration::from_secs(2);

type Inner = Pin<Box<dyn Stream<Item = Result<Event, EventStreamError<awc::error::PayloadError>>>>>;

/// The events of one stream of the backend, across reconnects.
pub struct Events<'a> {
    api: &'a Api,
    path: String,
    last_id: Option<String>,
    stream: Option<Inner>,
    failures: u32,
}

impl<'a> Events<'a> {
    pub fn new(api: &'a Api, path: String) -> Events<'a> {
        Events {
            api,
            path,
            last_id: None,
            stream: None,
            failures: 0,
        }
    }

    /// The next event; reconnects (with back-off) as needed. Errors when the backend refuses
    /// the stream (4xx) or stays unreachable.
    pub async fn next(&mut self) -> Result<Event, CliError> {
        loop {
            let stream = match &mut self.stream {
                Some(stream) => stream,
                None => {
                    match self
                        .api
                        .get_events(&self.path, self.last_id.as_deref())
                        .await
                    {
                        Ok(response) => self.stream.insert(Box::pin(response.eventsource())),
                        // A refusal will not change on a retry.
                        Err(e) if e.is_permanent() => return Err(e),
                        Err(e) => {
                            self.back_off(e).await?;
                            continue;
                        }
                    }
                }
            };
            match stream.next().await {
                Some(Ok(event)) => {
                    self.failures = 0;
                    if !event.id.is_empty() {
                        self.last_id = Some(event.id.clone());
                    }
                    return Ok(event);
                }
                // Dropped (the backend stopped, a proxy cut it, we fell behind): resume.
                Some(Err(e)) => {
                    self.stream = None;
                    self.back_off(CliError::Network(format!("the event stream broke: {e}")))
                        .await?;
                }
                None => {
                    self.stream = None;
                    self.back_off(CliError::Network(
                        "the backend kept closing the event stream".into(),
                    ))
                    .await?;
                }
            }
        }
    }

    async fn back_off(&mut self, error: CliError) -> Result<(), CliError> {
        self.failures += 1;
        if self.failures > MAX_RECONNECTS {
            return Err(error);
        }
        // The first reconnect is immediate: a dropped stream usually resumes at once.
        let delay = Duration::from_millis(50 << self.failures.min(6)).min(MAX_BACKOFF);
        if self.failures > 1 {
            tokio::time::sleep(delay).await;
        }
        Ok(())
    }
}
