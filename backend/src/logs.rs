//! The stored form of job logs: one JSON object per line (JSONL), appended in chunks to one
//! file per attempt, with a database row per chunk. Reading goes through the chunk rows, so
//! bytes written by a flush that crashed before its row was committed are never served.

use std::io::{Read, Seek, SeekFrom};

use buildfleet_protocol::{JobEvent, JobEventKind, LogStream, Stage};
use serde::{Deserialize, Serialize};

use crate::storage::Storage;
use crate::store::{Attempt, LogChunk};

/// One stored log record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    pub seq: u64,
    pub ts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
}

impl LogRecord {
    pub fn from_event(event: &JobEvent, max_line_bytes: usize) -> LogRecord {
        let (stream, line, stage) = match &event.event {
            JobEventKind::Log { stream, line } => {
                let stream = match stream {
                    LogStream::Stdout => "stdout",
                    LogStream::Stderr => "stderr",
                };
                (
                    Some(stream.to_owned()),
                    Some(truncate_utf8(line, max_line_bytes)),
                    None,
                )
            }
            JobEventKind::Stage { stage } => (None, None, Some(*stage)),
        };
        LogRecord {
            seq: event.seq,
            ts: event.timestamp_ms,
            stream,
            line,
            stage,
        }
    }

    /// The marker written where a log hit its size limit.
    pub fn truncation_marker(seq: u64, ts: i64, limit: u64) -> LogRecord {
        LogRecord {
            seq,
            ts,
            stream: Some("system".into()),
            line: Some(format!("[buildfleet] log truncated: the limit of {limit} bytes per job was reached; later lines were dropped")),
            stage: None,
        }
    }

    #[allow(
        clippy::expect_used,
        reason = "a record is strings and numbers: serialising cannot fail"
    )]
    pub fn to_jsonl(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("log records always serialise");
        line.push(b'\n');
        line
    }
}

/// Cuts a line over `max` bytes the way the builder does: the kept text and the marker
/// together fit in `max`, so both sides enforce the same limit.
fn truncate_utf8(text: &str, max: usize) -> String {
    const MARKER: &str = "…";
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub(MARKER.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARKER}", &text[..end])
}

/// Reads the stored log of one attempt from logical byte `offset` on (offsets count only
/// committed chunk bytes). Returns the bytes and the offset after them.
pub fn read_attempt_log(
    storage: &dyn Storage,
    chunks: &[LogChunk],
    attempt: Attempt,
    offset: u64,
    max_bytes: u64,
) -> std::io::Result<(Vec<u8>, u64)> {
    let mut out = Vec::new();
    let mut logical = 0u64;
    let mut file = None;
    for chunk in chunks.iter().filter(|c| c.attempt == attempt) {
        let len = u64::try_from(chunk.length).unwrap_or(0);
        let chunk_end = logical + len;
        if chunk_end > offset && (out.len() as u64) < max_bytes {
            let skip = offset.saturating_sub(logical);
            let want = (len - skip).min(max_bytes - out.len() as u64);
            let f = match &mut file {
                Some(f) => f,
                None => file.insert(storage.open(&chunk.location)?),
            };
            f.seek(SeekFrom::Start(
                u64::try_from(chunk.byte_offset).unwrap_or(0) + skip,
            ))?;
            let start = out.len();
            f.take(want).read_to_end(&mut out)?;
            if ((out.len() - start) as u64) < want {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "log file shorter than its chunks",
                ));
            }
        }
        logical = chunk_end;
    }
    let next = offset + out.len() as u64;
    Ok((out, next))
}
