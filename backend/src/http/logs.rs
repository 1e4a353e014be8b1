//! A job's log: whole or from an offset (JSONL or plain text), and live as server-sent
//! events.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use bytes::Bytes;
use futures_util::stream;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::actors::log_sink::{Subscribe, SUBSCRIBER_QUEUE};
use crate::error::{blocking, ApiError};
use crate::http::jobs::parse_job_id;
use crate::http::AppState;
use crate::logs::{read_attempt_log, LogRecord};
use crate::store::{Attempt, JobId};

/// Most bytes one `GET …/log` returns; clients page on with `offset`.
const MAX_READ_BYTES: u64 = 8 * 1024 * 1024;
/// Comment lines keep idle live streams open through proxies.
const KEEPALIVE: Duration = Duration::from_secs(15);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// Defaults to the job's current attempt.
    pub attempt: Option<i32>,
    /// Byte offset into the stored log of the attempt.
    #[serde(default)]
    pub offset: u64,
    /// `jsonl` (default) or `text`.
    pub format: Option<String>,
}

async fn read(
    state: &AppState,
    job: JobId,
    attempt: Option<i32>,
    offset: u64,
) -> Result<(Attempt, Vec<u8>, u64, bool), ApiError> {
    let (store, storage) = (state.store.clone(), state.storage.clone());
    blocking(move || {
        let found = store
            .job(job)?
            .ok_or_else(|| ApiError::NotFound(format!("job {job}")))?;
        let attempt = attempt.map(Attempt).unwrap_or(found.attempt);
        let chunks = store.log_chunks(job)?;
        let (bytes, next) = read_attempt_log(&*storage, &chunks, attempt, offset, MAX_READ_BYTES)
            .map_err(ApiError::internal)?;
        let finished = found.state.is_terminal() || found.attempt != attempt;
        Ok((attempt, bytes, next, finished))
    })
    .await
}

fn render_text(jsonl: &[u8]) -> String {
    let mut out = String::with_capacity(jsonl.len());
    for line in jsonl.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<LogRecord>(line) {
            Ok(LogRecord {
                line: Some(text),
                stream,
                ..
            }) => {
                if stream.as_deref() == Some("stderr") {
                    out.push_str("[stderr] ");
                }
                out.push_str(&text);
                out.push('\n');
            }
            Ok(LogRecord {
                stage: Some(stage), ..
            }) => {
                out.push_str(&format!(
                    "--- stage: {}\n",
                    serde_json::to_string(&stage)
                        .unwrap_or_default()
                        .trim_matches('"')
                ));
            }
            _ => {}
        }
    }
    out
}

/// `GET /api/v1/jobs/{id}/log?attempt=&offset=&format=`. `X-Next-Offset` tells where to go on.
pub async fn whole(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<LogQuery>,
) -> Result<HttpResponse, ApiError> {
    let job = parse_job_id(&path)?;
    let (attempt, bytes, next, finished) = read(&state, job, query.attempt, query.offset).await?;
    let mut response = HttpResponse::Ok();
    response
        .insert_header(("X-Next-Offset", next.to_string()))
        .insert_header(("X-Attempt", attempt.to_string()))
        .insert_header(("X-Log-Complete", finished.to_string()));
    match query.format.as_deref() {
        None | Some("jsonl") => Ok(response.content_type("application/x-ndjson").body(bytes)),
        Some("text") => Ok(response
            .content_type("text/plain; charset=utf-8")
            .body(render_text(&bytes))),
        Some(other) => Err(ApiError::BadRequest(format!(
            "format {other:?}: use jsonl or text"
        ))),
    }
}

fn sse_event(jsonl: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(jsonl.len() + 64);
    for line in jsonl.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.extend_from_slice(b"\n\n");
    }
    Bytes::from(out)
}

fn seq_of(line: &[u8]) -> Option<u64> {
    serde_json::from_slice::<LogRecord>(line)
        .ok()
        .map(|r| r.seq)
}

/// `GET /api/v1/jobs/{id}/log/stream?offset=`: server-sent events, one per stored log record
/// (`data: <jsonl record>`), first the stored ones from `offset`, then live ones.
pub async fn stream(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<LogQuery>,
) -> Result<HttpResponse, ApiError> {
    let job = parse_job_id(&path)?;
    // Subscribe before reading, and skip live records already read: nothing lost in between.
    let (tx, rx) = mpsc::channel::<(Attempt, Bytes)>(SUBSCRIBER_QUEUE);
    state
        .log_sink
        .send(Subscribe { job, tx })
        .await
        .map_err(|_| ApiError::Unavailable("log sink".into()))?;
    let (attempt, stored, _, _) = read(&state, job, query.attempt, query.offset).await?;
    let last_stored = stored
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(seq_of)
        .max()
        .unwrap_or(0);
    let first = stream::once(async move { Ok::<_, actix_web::Error>(sse_event(&stored)) });
    let live = stream::unfold((rx, last_stored), move |(mut rx, mut last)| async move {
        let next = tokio::time::timeout(KEEPALIVE, rx.recv()).await;
        match next {
            Err(_) => Some((Ok(Bytes::from_static(b": keepalive\n\n")), (rx, last))),
            Ok(None) => None,
            Ok(Some((chunk_attempt, _))) if chunk_attempt != attempt => {
                Some((Ok(Bytes::new()), (rx, last)))
            }
            Ok(Some((_, chunk))) => {
                let fresh: Vec<u8> = chunk
                    .split(|&b| b == b'\n')
                    .filter(|l| !l.is_empty())
                    .filter(|l| seq_of(l).is_some_and(|s| s > last))
                    .flat_map(|l| l.iter().copied().chain(std::iter::once(b'\n')))
                    .collect();
                if let Some(max) = fresh.split(|&b| b == b'\n').filter_map(seq_of).max() {
                    last = max;
                }
                Some((Ok(sse_event(&fresh)), (rx, last)))
            }
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(futures_util::StreamExt::chain(first, live)))
}
