//! Blob storage for logs, sources and artifacts behind one trait. The filesystem
//! implementation keeps everything under the data directory; blobs are written to a temporary
//! file and renamed into place, so a reader never sees a half-written blob. Log chunks are
//! the exception: they are appended to shared segments ([`crate::log_segments`]) and read
//! back by offset and length.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use crate::log_segments::{SegmentLog, SegmentSpan, MAX_SEGMENT_BYTES};

/// A blob being written; [`Storage::commit`] makes it visible under its key.
pub struct PendingBlob {
    pub file: File,
    path: PathBuf,
}

pub trait Storage: Send + Sync + 'static {
    /// A new, empty blob to stream into.
    fn create_pending(&self) -> io::Result<PendingBlob>;
    /// Moves a finished blob under `key`, replacing what was there.
    fn commit(&self, blob: PendingBlob, key: &str) -> io::Result<()>;
    /// Drops an unfinished blob.
    fn discard(&self, blob: PendingBlob);
    fn open(&self, key: &str) -> io::Result<File>;
    fn exists(&self, key: &str) -> bool;
    /// Appends one log chunk to this process's current log segment and returns the segment's
    /// key and the offset where the chunk starts. Safe to call from many threads at once.
    fn append_log(&self, bytes: &[u8]) -> io::Result<SegmentSpan>;
    fn remove(&self, key: &str) -> io::Result<()>;
}

/// Stores blobs as files under a root directory. Keys are relative paths made by the backend
/// (never from user input), checked again here so that no key can leave the root.
pub struct FsStorage {
    root: PathBuf,
    /// This process's log segments, under a directory of its own.
    segments: SegmentLog,
}

impl FsStorage {
    pub fn new(root: impl Into<PathBuf>) -> io::Result<FsStorage> {
        let root = root.into();
        fs::create_dir_all(root.join("tmp"))?;
        let segments = SegmentLog::create(&root, MAX_SEGMENT_BYTES)?;
        Ok(FsStorage { root, segments })
    }

    /// Appends to the file under `key` as logs were stored before segments (one file per
    /// attempt), so tests can lay out old data; returns the offset where `bytes` start.
    #[cfg(test)]
    pub(crate) fn append(&self, key: &str, bytes: &[u8]) -> io::Result<u64> {
        use std::io::Write as _;
        let path = self.path(key)?;
        ensure_parent(&path)?;
        let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
        let offset = file.metadata()?.len();
        file.write_all(bytes)?;
        Ok(offset)
    }

    fn path(&self, key: &str) -> io::Result<PathBuf> {
        let safe = !key.is_empty()
            && !key.starts_with('/')
            && key
                .split('/')
                .all(|part| !part.is_empty() && part != "." && part != "..");
        if !safe {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad key {key:?}"),
            ));
        }
        Ok(self.root.join(key))
    }
}

fn ensure_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(parent) => fs::create_dir_all(parent),
        None => Ok(()),
    }
}

impl Storage for FsStorage {
    fn create_pending(&self) -> io::Result<PendingBlob> {
        let name = format!(
            "{:016x}{:016x}",
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        let path = self.root.join("tmp").join(name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(PendingBlob { file, path })
    }

    fn commit(&self, blob: PendingBlob, key: &str) -> io::Result<()> {
        let target = self.path(key)?;
        ensure_parent(&target)?;
        blob.file.sync_data()?;
        drop(blob.file);
        fs::rename(&blob.path, &target)
    }

    fn discard(&self, blob: PendingBlob) {
        drop(blob.file);
        let _ = fs::remove_file(&blob.path);
    }

    fn open(&self, key: &str) -> io::Result<File> {
        File::open(self.path(key)?)
    }

    fn exists(&self, key: &str) -> bool {
        self.path(key).map(|p| p.is_file()).unwrap_or(false)
    }

    fn append_log(&self, bytes: &[u8]) -> io::Result<SegmentSpan> {
        self.segments.append(bytes)
    }

    fn remove(&self, key: &str) -> io::Result<()> {
        match fs::remove_file(self.path(key)?) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
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

    /// One process's log segments: `prefix` is made at its start and is never reused.
    pub fn log_segment_dir(prefix: &str) -> String {
        format!("{LOG_SEGMENTS}/{prefix}")
    }

    /// The `index`th log segment of a process, numbered from 0.
    pub fn log_segment(prefix: &str, index: u64) -> String {
        format!("{LOG_SEGMENTS}/{prefix}/{index:08}.seg")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn commit_append_and_reject_escaping_keys() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FsStorage::new(dir.path()).unwrap();
        let mut blob = storage.create_pending().unwrap();
        blob.file.write_all(b"hello").unwrap();
        storage.commit(blob, "a/b/c").unwrap();
        assert_eq!(fs::read(dir.path().join("a/b/c")).unwrap(), b"hello");
        assert_eq!(storage.append("logs/x", b"12").unwrap(), 0);
        assert_eq!(storage.append("logs/x", b"345").unwrap(), 2);
        let span = storage.append_log(b"chunk").unwrap();
        assert!(span
            .key
            .starts_with(&format!("{}/", storage.segments.directory_key())));
        let mut read = String::new();
        storage
            .open(&span.key)
            .unwrap()
            .read_to_string(&mut read)
            .unwrap();
        assert_eq!(read, "chunk");
        for bad in ["../x", "/etc/passwd", "a/../../x", "", "a//b"] {
            assert!(storage.open(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
