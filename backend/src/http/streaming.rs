//! Streams request bodies into storage and stored blobs into responses, in constant memory,
//! computing SHA-256 on the way in.
//!
//! An upload runs as a two-stage pipeline so that receiving overlaps with hashing and writing:
//! the request's task only reads the body, enforces the size limit and coalesces chunks into
//! buffers of about [`BATCH_BYTES`]; it hands them through a channel of [`CHANNEL_DEPTH`]
//! entries to one blocking task that hashes them and writes them to the pending blob (a file,
//! or an object store's multipart upload), then finishes the blob at the end. At most `CHANNEL_DEPTH + 2` buffers are alive at once
//! (the queue, the one being filled, the one being written), so memory stays bounded.
//!
//! Either stage stops the other when it fails: a body error or an over-limit body stops the
//! writer before the blob is discarded, and a write error (or the writer's death) ends the
//! reading at once, even while it waits for the client. A dropped upload (the client went
//! away) stops the writer and discards the blob too.

use std::fmt::Display;
use std::io::{self, Write as _};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::web;
use bytes::{Bytes, BytesMut};
use futures_util::future::{self, Either};
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinHandle};

use crate::error::ApiError;
use crate::storage::{is_unavailable, BlobStream, PendingBlob, Storage};

/// Body chunks are coalesced into buffers of about this size before they go to the writer, so
/// that the per-message cost (a channel hand-off, a wake-up, a `write` call) stays low.
const BATCH_BYTES: usize = 256 * 1024;
/// Buffers queued for the writer; the receiver waits when the queue is full.
const CHANNEL_DEPTH: usize = 8;

pub struct Received {
    pub blob: PendingBlob,
    pub size: u64,
    pub sha256: String,
}

/// Writes `payload` to a new pending blob, refusing bodies over `max_bytes` (the blob is
/// discarded then). The caller commits or discards the blob.
pub async fn receive(
    storage: &Arc<dyn Storage>,
    payload: web::Payload,
    max_bytes: u64,
) -> Result<Received, ApiError> {
    receive_stream(storage, payload, max_bytes).await
}

/// [`receive`] for any stream of body chunks.
async fn receive_stream<S, E>(
    storage: &Arc<dyn Storage>,
    mut body: S,
    max_bytes: u64,
) -> Result<Received, ApiError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Display,
{
    let storage_for_create = storage.clone();
    let pending = web::block(move || storage_for_create.create_pending())
        .await
        .map_err(ApiError::internal)?
        .map_err(storage_error)?;
    // From here on, every way out but success (an error, or this future being dropped because
    // the client went away) discards the blob.
    let guard = DiscardOnDrop {
        storage: storage.clone(),
        blob: Arc::new(Mutex::new(Some(pending))),
    };
    let mut writer = Writer::spawn(storage.clone(), guard.blob.clone());
    let size = match pump(&mut body, &mut writer, max_bytes).await {
        Ok(size) => size,
        Err(e) => {
            // Let the writer close its handle before the guard removes the file.
            writer.stop().await;
            return Err(e);
        }
    };
    let sha256 = writer.finish().await?;
    let blob = lock(&guard.blob).take().ok_or_else(taken)?;
    Ok(Received { blob, size, sha256 })
}

/// A storage error as the client sees it: 503 when the object store is unavailable (the
/// client may try again), else 500.
pub fn storage_error(e: io::Error) -> ApiError {
    if is_unavailable(&e) {
        ApiError::Unavailable(e.to_string())
    } else {
        ApiError::internal(e)
    }
}

/// The pending blob's slot, shared by the writer task and the upload; poisoning is ignored
/// (the blob is discarded or finished either way).
type Slot = Arc<Mutex<Option<PendingBlob>>>;

fn lock(slot: &Slot) -> std::sync::MutexGuard<'_, Option<PendingBlob>> {
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn taken() -> ApiError {
    ApiError::internal(anyhow::anyhow!("the pending blob was already taken"))
}

/// Reads `body` to its end into `writer`, coalescing small chunks: the body's size.
async fn pump<S, E>(body: &mut S, writer: &mut Writer, max_bytes: u64) -> Result<u64, ApiError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Display,
{
    let mut size = 0u64;
    let mut batch = BytesMut::new();
    while let Some(chunk) = writer.next_chunk(body).await? {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading the body: {e}")))?;
        size = size.saturating_add(chunk.len() as u64);
        if size > max_bytes {
            return Err(ApiError::PayloadTooLarge { limit: max_bytes });
        }
        if !batch.is_empty() && batch.len() + chunk.len() > BATCH_BYTES {
            writer.send(std::mem::take(&mut batch).freeze()).await?;
        }
        if batch.is_empty() && chunk.len() >= BATCH_BYTES {
            // Already big enough: passed on without a copy.
            writer.send(chunk).await?;
            continue;
        }
        if batch.capacity() == 0 {
            batch.reserve(BATCH_BYTES);
        }
        batch.extend_from_slice(&chunk);
        if batch.len() >= BATCH_BYTES {
            writer.send(std::mem::take(&mut batch).freeze()).await?;
        }
    }
    if !batch.is_empty() {
        writer.send(batch.freeze()).await?;
    }
    Ok(size)
}

/// Discards the blob it holds when dropped. While the writer task is writing to it, the task
/// discards it instead when it sees that it was stopped.
struct DiscardOnDrop {
    storage: Arc<dyn Storage>,
    blob: Slot,
}

impl Drop for DiscardOnDrop {
    fn drop(&mut self) {
        let taken = match self.blob.try_lock() {
            Ok(mut slot) => slot.take(),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner().take(),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        if let Some(blob) = taken {
            self.storage.discard(blob);
        }
    }
}

enum Message {
    Data(Bytes),
    /// The body is complete: sync the file and answer the digest.
    Finish,
}

/// What the writer task answers: the hex digest once finished, `None` when stopped first.
type Outcome = io::Result<Option<String>>;

/// The async side's handle on the blocking task that hashes and writes.
struct Writer {
    tx: Option<mpsc::Sender<Message>>,
    /// `None` once joined.
    task: Option<JoinHandle<Outcome>>,
    /// Tells the task to skip what is still queued and stop.
    stop: Arc<AtomicBool>,
}

impl Writer {
    fn spawn(storage: Arc<dyn Storage>, blob: Slot) -> Writer {
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let stop = Arc::new(AtomicBool::new(false));
        let task_stop = stop.clone();
        // The blocking pool `web::block` uses, with a handle that can be polled alongside the
        // body and that reports a panic as an error.
        let task = actix_rt::task::spawn_blocking(move || {
            let outcome = write_blob(&blob, rx, &task_stop);
            if !matches!(outcome, Ok(Some(_))) && task_stop.load(Ordering::Relaxed) {
                // Stopped (or abandoned) while the upload may already have let go of the slot.
                if let Some(pending) = lock(&blob).take() {
                    storage.discard(pending);
                }
            }
            outcome
        });
        Writer {
            tx: Some(tx),
            task: Some(task),
            stop,
        }
    }

    /// The next body chunk, or the writer's error if it fails (or dies) first: a failed writer
    /// ends the upload without waiting for the client's next chunk.
    async fn next_chunk<S, T>(&mut self, body: &mut S) -> Result<Option<T>, ApiError>
    where
        S: Stream<Item = T> + Unpin,
    {
        let Some(task) = self.task.as_mut() else {
            return Err(writer_failure(None));
        };
        match future::select(body.next(), task).await {
            Either::Left((item, _)) => Ok(item),
            Either::Right((joined, _)) => {
                self.task = None;
                Err(writer_failure(Some(joined)))
            }
        }
    }

    /// Queues `data`, waiting while the queue is full.
    async fn send(&mut self, data: Bytes) -> Result<(), ApiError> {
        let sent = match &self.tx {
            Some(tx) => tx.send(Message::Data(data)).await.is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            // The writer dropped its end: it failed or died.
            Err(writer_failure(self.join().await))
        }
    }

    /// Ends the body and waits for the writer to sync the file: the hex SHA-256.
    async fn finish(mut self) -> Result<String, ApiError> {
        if let Some(tx) = self.tx.take() {
            // If this fails, the join below tells why.
            let _ = tx.send(Message::Finish).await;
        }
        match self.join().await {
            Some(Ok(Ok(Some(sha256)))) => Ok(sha256),
            other => Err(writer_failure(other)),
        }
    }

    /// Stops the writer, skipping what is queued, and waits until it has let go of the file.
    async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.tx = None;
        let _ = self.join().await;
    }

    async fn join(&mut self) -> Option<Result<Outcome, JoinError>> {
        self.tx = None;
        match self.task.take() {
            Some(task) => Some(task.await),
            None => None,
        }
    }
}

impl Drop for Writer {
    /// Dropped unjoined (the upload was dropped): the task stops at its next message or when
    /// it finds the channel closed.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The error for a writer that ended before it was told to finish, or failed finishing.
fn writer_failure(joined: Option<Result<Outcome, JoinError>>) -> ApiError {
    match joined {
        Some(Ok(Err(e))) => storage_error(e),
        Some(Err(e)) => ApiError::internal(anyhow::Error::new(e).context("the blob writer died")),
        Some(Ok(Ok(_))) | None => {
            ApiError::internal(anyhow::anyhow!("the blob writer stopped unexpectedly"))
        }
    }
}

/// The blocking side: hashes and writes each buffer in order, and on [`Message::Finish`]
/// finishes the blob (syncs the file, completes the upload) and answers the digest. Answers
/// `None` when stopped or abandoned first.
fn write_blob(blob: &Slot, mut rx: mpsc::Receiver<Message>, stop: &AtomicBool) -> Outcome {
    let mut hasher = Sha256::new();
    while let Some(message) = rx.blocking_recv() {
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let mut slot = lock(blob);
        let Some(pending) = slot.as_mut() else {
            return Ok(None);
        };
        match message {
            Message::Data(data) => {
                hasher.update(&data);
                pending.file.write_all(&data)?;
            }
            Message::Finish => {
                pending.file.finish()?;
                return Ok(Some(hex::encode(hasher.finalize())));
            }
        }
    }
    Ok(None)
}

/// Opens a stored blob (or `range` of it) as a streamed response body.
pub async fn open_stream(
    storage: &Arc<dyn Storage>,
    key: String,
    range: Option<Range<u64>>,
) -> Result<BlobStream, ApiError> {
    storage
        .stream(&key, range)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ApiError::NotFound("stored blob".into()),
            _ => storage_error(e),
        })
}

/// A `Range` that starts past the blob's end (or asks for none of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsatisfiable;

/// Answers the blob under `key` (`size` bytes, as its row says) with `response`'s status and
/// headers, or with 206 and the range that the request's `Range` header asks (a resumed
/// download), or 416 for a range past the end.
pub async fn respond(
    req: &actix_web::HttpRequest,
    storage: &Arc<dyn Storage>,
    key: String,
    size: u64,
    mut response: actix_web::HttpResponseBuilder,
) -> Result<actix_web::HttpResponse, ApiError> {
    use actix_web::http::{header, StatusCode};
    let asked = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok());
    response.insert_header((header::ACCEPT_RANGES, "bytes"));
    let range = match requested_range(asked, size) {
        Ok(range) => range,
        Err(Unsatisfiable) => {
            return Ok(
                actix_web::HttpResponse::build(StatusCode::RANGE_NOT_SATISFIABLE)
                    .insert_header((header::CONTENT_RANGE, format!("bytes */{size}")))
                    .finish(),
            )
        }
    };
    let partial = range.is_some();
    let blob = open_stream(storage, key, range).await?;
    if partial {
        response.status(StatusCode::PARTIAL_CONTENT);
        response.insert_header((
            header::CONTENT_RANGE,
            format!(
                "bytes {}-{}/{}",
                blob.range.start,
                blob.range.end.saturating_sub(1),
                blob.total
            ),
        ));
    }
    let len = blob.range.end - blob.range.start;
    Ok(response.body(actix_web::body::SizedStream::new(len, blob.body)))
}

/// The byte range a `Range: bytes=…` header asks of a blob of `total` bytes: `Ok(None)` for
/// the whole blob (no header, or one this does not serve: several ranges, another unit),
/// `Err` for a range that is not satisfiable (416).
pub fn requested_range(
    header: Option<&str>,
    total: u64,
) -> Result<Option<Range<u64>>, Unsatisfiable> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((start, end)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (start, end) = (start.trim(), end.trim());
    let range = if start.is_empty() {
        // The last `end` bytes.
        let Ok(suffix) = end.parse::<u64>() else {
            return Ok(None);
        };
        if suffix == 0 {
            return Err(Unsatisfiable);
        }
        total.saturating_sub(suffix)..total
    } else {
        let Ok(first) = start.parse::<u64>() else {
            return Ok(None);
        };
        let last = if end.is_empty() {
            total.saturating_sub(1)
        } else {
            match end.parse::<u64>() {
                Ok(last) if last >= first => last.min(total.saturating_sub(1)),
                _ => return Ok(None),
            }
        };
        if first >= total {
            return Err(Unsatisfiable);
        }
        first..last + 1
    };
    Ok(Some(range))
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use futures_util::stream;

    use super::*;
    use crate::storage::FsStorage;

    /// Deterministic, not periodic at any batch size.
    fn data(len: usize) -> Vec<u8> {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn sha256_hex(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    /// `bytes` cut into chunks of the given sizes, cycled; the last one takes the rest.
    fn chunked(bytes: &[u8], sizes: &[usize]) -> Vec<Result<Bytes, io::Error>> {
        let mut chunks = Vec::new();
        let mut at = 0;
        for size in sizes.iter().cycle() {
            if at >= bytes.len() {
                break;
            }
            let end = (at + size).min(bytes.len());
            chunks.push(Ok(Bytes::copy_from_slice(&bytes[at..end])));
            at = end;
        }
        chunks
    }

    fn fs_storage(root: &Path) -> Arc<dyn Storage> {
        Arc::new(FsStorage::new(root).expect("storage"))
    }

    /// Every file left under `root` (recursively), but `except`.
    fn files(root: &Path, except: Option<&Path>) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut dirs = vec![root.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("read_dir") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    dirs.push(path);
                } else if Some(path.as_path()) != except {
                    found.push(path);
                }
            }
        }
        found
    }

    #[actix_rt::test]
    async fn multi_chunk_body_is_hashed_and_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = fs_storage(dir.path());
        // Tiny, odd, just-under-a-batch and over-a-batch chunks, so batches are cut in every
        // way: coalesced, flushed early, passed through whole.
        let body = data(3 * 1024 * 1024 + 12_345);
        let chunks = chunked(&body, &[1, 1000, 65_536, 70_001, BATCH_BYTES - 1, 300_000]);
        assert!(chunks.len() > 20);
        let received = receive_stream(&storage, stream::iter(chunks), body.len() as u64)
            .await
            .expect("received");
        assert_eq!(received.size, body.len() as u64);
        assert_eq!(received.sha256, sha256_hex(&body));
        storage.commit(received.blob, "a/blob").expect("commit");
        assert_eq!(
            std::fs::read(dir.path().join("a/blob")).expect("read"),
            body
        );
        assert_eq!(files(dir.path(), None), vec![dir.path().join("a/blob")]);
    }

    #[actix_rt::test]
    async fn empty_body_and_body_at_the_limit_are_received() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = fs_storage(dir.path());
        let empty = stream::iter(Vec::<Result<Bytes, io::Error>>::new());
        let received = receive_stream(&storage, empty, 10).await.expect("empty");
        assert_eq!(
            (received.size, received.sha256.as_str()),
            (0, &*sha256_hex(b""))
        );
        storage.discard(received.blob);

        let body = data(1000);
        let chunks = chunked(&body, &[300]);
        let received = receive_stream(&storage, stream::iter(chunks), 1000)
            .await
            .expect("exactly at the limit");
        assert_eq!(received.sha256, sha256_hex(&body));
        storage.discard(received.blob);
        assert!(files(dir.path(), None).is_empty());
    }

    #[actix_rt::test]
    async fn over_limit_body_is_refused_early_and_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = fs_storage(dir.path());
        let limit = 1024 * 1024 + 1;
        let chunk = Bytes::from(data(64 * 1024));
        let read = Arc::new(AtomicUsize::new(0));
        let counted = read.clone();
        // An endless body: only refusing it early ends the upload.
        let body = stream::repeat(chunk).map(move |c| {
            counted.fetch_add(1, Ordering::Relaxed);
            Ok::<_, io::Error>(c)
        });
        let refused = receive_stream(&storage, body, limit).await;
        assert!(
            matches!(refused, Err(ApiError::PayloadTooLarge { limit: l }) if l == limit),
            "{:?}",
            refused.err()
        );
        // 16 chunks make exactly 1 MiB: the 17th crosses the limit, and nothing after it is read.
        assert_eq!(read.load(Ordering::Relaxed), 17);
        assert!(files(dir.path(), None).is_empty());
    }

    #[actix_rt::test]
    async fn body_error_midway_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = fs_storage(dir.path());
        let body = data(2 * 1024 * 1024);
        let mut chunks = chunked(&body, &[10_000, 400_000]);
        chunks.push(Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "the client went away",
        )));
        chunks.extend(chunked(&body, &[50_000]));
        let failed = receive_stream(&storage, stream::iter(chunks), u64::MAX).await;
        match failed {
            Err(ApiError::BadRequest(message)) => {
                assert!(message.contains("the client went away"), "{message}")
            }
            other => panic!("expected a bad request, got {:?}", other.err()),
        }
        assert!(files(dir.path(), None).is_empty());
    }

    #[actix_rt::test]
    async fn digest_mismatch_is_detected_and_the_blob_discarded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = fs_storage(dir.path());
        let body = data(1024 * 1024);
        let declared = sha256_hex(&body);
        // One bit flipped in the middle of a batch that is coalesced from several chunks.
        let mut corrupted = body.clone();
        corrupted[BATCH_BYTES + 5000] ^= 1;
        let chunks = chunked(&corrupted, &[4096]);
        let received = receive_stream(&storage, stream::iter(chunks), u64::MAX)
            .await
            .expect("received");
        assert_eq!(received.sha256, sha256_hex(&corrupted));
        assert_ne!(received.sha256, declared);
        // What the upload handlers do with a mismatch.
        storage.discard(received.blob);
        assert!(files(dir.path(), None).is_empty());
    }

    /// Storage whose pending blobs cannot be written, as on a failing disk.
    struct Unwritable {
        inner: FsStorage,
        read_only: PathBuf,
    }

    impl Storage for Unwritable {
        fn create_pending(&self) -> io::Result<PendingBlob> {
            let mut blob = self.inner.create_pending()?;
            if let crate::storage::BlobWriter::File(pending) = &mut blob.file {
                pending.replace_file(File::open(&self.read_only)?);
            }
            Ok(blob)
        }
        fn commit(&self, blob: PendingBlob, key: &str) -> io::Result<()> {
            self.inner.commit(blob, key)
        }
        fn discard(&self, blob: PendingBlob) {
            self.inner.discard(blob)
        }
        fn open(&self, key: &str) -> io::Result<Box<dyn crate::storage::BlobRead>> {
            self.inner.open(key)
        }
        fn stream(
            &self,
            key: &str,
            range: Option<Range<u64>>,
        ) -> futures_util::future::BoxFuture<'static, io::Result<BlobStream>> {
            self.inner.stream(key, range)
        }
        fn exists(&self, key: &str) -> bool {
            self.inner.exists(key)
        }
        fn append_log(&self, bytes: &[u8]) -> io::Result<crate::log_segments::SegmentSpan> {
            self.inner.append_log(bytes)
        }
        fn remove(&self, key: &str) -> io::Result<()> {
            self.inner.remove(key)
        }
        fn remove_stale_pending(&self, older_than: std::time::Duration) -> io::Result<usize> {
            self.inner.remove_stale_pending(older_than)
        }
    }

    fn unwritable(root: &Path) -> (Arc<dyn Storage>, PathBuf) {
        let read_only = root.join("read-only");
        std::fs::write(&read_only, b"").expect("write");
        let storage = Unwritable {
            inner: FsStorage::new(root).expect("storage"),
            read_only: read_only.clone(),
        };
        (Arc::new(storage), read_only)
    }

    #[actix_rt::test]
    async fn write_error_is_internal_and_stops_the_reading() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (storage, read_only) = unwritable(dir.path());
        let read = Arc::new(AtomicUsize::new(0));
        let counted = read.clone();
        let body = stream::repeat(Bytes::from(data(32 * 1024))).map(move |c| {
            counted.fetch_add(1, Ordering::Relaxed);
            Ok::<_, io::Error>(c)
        });
        let failed = tokio::time::timeout(
            Duration::from_secs(30),
            receive_stream(&storage, body, u64::MAX),
        )
        .await
        .expect("an endless body must end when the writer fails");
        assert!(
            matches!(failed, Err(ApiError::Internal(_))),
            "{:?}",
            failed.err()
        );
        // The queue's worth and a little more, not the endless body.
        assert!(read.load(Ordering::Relaxed) < 200);
        assert_eq!(files(dir.path(), Some(&read_only)), Vec::<PathBuf>::new());
    }

    #[actix_rt::test]
    async fn write_error_ends_the_wait_for_a_silent_client() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (storage, read_only) = unwritable(dir.path());
        // A full batch, then a client that never sends again.
        let body = stream::iter(vec![Ok::<_, io::Error>(Bytes::from(data(BATCH_BYTES)))])
            .chain(stream::pending());
        let failed = tokio::time::timeout(
            Duration::from_secs(30),
            receive_stream(&storage, body, u64::MAX),
        )
        .await
        .expect("a failed writer must not wait for the client");
        assert!(
            matches!(failed, Err(ApiError::Internal(_))),
            "{:?}",
            failed.err()
        );
        assert_eq!(files(dir.path(), Some(&read_only)), Vec::<PathBuf>::new());
    }

    #[test]
    fn range_headers_are_read_as_rfc_9110_says() {
        let r = |h: &str| requested_range(Some(h), 100);
        assert_eq!(requested_range(None, 100), Ok(None));
        assert_eq!(r("bytes=0-9"), Ok(Some(0..10)));
        assert_eq!(r("bytes=90-"), Ok(Some(90..100)));
        assert_eq!(r("bytes=90-500"), Ok(Some(90..100)), "clamped to the end");
        assert_eq!(r("bytes=-10"), Ok(Some(90..100)));
        assert_eq!(r("bytes=-500"), Ok(Some(0..100)));
        assert_eq!(r("bytes=100-"), Err(Unsatisfiable), "past the end");
        assert_eq!(r("bytes=-0"), Err(Unsatisfiable));
        // Not served as ranges: the whole blob.
        for whole in [
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=5-1",
            "bytes=x-",
            "bytes",
        ] {
            assert_eq!(r(whole), Ok(None), "{whole}");
        }
    }

    #[actix_rt::test]
    async fn dropped_upload_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = fs_storage(dir.path());
        let body = stream::iter(chunked(&data(600_000), &[100_000])).chain(stream::pending());
        let upload = receive_stream(&storage, body, u64::MAX);
        assert!(
            tokio::time::timeout(Duration::from_millis(200), upload)
                .await
                .is_err(),
            "the body never ends"
        );
        assert!(files(dir.path(), None).is_empty());
    }
}
