//! The one way work leaves the async threads. Store calls are synchronous (Diesel), so they
//! run on the blocking pool, but only as many at once as the database can serve
//! ([`store`], behind a semaphore sized to the connection pool, as vaultwarden guards its
//! pool): a burst (thousands of builders reconnecting) queues here, asynchronously, instead
//! of parking blocking threads on pool checkouts while dispatch and log acknowledgements
//! wait behind them. Sessions coming and going take at most half of those permits
//! ([`store_for_sessions`]), so a reconnect storm leaves the other half to connected builders. CPU work that must not stall an actor's thread (signature checks) goes
//! to [`cpu`], which takes no database permit.

use std::sync::{Arc, OnceLock};

use tokio::sync::Semaphore;

/// Permits when no server configured them (unit tests, tools).
const DEFAULT_STORE_PERMITS: usize = 16;

static STORE_PERMITS: OnceLock<Arc<Semaphore>> = OnceLock::new();
static SESSION_PERMITS: OnceLock<Arc<Semaphore>> = OnceLock::new();

/// Sizes the store permits to the connection pool. The first server of a process decides;
/// later ones (tests start several) share it.
pub fn configure(store_permits: usize) {
    let store_permits = store_permits.max(1);
    let _ = STORE_PERMITS.set(Arc::new(Semaphore::new(store_permits)));
    let _ = SESSION_PERMITS.set(Arc::new(Semaphore::new(session_share(store_permits))));
}

/// The part of the database permits that sessions coming and going may hold at once: half,
/// so the other half always serves dispatch, completions and log acknowledgements.
fn session_share(store_permits: usize) -> usize {
    (store_permits / 2).max(1)
}

fn permits() -> &'static Arc<Semaphore> {
    STORE_PERMITS.get_or_init(|| Arc::new(Semaphore::new(DEFAULT_STORE_PERMITS)))
}

fn session_permits() -> &'static Arc<Semaphore> {
    SESSION_PERMITS.get_or_init(|| Arc::new(Semaphore::new(session_share(DEFAULT_STORE_PERMITS))))
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

/// Runs a store call of a builder session coming or going (the login's key lookups, resume
/// planning, the grace period at a disconnect) within the sessions' share of the permits:
/// thousands of builders reconnecting at once queue here, and the rest of the permits stay
/// free for the work of the builders already connected.
pub async fn store_for_sessions<T, F>(f: F) -> Result<T, OffloadError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let _share = session_permits()
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| OffloadError(e.to_string()))?;
    store(f).await
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

    /// The permits are process-wide: the tests that fill them take turns.
    async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
        static TURN: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
        TURN.get_or_init(|| tokio::sync::Mutex::new(()))
            .lock()
            .await
    }

    #[actix_rt::test]
    async fn session_calls_leave_half_the_permits_to_the_rest() {
        let _turn = one_at_a_time().await;
        let sessions = session_permits().available_permits();
        let all = permits().available_permits();
        assert!(sessions <= all / 2 || sessions == 1, "{sessions} of {all}");
        // Session calls that hold their permits until the gate opens, two more than fit.
        let gate = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let running = Arc::new(AtomicUsize::new(0));
        let calls: Vec<_> = (0..sessions + 2)
            .map(|_| {
                let (gate, running) = (gate.clone(), running.clone());
                tokio::spawn(store_for_sessions(move || {
                    running.fetch_add(1, Ordering::SeqCst);
                    let (open, opened) = &*gate;
                    let mut open = open.lock().unwrap();
                    while !*open {
                        open = opened.wait(open).unwrap();
                    }
                }))
            })
            .collect();
        while running.load(Ordering::SeqCst) < sessions {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Every session permit is held and two session calls wait: other work still runs.
        let other = tokio::time::timeout(Duration::from_secs(10), store(|| 42)).await;
        assert_eq!(other.expect("not stuck behind the sessions").unwrap(), 42);
        assert_eq!(
            running.load(Ordering::SeqCst),
            sessions,
            "no more than the share"
        );
        let (open, opened) = &*gate;
        *open.lock().unwrap() = true;
        opened.notify_all();
        for call in calls {
            assert!(call.await.unwrap().is_ok());
        }
        assert_eq!(running.load(Ordering::SeqCst), sessions + 2);
    }

    #[actix_rt::test]
    async fn store_calls_never_exceed_the_permits() {
        let _turn = one_at_a_time().await;
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
