//! Blobs as files under a root directory (the data directory's `blobs/`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};

use super::{check_key, BlobRead, BlobStream, BlobWriter, PendingBlob, Storage};
use crate::log_segments::{SegmentLog, SegmentSpan, MAX_SEGMENT_BYTES};

/// A temporary file under `tmp/`, renamed into place on commit.
pub struct PendingFile {
    pub(super) file: File,
    pub(super) path: PathBuf,
}

impl PendingFile {
    /// Writes go to `file` from now on (tests: a file that refuses writes).
    #[cfg(test)]
    pub(crate) fn replace_file(&mut self, file: File) {
        self.file = file;
    }

    pub(super) fn finish(&mut self) -> io::Result<()> {
        self.file.flush()?;
        self.file.sync_data()
    }
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
        let path = self.path(key)?;
        ensure_parent(&path)?;
        let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
        let offset = file.metadata()?.len();
        file.write_all(bytes)?;
        Ok(offset)
    }

    fn path(&self, key: &str) -> io::Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }
}

fn ensure_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(parent) => fs::create_dir_all(parent),
        None => Ok(()),
    }
}

/// Opens `path` and positions it at `range` (the whole file when `None`): the file, its size
/// and the range.
fn open_range(path: &Path, range: Option<Range<u64>>) -> io::Result<(File, u64, Range<u64>)> {
    let mut file = File::open(path)?;
    let total = file.metadata()?.len();
    let range = match range {
        None => 0..total,
        Some(r) if r.start <= r.end && r.end <= total => r,
        Some(r) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "range {}..{} is past the blob's {total} bytes",
                    r.start, r.end
                ),
            ))
        }
    };
    file.seek(SeekFrom::Start(range.start))?;
    Ok((file, total, range))
}

impl Storage for FsStorage {
    fn remove_stale_pending(&self, older_than: std::time::Duration) -> io::Result<usize> {
        let Some(cutoff) = std::time::SystemTime::now().checked_sub(older_than) else {
            return Ok(0);
        };
        let mut removed = 0;
        for entry in fs::read_dir(self.root.join("tmp"))? {
            let entry = entry?;
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|modified| modified < cutoff);
            // Another pass (another process) may have taken it first.
            if stale && fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

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
        Ok(PendingBlob {
            file: BlobWriter::File(PendingFile { file, path }),
        })
    }

    fn commit(&self, blob: PendingBlob, key: &str) -> io::Result<()> {
        let BlobWriter::File(mut pending) = blob.file else {
            return Err(io::Error::other("not a blob of the filesystem storage"));
        };
        let target = self.path(key)?;
        ensure_parent(&target)?;
        pending.finish()?;
        drop(pending.file);
        fs::rename(&pending.path, &target)
    }

    fn discard(&self, blob: PendingBlob) {
        if let BlobWriter::File(pending) = blob.file {
            drop(pending.file);
            let _ = fs::remove_file(&pending.path);
        }
    }

    fn open(&self, key: &str) -> io::Result<Box<dyn BlobRead>> {
        Ok(Box::new(File::open(self.path(key)?)?))
    }

    fn stream(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> BoxFuture<'static, io::Result<BlobStream>> {
        let path = self.path(key);
        async move {
            let path = path?;
            let (file, total, range) =
                tokio::task::spawn_blocking(move || open_range(&path, range))
                    .await
                    .map_err(io::Error::other)??;
            let reader = tokio::io::AsyncReadExt::take(
                tokio::fs::File::from_std(file),
                range.end - range.start,
            );
            let body = tokio_util::io::ReaderStream::with_capacity(reader, 64 * 1024).boxed();
            Ok(BlobStream { total, range, body })
        }
        .boxed()
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

/// Reads all of `reader` (tests).
#[cfg(test)]
fn read_all(mut reader: Box<dyn BlobRead>) -> Vec<u8> {
    use std::io::Read as _;
    let mut out = Vec::new();
    reader.read_to_end(&mut out).unwrap();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(read_all(storage.open(&span.key).unwrap()), b"chunk");
        for bad in ["../x", "/etc/passwd", "a/../../x", "", "a//b"] {
            assert!(storage.open(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn only_old_uncommitted_uploads_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FsStorage::new(dir.path()).unwrap();
        let mut left = storage.create_pending().unwrap();
        left.file.write_all(b"left by a crash").unwrap();
        let BlobWriter::File(pending) = &left.file else {
            panic!("a file")
        };
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        File::options()
            .write(true)
            .open(&pending.path)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
        let left_path = pending.path.clone();
        let mut fresh = storage.create_pending().unwrap();
        fresh.file.write_all(b"still arriving").unwrap();
        let hour = std::time::Duration::from_secs(3600);
        assert_eq!(storage.remove_stale_pending(hour).unwrap(), 1);
        assert!(!left_path.exists());
        storage.commit(fresh, "artifacts/1/1/a").unwrap();
        assert_eq!(
            read_all(storage.open("artifacts/1/1/a").unwrap()),
            b"still arriving"
        );
        assert_eq!(storage.remove_stale_pending(hour).unwrap(), 0);
    }

    #[test]
    fn discarded_blobs_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FsStorage::new(dir.path()).unwrap();
        let mut blob = storage.create_pending().unwrap();
        blob.file.write_all(b"half").unwrap();
        storage.discard(blob);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[actix_rt::test]
    async fn streams_whole_blobs_and_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FsStorage::new(dir.path()).unwrap();
        let mut blob = storage.create_pending().unwrap();
        blob.file.write_all(b"0123456789").unwrap();
        storage.commit(blob, "x").unwrap();
        async fn collect(stream: BlobStream) -> Vec<u8> {
            let mut out = Vec::new();
            let mut body = stream.body;
            while let Some(chunk) = body.next().await {
                out.extend_from_slice(&chunk.unwrap());
            }
            out
        }
        let whole = storage.stream("x", None).await.unwrap();
        assert_eq!((whole.total, whole.range.clone()), (10, 0..10));
        assert_eq!(collect(whole).await, b"0123456789");
        let part = storage.stream("x", Some(3..7)).await.unwrap();
        assert_eq!(collect(part).await, b"3456");
        let past = storage.stream("x", Some(5..11)).await.err().unwrap();
        assert_eq!(past.kind(), io::ErrorKind::InvalidInput);
        let missing = storage.stream("y", None).await.err().unwrap();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }
}
