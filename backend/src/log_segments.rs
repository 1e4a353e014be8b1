//! Shared append-only log segments. The chunks of every attempt's log go into one open file
//! per backend process, so storing a log creates no file and no directory per attempt (that
//! creation was the largest single cost of a job: see docs/benchmarks.md). A chunk row keeps
//! the segment's storage key, the byte offset and the length, and readers go by those alone.
//!
//! Each process appends only under its own directory, `log-segments/{prefix}/`, whose prefix
//! (start time, pid, random) it creates exclusively at start: replicas sharing a data
//! directory never write to the same file. Within the process, appends are serialised by a
//! mutex and the offset of a chunk is the writer's own count of the segment's bytes, never a
//! `stat` of a file someone else may be appending to.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::storage::keys;

/// A segment takes no more chunks once it holds this many bytes (a chunk larger than this
/// gets a segment of its own).
pub const MAX_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Where an appended chunk went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSpan {
    /// The segment's storage key.
    pub key: String,
    pub offset: u64,
}

/// One process's appender of log segments under a storage root.
pub struct SegmentLog {
    root: PathBuf,
    prefix: String,
    max_bytes: u64,
    state: Mutex<WriterState>,
}

struct WriterState {
    /// The segment chunks go to: the open one, or the one to open at the next append.
    index: u64,
    open: Option<OpenSegment>,
}

struct OpenSegment {
    file: File,
    key: String,
    /// Bytes in the segment: where the next chunk starts.
    len: u64,
}

impl SegmentLog {
    /// Makes this process's own segment directory under `root` (a storage root). Nothing is
    /// opened until the first append.
    pub fn create(root: &Path, max_bytes: u64) -> io::Result<SegmentLog> {
        let parent = root.join(keys::LOG_SEGMENTS);
        fs::create_dir_all(&parent)?;
        // `create_dir` fails if the directory exists, so a prefix is never shared, even in the
        // unlikely case that two processes draw the same one.
        let mut attempts = 0;
        loop {
            let prefix = unique_prefix();
            match fs::create_dir(parent.join(&prefix)) {
                Ok(()) => {
                    return Ok(SegmentLog {
                        root: root.to_path_buf(),
                        prefix,
                        max_bytes,
                        state: Mutex::new(WriterState {
                            index: 0,
                            open: None,
                        }),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 8 => {
                    attempts += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// This process's segment directory, relative to the storage root.
    pub fn directory_key(&self) -> String {
        keys::log_segment_dir(&self.prefix)
    }

    /// Appends `bytes` as one chunk to the current segment, moving to a new one first if the
    /// chunk would take it past the size limit. Returns where the chunk starts.
    ///
    /// Like any file append before it, the bytes are written, not fsynced: a chunk counts as
    /// stored once its row is committed, after this returns. A failed write leaves an unknown
    /// tail, so the segment is closed and the next chunk goes to the next one; a segment that
    /// could not be opened is tried again under the same name.
    pub fn append(&self, bytes: &[u8]) -> io::Result<SegmentSpan> {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| {
            // A thread stopped while holding the lock: what it wrote last is unknown.
            self.state.clear_poison();
            let mut state = poisoned.into_inner();
            state.close_segment();
            state
        });
        let len = u64::try_from(bytes.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "chunk too large"))?;
        if state
            .open
            .as_ref()
            .is_some_and(|open| open.len > 0 && open.len.saturating_add(len) > self.max_bytes)
        {
            state.close_segment();
        }
        if state.open.is_none() {
            let key = keys::log_segment(&self.prefix, state.index);
            state.open = Some(open_segment(&self.root.join(&key), key)?);
        }
        let Some(open) = state.open.as_mut() else {
            return Err(io::Error::other("no open log segment"));
        };
        let offset = open.len;
        if let Err(e) = open.file.write_all(bytes) {
            state.close_segment();
            return Err(e);
        }
        open.len = offset + len;
        Ok(SegmentSpan {
            key: open.key.clone(),
            offset,
        })
    }
}

impl WriterState {
    fn close_segment(&mut self) {
        if self.open.take().is_some() {
            self.index += 1;
        }
    }
}

/// Opens (creating it if missing) the segment at `path` for appending. A file already there
/// is appended to, never truncated.
fn open_segment(path: &Path, key: String) -> io::Result<OpenSegment> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        // A FIFO or a device: offsets into it would mean nothing.
        return Err(io::Error::other(format!(
            "log segment {key} is not a regular file"
        )));
    }
    Ok(OpenSegment {
        file,
        key,
        len: metadata.len(),
    })
}

/// Start time, pid and a random part: unique across processes and across restarts.
fn unique_prefix() -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!(
        "{millis}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::{Read, Seek, SeekFrom};
    use std::sync::Arc;

    fn read_span(root: &Path, span: &SegmentSpan, len: usize) -> Vec<u8> {
        let mut file = File::open(root.join(&span.key)).unwrap();
        file.seek(SeekFrom::Start(span.offset)).unwrap();
        let mut out = vec![0; len];
        file.read_exact(&mut out).unwrap();
        out
    }

    #[test]
    fn concurrent_appends_get_disjoint_ranges_that_read_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(SegmentLog::create(dir.path(), MAX_SEGMENT_BYTES).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|thread| {
                let log = log.clone();
                std::thread::spawn(move || {
                    (0..200)
                        .map(|i| {
                            // Lengths vary so that ranges cannot line up by chance.
                            let chunk =
                                format!("{thread}:{i}:{}\n", "x".repeat(i % 37)).into_bytes();
                            (log.append(&chunk).unwrap(), chunk)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut written: Vec<(SegmentSpan, Vec<u8>)> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        for (span, chunk) in &written {
            assert_eq!(&read_span(dir.path(), span, chunk.len()), chunk);
        }
        written.sort_by(|a, b| (&a.0.key, a.0.offset).cmp(&(&b.0.key, b.0.offset)));
        for pair in written.windows(2) {
            let ((a, a_bytes), (b, _)) = (&pair[0], &pair[1]);
            assert_eq!(a.key, b.key, "one segment: nothing reached the limit");
            assert_eq!(a.offset + a_bytes.len() as u64, b.offset, "gap or overlap");
        }
        let total: usize = written.iter().map(|(_, c)| c.len()).sum();
        let segment = dir.path().join(&written[0].0.key);
        assert_eq!(fs::metadata(segment).unwrap().len(), total as u64);
    }

    #[test]
    fn a_segment_past_its_limit_is_followed_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let log = SegmentLog::create(dir.path(), 100).unwrap();
        let spans: Vec<_> = (0..3).map(|_| log.append(&[b'a'; 40]).unwrap()).collect();
        let keys: Vec<_> = spans.iter().map(|s| s.key.as_str()).collect();
        let first = keys::log_segment(&log.prefix, 0);
        let second = keys::log_segment(&log.prefix, 1);
        assert_eq!(keys, [first.as_str(), first.as_str(), second.as_str()]);
        assert_eq!(spans[1].offset, 40);
        assert_eq!(spans[2].offset, 0);
        // Larger than a whole segment: it gets one of its own.
        let big = log.append(&[b'b'; 250]).unwrap();
        assert_eq!(
            big,
            SegmentSpan {
                key: keys::log_segment(&log.prefix, 2),
                offset: 0
            }
        );
        let after = log.append(b"c").unwrap();
        assert_eq!(after.key, keys::log_segment(&log.prefix, 3));
        assert!(first.starts_with(&format!("{}/", log.directory_key())));
    }

    #[test]
    fn two_writers_in_one_directory_never_share_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let one = SegmentLog::create(dir.path(), MAX_SEGMENT_BYTES).unwrap();
        let two = SegmentLog::create(dir.path(), MAX_SEGMENT_BYTES).unwrap();
        assert_ne!(one.directory_key(), two.directory_key());
        let mut spans: HashMap<&str, Vec<SegmentSpan>> = HashMap::new();
        for i in 0..50 {
            spans
                .entry("one")
                .or_default()
                .push(one.append(b"one\n").unwrap());
            if i % 2 == 0 {
                spans
                    .entry("two")
                    .or_default()
                    .push(two.append(b"two!\n").unwrap());
            }
        }
        for span in &spans["one"] {
            assert!(span.key.starts_with(&format!("{}/", one.directory_key())));
        }
        for span in &spans["two"] {
            assert!(span.key.starts_with(&format!("{}/", two.directory_key())));
        }
        let one_file = fs::read(dir.path().join(&spans["one"][0].key)).unwrap();
        let two_file = fs::read(dir.path().join(&spans["two"][0].key)).unwrap();
        assert_eq!(one_file, b"one\n".repeat(50));
        assert_eq!(two_file, b"two!\n".repeat(25));
        let mut entries: Vec<_> = fs::read_dir(dir.path().join(keys::LOG_SEGMENTS))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        entries.sort();
        assert_eq!(entries.len(), 2);
    }

    #[test]
    fn a_segment_that_cannot_be_opened_is_retried_under_the_same_name() {
        let dir = tempfile::tempdir().unwrap();
        let log = SegmentLog::create(dir.path(), MAX_SEGMENT_BYTES).unwrap();
        let first = keys::log_segment(&log.prefix, 0);
        fs::create_dir(dir.path().join(&first)).unwrap();
        assert!(log.append(b"lost?").is_err());
        assert!(log.append(b"lost?").is_err(), "still blocked");
        fs::remove_dir(dir.path().join(&first)).unwrap();
        let span = log.append(b"stored").unwrap();
        assert_eq!(
            span,
            SegmentSpan {
                key: first.clone(),
                offset: 0
            }
        );
        assert_eq!(fs::read(dir.path().join(&first)).unwrap(), b"stored");
    }

    #[test]
    fn an_existing_file_at_a_segment_name_is_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let log = SegmentLog::create(dir.path(), MAX_SEGMENT_BYTES).unwrap();
        let first = keys::log_segment(&log.prefix, 0);
        fs::write(dir.path().join(&first), b"kept").unwrap();
        assert_eq!(log.append(b"new").unwrap().offset, 4);
        assert_eq!(fs::read(dir.path().join(&first)).unwrap(), b"keptnew");
    }
}
