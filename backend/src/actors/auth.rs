//! The `Auth` actor: admits a builder by fingerprint, issues single-use challenges and checks
//! the SSHSIG answers. Failures are counted per peer address; repeated failures are slowed
//! down and then refused for a while.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use buildfleet_protocol::signing::{self, CHALLENGE_BYTES};
use buildfleet_protocol::ssh_key::PublicKey;
use buildfleet_protocol::{ErrorCode, Hello, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
use rand::RngCore;

use crate::metrics::Metrics;
use crate::store::{Builder, Store};

/// Failures from one address within this window count together.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Failures allowed before replies are delayed.
const FREE_FAILURES: u32 = 3;
/// Failures after which an address is refused until the window passes.
const MAX_FAILURES: u32 = 20;
const MAX_FAILURE_DELAY: Duration = Duration::from_secs(5);

/// Why authentication failed; sent to the builder as `auth_rejected`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: ErrorCode,
    pub reason: String,
}

impl Rejection {
    fn new(code: ErrorCode, reason: impl Into<String>) -> Self {
        Rejection {
            code,
            reason: reason.into(),
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

struct FailureCount {
    count: u32,
    since: Instant,
}

pub struct Auth {
    store: Store,
    backend_id: String,
    challenge_ttl: Duration,
    metrics: Arc<Metrics>,
    /// Challenges issued and not yet answered: answering removes one, so each is single-use.
    outstanding: HashMap<u64, Instant>,
    next_id: u64,
    failures: HashMap<IpAddr, FailureCount>,
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
            failures: HashMap::new(),
        }
    }

    fn failures_of(&mut self, peer: Option<IpAddr>) -> u32 {
        let Some(ip) = peer else { return 0 };
        match self.failures.get(&ip) {
            Some(f) if f.since.elapsed() < FAILURE_WINDOW => f.count,
            Some(_) => {
                self.failures.remove(&ip);
                0
            }
            None => 0,
        }
    }

    fn record_failure(&mut self, peer: Option<IpAddr>) {
        self.metrics
            .auth_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(ip) = peer {
            let entry = self.failures.entry(ip).or_insert(FailureCount {
                count: 0,
                since: Instant::now(),
            });
            if entry.since.elapsed() >= FAILURE_WINDOW {
                *entry = FailureCount {
                    count: 0,
                    since: Instant::now(),
                };
            }
            entry.count += 1;
        }
    }

    /// The delay before answering a peer with `failures` recent failures: none at first,
    /// then doubling from 250 ms up to a cap.
    fn penalty(failures: u32) -> Duration {
        if failures <= FREE_FAILURES {
            return Duration::ZERO;
        }
        let doublings = (failures - FREE_FAILURES - 1).min(10);
        (Duration::from_millis(250) * 2u32.pow(doublings)).min(MAX_FAILURE_DELAY)
    }

    fn reject(&mut self, peer: Option<IpAddr>, rejection: Rejection) -> Rejection {
        self.record_failure(peer);
        rejection
    }
}

impl Actor for Auth {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Forget expired challenges and old failure counts so neither map grows unbounded.
        ctx.run_interval(Duration::from_secs(10), |auth, _| {
            let now = Instant::now();
            auth.outstanding.retain(|_, expires| *expires > now);
            auth.failures
                .retain(|_, f| f.since.elapsed() < FAILURE_WINDOW);
        });
    }
}

impl Handler<BeginAuth> for Auth {
    type Result = ResponseActFuture<Self, Result<Challenge, Rejection>>;

    fn handle(&mut self, msg: BeginAuth, _: &mut Self::Context) -> Self::Result {
        let failures = self.failures_of(msg.peer);
        if failures >= MAX_FAILURES {
            let rejection = Rejection::new(
                ErrorCode::TooManyAttempts,
                "too many failed authentications from this address; try again later",
            );
            return Box::pin(fut::ready(Err(rejection)));
        }
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
        let store = self.store.clone();
        let fingerprint = msg.hello.fingerprint.to_string();
        let lookup = async move {
            tokio::task::spawn_blocking(move || store.builder_by_fingerprint(&fingerprint)).await
        };
        let delay = Self::penalty(failures);
        Box::pin(
            async move {
                tokio::time::sleep(delay).await;
                lookup.await
            }
            .into_actor(self)
            .map(move |looked_up, auth, _| {
                let builder = match looked_up {
                    Ok(Ok(Some(builder))) => builder,
                    Ok(Ok(None)) => {
                        return Err(auth.reject(
                            msg.peer,
                            Rejection::new(ErrorCode::UnknownBuilder, "this key is not admitted"),
                        ))
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "builder lookup failed");
                        return Err(Rejection::new(ErrorCode::Internal, "builder lookup failed"));
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "builder lookup task failed");
                        return Err(Rejection::new(ErrorCode::Internal, "builder lookup failed"));
                    }
                };
                if !builder.enabled {
                    return Err(auth.reject(
                        msg.peer,
                        Rejection::new(ErrorCode::BuilderDisabled, "this builder is disabled"),
                    ));
                }
                let public_key = signing::parse_public_key(&builder.public_key).map_err(|e| {
                    tracing::error!(builder = %builder.name, error = %e, "stored key does not parse");
                    Rejection::new(ErrorCode::Internal, "stored key does not parse")
                })?;
                let mut bytes = [0u8; CHALLENGE_BYTES];
                rand::rngs::OsRng.fill_bytes(&mut bytes);
                let id = auth.next_id;
                auth.next_id += 1;
                let expires_at = Instant::now() + auth.challenge_ttl;
                auth.outstanding.insert(id, expires_at);
                Ok(Challenge {
                    id,
                    builder,
                    public_key,
                    challenge_hex: buildfleet_protocol::hex::encode(&bytes),
                    expires_at,
                })
            }),
        )
    }
}

impl Handler<CompleteAuth> for Auth {
    type Result = ResponseActFuture<Self, Result<Builder, Rejection>>;

    fn handle(&mut self, msg: CompleteAuth, _: &mut Self::Context) -> Self::Result {
        let challenge = msg.challenge;
        let verdict = match self.outstanding.remove(&challenge.id) {
            None => Err(Rejection::new(
                ErrorCode::AuthFailed,
                "challenge already answered",
            )),
            Some(expires_at) if Instant::now() > expires_at => Err(Rejection::new(
                ErrorCode::ChallengeExpired,
                "the challenge expired; reconnect",
            )),
            Some(_) => signing::verify_challenge(
                &challenge.public_key,
                &self.backend_id,
                &challenge.challenge_hex,
                &msg.signature,
            )
            .map_err(|e| {
                Rejection::new(
                    ErrorCode::AuthFailed,
                    format!("challenge response rejected: {e}"),
                )
            }),
        };
        if let Err(rejection) = verdict {
            let rejection = self.reject(msg.peer, rejection);
            let delay = Self::penalty(self.failures_of(msg.peer));
            return Box::pin(
                async move {
                    tokio::time::sleep(delay).await;
                }
                .into_actor(self)
                .map(move |(), _, _| Err(rejection)),
            );
        }
        if let Some(ip) = msg.peer {
            self.failures.remove(&ip);
        }
        // Re-check after the round trip: an operator may have disabled the builder meanwhile.
        let store = self.store.clone();
        let id = challenge.builder.id;
        Box::pin(
            async move { tokio::task::spawn_blocking(move || store.builder_by_id(id)).await }
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
