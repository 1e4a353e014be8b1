//! Fetching a job's source archive: streamed to disk, bounded by `max_bytes`, and verified
//! against the SHA-256 digest of the assignment before anything unpacks or runs it.
//! Transient failures (connect errors, resets, 5xx, 408, 429) are retried with backoff until
//! the job's deadline, each try downloading from the start.
//!
//! Sources are content-addressed, so the builder keeps them in a [`SourceCache`] under
//! `<work_dir>/sources`, named by their SHA-256: a second job of the same source fetches
//! nothing. An entry is verified once as it is downloaded and never fsynced: every use
//! hashes it again on the way through the unpacker (no second read), and a mismatch (a
//! torn or corrupted file) evicts it and fetches it anew before anything runs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use buildfleet_protocol::{BuildErrorKind, Sha256Digest, SourceSpec};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::backends::Backends;
use crate::http::{Retrier, Retry};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source URL {0:?} is not http:// or https://")]
    Scheme(String),
    #[error("fetching the source failed: {0}")]
    Fetch(String),
    #[error("the source server answered {status}")]
    Status { status: u16 },
    #[error("the source is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("source digest mismatch: expected sha256 {expected}, got {actual}")]
    DigestMismatch {
        expected: Sha256Digest,
        actual: Sha256Digest,
    },
    #[error("cannot write the source to disk: {0}")]
    Io(#[from] std::io::Error),
    #[error("gave up fetching the source after {tries} tries over {:.1} s, as the next one could not start before the job's deadline; last error: {last}", elapsed.as_secs_f64())]
    GaveUp {
        tries: u32,
        elapsed: Duration,
        last: Box<SourceError>,
    },
}

impl SourceError {
    pub fn kind(&self) -> BuildErrorKind {
        match self {
            SourceError::TooLarge { .. } => BuildErrorKind::SourceTooLarge,
            SourceError::DigestMismatch { .. } => BuildErrorKind::SourceDigestMismatch,
            SourceError::Io(_) => BuildErrorKind::Internal,
            SourceError::Scheme(_) | SourceError::Fetch(_) | SourceError::Status { .. } => {
                BuildErrorKind::SourceFetch
            }
            SourceError::GaveUp { last, .. } => last.kind(),
        }
    }
}

/// Downloads `spec.url` into `dest` and verifies it; returns its size. Transient failures
/// are retried while the next try can start before `deadline` (the job's; `None`: a fixed
/// budget of ten minutes). On any error the partial file is removed.
pub async fn fetch(
    client: &awc::Client,
    backends: &Backends,
    spec: &SourceSpec,
    dest: &Path,
    deadline: Option<tokio::time::Instant>,
) -> Result<u64, SourceError> {
    let mut retrier = Retrier::new(deadline);
    let result = loop {
        let (error, retry) = match fetch_once(client, &backends.route(&spec.url), spec, dest).await
        {
            Ok(size) => break Ok(size),
            Err(failure) => failure,
        };
        if retry == Retry::Never {
            break Err(error);
        }
        tracing::warn!(error = %error, tries = retrier.tries(), "fetching the source failed; retrying");
        if !retrier.wait(retry).await {
            break Err(SourceError::GaveUp {
                tries: retrier.tries(),
                elapsed: retrier.elapsed(),
                last: Box::new(error),
            });
        }
    };
    if result.is_err() {
        let _ = tokio::fs::remove_file(dest).await;
    }
    result
}

/// One try; a failure comes with whether it is worth another.
async fn fetch_once(
    client: &awc::Client,
    url: &str,
    spec: &SourceSpec,
    dest: &Path,
) -> Result<u64, (SourceError, Retry)> {
    let lower = url.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err((SourceError::Scheme(spec.url.clone()), Retry::Never));
    }
    let mut response = client.get(url).send().await.map_err(|e| {
        let retry = Retry::for_send_error(&e);
        (SourceError::Fetch(e.to_string()), retry)
    })?;
    if !response.status().is_success() {
        let retry = Retry::for_status(response.status(), response.headers());
        let error = SourceError::Status {
            status: response.status().as_u16(),
        };
        return Err((error, retry));
    }
    // Only the transfer is retried; what the data says (too large, wrong digest) is final,
    // and so is a local disk error.
    let never = |e: SourceError| (e, Retry::Never);
    let declared = response
        .headers()
        .get(awc::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > spec.max_bytes) {
        return Err(never(SourceError::TooLarge {
            limit: spec.max_bytes,
        }));
    }

    let mut file = tokio::fs::File::create(dest)
        .await
        .map_err(|e| never(e.into()))?;
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    while let Some(chunk) = response.next().await {
        // A body cut off midway (the server restarting) is worth another try.
        let chunk = chunk.map_err(|e| (SourceError::Fetch(e.to_string()), Retry::After(None)))?;
        size += chunk.len() as u64;
        // Counted as it streams: a server that lies about (or omits) its length is cut off.
        if size > spec.max_bytes {
            return Err(never(SourceError::TooLarge {
                limit: spec.max_bytes,
            }));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(|e| never(e.into()))?;
    }
    // A body shorter than its declared length was cut (its server died after the headers):
    // another try, not a digest mismatch.
    if let Some(declared) = declared.filter(|&len| len != size) {
        let error = SourceError::Fetch(format!(
            "the transfer ended after {size} of {declared} bytes"
        ));
        return Err((error, Retry::After(None)));
    }
    // No fsync: the file is verified again whenever it is used (see the module docs), so a
    // crash that tears it costs a re-fetch, never a wrong build.
    file.flush().await.map_err(|e| never(e.into()))?;

    let actual = Sha256Digest::from_bytes(&hasher.finalize().into());
    if actual != spec.sha256 {
        return Err(never(SourceError::DigestMismatch {
            expected: spec.sha256.clone(),
            actual,
        }));
    }
    Ok(size)
}

/// Prefix of downloads in progress in the cache directory (removed at start).
const PARTIAL_PREFIX: &str = "partial-";

/// A bounded, least-recently-used cache of verified source archives, by SHA-256.
#[derive(Debug, Clone)]
pub struct SourceCache {
    inner: Arc<CacheInner>,
}

#[derive(Debug)]
struct CacheInner {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<CacheState>,
}

#[derive(Debug, Default)]
struct CacheState {
    entries: HashMap<String, CacheEntry>,
    total_bytes: u64,
    /// Logical clock of uses, for the LRU order.
    clock: u64,
    /// Names of partial downloads.
    next_partial: u64,
}

#[derive(Debug)]
struct CacheEntry {
    size: u64,
    last_used: u64,
    /// Jobs using the file now; a used entry is never evicted under them.
    pins: u32,
    /// Tells this entry from an earlier one of the same digest (evicted as corrupted), so a
    /// stale user's unpin does not touch it.
    generation: u64,
}

/// A source archive on disk for one job: a cache entry (pinned until dropped) or, when the
/// cache is off or the archive is larger than the cache, a file of its own removed on drop.
#[derive(Debug)]
pub struct CachedSource {
    pub path: PathBuf,
    /// Downloaded by this call (verified as it streamed), rather than found in the cache.
    pub fetched: bool,
    cache: SourceCache,
    /// The entry's digest and generation; `None` for a file of its own.
    key: Option<(String, u64)>,
}

impl Drop for CachedSource {
    fn drop(&mut self) {
        match &self.key {
            Some((key, generation)) => {
                let mut state = self.cache.lock();
                if let Some(entry) = state
                    .entries
                    .get_mut(key)
                    .filter(|e| e.generation == *generation)
                {
                    entry.pins = entry.pins.saturating_sub(1);
                }
                let over = state.total_bytes > self.cache.inner.max_bytes;
                drop(state);
                if over {
                    self.cache.evict_to(self.cache.inner.max_bytes);
                }
            }
            None => {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

impl SourceCache {
    /// Opens (creating) the cache in `dir`, bounded to `max_bytes` (0: no caching).
    /// Archives left by an earlier process are kept, oldest first in the LRU order (they are
    /// verified on use like any entry); partial downloads and foreign files are removed.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<SourceCache> {
        std::fs::create_dir_all(dir)?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let meta = entry.metadata()?;
            if meta.is_file() && name.parse::<Sha256Digest>().is_ok() && max_bytes > 0 {
                let modified = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                found.push((modified, name, meta.len()));
            } else if meta.is_dir() {
                std::fs::remove_dir_all(entry.path())?;
            } else {
                std::fs::remove_file(entry.path())?;
            }
        }
        found.sort();
        let mut state = CacheState::default();
        for (_, name, size) in found {
            state.clock += 1;
            state.total_bytes += size;
            let entry = CacheEntry {
                size,
                last_used: state.clock,
                pins: 0,
                generation: state.clock,
            };
            state.entries.insert(name, entry);
        }
        let cache = SourceCache {
            inner: Arc::new(CacheInner {
                dir: dir.to_owned(),
                max_bytes,
                state: Mutex::new(state),
            }),
        };
        cache.evict_to(max_bytes);
        Ok(cache)
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Bytes of the archives held now.
    pub fn total_bytes(&self) -> u64 {
        self.lock().total_bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        // A panic while holding the lock leaves consistent counters; keep going.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The archive of `spec`: from the cache when held, else fetched (see [`fetch`]) and
    /// stored. The caller must check the digest of what it reads from a cache hit (the
    /// unpacker computes it) and call [`SourceCache::evict`] on a mismatch.
    pub async fn get(
        &self,
        client: &awc::Client,
        backends: &Backends,
        spec: &SourceSpec,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<CachedSource, SourceError> {
        let key = spec.sha256.as_str().to_owned();
        {
            let mut state = self.lock();
            state.clock += 1;
            let clock = state.clock;
            if let Some(entry) = state.entries.get_mut(&key) {
                entry.last_used = clock;
                entry.pins += 1;
                let generation = entry.generation;
                return Ok(CachedSource {
                    path: self.inner.dir.join(&key),
                    fetched: false,
                    cache: self.clone(),
                    key: Some((key, generation)),
                });
            }
        }
        let partial = {
            let mut state = self.lock();
            state.next_partial += 1;
            self.inner.dir.join(format!(
                "{PARTIAL_PREFIX}{}-{}",
                std::process::id(),
                state.next_partial
            ))
        };
        let size = fetch(client, backends, spec, &partial, deadline).await?;
        if size > self.inner.max_bytes {
            // Too big to keep (or caching is off): this job's own file.
            return Ok(CachedSource {
                path: partial,
                fetched: true,
                cache: self.clone(),
                key: None,
            });
        }
        let path = self.inner.dir.join(&key);
        if let Err(e) = tokio::fs::rename(&partial, &path).await {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(SourceError::Io(e));
        }
        let generation = {
            let mut state = self.lock();
            state.clock += 1;
            let clock = state.clock;
            // Another job may have stored the same archive meanwhile; the rename replaced
            // its file with identical bytes.
            let entry = state.entries.entry(key.clone()).or_insert(CacheEntry {
                size: 0,
                last_used: clock,
                pins: 0,
                generation: clock,
            });
            let previous = entry.size;
            entry.size = size;
            entry.last_used = clock;
            entry.pins += 1;
            let generation = entry.generation;
            state.total_bytes = state.total_bytes - previous + size;
            generation
        };
        self.evict_to(self.inner.max_bytes);
        Ok(CachedSource {
            path,
            fetched: true,
            cache: self.clone(),
            key: Some((key, generation)),
        })
    }

    /// Drops a corrupted source (its file read back with another digest): the next
    /// [`SourceCache::get`] of its digest fetches it again. Other jobs reading it keep their
    /// open file and find the mismatch themselves.
    pub fn evict(&self, mut source: CachedSource) {
        // Only this generation's file goes: a newer one at the same path is another
        // job's fresh download.
        let ours = match source.key.take() {
            Some((key, generation)) => {
                let mut state = self.lock();
                let current = state
                    .entries
                    .get(&key)
                    .is_some_and(|e| e.generation == generation);
                if current {
                    if let Some(entry) = state.entries.remove(&key) {
                        state.total_bytes -= entry.size;
                    }
                }
                current
            }
            None => true,
        };
        if ours {
            let _ = std::fs::remove_file(&source.path);
        }
        // Nothing left for its drop to remove (a refetch may reuse the path).
        source.path = PathBuf::new();
    }

    /// Removes least recently used entries no job is using until at most `bound` bytes
    /// are held (or only used entries are left).
    fn evict_to(&self, bound: u64) {
        let mut victims = Vec::new();
        {
            let mut state = self.lock();
            while state.total_bytes > bound {
                let oldest = state
                    .entries
                    .iter()
                    .filter(|(_, e)| e.pins == 0)
                    .min_by_key(|(_, e)| e.last_used)
                    .map(|(k, _)| k.clone());
                let Some(key) = oldest else { break };
                if let Some(entry) = state.entries.remove(&key) {
                    state.total_bytes -= entry.size;
                }
                victims.push(key);
            }
        }
        for key in victims {
            tracing::debug!(sha256 = %key, "evicting a cached source");
            if let Err(e) = std::fs::remove_file(self.inner.dir.join(&key)) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(error = %e, sha256 = %key, "cannot remove an evicted source");
                }
            }
        }
    }
}
