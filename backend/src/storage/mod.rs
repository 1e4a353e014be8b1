//! Blob storage for logs, sources and artifacts behind one trait, with two implementations:
//! [`FsStorage`] keeps everything under the data directory (the embedded default) and
//! [`S3Storage`] keeps it in an S3-compatible object store, so that several backend replicas
//! share it (see ARCHITECTURE.md, "Storage").
//!
//! A blob is written through a [`PendingBlob`] and becomes visible under its key only on
//! [`Storage::commit`]: a reader never sees a half-written blob, and a discarded one leaves
//! nothing. Log chunks are stored by [`Storage::store_log_chunk`]: appended to shared segments
//! on a filesystem ([`crate::log_segments`]), one object per flushed batch in an object store.
//!
//! The trait is synchronous and is called from blocking threads (`web::block`,
//! `spawn_blocking`), except [`Storage::stream`] (async, for response bodies) and
//! [`Storage::discard`] (never blocks: it may run in a `Drop` on an async thread). The object
//! store implementation runs its requests on a runtime of its own and waits for them.

use std::fmt;
use std::io::{self, Read, Seek, Write};
use std::ops::Range;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use crate::log_segments::SegmentSpan;
use crate::store::{Attempt, JobId};

mod fs;
mod s3;

pub use fs::FsStorage;
pub use s3::{S3Settings, S3Storage};

/// A stored blob open for reading at any offset.
pub trait BlobRead: Read + Seek + Send {}
impl<T: Read + Seek + Send> BlobRead for T {}

/// A stored blob (or a range of it) as a stream of bytes for a response body.
pub struct BlobStream {
    /// The whole blob's size.
    pub total: u64,
    /// The bytes the stream carries: the range asked for, or the whole blob.
    pub range: Range<u64>,
    pub body: BoxStream<'static, io::Result<Bytes>>,
}

/// Which batch of a log a chunk is: the object store names the chunk's object after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogChunkName {
    pub job: JobId,
    pub attempt: Attempt,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// A blob being written; [`Storage::commit`] makes it visible under its key. Write to `file`
/// (any [`std::io::Write`] use), then [`BlobWriter::finish`] or let commit finish it.
pub struct PendingBlob {
    pub file: BlobWriter,
}

/// Where a pending blob's bytes go.
pub enum BlobWriter {
    /// A temporary file under the storage root, renamed into place on commit.
    File(fs::PendingFile),
    /// A multipart upload to a temporary object, copied into place on commit.
    Object(s3::PendingObject),
}

impl BlobWriter {
    /// Ends the writing: syncs the file, or uploads the last part and completes the upload.
    /// Called by commit when not called before.
    pub fn finish(&mut self) -> io::Result<()> {
        match self {
            BlobWriter::File(file) => file.finish(),
            BlobWriter::Object(object) => object.finish(),
        }
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            BlobWriter::File(file) => file.file.write(buf),
            BlobWriter::Object(object) => object.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            BlobWriter::File(file) => file.file.write_all(buf),
            BlobWriter::Object(object) => object.write(buf).map(|_| ()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            BlobWriter::File(file) => file.file.flush(),
            // Parts go out when full; the rest goes out at finish.
            BlobWriter::Object(_) => Ok(()),
        }
    }
}

impl fmt::Debug for PendingBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            BlobWriter::File(file) => write!(f, "PendingBlob(file {})", file.path.display()),
            BlobWriter::Object(object) => write!(f, "PendingBlob(object {})", object.key()),
        }
    }
}

/// The object store could not be reached or failed: a 503 to a client, which may try again.
#[derive(Debug)]
pub struct StoreUnavailable(pub String);

impl fmt::Display for StoreUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "object storage unavailable: {}", self.0)
    }
}

impl std::error::Error for StoreUnavailable {}

/// Whether `e` (or what it wraps) says that the object store is unavailable.
pub fn is_unavailable(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<StoreUnavailable>().is_some())
}

pub trait Storage: Send + Sync + 'static {
    /// A new, empty blob to stream into.
    fn create_pending(&self) -> io::Result<PendingBlob>;
    /// Finishes a blob if needed and moves it under `key`, replacing what was there.
    fn commit(&self, blob: PendingBlob, key: &str) -> io::Result<()>;
    /// Drops an unfinished blob (an object store's upload is aborted). Never blocks.
    fn discard(&self, blob: PendingBlob);
    fn open(&self, key: &str) -> io::Result<Box<dyn BlobRead>>;
    /// `range` of the blob under `key` (all of it when `None`) as a stream. A range past the
    /// blob's end is an [`io::ErrorKind::InvalidInput`] error.
    fn stream(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> BoxFuture<'static, io::Result<BlobStream>>;
    fn exists(&self, key: &str) -> bool;
    /// The bytes of each `(key, range)`, in order; a blob shorter than its range gives fewer
    /// bytes, for the caller to judge. An object store fetches several at once: a log is
    /// many small objects.
    fn read_ranges(&self, ranges: &[(String, Range<u64>)]) -> io::Result<Vec<Vec<u8>>> {
        let mut out = Vec::with_capacity(ranges.len());
        // Consecutive ranges are mostly in one file (a log segment): opened once.
        let mut open: Option<(&str, Box<dyn BlobRead>)> = None;
        for (key, range) in ranges {
            let (_, file) = match open.take() {
                Some((at, file)) if at == key => open.insert((at, file)),
                _ => open.insert((key.as_str(), self.open(key)?)),
            };
            file.seek(io::SeekFrom::Start(range.start))?;
            let mut bytes = Vec::new();
            file.take(range.end.saturating_sub(range.start))
                .read_to_end(&mut bytes)?;
            out.push(bytes);
        }
        Ok(out)
    }
    /// Appends one log chunk to this process's current log segment and returns the segment's
    /// key and the offset where the chunk starts. Safe to call from many threads at once.
    fn append_log(&self, bytes: &[u8]) -> io::Result<SegmentSpan>;
    /// Stores one flushed batch of `name`'s log: where it went. A filesystem appends it to a
    /// segment; an object store makes it an object of its own (offset 0).
    fn store_log_chunk(&self, name: &LogChunkName, bytes: &[u8]) -> io::Result<SegmentSpan> {
        let _ = name;
        self.append_log(bytes)
    }
    fn remove(&self, key: &str) -> io::Result<()>;
    /// Removes pending blobs last written before `older_than` ago: uploads whose backend died
    /// between receiving and committing them (an upload in progress is written to, or on an
    /// object store not listed before its multipart upload completes). Returns how many.
    fn remove_stale_pending(&self, older_than: std::time::Duration) -> io::Result<usize>;
}

/// Checks a key the backend made: relative, no empty, `.` or `..` parts.
pub(crate) fn check_key(key: &str) -> io::Result<()> {
    let safe = !key.is_empty()
        && !key.starts_with('/')
        && key
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if safe {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad key {key:?}"),
        ))
    }
}

/// Storage keys, in one place so their layout is documented by code.
///
/// Logs stored before segments existed live at `logs/{job}/{attempt}.jsonl`, one file per
/// attempt; their chunk rows still name those files, and they are read like any segment.
pub mod keys {
    use crate::store::{Attempt, JobId};

    /// The directory under which every process keeps its own log segment directory.
    pub const LOG_SEGMENTS: &str = "log-segments";

    pub fn source(sha256: &str) -> String {
        format!("sources/{}/{sha256}", &sha256[..2])
    }

    pub fn artifact(job: JobId, attempt: Attempt, name: &str) -> String {
        format!("artifacts/{job}/{attempt}/{name}")
    }

    /// One flushed batch of an attempt's log in an object store (sequence numbers padded so
    /// that a listing sorts in log order).
    pub fn log_chunk(name: &super::LogChunkName) -> String {
        format!(
            "logs/{}/{}/{:012}-{:012}.jsonl",
            name.job, name.attempt, name.first_seq, name.last_seq
        )
    }

    /// Where an object store keeps uploads until they are committed.
    pub const PENDING: &str = "pending";

    /// One process's log segments: `prefix` is made at its start and is never reused.
    pub fn log_segment_dir(prefix: &str) -> String {
        format!("{LOG_SEGMENTS}/{prefix}")
    }

    /// The `index`th log segment of a process, numbered from 0.
    pub fn log_segment(prefix: &str, index: u64) -> String {
        format!("{LOG_SEGMENTS}/{prefix}/{index:08}.seg")
    }
}
