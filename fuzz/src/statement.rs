//! Build statements: the statement text and SSHSIG a builder sends in `job_response`, the
//! protocol's verification of both, and the backend's checks against the job and uploads
//! (`completion::verify_completion`, which needs no database).

use std::collections::BTreeSet;
use std::sync::OnceLock;

use buildfleet_backend::completion::{verify_completion, StatementError};
use buildfleet_backend::store;
use buildfleet_protocol::signing::{
    self, BuildStatement, SigningError, CHALLENGE_NAMESPACE, STATEMENT_FORMAT, STATEMENT_NAMESPACE,
};
use buildfleet_protocol::ssh_key::{PrivateKey, PublicKey};
use buildfleet_protocol::{
    dsse, Attempt, JobId, JobMode, JobResponse, Outcome, Sha256Digest, SignedStatement,
};

/// The fuzz key (made with `ssh-keygen -t ed25519`); it signs fuzz inputs and nothing else.
const PRIVATE_KEY: &str = include_str!("../keys/fuzz_ed25519");
pub const BACKEND_ID: &str = "https://buildfleet.example.org";

fn key() -> &'static PrivateKey {
    static KEY: OnceLock<PrivateKey> = OnceLock::new();
    KEY.get_or_init(|| signing::parse_private_key(PRIVATE_KEY).expect("the fuzz key parses"))
}

/// Splits an input at its first NUL into statement text and signature text (the seed
/// corpus is written that way).
pub fn split(bytes: &[u8]) -> (String, String) {
    let at = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let statement = String::from_utf8_lossy(&bytes[..at]).into_owned();
    let signature = String::from_utf8_lossy(bytes.get(at + 1..).unwrap_or_default()).into_owned();
    (statement, signature)
}

/// Verifies `bytes` as a signed statement, twice: with the signature as given (the SSHSIG
/// parser and verifier on arbitrary text), and signed afresh by the fuzz key (so that every
/// statement text reaches the statement parser and the backend's checks).
///
/// Invariants: no panic; a signature made by the key over the text always verifies, so the
/// only refusal left is `Statement`; a statement that verifies re-parses to the same fields,
/// names the key's fingerprint and the current format, survives re-signing, and passes the
/// backend's completion checks for a job and uploads made from its own fields exactly when
/// those fields are consistent; a statement signature never passes as a challenge one.
pub fn check(bytes: &[u8]) {
    let (text, signature) = split(bytes);
    let key = key();
    let public = key.public_key();

    let given = SignedStatement {
        statement: text.clone(),
        signature: signature.clone(),
    };
    match signing::verify_statement(public, &given) {
        Ok(statement) => check_verified(&given, &statement),
        Err(error) => assert!(!error.to_string().is_empty()),
    }
    let _ = signing::verify_challenge(public, BACKEND_ID, &text, &signature);

    let fresh = SignedStatement {
        signature: signing::sign(key, STATEMENT_NAMESPACE, text.as_bytes())
            .expect("the fuzz key signs"),
        statement: text.clone(),
    };
    match signing::verify_statement(public, &fresh) {
        Ok(statement) => check_verified(&fresh, &statement),
        Err(SigningError::Statement(detail)) => assert!(!detail.is_empty()),
        Err(other) => panic!("a signature made by the key does not verify: {other}"),
    }
    // As a builder of today sends it: the same text with a DSSE signature too, so it takes
    // the in-toto path of the completion checks (chosen by `_type`). Accepted or refused with
    // a message, never a panic.
    let in_toto = JobResponse {
        job_id: JobId(1),
        attempt: Attempt(1),
        outcome: Outcome::Succeeded,
        exit_status: None,
        error: None,
        artifacts: Vec::new(),
        plan: None,
        statement: fresh.clone(),
        dsse_signature: Some(
            dsse::sign(key, text.as_bytes())
                .expect("the fuzz key signs")
                .sig,
        ),
        reproduction: None,
    };
    if let Err(error) = verify_completion(&fixed_job(), &in_toto, public, BACKEND_ID, &[]) {
        assert!(!error.to_string().is_empty());
    }
    assert!(matches!(
        signing::verify(
            public,
            CHALLENGE_NAMESPACE,
            text.as_bytes(),
            &fresh.signature
        ),
        Err(SigningError::BadSignature)
    ));
}

fn check_verified(signed: &SignedStatement, statement: &BuildStatement) {
    let key = key();
    let public = key.public_key();
    let reparsed: BuildStatement =
        serde_json::from_str(&signed.statement).expect("a verified statement re-parses");
    assert_eq!(&reparsed, statement);
    assert_eq!(statement.format, STATEMENT_FORMAT);
    assert_eq!(statement.builder, signing::fingerprint(public));

    // The canonical text of the same fields signs and verifies to the same fields.
    let resigned = signing::sign_statement(key, statement).expect("the fuzz key signs");
    assert_eq!(
        &signing::verify_statement(public, &resigned).expect("a re-signed statement verifies"),
        statement
    );

    check_completion(signed, statement, public);
}

/// The backend's checks for a job and uploads made from the statement's own fields.
fn check_completion(signed: &SignedStatement, statement: &BuildStatement, public: &PublicKey) {
    let job = job_for(statement);
    let response = JobResponse {
        job_id: statement.job_id,
        attempt: statement.attempt,
        outcome: statement.outcome,
        exit_status: None,
        error: None,
        artifacts: statement.artifacts.clone(),
        plan: None,
        statement: signed.clone(),
        dsse_signature: None,
        reproduction: None,
    };
    let uploads: Vec<store::Artifact> = statement
        .artifacts
        .iter()
        .map(|a| store::Artifact {
            job: store::JobId(statement.job_id.0),
            attempt: store::Attempt(statement.attempt.0),
            name: a.name.clone(),
            size: i64::try_from(a.size).unwrap_or(-1),
            sha256: a.sha256.to_string(),
            storage_key: String::new(),
            statement: None,
            statement_signature: None,
            published: false,
            created_at: 0,
        })
        .collect();
    let result = verify_completion(&job, &response, public, BACKEND_ID, &uploads);

    let names: BTreeSet<&str> = statement
        .artifacts
        .iter()
        .map(|a| a.name.as_str())
        .collect();
    let plan_with_artifacts = statement.mode == JobMode::Plan && !statement.artifacts.is_empty();
    let unique = names.len() == statement.artifacts.len();
    let sizes_fit = statement
        .artifacts
        .iter()
        .all(|a| a.size <= i64::MAX as u64);
    let consistent = statement.backend_id == BACKEND_ID && unique && sizes_fit;
    match &result {
        Ok(publication) => {
            assert!(
                consistent && !plan_with_artifacts,
                "accepted: {statement:?}"
            );
            assert_eq!(publication.statement, signed.statement);
            assert_eq!(publication.signature, signed.signature);
        }
        Err(StatementError::ArtifactsInPlanMode) => assert!(plan_with_artifacts),
        Err(error) => assert!(
            !consistent,
            "refused a statement that matches its job and uploads: {error}: {statement:?}"
        ),
    }

    // A statement for another job is refused.
    let mut other = job_for(statement);
    other.id = store::JobId(statement.job_id.0.wrapping_add(1));
    assert!(verify_completion(&other, &response, public, BACKEND_ID, &uploads).is_err());

    // So is one whose annotations are not exactly the job's: one fewer, or one more.
    let mut other = job_for(statement);
    if other.annotations.pop_first().is_none() {
        other.annotations.insert("crate".into(), "fuzz".into());
    }
    assert!(verify_completion(&other, &response, public, BACKEND_ID, &uploads).is_err());
}

fn job_for(statement: &BuildStatement) -> store::Job {
    store::Job {
        id: store::JobId(statement.job_id.0),
        source_url: "https://crates.example/source.crate".into(),
        source_sha256: statement.source_sha256.to_string(),
        source_max_bytes: 1 << 20,
        recipe: statement.recipe.clone(),
        parameters: Default::default(),
        required_labels: Default::default(),
        annotations: statement.annotations.clone(),
        mode: match statement.mode {
            JobMode::Build => store::JobMode::Build,
            JobMode::Plan => store::JobMode::Plan,
        },
        priority: 0,
        state: store::JobState::Running,
        attempt: store::Attempt(statement.attempt.0),
        max_attempts: 3,
        failed_attempts: 0,
        timeout_secs: 3600,
        submitter: "fuzz".into(),
        created_at: 0,
        updated_at: 0,
        started_at: None,
        finished_at: None,
        cancel_requested_at: None,
        error: None,
        builder_id: None,
        retry: Default::default(),
        retry_not_before: None,
        manual_retries: 0,
        project: store::ProjectId::DEFAULT,
        reproduce: 1,
        on_mismatch: store::OnMismatch::Fail,
    }
}

/// The job an arbitrary text sent as an in-toto statement is checked against.
fn fixed_job() -> store::Job {
    job_for(&BuildStatement {
        format: STATEMENT_FORMAT.into(),
        backend_id: BACKEND_ID.into(),
        builder: signing::fingerprint(key().public_key()),
        job_id: JobId(1),
        attempt: Attempt(1),
        source_sha256: Sha256Digest::from_bytes(&[0xab; 32]),
        recipe: "cargo-build".into(),
        mode: JobMode::Build,
        annotations: Default::default(),
        outcome: Outcome::Succeeded,
        artifacts: Vec::new(),
    })
}
