//! `BuilderSession`: one actor per builder WebSocket. The protocol's rules (phases, held
//! attempts, event order) live in [`machine`], without a socket; this file is the glue:
//! WebSocket frames in, the machine's steps carried out with the other actors, frames out.
//! It is the only module that touches actix-web-actors, so a move to actix-ws changes this
//! file alone.

mod machine;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;
use buildfleet_protocol::ssh_key::PublicKey;
use buildfleet_protocol::{
    AuthAccepted, AuthRejected, Cancel, CancelReason, Capabilities, ChallengeRequest,
    ChallengeResponse, ClientMessage, CompletionAck, CompletionResult, ErrorCode, ErrorFrame,
    HeldJob, Hello, JobEvent, JobRef, JobResponse, ResumeAction, ServerMessage, SessionSettings,
    WorkAck, PROTOCOL_VERSION,
};

use super::admission::{Admission, UnauthenticatedSlot};
use super::auth::{Auth, BeginAuth, Challenge, CompleteAuth, Rejection};
use super::log_sink::{AppendEvents, LogSink, RegisterAttempts, ReleaseAttempts};
use super::scheduler::{
    AckWork, CompleteJob, GrantCredits, Register, RenewLeases, ResumeJobs, Scheduler,
    SetCapabilities, Unregister,
};
use super::{CloseSession, Push, SessionHandle};
use crate::error::ApiError;
use crate::store::BuilderId;

static NEXT_SESSION_ID: AtomicU64 = AtomicU64::new(1);

/// Events buffered for the LogSink beyond which the batch goes out at once. A batch is
/// otherwise bounded by what one wakeup reads (actix handles up to 16 stream items per poll).
const MAX_EVENT_BATCH: usize = 256;

/// What a session needs from the rest of the backend.
#[derive(Clone)]
pub struct SessionContext {
    pub auth: Addr<Auth>,
    pub scheduler: Addr<Scheduler>,
    pub log_sink: Addr<LogSink>,
    pub backend_id: Arc<str>,
    pub settings: SessionSettings,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Hello to `auth_accepted` must fit in this, counted from the accept (not from the
    /// last frame: a client that only answers pings is still cut off).
    pub handshake_timeout: Duration,
    /// Caps on connections that have not authenticated yet.
    pub admission: Arc<Admission>,
}

struct Identity {
    builder: BuilderId,
    public_key: PublicKey,
}

pub struct BuilderSession {
    id: u64,
    peer: Option<IpAddr>,
    ctx: SessionContext,
    machine: machine::Machine,
    /// The challenge issued, until it is answered.
    challenge: Option<Box<Challenge>>,
    identity: Option<Identity>,
    last_heard: Instant,
    /// Held until authentication succeeds; counts against the unauthenticated caps.
    unauthenticated: Option<UnauthenticatedSlot>,
    /// A text message arriving in fragments (RFC 6455 continuation frames).
    fragments: Option<Vec<u8>>,
    /// `job_event`s read but not yet handed to the LogSink: they go out as one batch when
    /// the current wakeup is done (`FlushEvents`), and before anything else the session
    /// sends on, so every actor sees the session's messages in the order it read them.
    events: Vec<JobEvent>,
    flush_scheduled: bool,
}

/// Internal: hand the buffered events to the LogSink.
#[derive(Message)]
#[rtype(result = "()")]
struct FlushEvents;

impl BuilderSession {
    fn new(ctx: SessionContext, peer: Option<IpAddr>, slot: UnauthenticatedSlot) -> Self {
        BuilderSession {
            id: NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed),
            peer,
            ctx,
            machine: machine::Machine::default(),
            challenge: None,
            identity: None,
            last_heard: Instant::now(),
            unauthenticated: Some(slot),
            fragments: None,
            events: Vec::new(),
            flush_scheduled: false,
        }
    }

    /// Buffers an event of a held attempt for the next batch.
    fn queue_event(&mut self, event: JobEvent, ctx: &mut ws::WebsocketContext<Self>) {
        self.events.push(event);
        if self.events.len() >= MAX_EVENT_BATCH {
            self.flush_events();
        } else if !self.flush_scheduled {
            // Runs once the stream handler has handled what this wakeup read.
            self.flush_scheduled = true;
            ctx.notify(FlushEvents);
        }
    }

    /// Sends the buffered events to the LogSink as one batch.
    fn flush_events(&mut self) {
        if !self.events.is_empty() {
            let events = std::mem::replace(&mut self.events, Vec::with_capacity(16));
            self.ctx.log_sink.do_send(AppendEvents(events));
        }
    }

    /// Attempts this session reports on from now on: their acknowledgements come here.
    fn register_attempts(&mut self, jobs: Vec<JobRef>, ctx: &mut ws::WebsocketContext<Self>) {
        if jobs.is_empty() {
            return;
        }
        self.ctx.log_sink.do_send(RegisterAttempts {
            session: self.id,
            ack_to: ctx.address().recipient(),
            close: ctx.address().recipient(),
            attempts: jobs.into_iter().map(crate::wire::job_ref).collect(),
        });
    }

    /// This session no longer reports on the attempt.
    fn release(&mut self, job: JobRef) {
        if self.machine.release(job) {
            self.forget(job);
        }
    }

    /// Tells the LogSink this session no longer reports on `job` (the machine let it go).
    fn forget(&mut self, job: JobRef) {
        {
            // Events of it read before this point still go out first, as they always did.
            self.flush_events();
            self.ctx.log_sink.do_send(ReleaseAttempts {
                session: self.id,
                attempts: vec![crate::wire::job_ref(job)],
            });
        }
    }

    fn send(&self, ctx: &mut ws::WebsocketContext<Self>, message: &ServerMessage) {
        ctx.text(message.to_json());
    }

    /// The protocol's way out: an error frame, then a close.
    fn fail(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        code: ErrorCode,
        message: impl Into<String>,
    ) {
        if self.machine.is_closing() {
            return;
        }
        let message = message.into();
        tracing::info!(session = self.id, phase = self.machine.phase().as_str(), code = code.as_str(), %message, "closing builder session");
        if code != ErrorCode::SessionReplaced && code != ErrorCode::ShuttingDown {
            self.ctx
                .metrics
                .protocol_errors
                .fetch_add(1, Ordering::Relaxed);
        }
        self.send(
            ctx,
            &ServerMessage::Error(ErrorFrame {
                code,
                message: message.clone(),
            }),
        );
        self.close(ctx, &message);
    }

    fn reject(&mut self, ctx: &mut ws::WebsocketContext<Self>, rejection: Rejection) {
        tracing::info!(session = self.id, code = rejection.code.as_str(), reason = %rejection.reason, "authentication rejected");
        self.send(
            ctx,
            &ServerMessage::AuthRejected(AuthRejected {
                code: rejection.code,
                reason: rejection.reason.clone(),
                retry_after_ms: rejection.retry_after_ms,
            }),
        );
        self.close(ctx, &rejection.reason);
    }

    fn close(&mut self, ctx: &mut ws::WebsocketContext<Self>, reason: &str) {
        self.close_with(ctx, ws::CloseCode::Policy, reason);
    }

    fn close_with(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        code: ws::CloseCode,
        reason: &str,
    ) {
        self.machine.close();
        let description: String = reason.chars().take(100).collect();
        ctx.close(Some(ws::CloseReason {
            code,
            description: Some(description),
        }));
        ctx.stop();
    }

    /// Text that is not UTF-8: no frame can answer it, so the close says it (RFC 6455: 1007).
    fn invalid_utf8(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        tracing::info!(
            session = self.id,
            "closing builder session: text frame is not UTF-8"
        );
        self.ctx
            .metrics
            .protocol_errors
            .fetch_add(1, Ordering::Relaxed);
        self.close_with(ctx, ws::CloseCode::Invalid, "text frame is not valid UTF-8");
    }

    fn on_message(&mut self, message: ClientMessage, ctx: &mut ws::WebsocketContext<Self>) {
        if !matches!(message, ClientMessage::JobEvent(_)) {
            // Whatever this frame causes (a completion's log flush above all) comes after
            // the events read before it.
            self.flush_events();
        }
        match self.machine.on_frame(message) {
            machine::Step::BeginAuth(hello) => self.begin_auth(hello, ctx),
            machine::Step::CompleteAuth(response) => self.complete_auth(response, ctx),
            machine::Step::SetCapabilities(capabilities) => self.set_capabilities(capabilities),
            machine::Step::Resume(held) => self.resume(held, ctx),
            machine::Step::GrantCredits(credits) => {
                if let Some(builder) = self.builder() {
                    self.ctx.scheduler.do_send(GrantCredits {
                        builder,
                        session: self.id,
                        credits,
                    });
                }
            }
            machine::Step::AckWork(ack) => self.ack_work(ack, ctx),
            machine::Step::Event(event) => self.queue_event(event, ctx),
            machine::Step::Heartbeat { renew, foreign } => self.heartbeat(renew, foreign, ctx),
            machine::Step::Complete(response) => self.complete(response, ctx),
            machine::Step::RefuseStale(job) => {
                let message = format!(
                    "this session does not hold attempt {} of job {}",
                    job.attempt, job.job_id
                );
                self.send(
                    ctx,
                    &ServerMessage::CompletionAck(CompletionAck {
                        job_id: job.job_id,
                        attempt: job.attempt,
                        result: CompletionResult::Refused {
                            code: ErrorCode::StaleAttempt,
                            message,
                        },
                    }),
                );
            }
            machine::Step::Fail(code, message) => self.fail(ctx, code, message),
            machine::Step::Ignore => {}
        }
    }

    fn begin_auth(&mut self, hello: Hello, ctx: &mut ws::WebsocketContext<Self>) {
        let request = BeginAuth {
            hello,
            peer: self.peer,
        };
        ctx.wait(self.ctx.auth.send(request).into_actor(self).map(
            |reply, this, ctx| match reply {
                Ok(Ok(challenge)) => {
                    let ttl = challenge
                        .expires_at
                        .saturating_duration_since(Instant::now());
                    this.send(
                        ctx,
                        &ServerMessage::ChallengeRequest(ChallengeRequest {
                            challenge: challenge.challenge_hex.clone(),
                            backend_id: this.ctx.backend_id.to_string(),
                            expires_in_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
                        }),
                    );
                    this.challenge = Some(Box::new(challenge));
                    this.machine.challenge_sent();
                }
                Ok(Err(rejection)) => this.reject(ctx, rejection),
                Err(_) => this.fail(
                    ctx,
                    ErrorCode::Internal,
                    "authentication service unavailable",
                ),
            },
        ));
    }

    fn complete_auth(&mut self, response: ChallengeResponse, ctx: &mut ws::WebsocketContext<Self>) {
        let Some(challenge) = self.challenge.take() else {
            self.fail(ctx, ErrorCode::Internal, "no challenge was issued");
            return;
        };
        let public_key = challenge.public_key.clone();
        let request = CompleteAuth {
            challenge: *challenge,
            signature: response.signature,
            peer: self.peer,
        };
        ctx.wait(self.ctx.auth.send(request).into_actor(self).map(
            move |reply, this, ctx| match reply {
                Ok(Ok(builder)) => {
                    tracing::info!(session = this.id, builder = %builder.name, "builder authenticated");
                    this.unauthenticated = None;
                    this.identity = Some(Identity {
                        builder: builder.id,
                        public_key,
                    });
                    this.ctx.scheduler.do_send(Register {
                        builder: builder.id,
                        name: builder.name.clone(),
                        labels: builder.labels.clone(),
                        control: builder.control,
                        session: SessionHandle {
                            id: this.id,
                            push: ctx.address().recipient(),
                            close: ctx.address().recipient(),
                        },
                    });
                    this.send(
                        ctx,
                        &ServerMessage::AuthAccepted(AuthAccepted {
                            builder_id: builder.id.0,
                            settings: this.ctx.settings.clone(),
                        }),
                    );
                    this.machine.authenticated();
                }
                Ok(Err(rejection)) => this.reject(ctx, rejection),
                Err(_) => this.fail(
                    ctx,
                    ErrorCode::Internal,
                    "authentication service unavailable",
                ),
            },
        ));
    }

    fn set_capabilities(&mut self, capabilities: Capabilities) {
        if let Some(builder) = self.builder() {
            self.ctx.scheduler.do_send(SetCapabilities {
                builder,
                session: self.id,
                capabilities,
            });
        }
    }

    fn resume(&mut self, held: Vec<HeldJob>, ctx: &mut ws::WebsocketContext<Self>) {
        let Some(builder) = self.builder() else {
            return;
        };
        let request = ResumeJobs {
            builder,
            session: self.id,
            held,
        };
        // Nothing else is processed until resume is answered, so credits granted next
        // cannot race the restored state.
        ctx.wait(
            self.ctx
                .scheduler
                .send(request)
                .into_actor(self)
                .map(|reply, this, ctx| match reply {
                    Ok(Ok(result)) => {
                        let continued: Vec<(JobRef, u64)> = result
                            .jobs
                            .iter()
                            .filter_map(|decision| match decision.decision {
                                ResumeAction::Continue { next_seq } => {
                                    let job = JobRef {
                                        job_id: decision.job_id,
                                        attempt: decision.attempt,
                                    };
                                    Some((job, next_seq))
                                }
                                ResumeAction::Cancel { .. } => None,
                            })
                            .collect();
                        this.register_attempts(
                            continued.iter().map(|(job, _)| *job).collect(),
                            ctx,
                        );
                        this.machine.resumed(continued);
                        this.send(ctx, &ServerMessage::ResumeResult(result));
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "resume failed");
                        this.fail(
                            ctx,
                            ErrorCode::Internal,
                            "could not restore held jobs; reconnect",
                        );
                    }
                    Err(_) => this.fail(ctx, ErrorCode::Internal, "scheduler unavailable"),
                }),
        );
    }

    fn ack_work(&mut self, ack: WorkAck, ctx: &mut ws::WebsocketContext<Self>) {
        let job = JobRef {
            job_id: ack.job_id,
            attempt: ack.attempt,
        };
        if !self.machine.holds(&job) {
            // A reject: the machine let the attempt go.
            self.forget(job);
        }
        let Some(builder) = self.builder() else {
            return;
        };
        // Later frames wait until the decision is stored (see `AckWork`).
        let request = AckWork {
            builder,
            session: self.id,
            ack,
        };
        ctx.wait(
            self.ctx
                .scheduler
                .send(request)
                .into_actor(self)
                .map(|_, _, _| ()),
        );
    }

    fn heartbeat(
        &mut self,
        renew: Vec<JobRef>,
        foreign: Vec<JobRef>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let Some(builder) = self.builder() else {
            return;
        };
        // An attempt this session does not hold is not the builder's to run here.
        for job in foreign {
            self.send(
                ctx,
                &ServerMessage::Cancel(Cancel {
                    job_id: job.job_id,
                    attempt: job.attempt,
                    reason: CancelReason::Superseded,
                }),
            );
        }
        self.ctx.scheduler.do_send(RenewLeases {
            builder,
            session: self.id,
            active: renew,
        });
    }

    fn complete(&mut self, response: JobResponse, ctx: &mut ws::WebsocketContext<Self>) {
        let job = JobRef {
            job_id: response.job_id,
            attempt: response.attempt,
        };
        let (Some(builder), Some(public_key)) = (
            self.builder(),
            self.identity.as_ref().map(|i| i.public_key.clone()),
        ) else {
            return;
        };
        let request = CompleteJob {
            builder,
            public_key,
            response,
        };
        ctx.spawn(self.ctx.scheduler.send(request).into_actor(self).map(
            move |reply, this, ctx| {
                let result = reply.unwrap_or_else(|_| CompletionResult::Refused {
                    code: ErrorCode::Internal,
                    message: "scheduler unavailable; resend later".into(),
                });
                // After an internal refusal the builder resends: the session keeps holding.
                if !matches!(
                    &result,
                    CompletionResult::Refused {
                        code: ErrorCode::Internal,
                        ..
                    }
                ) {
                    this.release(job);
                }
                this.send(
                    ctx,
                    &ServerMessage::CompletionAck(CompletionAck {
                        job_id: job.job_id,
                        attempt: job.attempt,
                        result,
                    }),
                );
            },
        ));
    }

    fn builder(&self) -> Option<BuilderId> {
        self.identity.as_ref().map(|i| i.builder)
    }

    fn on_text(&mut self, text: &str, ctx: &mut ws::WebsocketContext<Self>) {
        match ClientMessage::decode(text, self.max_frame()) {
            Ok(message) => self.on_message(message, ctx),
            Err(e) => self.fail(ctx, e.code(), e.to_string()),
        }
    }

    fn max_frame(&self) -> usize {
        usize::try_from(self.ctx.settings.max_frame_bytes).unwrap_or(usize::MAX)
    }

    /// A fragmented message (RFC 6455 §5.4): pieces are joined up to the frame limit, then
    /// handled like one text frame. Binary messages are refused as unfragmented ones are.
    fn on_fragment(&mut self, item: actix_http::ws::Item, ctx: &mut ws::WebsocketContext<Self>) {
        let (piece, last) = match item {
            actix_http::ws::Item::FirstText(bytes) => {
                self.fragments = Some(Vec::with_capacity(bytes.len()));
                (bytes, false)
            }
            actix_http::ws::Item::FirstBinary(_) => {
                self.fail(
                    ctx,
                    ErrorCode::UnsupportedFrame,
                    "only text frames are accepted",
                );
                return;
            }
            actix_http::ws::Item::Continue(bytes) => (bytes, false),
            actix_http::ws::Item::Last(bytes) => (bytes, true),
        };
        let max = self.max_frame();
        let Some(buffer) = self.fragments.as_mut() else {
            // actix refuses a continuation without a first frame; stay safe regardless.
            self.fail(
                ctx,
                ErrorCode::MalformedFrame,
                "continuation frame without a first frame",
            );
            return;
        };
        if buffer.len() + piece.len() > max {
            self.fragments = None;
            self.fail(
                ctx,
                ErrorCode::FrameTooLarge,
                format!("fragmented message exceeds the limit of {max} bytes"),
            );
            return;
        }
        buffer.extend_from_slice(&piece);
        if !last {
            return;
        }
        let whole = self.fragments.take().unwrap_or_default();
        match String::from_utf8(whole) {
            Ok(text) => self.on_text(&text, ctx),
            Err(_) => self.invalid_utf8(ctx),
        }
    }
}

impl Actor for BuilderSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // A wall-clock deadline from the accept: pongs and stray frames do not extend it.
        ctx.run_later(self.ctx.handshake_timeout, |this, ctx| {
            if this.identity.is_none() {
                this.fail(
                    ctx,
                    ErrorCode::UnexpectedMessage,
                    "authentication did not complete in time",
                );
            }
        });
        let interval = Duration::from_millis(self.ctx.settings.heartbeat_interval_ms);
        let timeout = Duration::from_millis(self.ctx.settings.heartbeat_timeout_ms);
        ctx.run_interval(interval, move |this, ctx| {
            if this.last_heard.elapsed() > timeout {
                this.fail(
                    ctx,
                    ErrorCode::HeartbeatTimeout,
                    format!("nothing heard for {} ms", timeout.as_millis()),
                );
                return;
            }
            // A builder's frames (its heartbeats at least) already prove the connection alive;
            // ping only one that has been silent for a whole interval.
            if this.last_heard.elapsed() >= interval {
                ctx.ping(b"");
            }
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        // Events read before the end are stored as before, then the attempts are let go.
        self.flush_events();
        let held = self.machine.release_all();
        if !held.is_empty() {
            self.ctx.log_sink.do_send(ReleaseAttempts {
                session: self.id,
                attempts: held.into_iter().map(crate::wire::job_ref).collect(),
            });
        }
        if let Some(identity) = &self.identity {
            self.ctx.scheduler.do_send(Unregister {
                builder: identity.builder,
                session: self.id,
            });
        }
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for BuilderSession {
    fn handle(&mut self, item: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        if self.machine.is_closing() {
            return;
        }
        self.last_heard = Instant::now();
        match item {
            Ok(ws::Message::Text(text)) => self.on_text(&text, ctx),
            Ok(ws::Message::Ping(payload)) => ctx.pong(&payload),
            Ok(ws::Message::Pong(_)) => {}
            Ok(ws::Message::Close(_)) => {
                self.machine.close();
                ctx.stop();
            }
            Ok(ws::Message::Continuation(item)) => self.on_fragment(item, ctx),
            Ok(ws::Message::Binary(_)) => self.fail(
                ctx,
                ErrorCode::UnsupportedFrame,
                "only text frames are accepted",
            ),
            Ok(ws::Message::Nop) => {}
            // actix reports a text frame that is not UTF-8 as an I/O error naming UTF-8.
            Err(ws::ProtocolError::Io(e)) if e.to_string().contains("utf-8") => {
                self.invalid_utf8(ctx)
            }
            Err(ws::ProtocolError::Overflow) => self.fail(
                ctx,
                ErrorCode::FrameTooLarge,
                format!(
                    "frame exceeds the limit of {} bytes",
                    self.ctx.settings.max_frame_bytes
                ),
            ),
            Err(e) => self.fail(
                ctx,
                ErrorCode::MalformedFrame,
                format!("WebSocket protocol error: {e}"),
            ),
        }
    }
}

impl Handler<Push> for BuilderSession {
    type Result = ();

    fn handle(&mut self, msg: Push, ctx: &mut Self::Context) {
        if self.machine.is_closing() {
            return;
        }
        match &msg.0 {
            ServerMessage::Jobs(jobs) => {
                let assigned: Vec<JobRef> = jobs
                    .jobs
                    .iter()
                    .map(|job| JobRef {
                        job_id: job.job_id,
                        attempt: job.attempt,
                    })
                    .collect();
                self.machine.assigned(assigned.iter().copied());
                self.register_attempts(assigned, ctx);
            }
            ServerMessage::Cancel(cancel) if cancel.reason == CancelReason::Superseded => {
                self.release(JobRef {
                    job_id: cancel.job_id,
                    attempt: cancel.attempt,
                });
            }
            _ => {}
        }
        self.send(ctx, &msg.0);
    }
}

impl Handler<FlushEvents> for BuilderSession {
    type Result = ();

    fn handle(&mut self, _: FlushEvents, _: &mut Self::Context) {
        self.flush_scheduled = false;
        self.flush_events();
    }
}

impl Handler<CloseSession> for BuilderSession {
    type Result = ();

    fn handle(&mut self, msg: CloseSession, ctx: &mut Self::Context) {
        // A replaced session must not unregister its successor.
        if msg.code == ErrorCode::SessionReplaced {
            self.identity = None;
        }
        self.fail(ctx, msg.code, msg.message);
    }
}

/// `GET /api/v1/builders/connect`: upgrades to a builder session.
pub async fn connect(
    req: HttpRequest,
    stream: web::Payload,
    session: web::Data<SessionContext>,
) -> Result<HttpResponse, actix_web::Error> {
    let peer = req.peer_addr().map(|a| a.ip());
    // Refused before the upgrade: a flood of idle sockets must not exhaust descriptors.
    let slot = session.admission.admit(peer).map_err(|refusal| {
        tracing::warn!(peer = ?peer, %refusal, "unauthenticated connection refused");
        ApiError::Unavailable(refusal.to_string())
    })?;
    let max_frame = usize::try_from(session.settings.max_frame_bytes).unwrap_or(usize::MAX);
    let actor = BuilderSession::new(session.get_ref().clone(), peer, slot);
    ws::WsResponseBuilder::new(actor, &req, stream)
        .frame_size(max_frame)
        .protocols(&["buildfleet.v1"])
        .start()
}

/// The settings every session announces, from the configuration.
pub fn session_settings(config: &crate::config::ServerConfig) -> SessionSettings {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    SessionSettings {
        protocol_version: PROTOCOL_VERSION,
        heartbeat_interval_ms: ms(config.timings.heartbeat_interval),
        heartbeat_timeout_ms: ms(config.timings.heartbeat_timeout),
        max_frame_bytes: config.limits.max_frame_bytes as u64,
        max_log_line_bytes: config.limits.max_log_line_bytes as u64,
        max_log_bytes_per_job: config.limits.max_log_bytes_per_job,
        reconnect_grace_ms: ms(config.timings.reconnect_grace),
    }
}
