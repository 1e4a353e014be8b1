//! The builder session's protocol rules (docs/protocol.md, "Session states" and "Rules"),
//! without a socket: which frame is allowed in which phase, which attempts the session holds,
//! and the event-sequence rule. [`Machine::on_frame`] turns a decoded frame into one [`Step`]
//! that the actor glue (`session/mod.rs`) carries out; the glue reports back what the other
//! actors answered (`challenge_sent`, `authenticated`, `resumed`, ...).

use std::collections::HashMap;

use buildfleet_protocol::{
    Capabilities, ChallengeResponse, ClientMessage, ErrorCode, HeldJob, Hello, JobEvent, JobRef,
    JobResponse, WorkAck, WorkDecision,
};

/// Where the session is in the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    AwaitingHello,
    /// Waiting for the Auth actor; frames arriving meanwhile are out of order.
    Authenticating,
    AwaitingChallengeResponse,
    AwaitingCapabilities,
    AwaitingResume,
    /// Waiting for the Scheduler's answer to `resume`.
    Resuming,
    Ready,
    Closing,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::AwaitingHello => "awaiting_hello",
            Phase::Authenticating => "authenticating",
            Phase::AwaitingChallengeResponse => "awaiting_challenge_response",
            Phase::AwaitingCapabilities => "awaiting_capabilities",
            Phase::AwaitingResume => "awaiting_resume",
            Phase::Resuming => "resuming",
            Phase::Ready => "ready",
            Phase::Closing => "closing",
        }
    }
}

/// What one frame asks of the session.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    BeginAuth(Hello),
    CompleteAuth(ChallengeResponse),
    SetCapabilities(Capabilities),
    Resume(Vec<HeldJob>),
    GrantCredits(u32),
    /// A held attempt's accept or reject; a reject has already released it here.
    AckWork(WorkAck),
    /// An event of a held attempt, in sequence (or a resent one).
    Event(JobEvent),
    /// Renew these held attempts; tell the builder to stop `foreign`, which it does not hold.
    Heartbeat {
        renew: Vec<JobRef>,
        foreign: Vec<JobRef>,
    },
    Complete(JobResponse),
    /// A completion for an attempt this session no longer holds: refused, session goes on.
    RefuseStale(JobRef),
    /// A protocol violation: `error{code}`, then close.
    Fail(ErrorCode, String),
    /// Nothing to do (the session is closing).
    Ignore,
}

#[derive(Debug)]
pub struct Machine {
    phase: Phase,
    /// Attempts this session may report on (assigned to it or continued by resume), each
    /// with the next event sequence it expects: events come without gaps.
    held: HashMap<JobRef, u64>,
}

impl Default for Machine {
    fn default() -> Self {
        Machine {
            phase: Phase::AwaitingHello,
            held: HashMap::new(),
        }
    }
}

impl Machine {
    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn is_closing(&self) -> bool {
        self.phase == Phase::Closing
    }

    pub fn holds(&self, job: &JobRef) -> bool {
        self.held.contains_key(job)
    }

    /// The one transition every path out takes.
    pub fn close(&mut self) {
        self.phase = Phase::Closing;
    }

    /// The frame's step; phase changes that need another actor's answer happen in the
    /// methods below, when it arrives.
    pub fn on_frame(&mut self, message: ClientMessage) -> Step {
        match (self.phase, message) {
            (Phase::Closing, _) => Step::Ignore,
            (Phase::AwaitingHello, ClientMessage::Hello(hello)) => {
                self.phase = Phase::Authenticating;
                Step::BeginAuth(hello)
            }
            (Phase::AwaitingChallengeResponse, ClientMessage::ChallengeResponse(response)) => {
                self.phase = Phase::Authenticating;
                Step::CompleteAuth(response)
            }
            (Phase::AwaitingCapabilities, ClientMessage::Capabilities(capabilities)) => {
                self.phase = Phase::AwaitingResume;
                Step::SetCapabilities(capabilities)
            }
            (Phase::AwaitingResume, ClientMessage::Resume(resume)) => {
                self.phase = Phase::Resuming;
                Step::Resume(resume.jobs)
            }
            (Phase::Ready, ClientMessage::JobRequest(request)) => {
                Step::GrantCredits(request.credits)
            }
            (Phase::Ready, ClientMessage::WorkAck(ack)) => {
                let job = JobRef {
                    job_id: ack.job_id,
                    attempt: ack.attempt,
                };
                if let Some(fail) = self.unknown(job) {
                    return fail;
                }
                if matches!(ack.decision, WorkDecision::Reject { .. }) {
                    self.release(job);
                }
                Step::AckWork(ack)
            }
            (Phase::Ready, ClientMessage::JobEvent(event)) => {
                let job = JobRef {
                    job_id: event.job_id,
                    attempt: event.attempt,
                };
                if let Some(fail) = self.unknown(job) {
                    return fail;
                }
                match self.check_sequence(job, event.seq) {
                    Some(fail) => fail,
                    None => Step::Event(event),
                }
            }
            (Phase::Ready, ClientMessage::Heartbeat(heartbeat)) => {
                let (renew, foreign) = heartbeat
                    .active_jobs
                    .into_iter()
                    .partition(|job| self.held.contains_key(job));
                Step::Heartbeat { renew, foreign }
            }
            (Phase::Ready, ClientMessage::JobResponse(response)) => {
                let job = JobRef {
                    job_id: response.job_id,
                    attempt: response.attempt,
                };
                // A completion racing its own supersession is refused, not a reason to close:
                // the builder forgets the attempt and keeps its other jobs.
                if self.held.contains_key(&job) {
                    Step::Complete(response)
                } else {
                    Step::RefuseStale(job)
                }
            }
            (phase, message) => Step::Fail(
                ErrorCode::UnexpectedMessage,
                format!(
                    "`{}` is not allowed in state {}",
                    message.type_name(),
                    phase.as_str()
                ),
            ),
        }
    }

    /// The Auth actor issued a challenge, which went out.
    pub fn challenge_sent(&mut self) {
        if self.phase == Phase::Authenticating {
            self.phase = Phase::AwaitingChallengeResponse;
        }
    }

    /// The challenge answer verified; `auth_accepted` went out.
    pub fn authenticated(&mut self) {
        if self.phase == Phase::Authenticating {
            self.phase = Phase::AwaitingCapabilities;
        }
    }

    /// The Scheduler answered `resume`: these attempts go on, each from its `next_seq`.
    pub fn resumed(&mut self, continued: impl IntoIterator<Item = (JobRef, u64)>) {
        if self.phase == Phase::Resuming {
            self.held.extend(continued);
            self.phase = Phase::Ready;
        }
    }

    /// Attempts assigned to this session (a `jobs` frame going out): events start at 1.
    pub fn assigned(&mut self, jobs: impl IntoIterator<Item = JobRef>) {
        self.held.extend(jobs.into_iter().map(|job| (job, 1)));
    }

    /// The session no longer reports on `job`; true if it held it.
    pub fn release(&mut self, job: JobRef) -> bool {
        self.held.remove(&job).is_some()
    }

    /// Every held attempt, let go (the session ends).
    pub fn release_all(&mut self) -> Vec<JobRef> {
        self.held.drain().map(|(job, _)| job).collect()
    }

    fn unknown(&self, job: JobRef) -> Option<Step> {
        (!self.held.contains_key(&job)).then(|| {
            Step::Fail(
                ErrorCode::UnknownJob,
                format!(
                    "this session does not hold attempt {} of job {}",
                    job.attempt, job.job_id
                ),
            )
        })
    }

    /// Events of an attempt come in order: a resent one (below the expected sequence) is
    /// fine and dropped later as a duplicate, the expected one moves on, and one past it
    /// would leave a gap that could never be acknowledged.
    fn check_sequence(&mut self, job: JobRef, seq: u64) -> Option<Step> {
        if i64::try_from(seq).is_err() {
            return Some(Step::Fail(
                ErrorCode::MalformedFrame,
                format!("job_event seq {seq} is out of range (at most {})", i64::MAX),
            ));
        }
        let expected = self.held.get_mut(&job)?;
        if seq > *expected {
            return Some(Step::Fail(
                ErrorCode::UnexpectedMessage,
                format!(
                    "job_event seq {seq} of attempt {} of job {} skips {}..{}; events go in order",
                    job.attempt,
                    job.job_id,
                    *expected,
                    seq - 1
                ),
            ));
        }
        if seq == *expected {
            *expected += 1;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use buildfleet_protocol::{
        Attempt, Heartbeat, JobEventKind, JobId, JobRequest, LogStream, Resume,
    };

    use super::*;

    fn job(id: i64) -> JobRef {
        JobRef {
            job_id: JobId(id),
            attempt: Attempt(1),
        }
    }

    fn event(job: JobRef, seq: u64) -> ClientMessage {
        ClientMessage::JobEvent(JobEvent {
            job_id: job.job_id,
            attempt: job.attempt,
            seq,
            timestamp_ms: 0,
            event: JobEventKind::Log {
                stream: LogStream::Stdout,
                line: format!("line {seq}"),
            },
        })
    }

    fn hello() -> ClientMessage {
        let fingerprint = "SHA256:kKtVJKTvSbqzXwZIpgdyQ9jfx7U9t/IdkqJbTStGu80"
            .parse()
            .unwrap_or_else(|e| panic!("fingerprint: {e}"));
        ClientMessage::Hello(Hello {
            protocol_version: 1,
            fingerprint,
            builder_name: "b".into(),
            builder_version: "t".into(),
        })
    }

    /// A machine past the handshake, holding nothing.
    fn ready() -> Machine {
        let mut machine = Machine::default();
        assert!(matches!(machine.on_frame(hello()), Step::BeginAuth(_)));
        machine.challenge_sent();
        let response = ClientMessage::ChallengeResponse(ChallengeResponse {
            signature: "sig".into(),
        });
        assert!(matches!(machine.on_frame(response), Step::CompleteAuth(_)));
        machine.authenticated();
        let capabilities = ClientMessage::Capabilities(Capabilities {
            recipes: vec![],
            labels: Default::default(),
            max_concurrent_jobs: 1,
            accepts_every_assignment: false,
        });
        assert!(matches!(
            machine.on_frame(capabilities),
            Step::SetCapabilities(_)
        ));
        let resume = ClientMessage::Resume(Resume { jobs: vec![] });
        assert_eq!(machine.on_frame(resume), Step::Resume(vec![]));
        machine.resumed([]);
        assert_eq!(machine.phase(), Phase::Ready);
        machine
    }

    fn failed_with(step: &Step, code: ErrorCode) -> bool {
        matches!(step, Step::Fail(c, _) if *c == code)
    }

    #[test]
    fn frames_out_of_phase_are_unexpected() {
        let mut machine = Machine::default();
        let request = ClientMessage::JobRequest(JobRequest { credits: 1 });
        let step = machine.on_frame(request.clone());
        assert!(failed_with(&step, ErrorCode::UnexpectedMessage), "{step:?}");
        assert!(matches!(machine.on_frame(hello()), Step::BeginAuth(_)));
        // While Auth works on the hello, a second hello is out of order.
        let step = machine.on_frame(hello());
        assert!(
            matches!(&step, Step::Fail(ErrorCode::UnexpectedMessage, m) if m.contains("authenticating")),
            "{step:?}"
        );
        let mut ready = ready();
        assert!(failed_with(
            &ready.on_frame(hello()),
            ErrorCode::UnexpectedMessage
        ));
        assert_eq!(ready.on_frame(request), Step::GrantCredits(1));
    }

    #[test]
    fn events_of_unheld_attempts_are_unknown_jobs() {
        let mut machine = ready();
        let step = machine.on_frame(event(job(7), 1));
        assert!(failed_with(&step, ErrorCode::UnknownJob), "{step:?}");
    }

    #[test]
    fn events_go_in_order_resends_pass_and_gaps_fail() {
        let mut machine = ready();
        machine.assigned([job(1)]);
        for seq in [1, 2, 2, 1, 3] {
            assert!(
                matches!(machine.on_frame(event(job(1), seq)), Step::Event(_)),
                "seq {seq}"
            );
        }
        let step = machine.on_frame(event(job(1), 5));
        assert!(
            matches!(&step, Step::Fail(ErrorCode::UnexpectedMessage, m) if m.contains("skips 4..4")),
            "{step:?}"
        );
        let step = machine.on_frame(event(job(1), u64::MAX));
        assert!(failed_with(&step, ErrorCode::MalformedFrame), "{step:?}");
    }

    #[test]
    fn a_resumed_attempt_expects_its_next_seq() {
        let mut machine = Machine {
            phase: Phase::Resuming,
            held: HashMap::new(),
        };
        machine.resumed([(job(3), 18)]);
        assert!(matches!(
            machine.on_frame(event(job(3), 17)),
            Step::Event(_)
        ));
        assert!(matches!(
            machine.on_frame(event(job(3), 18)),
            Step::Event(_)
        ));
        assert!(failed_with(
            &machine.on_frame(event(job(3), 20)),
            ErrorCode::UnexpectedMessage
        ));
    }

    #[test]
    fn heartbeats_split_held_from_foreign_attempts() {
        let mut machine = ready();
        machine.assigned([job(1)]);
        let beat = ClientMessage::Heartbeat(Heartbeat {
            active_jobs: vec![job(1), job(2)],
        });
        assert_eq!(
            machine.on_frame(beat),
            Step::Heartbeat {
                renew: vec![job(1)],
                foreign: vec![job(2)]
            }
        );
    }

    #[test]
    fn a_reject_releases_and_a_late_completion_is_refused_not_fatal() {
        let mut machine = ready();
        machine.assigned([job(1)]);
        let reject = ClientMessage::WorkAck(WorkAck {
            job_id: JobId(1),
            attempt: Attempt(1),
            decision: WorkDecision::Reject {
                reason: "busy".into(),
            },
        });
        assert!(matches!(machine.on_frame(reject), Step::AckWork(_)));
        assert!(!machine.holds(&job(1)));
        let response = ClientMessage::JobResponse(JobResponse {
            job_id: JobId(1),
            attempt: Attempt(1),
            outcome: buildfleet_protocol::Outcome::Succeeded,
            exit_status: Some(0),
            error: None,
            artifacts: vec![],
            plan: None,
            statement: buildfleet_protocol::SignedStatement {
                statement: String::new(),
                signature: String::new(),
            },
            dsse_signature: None,
            reproduction: None,
        });
        assert_eq!(machine.on_frame(response), Step::RefuseStale(job(1)));
        assert_eq!(machine.phase(), Phase::Ready);
    }

    #[test]
    fn a_closing_session_ignores_everything() {
        let mut machine = ready();
        machine.close();
        assert_eq!(machine.on_frame(hello()), Step::Ignore);
    }
}
