//! The stored form of job logs: one JSON object per line (JSONL), appended in chunks to shared
//! log segments (chunks of many attempts in one file; older logs have a file per attempt),
//! with a database row per chunk naming its file, offset and length. Reading goes by the
//! chunk rows alone, so bytes of other attempts, and bytes written by a flush that failed or
//! crashed before its row was committed, are never served.

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
/// committed chunk bytes of that attempt). Returns the bytes and the offset after them.
pub fn read_attempt_log(
    storage: &dyn Storage,
    chunks: &[LogChunk],
    attempt: Attempt,
    offset: u64,
    max_bytes: u64,
) -> std::io::Result<(Vec<u8>, u64)> {
    // The stored ranges that hold the wanted bytes, fetched in one call.
    let mut wanted = Vec::new();
    let (mut logical, mut taken) = (0u64, 0u64);
    for chunk in chunks.iter().filter(|c| c.attempt == attempt) {
        let len = u64::try_from(chunk.length).unwrap_or(0);
        let chunk_end = logical + len;
        if chunk_end > offset && taken < max_bytes {
            let skip = offset.saturating_sub(logical);
            let want = (len - skip).min(max_bytes - taken);
            let start = u64::try_from(chunk.byte_offset).unwrap_or(0) + skip;
            wanted.push((chunk, (chunk.location.clone(), start..start + want)));
            taken += want;
        }
        logical = chunk_end;
    }
    let ranges: Vec<_> = wanted.iter().map(|(_, range)| range.clone()).collect();
    let mut out = Vec::with_capacity(usize::try_from(taken).unwrap_or(0));
    for ((chunk, (_, range)), bytes) in wanted.iter().zip(storage.read_ranges(&ranges)?) {
        if (bytes.len() as u64) < range.end - range.start {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "stored log {} is shorter than its chunk at offset {}",
                    chunk.location, chunk.byte_offset
                ),
            ));
        }
        out.extend_from_slice(&bytes);
    }
    let next = offset + out.len() as u64;
    Ok((out, next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::FsStorage;
    use crate::store::JobId;

    fn chunk(attempt: i32, seq: i64, location: &str, offset: u64, bytes: &[u8]) -> LogChunk {
        LogChunk {
            job: JobId(7),
            attempt: Attempt(attempt),
            first_seq: seq,
            last_seq: seq,
            location: location.to_owned(),
            byte_offset: offset as i64,
            length: bytes.len() as i64,
            created_at: 0,
        }
    }

    /// Chunks of two attempts interleaved in one segment, after an attempt stored in the old
    /// layout (a file of its own): each attempt reads back its own bytes alone, whole or from
    /// any offset, and unreferenced bytes (a failed flush's) are never served.
    #[test]
    fn attempts_read_their_own_chunks_from_shared_segments_and_old_files() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FsStorage::new(dir.path()).unwrap();
        let old = "logs/7/1.jsonl";
        let mut chunks = vec![
            chunk(1, 1, old, storage.append(old, b"a1\n").unwrap(), b"a1\n"),
            chunk(1, 2, old, storage.append(old, b"a2\n").unwrap(), b"a2\n"),
        ];
        let segment_chunk = |attempt, seq, bytes: &[u8]| {
            let span = storage.append_log(bytes).unwrap();
            chunk(attempt, seq, &span.key, span.offset, bytes)
        };
        let b1 = segment_chunk(2, 1, b"b1\n");
        let c1 = segment_chunk(3, 1, b"c1-other-attempt\n");
        storage.append_log(b"never committed\n").unwrap();
        let b2 = segment_chunk(2, 2, b"b2 longer\n");
        let c2 = segment_chunk(3, 2, b"c2\n");
        chunks.extend([b1, b2, c1, c2]);
        let read = |attempt, offset, max| {
            read_attempt_log(&storage, &chunks, Attempt(attempt), offset, max).unwrap()
        };
        assert_eq!(read(1, 0, 100), (b"a1\na2\n".to_vec(), 6));
        assert_eq!(read(2, 0, 100), (b"b1\nb2 longer\n".to_vec(), 13));
        assert_eq!(read(3, 0, 100), (b"c1-other-attempt\nc2\n".to_vec(), 20));
        assert_eq!(read(2, 2, 100), (b"\nb2 longer\n".to_vec(), 13));
        assert_eq!(read(2, 1, 4), (b"1\nb2".to_vec(), 5));
        assert_eq!(read(2, 13, 100), (Vec::new(), 13));
        assert_eq!(read(4, 0, 100), (Vec::new(), 0));
    }
}
