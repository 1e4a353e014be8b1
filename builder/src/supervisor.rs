//! The supervisor actor: owns every job this builder holds, one child task per job, and
//! speaks the work half of the protocol (resume, credits, assignments, events, completion)
//! over whichever session the connection actor currently has.
//!
//! Jobs outlive sessions: a lost connection only pauses the sending of events and
//! responses, which stay buffered until a new session resumes them.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use buildfleet_protocol::{
    CancelReason, ClientMessage, CompletionResult, ControlCommand, ErrorCode, Heartbeat, HeldJob,
    JobAssignment, JobRef, JobRequest, JobResponse, Resume, ResumeAction, ResumeResult,
    ServerMessage, SessionSettings, WorkAck, WorkDecision,
};
use tokio::sync::oneshot;

use crate::event_buffer::EventBuffer;
use crate::job::{run_job, JobEnv, JobRun};
use crate::process::{StopHandle, StopReason, StopSignal};
use crate::BuilderError;

/// How long a cancelling shutdown waits for the backend to acknowledge the cancelled jobs.
const CANCEL_ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// After `completion_ack{refused, internal}` the response goes again after this, doubling up
/// to the cap: the backend could not record it (its log or database failed) and wants it.
const RESEND_FIRST: Duration = Duration::from_millis(500);
const RESEND_MAX: Duration = Duration::from_secs(10);

/// A frame for the connection to send, if `session` is still its current session.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Outgoing {
    pub session: u64,
    pub message: ClientMessage,
}

/// The connection authenticated; `capabilities` were already sent.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionOpened {
    pub session: u64,
    pub backend_id: String,
    pub settings: SessionSettings,
    pub outbox: Recipient<Outgoing>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionClosed {
    pub session: u64,
}

/// A message of the work phase, from an authenticated session.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FromServer {
    pub session: u64,
    pub message: ServerMessage,
}

/// The connection cannot go on (e.g. the backend does not speak our protocol version).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Fatal(pub BuilderError);

#[derive(Message)]
#[rtype(result = "()")]
struct EventsReady(JobRef);

#[derive(Message)]
#[rtype(result = "()")]
struct JobFinished {
    job: JobRef,
    response: JobResponse,
}

/// How to stop the builder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub enum Shutdown {
    /// Take no new jobs, let running ones finish and be acknowledged, then exit.
    Drain,
    /// Cancel running jobs, report them cancelled, then exit.
    Cancel,
}

/// Asks the connection to close for good.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseConnection;

struct Session {
    id: u64,
    backend_id: String,
    settings: SessionSettings,
    outbox: Recipient<Outgoing>,
    /// `resume_result` arrived: events and responses may flow, credits may be granted.
    resumed: bool,
    /// Credits granted in this session and not yet used by an assignment.
    outstanding_credits: u32,
    heartbeat: Option<SpawnHandle>,
}

struct HeldJobState {
    events: Arc<EventBuffer>,
    stop: StopHandle,
    response: Option<JobResponse>,
    /// Highest seq sent in the current session.
    sent_upto: u64,
    /// The backend no longer holds this job: stop it and never report it.
    forget: bool,
    /// Wait before the next resend of a response the backend refused as `internal`.
    resend_delay: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intake {
    Open,
    /// Paused or drained by the backend's `control`.
    PausedByBackend,
    /// The builder is shutting down.
    ShuttingDown(Shutdown),
}

pub struct Supervisor {
    env: Rc<JobEnv>,
    max_concurrent_jobs: u32,
    session: Option<Session>,
    jobs: BTreeMap<JobRef, HeldJobState>,
    intake: Intake,
    connection: Option<Recipient<CloseConnection>>,
    done: Option<oneshot::Sender<Result<(), BuilderError>>>,
}

impl Supervisor {
    pub fn new(
        env: Rc<JobEnv>,
        max_concurrent_jobs: u32,
        done: oneshot::Sender<Result<(), BuilderError>>,
    ) -> Self {
        Supervisor {
            env,
            max_concurrent_jobs,
            session: None,
            jobs: BTreeMap::new(),
            intake: Intake::Open,
            connection: None,
            done: Some(done),
        }
    }

    pub fn set_connection(&mut self, connection: Recipient<CloseConnection>) {
        self.connection = Some(connection);
    }

    fn send(&self, message: ClientMessage) {
        if let Some(session) = &self.session {
            session.outbox.do_send(Outgoing {
                session: session.id,
                message,
            });
        }
    }

    fn running_jobs(&self) -> u32 {
        let running = self.jobs.values().filter(|j| j.response.is_none()).count();
        u32::try_from(running).unwrap_or(u32::MAX)
    }

    /// Grants credits for every free slot not already covered by outstanding credits.
    fn grant_credits(&mut self) {
        if self.intake != Intake::Open {
            return;
        }
        let running = self.running_jobs();
        let max = self.max_concurrent_jobs;
        let Some(session) = self.session.as_mut().filter(|s| s.resumed) else {
            return;
        };
        let free = max
            .saturating_sub(running)
            .saturating_sub(session.outstanding_credits);
        if free > 0 {
            session.outstanding_credits += free;
            session.outbox.do_send(Outgoing {
                session: session.id,
                message: ClientMessage::JobRequest(JobRequest { credits: free }),
            });
        }
    }

    /// Sends a finished job's response again (it was refused as `internal`). After a
    /// reconnect the resume sends it anyway; this covers a session that stays up.
    fn resend_response(&mut self, job: JobRef) {
        let Some(session) = self.session.as_ref().filter(|s| s.resumed) else {
            return;
        };
        if let Some(response) = self
            .jobs
            .get(&job)
            .filter(|s| !s.forget)
            .and_then(|s| s.response.clone())
        {
            session.outbox.do_send(Outgoing {
                session: session.id,
                message: ClientMessage::JobResponse(response),
            });
        }
    }

    /// Sends the job's unsent events, then its response if it has one.
    fn flush(&mut self, job: JobRef) {
        let Some(session) = self.session.as_ref().filter(|s| s.resumed) else {
            return;
        };
        let Some(state) = self.jobs.get_mut(&job) else {
            return;
        };
        if state.forget {
            return;
        }
        for event in state.events.events_after(state.sent_upto) {
            state.sent_upto = event.seq;
            session.outbox.do_send(Outgoing {
                session: session.id,
                message: ClientMessage::JobEvent(event),
            });
        }
        if let Some(response) = &state.response {
            session.outbox.do_send(Outgoing {
                session: session.id,
                message: ClientMessage::JobResponse(response.clone()),
            });
        }
    }

    fn accept(&mut self, assignment: JobAssignment, ctx: &mut Context<Self>) {
        let job = JobRef {
            job_id: assignment.job_id,
            attempt: assignment.attempt,
        };
        let backend_id = self
            .session
            .as_ref()
            .map(|s| s.backend_id.clone())
            .unwrap_or_default();
        let addr = ctx.address();
        let events = Arc::new(EventBuffer::new(
            job,
            self.env.limits.event_buffer_bytes,
            move |job| {
                addr.do_send(EventsReady(job));
            },
        ));
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(assignment.timeout_secs.max(1));
        let (stop, signal) = StopSignal::new(Some(deadline));
        self.jobs.insert(
            job,
            HeldJobState {
                events: events.clone(),
                stop,
                response: None,
                sent_upto: 0,
                forget: false,
                resend_delay: RESEND_FIRST,
            },
        );
        self.send(ClientMessage::WorkAck(WorkAck {
            job_id: job.job_id,
            attempt: job.attempt,
            decision: WorkDecision::Accept,
        }));
        tracing::info!(job = %job.job_id, attempt = %job.attempt, recipe = %assignment.recipe, "job accepted");
        let env = self.env.clone();
        let addr = ctx.address();
        let run = JobRun {
            assignment,
            backend_id,
            events,
            stop: signal,
        };
        actix::spawn(async move {
            let finished = run_job(&env, run).await;
            // Report first: removing the job directory can take milliseconds (more on a
            // busy disk) and nobody waits for it.
            addr.do_send(JobFinished {
                job,
                response: finished.response,
            });
            finished.cleanup.run().await;
        });
    }

    fn on_assignments(&mut self, assignments: Vec<JobAssignment>, ctx: &mut Context<Self>) {
        for assignment in assignments {
            let job = JobRef {
                job_id: assignment.job_id,
                attempt: assignment.attempt,
            };
            if let Some(session) = self.session.as_mut() {
                session.outstanding_credits = session.outstanding_credits.saturating_sub(1);
            }
            if self.jobs.contains_key(&job) {
                // A repeated assignment (e.g. after a lost work_ack): same answer, no second run.
                self.send(ClientMessage::WorkAck(WorkAck {
                    job_id: job.job_id,
                    attempt: job.attempt,
                    decision: WorkDecision::Accept,
                }));
                continue;
            }
            let reason = match self.intake {
                Intake::Open if self.running_jobs() < self.max_concurrent_jobs => None,
                Intake::Open => Some("no free slot"),
                Intake::PausedByBackend => Some("paused"),
                Intake::ShuttingDown(_) => Some("the builder is shutting down"),
            };
            match reason {
                None => self.accept(assignment, ctx),
                Some(reason) => {
                    tracing::info!(job = %job.job_id, reason, "job rejected");
                    self.send(ClientMessage::WorkAck(WorkAck {
                        job_id: job.job_id,
                        attempt: job.attempt,
                        decision: WorkDecision::Reject {
                            reason: reason.to_owned(),
                        },
                    }));
                }
            }
        }
    }

    fn on_resume_result(&mut self, result: ResumeResult) {
        for decision in result.jobs {
            let job = JobRef {
                job_id: decision.job_id,
                attempt: decision.attempt,
            };
            let Some(state) = self.jobs.get_mut(&job) else {
                continue;
            };
            match decision.decision {
                ResumeAction::Continue { next_seq } => {
                    let stored = next_seq.saturating_sub(1);
                    state.events.ack(stored);
                    state.sent_upto = stored;
                }
                ResumeAction::Cancel { reason } => {
                    tracing::warn!(job = %job.job_id, attempt = %job.attempt, %reason, "the backend dropped this job; stopping it");
                    state.forget = true;
                    state.stop.stop(StopReason::Cancelled);
                }
            }
        }
        self.jobs
            .retain(|_, state| !(state.forget && state.response.is_some()));
        if let Some(session) = self.session.as_mut() {
            session.resumed = true;
        }
        let held: Vec<JobRef> = self.jobs.keys().copied().collect();
        for job in held {
            self.flush(job);
        }
        self.grant_credits();
    }

    fn on_server_message(&mut self, message: ServerMessage, ctx: &mut Context<Self>) {
        match message {
            ServerMessage::ResumeResult(result) => self.on_resume_result(result),
            ServerMessage::Jobs(jobs) => self.on_assignments(jobs.jobs, ctx),
            ServerMessage::Cancel(cancel) => {
                let job = JobRef {
                    job_id: cancel.job_id,
                    attempt: cancel.attempt,
                };
                if let Some(state) = self.jobs.get(&job) {
                    tracing::info!(job = %job.job_id, reason = ?cancel.reason, "cancel requested");
                    state.stop.stop(match cancel.reason {
                        CancelReason::TimedOut => StopReason::TimedOut,
                        CancelReason::Requested | CancelReason::Superseded => StopReason::Cancelled,
                    });
                }
            }
            ServerMessage::EventAck(ack) => {
                let job = JobRef {
                    job_id: ack.job_id,
                    attempt: ack.attempt,
                };
                if let Some(state) = self.jobs.get(&job) {
                    state.events.ack(ack.acked_seq);
                }
            }
            ServerMessage::CompletionAck(ack) => {
                let job = JobRef {
                    job_id: ack.job_id,
                    attempt: ack.attempt,
                };
                if let CompletionResult::Refused {
                    code: ErrorCode::Internal,
                    message,
                } = &ack.result
                {
                    // Not a verdict on the build: keep it and send the response again.
                    if let Some(state) = self.jobs.get_mut(&job) {
                        let delay = state.resend_delay;
                        state.resend_delay = (delay * 2).min(RESEND_MAX);
                        tracing::warn!(job = %job.job_id, %message, ?delay, "the backend could not record the job's result; resending");
                        ctx.run_later(delay, move |act, _| act.resend_response(job));
                    }
                    return;
                }
                if let CompletionResult::Refused { code, message } = &ack.result {
                    tracing::warn!(job = %job.job_id, code = code.as_str(), %message, "the backend refused the job's result");
                } else {
                    tracing::info!(job = %job.job_id, attempt = %job.attempt, "job result accepted");
                }
                if self.jobs.get(&job).is_some_and(|s| s.response.is_some()) {
                    self.jobs.remove(&job);
                }
                self.check_shutdown(ctx);
            }
            ServerMessage::Control(control) => {
                match control.command {
                    ControlCommand::Drain | ControlCommand::Pause => {
                        if self.intake == Intake::Open {
                            self.intake = Intake::PausedByBackend;
                        }
                    }
                    ControlCommand::Resume => {
                        if self.intake == Intake::PausedByBackend {
                            self.intake = Intake::Open;
                        }
                        self.grant_credits();
                    }
                }
                tracing::info!(command = ?control.command, "control from the backend");
            }
            // Handshake frames and errors are the connection's business.
            other => tracing::debug!(message = other.type_name(), "ignored by the supervisor"),
        }
    }

    fn start_heartbeat(&mut self, ctx: &mut Context<Self>) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let interval = Duration::from_millis(session.settings.heartbeat_interval_ms.max(100));
        let handle = ctx.run_interval(interval, |act, _| {
            let active_jobs = act
                .jobs
                .iter()
                .filter(|(_, s)| !s.forget)
                .map(|(job, _)| *job)
                .collect();
            act.send(ClientMessage::Heartbeat(Heartbeat { active_jobs }));
        });
        session.heartbeat = Some(handle);
    }

    fn check_shutdown(&mut self, ctx: &mut Context<Self>) {
        if matches!(self.intake, Intake::ShuttingDown(_)) && self.jobs.is_empty() {
            self.finish(Ok(()), ctx);
        }
    }

    fn finish(&mut self, result: Result<(), BuilderError>, ctx: &mut Context<Self>) {
        for state in self.jobs.values() {
            state.stop.stop(StopReason::Cancelled);
        }
        if let Some(connection) = self.connection.take() {
            connection.do_send(CloseConnection);
        }
        if let Some(done) = self.done.take() {
            let _ = done.send(result);
        }
        ctx.stop();
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        tracing::info!(max_jobs = self.max_concurrent_jobs, "supervisor started");
    }
}

impl Handler<SessionOpened> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: SessionOpened, ctx: &mut Self::Context) {
        if let Some(old) = self.session.take() {
            if let Some(handle) = old.heartbeat {
                ctx.cancel_future(handle);
            }
        }
        self.env.max_log_line_bytes.store(
            usize::try_from(msg.settings.max_log_line_bytes).unwrap_or(usize::MAX),
            Ordering::Relaxed,
        );
        for state in self.jobs.values_mut() {
            state.sent_upto = 0;
        }
        let held = self
            .jobs
            .iter()
            .filter(|(_, s)| !s.forget)
            .map(|(job, s)| HeldJob {
                job_id: job.job_id,
                attempt: job.attempt,
                last_acked_seq: s.events.acked_seq(),
                finished: s.response.is_some(),
            })
            .collect();
        self.session = Some(Session {
            id: msg.session,
            backend_id: msg.backend_id,
            settings: msg.settings,
            outbox: msg.outbox,
            resumed: false,
            outstanding_credits: 0,
            heartbeat: None,
        });
        self.send(ClientMessage::Resume(Resume { jobs: held }));
        self.start_heartbeat(ctx);
    }
}

impl Handler<SessionClosed> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: SessionClosed, ctx: &mut Self::Context) {
        if self.session.as_ref().is_some_and(|s| s.id == msg.session) {
            if let Some(handle) = self.session.take().and_then(|s| s.heartbeat) {
                ctx.cancel_future(handle);
            }
        }
    }
}

impl Handler<FromServer> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: FromServer, ctx: &mut Self::Context) {
        if self.session.as_ref().is_some_and(|s| s.id == msg.session) {
            self.on_server_message(msg.message, ctx);
        }
    }
}

impl Handler<EventsReady> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: EventsReady, _ctx: &mut Self::Context) {
        self.flush(msg.0);
    }
}

impl Handler<JobFinished> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: JobFinished, ctx: &mut Self::Context) {
        tracing::info!(job = %msg.job.job_id, attempt = %msg.job.attempt, outcome = msg.response.outcome.as_str(), "job finished");
        let Some(state) = self.jobs.get_mut(&msg.job) else {
            return;
        };
        if state.forget {
            self.jobs.remove(&msg.job);
        } else {
            state.response = Some(msg.response);
            self.flush(msg.job);
        }
        self.grant_credits();
        self.check_shutdown(ctx);
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ();

    fn handle(&mut self, mode: Shutdown, ctx: &mut Self::Context) {
        let escalation =
            self.intake == Intake::ShuttingDown(Shutdown::Drain) && mode == Shutdown::Cancel;
        if matches!(self.intake, Intake::ShuttingDown(Shutdown::Cancel)) {
            return;
        }
        tracing::info!(?mode, running = self.running_jobs(), "shutting down");
        self.intake = Intake::ShuttingDown(mode);
        if mode == Shutdown::Cancel || escalation {
            for state in self.jobs.values() {
                state.stop.stop(StopReason::Cancelled);
            }
            ctx.run_later(CANCEL_ACK_TIMEOUT, |act, ctx| {
                if !act.jobs.is_empty() {
                    tracing::warn!(
                        jobs = act.jobs.len(),
                        "exiting without the backend's acknowledgment of every job"
                    );
                }
                act.finish(Ok(()), ctx);
            });
        }
        self.check_shutdown(ctx);
    }
}

impl Handler<Fatal> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: Fatal, ctx: &mut Self::Context) {
        tracing::error!(error = %msg.0, "stopping the builder");
        self.finish(Err(msg.0), ctx);
    }
}
