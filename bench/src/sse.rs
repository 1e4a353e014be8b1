//! A minimal server-sent events reader over an awc response, for the pushed job state.

use std::time::Duration;

use anyhow::{bail, Context as _};
use futures_util::StreamExt as _;

/// One event: its `event:` name (`message` when unnamed) and its joined `data:` lines.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub name: String,
    pub data: String,
}

type Body = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, awc::error::PayloadError>>>,
>;

/// An open event stream.
pub struct SseStream {
    body: Body,
    buffer: Vec<u8>,
}

/// How opening a stream went: a stream, or the server does not have this endpoint (404).
pub enum Opened {
    Stream(SseStream),
    NotFound,
}

pub async fn open(client: &awc::Client, url: &str, token: &str) -> anyhow::Result<Opened> {
    let response = client
        .get(url)
        .bearer_auth(token)
        .insert_header(("Accept", "text/event-stream"))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("GET {url}: {e}"))?;
    if response.status() == awc::http::StatusCode::NOT_FOUND {
        return Ok(Opened::NotFound);
    }
    if !response.status().is_success() {
        bail!("GET {url}: {}", response.status());
    }
    Ok(Opened::Stream(SseStream {
        body: Box::pin(response),
        buffer: Vec::new(),
    }))
}

impl SseStream {
    /// The next event; `None` when the stream ended. Comments and keep-alives are skipped.
    pub async fn next(&mut self, limit: Duration) -> anyhow::Result<Option<SseEvent>> {
        loop {
            if let Some(event) = self.take_event() {
                return Ok(Some(event));
            }
            let chunk = actix_rt::time::timeout(limit, self.body.next())
                .await
                .context("no event within the time limit")?;
            match chunk {
                Some(chunk) => self.buffer.extend_from_slice(&chunk?),
                None => return Ok(None),
            }
        }
    }

    fn take_event(&mut self) -> Option<SseEvent> {
        loop {
            let text = String::from_utf8_lossy(&self.buffer);
            let end = text.find("\n\n")?;
            let block = text[..end].to_owned();
            let consumed = end + 2;
            self.buffer.drain(..consumed);
            let mut name = String::from("message");
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    name = value.trim_start().to_owned();
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push(value.strip_prefix(' ').unwrap_or(value).to_owned());
                }
            }
            if !data.is_empty() || name != "message" {
                return Some(SseEvent {
                    name,
                    data: data.join("\n"),
                });
            }
        }
    }
}
