//! Blobs in an S3-compatible object store (AWS S3, MinIO, Garage, Ceph RGW, …) through the
//! `object_store` crate, so that every backend replica sees every blob.
//!
//! Requests run on a runtime of this storage's own (one thread, started with it): the trait is
//! called from blocking threads, which wait for their request there, and [`Storage::stream`]'s
//! bodies are read there and handed over through a small channel. Every request has a
//! timeout and is retried a bounded number of times on connection errors and 5xx answers
//! (`object_store`'s `RetryConfig`); a request that still fails is a [`StoreUnavailable`]
//! error, logged once here with the key it was about.
//!
//! Uploads go to `pending/{random}` as a multipart upload of [`PART_BYTES`] parts (a blob
//! smaller than one part is one plain PUT at the end), with at most one part in memory; commit
//! copies the finished object to its key and deletes the pending one, so nothing is visible
//! under a key before commit, and discarding aborts the multipart upload.

use std::io::{self, Read, Seek, SeekFrom};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, MultipartUpload, ObjectStore, PutPayload,
    RetryConfig,
};
use tokio::sync::mpsc;

use super::{
    check_key, keys, BlobRead, BlobStream, BlobWriter, LogChunkName, PendingBlob, Storage,
    StoreUnavailable,
};
use crate::log_segments::SegmentSpan;
use crate::store::{Clock as _, SystemClock};

/// The size of each part of a multipart upload (S3 wants at least 5 MiB but for the last).
pub const PART_BYTES: usize = 8 * 1024 * 1024;
/// What a reader fetches per ranged GET.
const READ_WINDOW: u64 = 4 * 1024 * 1024;
/// Chunks of a streamed body queued between the store's runtime and the response.
const STREAM_DEPTH: usize = 4;
/// Ranged GETs in flight for one `read_ranges` (a log read: one object per flush).
const CONCURRENT_READS: usize = 16;

/// Where and how to reach the object store: `[storage]` in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    pub bucket: String,
    /// `http(s)://host:port` of an S3-compatible server; AWS's own endpoint when `None`.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Put before every key (`prefix/…`); empty for none.
    pub prefix: String,
    /// Credentials; when `None`, the standard AWS environment variables (or an instance role).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Allow a plain `http://` endpoint (a loopback test server, a private MinIO).
    pub allow_http: bool,
    /// One request's limit, connecting included.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Retries of a failed request (connection errors, 5xx), all within `retry_timeout`.
    pub max_retries: usize,
    pub retry_timeout: Duration,
}

impl S3Settings {
    /// Defaults for `bucket`.
    pub fn new(bucket: impl Into<String>) -> S3Settings {
        S3Settings {
            bucket: bucket.into(),
            endpoint: None,
            region: None,
            prefix: String::new(),
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            max_retries: 3,
            retry_timeout: Duration::from_secs(30),
        }
    }

    /// Where the store is, for messages.
    pub fn describe(&self) -> String {
        format!(
            "bucket {:?} at {}",
            self.bucket,
            self.endpoint.as_deref().unwrap_or("AWS S3")
        )
    }
}

/// What the storage, its blobs and its readers share.
struct Inner {
    store: AmazonS3,
    prefix: String,
    runtime: tokio::runtime::Handle,
    /// Dropped with the last user: the runtime's thread then ends.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Inner {
    fn path(&self, key: &str) -> io::Result<ObjectPath> {
        check_key(key)?;
        Ok(if self.prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", self.prefix))
        })
    }

    /// Runs `future` on the store's runtime and waits for it (blocking this thread).
    fn run<T: Send + 'static>(
        &self,
        future: impl std::future::Future<Output = T> + Send + 'static,
    ) -> io::Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime.spawn(async move {
            let _ = tx.send(future.await);
        });
        rx.recv()
            .map_err(|_| io::Error::other("the object store's runtime stopped"))
    }
}

/// An `object_store` error as an I/O error: a missing object is `NotFound`, anything else
/// (unreachable, 5xx after the retries, a timeout) [`StoreUnavailable`], logged here.
fn store_error(what: &str, key: &str, e: object_store::Error) -> io::Error {
    match e {
        object_store::Error::NotFound { .. } => {
            io::Error::new(io::ErrorKind::NotFound, format!("{key} not found"))
        }
        e => {
            tracing::error!(key, error = %e, "object storage: {what} failed");
            io::Error::other(StoreUnavailable(format!("{what} {key}: {e}")))
        }
    }
}

/// Blobs in an S3-compatible bucket.
pub struct S3Storage {
    inner: Arc<Inner>,
    described: String,
}

impl S3Storage {
    /// Builds the client, starts its runtime and checks that the bucket answers and takes a
    /// write (a small probe object, then deleted): an unreachable or misconfigured store is a
    /// clear error at start, not at the first upload.
    pub fn connect(settings: &S3Settings) -> anyhow::Result<S3Storage> {
        let storage = S3Storage::new(settings)?;
        let probe = format!("{}/probe-{:016x}", keys::PENDING, rand::random::<u64>());
        let path = storage.inner.path(&probe)?;
        let store = storage.inner.store.clone();
        let checked = storage.inner.run(async move {
            store.put(&path, PutPayload::from_static(b"probe")).await?;
            store.delete(&path).await
        })?;
        if let Err(e) = checked {
            anyhow::bail!(
                "object storage ({}) does not answer or refuses a write: {e}",
                settings.describe()
            );
        }
        Ok(storage)
    }

    /// Builds the client without checking the store.
    pub fn new(settings: &S3Settings) -> anyhow::Result<S3Storage> {
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&settings.bucket)
            .with_allow_http(settings.allow_http)
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: settings.max_retries,
                retry_timeout: settings.retry_timeout,
            })
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(settings.allow_http)
                    .with_timeout(settings.request_timeout)
                    .with_connect_timeout(settings.connect_timeout),
            );
        if let Some(endpoint) = &settings.endpoint {
            // An S3-compatible server: path-style requests (`endpoint/bucket/key`).
            builder = builder
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false);
        }
        if let Some(region) = &settings.region {
            builder = builder.with_region(region);
        }
        if let Some(id) = &settings.access_key_id {
            builder = builder.with_access_key_id(id);
        }
        if let Some(secret) = &settings.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        let store = builder
            .build()
            .map_err(|e| anyhow::anyhow!("object storage ({}): {e}", settings.describe()))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        // The runtime's thread drives every request and ends when the last user is gone
        // (the sender dropped with `Inner`).
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("object-store".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let _ = stopped.await;
                });
            })?;
        Ok(S3Storage {
            described: settings.describe(),
            inner: Arc::new(Inner {
                store,
                prefix: settings.prefix.trim_matches('/').to_string(),
                runtime: handle,
                _stop: stop,
            }),
        })
    }

    /// Where the store is, for messages.
    pub fn describe(&self) -> &str {
        &self.described
    }

    fn put(&self, key: &str, bytes: Bytes) -> io::Result<()> {
        let path = self.inner.path(key)?;
        let store = self.inner.store.clone();
        self.inner
            .run(async move { store.put(&path, PutPayload::from_bytes(bytes)).await })?
            .map(|_| ())
            .map_err(|e| store_error("storing", key, e))
    }
}

/// A blob being uploaded to `pending/…`.
pub struct PendingObject {
    inner: Arc<Inner>,
    key: String,
    path: ObjectPath,
    /// Started with the first full part.
    upload: Option<Box<dyn MultipartUpload>>,
    /// Bytes not yet sent: less than a part.
    buffer: Vec<u8>,
    /// The object exists under `path` (finished).
    finished: bool,
    /// A part failed: the upload cannot be finished.
    failed: bool,
}

impl PendingObject {
    pub(super) fn key(&self) -> &str {
        &self.key
    }

    pub(super) fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let written = data.len();
        if self.failed || self.finished {
            return Err(io::Error::other("the upload has already ended"));
        }
        while !data.is_empty() {
            if self.buffer.capacity() == 0 {
                self.buffer.reserve_exact(PART_BYTES);
            }
            let take = (PART_BYTES - self.buffer.len()).min(data.len());
            self.buffer.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buffer.len() == PART_BYTES {
                self.send_part()?;
            }
        }
        Ok(written)
    }

    /// Sends the buffer as the next part, starting the multipart upload if needed.
    fn send_part(&mut self) -> io::Result<()> {
        // The next buffer is allocated by the next write, after this part is sent: one part
        // in memory at a time.
        let part = Bytes::from(std::mem::take(&mut self.buffer));
        let (store, path, upload) = (
            self.inner.store.clone(),
            self.path.clone(),
            self.upload.take(),
        );
        let result = self.inner.run(async move {
            let mut upload = match upload {
                Some(upload) => upload,
                None => match store.put_multipart(&path).await {
                    Ok(upload) => upload,
                    Err(e) => return (None, Err(e)),
                },
            };
            let sent = upload.put_part(PutPayload::from_bytes(part)).await;
            (Some(upload), sent)
        });
        match result {
            Ok((upload, Ok(()))) => {
                self.upload = upload;
                Ok(())
            }
            Ok((upload, Err(e))) => {
                self.upload = upload;
                self.failed = true;
                Err(store_error("uploading a part of", &self.key, e))
            }
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }

    pub(super) fn finish(&mut self) -> io::Result<()> {
        if self.finished {
            return Ok(());
        }
        if self.failed {
            return Err(io::Error::other("the upload failed before it was finished"));
        }
        let rest = Bytes::from(std::mem::take(&mut self.buffer));
        let (store, path, upload) = (
            self.inner.store.clone(),
            self.path.clone(),
            self.upload.take(),
        );
        let result = self.inner.run(async move {
            match upload {
                None => (None, store.put(&path, PutPayload::from_bytes(rest)).await),
                Some(mut upload) => {
                    if !rest.is_empty() {
                        if let Err(e) = upload.put_part(PutPayload::from_bytes(rest)).await {
                            return (Some(upload), Err(e));
                        }
                    }
                    let completed = upload.complete().await;
                    (Some(upload), completed)
                }
            }
        });
        match result {
            Ok((_, Ok(_))) => {
                self.finished = true;
                Ok(())
            }
            Ok((upload, Err(e))) => {
                self.upload = upload;
                self.failed = true;
                Err(store_error("completing the upload of", &self.key, e))
            }
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }

    /// Aborts the multipart upload or deletes the finished pending object, in the background.
    fn abandon(mut self) {
        let (store, path, upload, finished) = (
            self.inner.store.clone(),
            self.path.clone(),
            self.upload.take(),
            self.finished,
        );
        let key = self.key.clone();
        self.inner.runtime.spawn(async move {
            if let Some(mut upload) = upload {
                if !finished {
                    if let Err(e) = upload.abort().await {
                        tracing::warn!(key, error = %e, "object storage: aborting an upload failed");
                    }
                }
            }
            if finished {
                if let Err(e) = store.delete(&path).await {
                    tracing::warn!(key, error = %e, "object storage: deleting a pending blob failed");
                }
            }
        });
    }
}

/// Reads an object by ranged GETs of [`READ_WINDOW`] bytes, holding one window at a time.
struct ObjectReader {
    inner: Arc<Inner>,
    key: String,
    path: ObjectPath,
    size: u64,
    pos: u64,
    window: Bytes,
    window_start: u64,
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.pos >= self.size {
            return Ok(0);
        }
        let window_end = self.window_start + self.window.len() as u64;
        if self.pos < self.window_start || self.pos >= window_end {
            let range = self.pos..(self.pos + READ_WINDOW).min(self.size);
            let (store, path) = (self.inner.store.clone(), self.path.clone());
            let fetch = range.clone();
            let bytes = self
                .inner
                .run(async move { store.get_range(&path, fetch).await })?
                .map_err(|e| store_error("reading", &self.key, e))?;
            if bytes.is_empty() {
                return Ok(0);
            }
            self.window = bytes;
            self.window_start = range.start;
        }
        let at = usize::try_from(self.pos - self.window_start).map_err(io::Error::other)?;
        let n = buf.len().min(self.window.len() - at);
        buf[..n].copy_from_slice(&self.window[at..at + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for ObjectReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

impl Storage for S3Storage {
    fn create_pending(&self) -> io::Result<PendingBlob> {
        let key = format!(
            "{}/{:016x}{:016x}",
            keys::PENDING,
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        Ok(PendingBlob {
            file: BlobWriter::Object(PendingObject {
                inner: self.inner.clone(),
                path: self.inner.path(&key)?,
                key,
                upload: None,
                buffer: Vec::new(),
                finished: false,
                failed: false,
            }),
        })
    }

    fn commit(&self, blob: PendingBlob, key: &str) -> io::Result<()> {
        let BlobWriter::Object(mut pending) = blob.file else {
            return Err(io::Error::other("not a blob of the object storage"));
        };
        if let Err(e) = pending.finish() {
            pending.abandon();
            return Err(e);
        }
        let target = self.inner.path(key)?;
        let (store, from) = (self.inner.store.clone(), pending.path.clone());
        let copied = self
            .inner
            .run(async move { store.copy(&from, &target).await });
        // The pending object goes either way.
        pending.abandon();
        copied?.map_err(|e| store_error("publishing", key, e))
    }

    fn discard(&self, blob: PendingBlob) {
        if let BlobWriter::Object(pending) = blob.file {
            pending.abandon();
        }
    }

    fn open(&self, key: &str) -> io::Result<Box<dyn BlobRead>> {
        let path = self.inner.path(key)?;
        let (store, head) = (self.inner.store.clone(), path.clone());
        let meta = self
            .inner
            .run(async move { store.head(&head).await })?
            .map_err(|e| store_error("opening", key, e))?;
        Ok(Box::new(ObjectReader {
            inner: self.inner.clone(),
            key: key.to_string(),
            path,
            size: meta.size,
            pos: 0,
            window: Bytes::new(),
            window_start: 0,
        }))
    }

    fn stream(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> BoxFuture<'static, io::Result<BlobStream>> {
        let inner = self.inner.clone();
        let key = key.to_string();
        async move {
            let path = inner.path(&key)?;
            let (tx, mut rx) = mpsc::channel::<io::Result<BlobStream>>(1);
            let store = inner.store.clone();
            let task_key = key.clone();
            inner.runtime.spawn(async move {
                let opened = open_stream(store, path, &task_key, range).await;
                let _ = tx.send(opened).await;
            });
            rx.recv()
                .await
                .unwrap_or_else(|| Err(io::Error::other("the object store's runtime stopped")))
        }
        .boxed()
    }

    fn exists(&self, key: &str) -> bool {
        let Ok(path) = self.inner.path(key) else {
            return false;
        };
        let store = self.inner.store.clone();
        matches!(
            self.inner.run(async move { store.head(&path).await }),
            Ok(Ok(_))
        )
    }

    fn read_ranges(&self, ranges: &[(String, Range<u64>)]) -> io::Result<Vec<Vec<u8>>> {
        let requests = ranges
            .iter()
            .map(|(key, range)| Ok((key.clone(), self.inner.path(key)?, range.clone())))
            .collect::<io::Result<Vec<_>>>()?;
        let store = self.inner.store.clone();
        self.inner.run(async move {
            // One ranged GET each (no HEAD), several in flight, answers kept in order.
            futures_util::stream::iter(requests)
                .map(|(key, path, range)| {
                    let store = store.clone();
                    async move {
                        store
                            .get_range(&path, range)
                            .await
                            .map(|bytes| bytes.to_vec())
                            .map_err(|e| store_error("reading", &key, e))
                    }
                })
                .buffered(CONCURRENT_READS)
                .try_collect()
                .await
        })?
    }

    fn remove_stale_pending(&self, older_than: Duration) -> io::Result<usize> {
        let prefix = self.inner.path(keys::PENDING)?;
        let cutoff_ms = SystemClock
            .now_ms()
            .saturating_sub(i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX));
        let store = self.inner.store.clone();
        self.inner.run(async move {
            let stale: Vec<ObjectPath> = store
                .list(Some(&prefix))
                .try_filter(|meta| {
                    std::future::ready(meta.last_modified.timestamp_millis() < cutoff_ms)
                })
                .map_ok(|meta| meta.location)
                .try_collect()
                .await
                .map_err(|e| store_error("listing", keys::PENDING, e))?;
            let mut removed = 0;
            for path in stale {
                match store.delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => removed += 1,
                    Err(e) => return Err(store_error("deleting", path.as_ref(), e)),
                }
            }
            Ok(removed)
        })?
    }

    fn append_log(&self, bytes: &[u8]) -> io::Result<SegmentSpan> {
        let key = format!(
            "logs/unnamed/{:016x}{:016x}.jsonl",
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        self.put(&key, Bytes::copy_from_slice(bytes))?;
        Ok(SegmentSpan { key, offset: 0 })
    }

    fn store_log_chunk(&self, name: &LogChunkName, bytes: &[u8]) -> io::Result<SegmentSpan> {
        let key = keys::log_chunk(name);
        self.put(&key, Bytes::copy_from_slice(bytes))?;
        Ok(SegmentSpan { key, offset: 0 })
    }

    fn remove(&self, key: &str) -> io::Result<()> {
        let path = self.inner.path(key)?;
        let store = self.inner.store.clone();
        match self.inner.run(async move { store.delete(&path).await })? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_error("deleting", key, e)),
        }
    }
}

/// On the store's runtime: the object's size, then a GET of `range` whose body is forwarded
/// through a channel, so the response can be polled on any runtime.
async fn open_stream(
    store: AmazonS3,
    path: ObjectPath,
    key: &str,
    range: Option<Range<u64>>,
) -> io::Result<BlobStream> {
    let meta = store
        .head(&path)
        .await
        .map_err(|e| store_error("opening", key, e))?;
    let total = meta.size;
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
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(STREAM_DEPTH);
    if range.start < range.end {
        let options = GetOptions {
            range: Some(GetRange::Bounded(range.clone())),
            ..GetOptions::default()
        };
        let got = store
            .get_opts(&path, options)
            .await
            .map_err(|e| store_error("reading", key, e))?;
        let mut body = got.into_stream();
        let key = key.to_string();
        tokio::spawn(async move {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| store_error("reading", &key, e));
                let failed = chunk.is_err();
                if tx.send(chunk).await.is_err() || failed {
                    break;
                }
            }
        });
    }
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .boxed();
    Ok(BlobStream { total, range, body })
}
