//! The one way work leaves the async threads. Store calls are synchronous (Diesel), so they
//! run on the blocking pool, but only as many at once as the database can serve
//! ([`store`], behind a semaphore sized to the connection pool, as vaultwarden guards its
//! pool): a burst (thousands of builders reconnecting) queues here, asynchronously, instead
//! of parking blocking threads on pool checkouts while dispatch and log acknowledgements
//! wait behind them. CPU work that must not stall an actor's thread (signature checks) goes
//! to [`cpu`], which takes no database permit.

use std::sync::{Arc, OnceLock};

use tokio::sync::Semaphore;

/// Permits when no server configured them (unit tests, tools).
const DEFAULT_STORE_PERMITS: usize = 16;

static STORE_PERMITS: OnceLock<Arc<Semaphore>> = OnceLock::new();

/// Sizes the store permits to the connection pool. The first server of a process decides;
/// later ones (tests start several) share it.
pub fn configure(store_permits: usize) {
    let _ = STORE_PERMITS.set(Arc::new(Semaphore::new(store_permits.max(1))));
}

fn permits() -> &'static Arc<Semaphore> {
    STORE_PERMITS.get_or_init(|| Arc::new(Semaphore::new(DEFAULT_STORE_PERMITS)))
}

/// The blocking task could not run to its end (it panicked, or the runtime is stopping).
#[derive(Debug, thiserror::Error)]
#[error("blocking task failed: {0}")]
pub struct OffloadError(String);

/// Runs a blocking store call once a database permit is free.
pub async fn store<T, F>(f: F) -> Result<T, OffloadError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let permit = permits()
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| OffloadError(e.to_string()))?;
    let result = tokio::task::spawn_blocking(move || {
        let _held = permit;
        f()
    })
    .await;
    result.map_err(|e| OffloadError(e.to_string()))
}

/// Runs CPU-bound work (a signature check) off the async threads, without a database permit.
pub async fn cpu<T, F>(f: F) -> Result<T, OffloadError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| OffloadError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[actix_rt::test]
    async fn store_calls_never_exceed_the_permits() {
        let permits = permits().available_permits();
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let calls = (0..permits * 3).map(|_| {
            let (running, peak) = (running.clone(), peak.clone());
            store(move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
                running.fetch_sub(1, Ordering::SeqCst);
            })
        });
        for result in futures_util::future::join_all(calls).await {
            assert!(result.is_ok());
        }
        assert!(
            peak.load(Ordering::SeqCst) <= permits,
            "peak {peak:?} of {permits}"
        );
    }
}
