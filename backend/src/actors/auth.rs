//! The `Auth` actor: admits a builder by fingerprint, issues single-use challenges and checks
//! the SSHSIG answers.
//!
//! Failures are throttled where they cannot hurt anyone else. A failed answer (bad signature,
//! expired or replayed challenge) counts against the admitted key that was tried; an unknown
//! fingerprint counts against the address it came from (an IPv6 address by its /64). A key
//! over its limit is refused, even with a correct signature, until its window closes; an
//! address over its limit is refused for unknown fingerprints only. Refusals are immediate
//! `too_many_attempts` with a retry-after, so failures with one key never stop another
//! admitted key, and a correct answer is never delayed by another key's failures.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use buildfleet_protocol::signing::{self, CHALLENGE_BYTES};
use buildfleet_protocol::ssh_key::PublicKey;
use buildfleet_protocol::{ErrorCode, Hello, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
use rand::RngCore;

use crate::metrics::Metrics;
use crate::store::{Builder, BuilderId, Store, StoreError};

/// Failures within this window, opened by the first failure, count together.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Failed answers per admitted key within the window; the key is then refused until the
/// window closes.
pub const MAX_KEY_FAILURES: u32 = 10;
/// Unknown fingerprints per address within the window; unknown fingerprints from the address
/// are then refused until the window closes. Higher than the per-key limit: a NAT may hide
/// several builders that are not admitted yet.
pub const MAX_UNKNOWN_PER_ADDRESS: u32 = 30;
/// Failed answers of a key answered without delay; later ones wait a little, doubling from
/// [`FIRST_PENALTY`] up to [`MAX_PENALTY`] (never more than a tenth of the challenge expiry).
/// Unknown fingerprints are answered at once: there is no secret to guess there, and their
/// limit is protection enough.
const FREE_FAILURES: u32 = 3;
const FIRST_PENALTY: Duration = Duration::from_millis(100);
const MAX_PENALTY: Duration = Duration::from_millis(500);
/// Keys (and addresses) tracked at once: a flood of distinct ones cannot grow the tables.
const MAX_TRACKED: usize = 4096;

/// Why authentication failed; sent to the builder as `auth_rejected`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: ErrorCode,
    pub reason: String,
    /// Set with `too_many_attempts`: how long the builder must wait before trying again.
    pub retry_after_ms: Option<u64>,
}

impl Rejection {
    fn new(code: ErrorCode, reason: impl Into<String>) -> Self {
        Rejection {
            code,
            reason: reason.into(),
            retry_after_ms: None,
        }
    }

    fn throttled(reason: &str, retry_after: Duration) -> Self {
        // Rounded up, so a builder that waits exactly this long finds the window closed.
        let ms = retry_after.as_nanos().div_ceil(1_000_000);
        Rejection {
            code: ErrorCode::TooManyAttempts,
            reason: reason.to_owned(),
            retry_after_ms: Some(u64::try_from(ms).unwrap_or(u64::MAX)),
        }
    }
}

/// An issued challenge; the session keeps it and hands it back with the answer.
#[derive(Debug, Clone)]
pub struct Challenge {
    pub id: u64,
    pub builder: Builder,
    pub public_key: PublicKey,
    pub challenge_hex: String,
    pub expires_at: Instant,
}

#[derive(Message)]
#[rtype(result = "Result<Challenge, Rejection>")]
pub struct BeginAuth {
    pub hello: Hello,
    pub peer: Option<IpAddr>,
}

#[derive(Message)]
#[rtype(result = "Result<Builder, Rejection>")]
pub struct CompleteAuth {
    pub challenge: Challenge,
    pub signature: String,
    pub peer: Option<IpAddr>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    count: u32,
    opened: Instant,
}

impl Window {
    fn is_open(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.opened) < FAILURE_WINDOW
    }
}

/// Failure counts per key in fixed windows, with a limit and a bounded size.
struct FailureTable<K> {
    windows: HashMap<K, Window>,
    limit: u32,
    capacity: usize,
}

impl<K: Hash + Eq + Clone> FailureTable<K> {
    fn new(limit: u32, capacity: usize) -> Self {
        FailureTable {
            windows: HashMap::new(),
            limit,
            capacity,
        }
    }

    /// How long `key` stays refused, if it reached the limit in its open window.
    fn refused_for(&self, key: &K, now: Instant) -> Option<Duration> {
        let window = self.windows.get(key)?;
        if window.count < self.limit || !window.is_open(now) {
            return None;
        }
        Some((window.opened + FAILURE_WINDOW).saturating_duration_since(now))
    }

    /// Counts a failure of `key`; returns its failures in the open window.
    fn record(&mut self, key: K, now: Instant) -> u32 {
        if !self.windows.contains_key(&key) && self.windows.len() >= self.capacity {
            self.make_room(now);
        }
        let window = self.windows.entry(key).or_insert(Window {
            count: 0,
            opened: now,
        });
        if !window.is_open(now) {
            *window = Window {
                count: 0,
                opened: now,
            };
        }
        window.count = window.count.saturating_add(1);
        window.count
    }

    fn clear(&mut self, key: &K) {
        self.windows.remove(key);
    }

    fn forget_closed(&mut self, now: Instant) {
        self.windows.retain(|_, window| window.is_open(now));
    }

    /// Frees one slot: closed windows go first, then the oldest window under the limit (so a
    /// flood of new keys does not lift a refusal), and only if every key is refused, the
    /// oldest of all.
    fn make_room(&mut self, now: Instant) {
        self.forget_closed(now);
        if self.windows.len() < self.capacity {
            return;
        }
        let oldest = |refused: bool| {
            self.windows
                .iter()
                .filter(|(_, w)| refused || w.count < self.limit)
                .min_by_key(|(_, w)| w.opened)
                .map(|(key, _)| key.clone())
        };
        if let Some(key) = oldest(false).or_else(|| oldest(true)) {
            self.windows.remove(&key);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.windows.len()
    }
}

/// The unit an address is throttled by: an IPv4 address, or the /64 of an IPv6 address
/// (one host commonly holds a whole /64).
fn address_bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The delay before answering the `failures`-th failure of a window: none at first, then
/// doubling up to `max`.
fn penalty(failures: u32, max: Duration) -> Duration {
    if failures <= FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (failures - FREE_FAILURES - 1).min(16);
    FIRST_PENALTY.saturating_mul(1 << doublings).min(max)
}

/// `value` after `delay`, as a future of the actor (which meanwhile handles other requests).
fn after<T: 'static>(delay: Duration, value: T) -> impl ActorFuture<Auth, Output = T> {
    fut::wrap_future(async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        value
    })
}

pub struct Auth {
    store: Store,
    backend_id: String,
    challenge_ttl: Duration,
    metrics: Arc<Metrics>,
    /// Challenges issued and not yet answered: answering removes one, so each is single-use.
    outstanding: HashMap<u64, Instant>,
    next_id: u64,
    /// Failed answers per admitted key (fingerprint).
    key_failures: FailureTable<String>,
    /// Unknown fingerprints per address bucket.
    unknown_failures: FailureTable<IpAddr>,
    max_penalty: Duration,
}

impl Auth {
    pub fn new(
        store: Store,
        backend_id: String,
        challenge_ttl: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Auth {
            store,
            backend_id,
            challenge_ttl,
            metrics,
            outstanding: HashMap::new(),
            next_id: 1,
            key_failures: FailureTable::new(MAX_KEY_FAILURES, MAX_TRACKED),
            unknown_failures: FailureTable::new(MAX_UNKNOWN_PER_ADDRESS, MAX_TRACKED),
            // Well inside the challenge expiry, so a delayed answer always arrives in time.
            max_penalty: MAX_PENALTY.min(challenge_ttl / 10),
        }
    }

    fn count_failure(&self) {
        self.metrics
            .auth_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn key_refusal(&self, fingerprint: &str, now: Instant) -> Option<Rejection> {
        self.key_failures
            .refused_for(&fingerprint.to_owned(), now)
            .map(|wait| {
                Rejection::throttled(
                    "too many failed authentications with this key; try again later",
                    wait,
                )
            })
    }

    /// The answer to an unknown fingerprint from `peer`.
    fn unknown_builder(&mut self, peer: Option<IpAddr>) -> Rejection {
        let now = Instant::now();
        let bucket = peer.map(address_bucket);
        if let Some(wait) = bucket.and_then(|b| self.unknown_failures.refused_for(&b, now)) {
            return Rejection::throttled(
                "too many unknown keys from this address; try again later",
                wait,
            );
        }
        self.count_failure();
        if let Some(bucket) = bucket {
            self.unknown_failures.record(bucket, now);
        }
        Rejection::new(ErrorCode::UnknownBuilder, "this key is not admitted")
    }

    /// Turns a looked-up builder into a challenge, or says why not.
    fn issue_challenge(
        &mut self,
        looked_up: Result<Result<Option<Builder>, StoreError>, crate::offload::OffloadError>,
        peer: Option<IpAddr>,
    ) -> Result<Challenge, Rejection> {
        let builder = match looked_up {
            Ok(Ok(Some(builder))) => builder,
            Ok(Ok(None)) => return Err(self.unknown_builder(peer)),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "builder lookup failed");
                return Err(Rejection::new(ErrorCode::Internal, "builder lookup failed"));
            }
            Err(e) => {
                tracing::error!(error = %e, "builder lookup task failed");
                return Err(Rejection::new(ErrorCode::Internal, "builder lookup failed"));
            }
        };
        // Not throttled: the answer is definitive and guesses nothing.
        if !builder.enabled {
            self.count_failure();
            return Err(Rejection::new(
                ErrorCode::BuilderDisabled,
                "this builder is disabled",
            ));
        }
        let public_key = signing::parse_public_key(&builder.public_key).map_err(|e| {
            tracing::error!(builder = %builder.name, error = %e, "stored key does not parse");
            Rejection::new(ErrorCode::Internal, "stored key does not parse")
        })?;
        let mut bytes = [0u8; CHALLENGE_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let id = self.next_id;
        self.next_id += 1;
        let expires_at = Instant::now() + self.challenge_ttl;
        self.outstanding.insert(id, expires_at);
        Ok(Challenge {
            id,
            builder,
            public_key,
            challenge_hex: buildfleet_protocol::hex::encode(&bytes),
            expires_at,
        })
    }
}

impl Actor for Auth {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Forget expired challenges and closed windows; the tables are also capped.
        ctx.run_interval(Duration::from_secs(10), |auth, _| {
            let now = Instant::now();
            auth.outstanding.retain(|_, expires| *expires > now);
            auth.key_failures.forget_closed(now);
            auth.unknown_failures.forget_closed(now);
        });
    }
}

impl Handler<BeginAuth> for Auth {
    type Result = ResponseActFuture<Self, Result<Challenge, Rejection>>;

    fn handle(&mut self, msg: BeginAuth, _: &mut Self::Context) -> Self::Result {
        let version = msg.hello.protocol_version;
        if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
            let rejection = Rejection::new(
                ErrorCode::UnsupportedVersion,
                format!(
                    "protocol version {version} is not supported; this backend speaks {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}"
                ),
            );
            return Box::pin(fut::ready(Err(rejection)));
        }
        let fingerprint = msg.hello.fingerprint.to_string();
        // Only admitted keys ever have failed answers, so this needs no lookup.
        if let Some(rejection) = self.key_refusal(&fingerprint, Instant::now()) {
            return Box::pin(fut::ready(Err(rejection)));
        }
        let store = self.store.clone();
        let peer = msg.peer;
        Box::pin(
            async move {
                crate::offload::store_for_sessions(move || {
                    store.builder_to_authenticate(&fingerprint)
                })
                .await
            }
            .into_actor(self)
            .map(move |looked_up, auth, _| auth.issue_challenge(looked_up, peer)),
        )
    }
}

impl Handler<CompleteAuth> for Auth {
    type Result = ResponseActFuture<Self, Result<Builder, Rejection>>;

    fn handle(&mut self, msg: CompleteAuth, _: &mut Self::Context) -> Self::Result {
        let challenge = msg.challenge;
        let fingerprint = challenge.builder.fingerprint.clone();
        let now = Instant::now();
        let outstanding = self.outstanding.remove(&challenge.id);
        // A challenge issued before the key reached its limit is refused like a new one.
        if let Some(rejection) = self.key_refusal(&fingerprint, now) {
            return Box::pin(fut::ready(Err(rejection)));
        }
        let answerable = match outstanding {
            None => Err(Rejection::new(
                ErrorCode::AuthFailed,
                "challenge already answered",
            )),
            Some(expires_at) if now > expires_at => Err(Rejection::new(
                ErrorCode::ChallengeExpired,
                "the challenge expired; reconnect",
            )),
            Some(_) => Ok(()),
        };
        let peer = msg.peer;
        if let Err(rejection) = answerable {
            return self.failed_answer(fingerprint, peer, rejection);
        }
        // The signature check is CPU work (RSA keys above all): off this thread, which the
        // Scheduler and the LogSink share, so a reconnect storm cannot stall dispatch.
        let (key, backend_id) = (challenge.public_key.clone(), self.backend_id.clone());
        let (challenge_hex, signature) = (challenge.challenge_hex.clone(), msg.signature);
        let verify = crate::offload::cpu(move || {
            signing::verify_challenge(&key, &backend_id, &challenge_hex, &signature)
        });
        let id = challenge.builder.id;
        Box::pin(verify.into_actor(self).then(
            move |verified, auth, _| -> ResponseActFuture<Self, Result<Builder, Rejection>> {
                let verified = match verified {
                    Ok(verified) => verified.map_err(|e| {
                        Rejection::new(
                            ErrorCode::AuthFailed,
                            format!("challenge response rejected: {e}"),
                        )
                    }),
                    Err(e) => {
                        tracing::error!(error = %e, "verifying a challenge answer failed");
                        return Box::pin(fut::ready(Err(Rejection::new(
                            ErrorCode::Internal,
                            "could not verify the answer",
                        ))));
                    }
                };
                if let Err(rejection) = verified {
                    return auth.failed_answer(fingerprint, peer, rejection);
                }
                auth.key_failures.clear(&fingerprint);
                auth.recheck_builder(id)
            },
        ))
    }
}

impl Auth {
    /// Counts a failed answer against its key and replies after the key's penalty delay.
    fn failed_answer(
        &mut self,
        fingerprint: String,
        peer: Option<IpAddr>,
        rejection: Rejection,
    ) -> ResponseActFuture<Self, Result<Builder, Rejection>> {
        self.count_failure();
        let failures = self
            .key_failures
            .record(fingerprint.clone(), Instant::now());
        let code = rejection.code.as_str();
        tracing::info!(%fingerprint, ?peer, failures, code, "failed challenge answer");
        if failures == MAX_KEY_FAILURES {
            tracing::warn!(%fingerprint, ?peer, "key throttled for the rest of its window");
        }
        Box::pin(after(penalty(failures, self.max_penalty), Err(rejection)))
    }

    /// Re-checks the builder after the round trip: an operator may have disabled it meanwhile.
    fn recheck_builder(
        &self,
        id: BuilderId,
    ) -> ResponseActFuture<Self, Result<Builder, Rejection>> {
        let store = self.store.clone();
        Box::pin(
            async move { crate::offload::store_for_sessions(move || store.builder_by_id(id)).await }
                .into_actor(self)
                .map(|looked_up, _, _| match looked_up {
                    Ok(Ok(Some(builder))) if builder.enabled => Ok(builder),
                    Ok(Ok(Some(_))) => Err(Rejection::new(
                        ErrorCode::BuilderDisabled,
                        "this builder is disabled",
                    )),
                    Ok(Ok(None)) => Err(Rejection::new(
                        ErrorCode::UnknownBuilder,
                        "this key is not admitted",
                    )),
                    _ => Err(Rejection::new(ErrorCode::Internal, "builder lookup failed")),
                }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_refused_at_its_limit_until_its_window_closes() {
        let mut table = FailureTable::new(3, 16);
        let t0 = Instant::now();
        for n in 1..=2 {
            assert_eq!(table.record("a".to_owned(), t0), n);
            assert_eq!(table.refused_for(&"a".to_owned(), t0), None);
        }
        assert_eq!(
            table.record("a".to_owned(), t0 + Duration::from_secs(10)),
            3
        );
        let at = t0 + Duration::from_secs(15);
        assert_eq!(
            table.refused_for(&"a".to_owned(), at),
            Some(FAILURE_WINDOW - Duration::from_secs(15)),
            "refused until the window opened by the first failure closes"
        );
        assert_eq!(table.refused_for(&"b".to_owned(), at), None);
        let closed = t0 + FAILURE_WINDOW;
        assert_eq!(table.refused_for(&"a".to_owned(), closed), None);
        assert_eq!(table.record("a".to_owned(), closed), 1, "a new window");
    }

    #[test]
    fn clearing_a_key_forgets_its_failures() {
        let mut table = FailureTable::new(1, 16);
        let now = Instant::now();
        table.record("a".to_owned(), now);
        assert!(table.refused_for(&"a".to_owned(), now).is_some());
        table.clear(&"a".to_owned());
        assert_eq!(table.refused_for(&"a".to_owned(), now), None);
    }

    #[test]
    fn the_table_stays_bounded_and_keeps_refusals_over_new_keys() {
        let mut table = FailureTable::new(2, 8);
        let t0 = Instant::now();
        // One refused key, then a flood of distinct keys with one failure each.
        table.record(u32::MAX, t0);
        table.record(u32::MAX, t0);
        for key in 0..10_000u32 {
            table.record(key, t0 + Duration::from_millis(u64::from(key % 1000)));
            assert!(table.len() <= 8);
        }
        assert!(
            table
                .refused_for(&u32::MAX, t0 + Duration::from_secs(1))
                .is_some(),
            "the refused key outlived the flood"
        );
        // Closed windows make room before anything live is dropped.
        let later = t0 + FAILURE_WINDOW + Duration::from_secs(5);
        table.record(20_000, later);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn ipv6_addresses_are_throttled_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_bucket(a), address_bucket(b));
        assert_ne!(address_bucket(a), address_bucket(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(
            address_bucket(mapped),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
        let v4: IpAddr = "192.0.2.8".parse().unwrap();
        assert_eq!(address_bucket(v4), v4);
    }

    #[test]
    fn failure_answers_are_delayed_a_little_and_never_past_the_cap() {
        let cap = MAX_PENALTY.min(Duration::from_secs(5) / 10);
        let delays: Vec<_> = (1..=8).map(|n| penalty(n, cap).as_millis()).collect();
        assert_eq!(delays, [0, 0, 0, 100, 200, 400, 500, 500]);
        assert_eq!(penalty(u32::MAX, cap), cap);
        // A short challenge expiry shortens the cap with it.
        assert_eq!(penalty(9, Duration::from_millis(150)).as_millis(), 150);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_milliseconds() {
        let rejection = Rejection::throttled("later", Duration::from_micros(1_500));
        assert_eq!(rejection.code, ErrorCode::TooManyAttempts);
        assert_eq!(rejection.retry_after_ms, Some(2));
    }
}
