//! Sample values shared by the integration tests: one message of every variant and
//! sub-variant of both directions, and the full lists of the closed enums.
//!
//! Test binaries declare it `pub mod common;`: each uses a different subset, and public
//! items are not reported as dead code.

use std::collections::BTreeMap;

use buildfleet_protocol::*;

pub const FINGERPRINT: &str = "SHA256:kKtVJKTvSbqzXwZIpgdyQ9jfx7U9t/IdkqJbTStGu80";

pub fn fingerprint() -> Fingerprint {
    FINGERPRINT.parse().expect("a valid fingerprint")
}

/// A valid digest made of one repeated hex digit.
pub fn digest(digit: char) -> Sha256Digest {
    digit
        .to_string()
        .repeat(64)
        .parse()
        .expect("a valid digest")
}

pub fn job_ref(job: i64, attempt: i32) -> JobRef {
    JobRef {
        job_id: JobId(job),
        attempt: Attempt(attempt),
    }
}

pub fn settings() -> SessionSettings {
    SessionSettings {
        protocol_version: PROTOCOL_VERSION,
        heartbeat_interval_ms: 10_000,
        heartbeat_timeout_ms: 30_000,
        max_frame_bytes: DEFAULT_MAX_FRAME_BYTES as u64,
        max_log_line_bytes: 16 * 1024,
        max_log_bytes_per_job: 64 * 1024 * 1024,
        reconnect_grace_ms: 60_000,
    }
}

pub fn assignment(mode: JobMode) -> JobAssignment {
    JobAssignment {
        job_id: JobId(42),
        attempt: Attempt(1),
        source: SourceSpec {
            url: "https://crates.example/hello-0.1.0.crate".into(),
            sha256: digest('a'),
            max_bytes: 50 * 1024 * 1024,
        },
        recipe: "cargo-build".into(),
        parameters: BTreeMap::from([("target".into(), "x86_64-unknown-linux-gnu".into())]),
        // One sample with annotations, one without (the field is then left out).
        annotations: match mode {
            JobMode::Build => BTreeMap::from([
                ("crate".into(), "hello".into()),
                ("version".into(), "0.1.0".into()),
            ]),
            JobMode::Plan => BTreeMap::new(),
        },
        mode,
        timeout_secs: 3600,
        job_token: "bft_0123456789abcdef".into(),
        upload_url: "https://buildfleet.example/api/v1/jobs/42/attempts/1/artifacts".into(),
    }
}

pub fn job_event(seq: u64, event: JobEventKind) -> ClientMessage {
    ClientMessage::JobEvent(JobEvent {
        job_id: JobId(42),
        attempt: Attempt(1),
        seq,
        timestamp_ms: 1_767_225_600_000,
        event,
    })
}

pub fn job_response(
    outcome: Outcome,
    error: Option<BuildError>,
    plan: Option<String>,
) -> ClientMessage {
    ClientMessage::JobResponse(JobResponse {
        job_id: JobId(42),
        attempt: Attempt(1),
        outcome,
        exit_status: Some(0),
        error,
        artifacts: vec![ArtifactDigest {
            name: "hello.tar.gz".into(),
            size: 1234,
            sha256: digest('b'),
        }],
        plan,
        statement: SignedStatement {
            statement: "{\n  \"format\": \"buildfleet-statement/v1\"\n}\n".into(),
            signature: "-----BEGIN SSH SIGNATURE-----\nU1NIU0lH\n-----END SSH SIGNATURE-----\n"
                .into(),
        },
        dsse_signature: None,
        reproduction: None,
    })
}

/// Every client message variant, and every sub-variant of their nested enums.
pub fn client_samples() -> Vec<ClientMessage> {
    let mut samples = vec![
        ClientMessage::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            fingerprint: fingerprint(),
            builder_name: "builder-01".into(),
            builder_version: "0.1.0".into(),
        }),
        ClientMessage::ChallengeResponse(ChallengeResponse {
            signature: "-----BEGIN SSH SIGNATURE-----\nU1NIU0lH\n-----END SSH SIGNATURE-----\n"
                .into(),
        }),
        ClientMessage::Capabilities(Capabilities {
            recipes: vec![
                RecipeCapability {
                    name: "cargo-build".into(),
                    version: "1".into(),
                },
                RecipeCapability {
                    name: "cargo-doc".into(),
                    version: "2".into(),
                },
            ],
            labels: BTreeMap::from([
                ("arch".into(), "x86_64".into()),
                ("os".into(), "linux".into()),
            ]),
            max_concurrent_jobs: 4,
            accepts_every_assignment: true,
        }),
        ClientMessage::Capabilities(Capabilities {
            recipes: vec![],
            labels: BTreeMap::new(),
            max_concurrent_jobs: 0,
            accepts_every_assignment: false,
        }),
        ClientMessage::Resume(Resume { jobs: vec![] }),
        ClientMessage::Resume(Resume {
            jobs: vec![
                HeldJob {
                    job_id: JobId(42),
                    attempt: Attempt(1),
                    last_acked_seq: Some(17),
                    finished: false,
                },
                HeldJob {
                    job_id: JobId(43),
                    attempt: Attempt(2),
                    last_acked_seq: None,
                    finished: true,
                },
            ],
        }),
        ClientMessage::JobRequest(JobRequest { credits: 0 }),
        ClientMessage::JobRequest(JobRequest { credits: u32::MAX }),
        ClientMessage::WorkAck(WorkAck {
            job_id: JobId(42),
            attempt: Attempt(1),
            decision: WorkDecision::Accept,
        }),
        ClientMessage::WorkAck(WorkAck {
            job_id: JobId(42),
            attempt: Attempt(1),
            decision: WorkDecision::Reject {
                reason: "recipe cargo-doc disabled".into(),
            },
        }),
        ClientMessage::Heartbeat(Heartbeat {
            active_jobs: vec![],
        }),
        ClientMessage::Heartbeat(Heartbeat {
            active_jobs: vec![job_ref(42, 1), job_ref(i64::MAX, i32::MAX)],
        }),
    ];
    for stream in [LogStream::Stdout, LogStream::Stderr] {
        samples.push(job_event(
            1,
            JobEventKind::Log {
                stream,
                line: "Compiling hello v0.1.0".into(),
            },
        ));
    }
    for stage in all_stages() {
        samples.push(job_event(u64::MAX, JobEventKind::Stage { stage }));
    }
    for outcome in all_outcomes() {
        samples.push(job_response(outcome, None, None));
    }
    for kind in all_build_error_kinds() {
        let error = BuildError {
            kind,
            message: format!("{} happened", kind.as_str()),
        };
        samples.push(job_response(
            Outcome::Failed,
            Some(error),
            Some("would build hello".into()),
        ));
    }
    samples
}

/// Every server message variant, and every sub-variant of their nested enums.
pub fn server_samples() -> Vec<ServerMessage> {
    let mut samples = vec![
        ServerMessage::ChallengeRequest(ChallengeRequest {
            challenge: "2cecc66842caf4636b51617a1907d318b97846d7d4e1103ba1ae72c990286b1a".into(),
            backend_id: "https://buildfleet.example".into(),
            expires_in_ms: 30_000,
        }),
        ServerMessage::AuthAccepted(AuthAccepted {
            builder_id: 7,
            settings: settings(),
        }),
        ServerMessage::ResumeResult(ResumeResult { jobs: vec![] }),
        ServerMessage::ResumeResult(ResumeResult {
            jobs: vec![
                ResumeDecision {
                    job_id: JobId(42),
                    attempt: Attempt(1),
                    decision: ResumeAction::Continue { next_seq: 18 },
                },
                ResumeDecision {
                    job_id: JobId(43),
                    attempt: Attempt(2),
                    decision: ResumeAction::Cancel {
                        reason: "requeued after grace period".into(),
                    },
                },
            ],
        }),
        ServerMessage::Jobs(Jobs { jobs: vec![] }),
        ServerMessage::Jobs(Jobs {
            jobs: vec![assignment(JobMode::Build), assignment(JobMode::Plan)],
        }),
        ServerMessage::EventAck(EventAck {
            job_id: JobId(42),
            attempt: Attempt(1),
            acked_seq: 17,
        }),
        ServerMessage::CompletionAck(CompletionAck {
            job_id: JobId(42),
            attempt: Attempt(1),
            result: CompletionResult::Accepted,
        }),
    ];
    for reason in [
        CancelReason::Requested,
        CancelReason::TimedOut,
        CancelReason::Superseded,
    ] {
        samples.push(ServerMessage::Cancel(Cancel {
            job_id: JobId(42),
            attempt: Attempt(1),
            reason,
        }));
    }
    for command in [
        ControlCommand::Drain,
        ControlCommand::Pause,
        ControlCommand::Resume,
    ] {
        samples.push(ServerMessage::Control(Control { command }));
    }
    for code in all_error_codes() {
        let message = format!("{} happened", code.as_str());
        samples.push(ServerMessage::AuthRejected(AuthRejected {
            code,
            reason: message.clone(),
            retry_after_ms: (code == ErrorCode::TooManyAttempts).then_some(42_000),
        }));
        samples.push(ServerMessage::Error(ErrorFrame {
            code,
            message: message.clone(),
        }));
        samples.push(ServerMessage::CompletionAck(CompletionAck {
            job_id: JobId(42),
            attempt: Attempt(1),
            result: CompletionResult::Refused { code, message },
        }));
    }
    samples
}

/// Every `ErrorCode`. The match makes a new variant a compile error here, so that it is
/// added to the list as well.
pub fn all_error_codes() -> Vec<ErrorCode> {
    use ErrorCode::*;
    let all = vec![
        MalformedFrame,
        FrameTooLarge,
        UnsupportedFrame,
        UnexpectedMessage,
        UnknownJob,
        UnsupportedVersion,
        UnknownBuilder,
        BuilderDisabled,
        AuthFailed,
        ChallengeExpired,
        TooManyAttempts,
        StaleAttempt,
        InvalidStatement,
        HeartbeatTimeout,
        SessionReplaced,
        BuilderRevoked,
        ShuttingDown,
        Internal,
    ];
    for code in &all {
        match code {
            MalformedFrame | FrameTooLarge | UnsupportedFrame | UnexpectedMessage | UnknownJob
            | UnsupportedVersion | UnknownBuilder | BuilderDisabled | AuthFailed
            | ChallengeExpired | TooManyAttempts | StaleAttempt | InvalidStatement
            | HeartbeatTimeout | SessionReplaced | BuilderRevoked | ShuttingDown | Internal => {}
        }
    }
    all
}

pub fn all_outcomes() -> Vec<Outcome> {
    use Outcome::*;
    let all = vec![Succeeded, Failed, Cancelled, TimedOut];
    for outcome in &all {
        match outcome {
            Succeeded | Failed | Cancelled | TimedOut => {}
        }
    }
    all
}

pub fn all_build_error_kinds() -> Vec<BuildErrorKind> {
    use BuildErrorKind::*;
    let all = vec![
        SourceFetch,
        SourceDigestMismatch,
        SourceTooLarge,
        UnsafeArchive,
        UnknownRecipe,
        CommandFailed,
        ArtifactMissing,
        Upload,
        TimedOut,
        Cancelled,
        Internal,
    ];
    for kind in &all {
        match kind {
            SourceFetch | SourceDigestMismatch | SourceTooLarge | UnsafeArchive | UnknownRecipe
            | CommandFailed | ArtifactMissing | Upload | TimedOut | Cancelled | Internal => {}
        }
    }
    all
}

pub fn all_stages() -> Vec<Stage> {
    use Stage::*;
    let all = vec![FetchingSource, Unpacking, Running, Uploading, Finishing];
    for stage in &all {
        match stage {
            FetchingSource | Unpacking | Running | Uploading | Finishing => {}
        }
    }
    all
}
