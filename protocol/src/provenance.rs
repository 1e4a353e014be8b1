//! The build statement as the supply-chain world reads it: an in-toto Statement v1
//! (<https://github.com/in-toto/attestation/blob/main/spec/v1/statement.md>) whose predicate
//! is SLSA Provenance v1.0 (<https://slsa.dev/provenance/v1>). `docs/provenance.md` describes
//! every field; this module is its code.
//!
//! The text a builder signs is [`Statement::to_signed_text`]: pretty JSON in the order of the
//! structs' fields, with a final newline, so the same values always give the same bytes. It
//! is signed twice with the builder's key: SSHSIG (namespace `buildfleet-statement`, what
//! `ssh-keygen -Y verify` checks) and DSSE ([`crate::dsse`], what in-toto tools check).
//!
//! Two statements are made per build-mode success:
//! - the attempt's statement ([`attempt_statement`]): everything about this run, times and
//!   toolchain versions included;
//! - the reproduction statement ([`reproduction_statement`]): only what every independent
//!   builder of the same job writes byte for byte when their outputs agree, so k builders'
//!   signatures can sit on one text.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use ssh_key::{PrivateKey, PublicKey};

use crate::dsse::{self, DsseSignature};
use crate::messages::{ArtifactDigest, JobAssignment, JobMode, Outcome, SignedStatement};
use crate::signing::{self, SigningError, STATEMENT_NAMESPACE};
use crate::types::{Attempt, Fingerprint, JobId, Sha256Digest};

/// `_type` of an in-toto Statement v1.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// `predicateType` of SLSA Provenance v1.
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
/// Buildfleet's `buildType`: how `externalParameters` and `internalParameters` are to be
/// read (docs/provenance.md, "Build type"). A new layout gets a new version here.
pub const BUILD_TYPE: &str = "https://example.invalid/buildfleet/provenance/job/v1";
/// What follows the backend id in `runDetails.builder.id` of a reproduction statement: the
/// builder is "whichever builders of this backend reproduced the job", named by their
/// signatures, not by the text.
pub const REPRODUCTION_BUILDER_SUFFIX: &str = "/reproduction/v1";
/// Key of the builder's own version in `runDetails.builder.version`.
pub const BUILDER_VERSION_KEY: &str = "buildfleet-builder";
/// `name` of the byproduct that carries the outcome (SLSA has no outcome field).
pub const OUTCOME_BYPRODUCT: &str = "buildfleet-outcome";

/// An in-toto Statement v1 with a SLSA Provenance v1 predicate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    #[serde(rename = "_type")]
    pub type_: String,
    /// One entry per artifact, by name; empty when the attempt produced none (a failure, a
    /// plan). The in-toto schema requires the field, not an element; its Go validator
    /// refuses an empty list, so such statements are Buildfleet's record, not provenance
    /// that SLSA verifiers accept (docs/provenance.md).
    pub subject: Vec<Subject>,
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    pub predicate: Provenance,
}

/// An artifact: its file name and SHA-256 (an in-toto ResourceDescriptor with `name` and
/// `digest`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Subject {
    pub name: String,
    pub digest: Digest,
}

/// A digest set with the one algorithm Buildfleet uses.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Digest {
    pub sha256: Sha256Digest,
}

/// SLSA Provenance v1 predicate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    #[serde(rename = "buildDefinition")]
    pub build_definition: BuildDefinition,
    #[serde(rename = "runDetails")]
    pub run_details: RunDetails,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildDefinition {
    #[serde(rename = "buildType")]
    pub build_type: String,
    #[serde(rename = "externalParameters")]
    pub external_parameters: ExternalParameters,
    #[serde(rename = "internalParameters")]
    pub internal_parameters: InternalParameters,
    #[serde(rename = "resolvedDependencies")]
    pub resolved_dependencies: Vec<ResourceDescriptor>,
}

/// What the submitter chose: the job as submitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalParameters {
    pub recipe: String,
    pub mode: JobMode,
    pub parameters: BTreeMap<String, String>,
    pub source: SourceReference,
    /// What the job builds (`crate`, `version`, `commit`, …); left out when there are none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceReference {
    pub uri: String,
    pub digest: Digest,
}

/// What the platform chose: which backend, job and attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InternalParameters {
    #[serde(rename = "backendId")]
    pub backend_id: String,
    #[serde(rename = "jobId")]
    pub job_id: JobId,
    /// Absent from reproduction statements (each builder runs its own attempt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<Attempt>,
}

/// An in-toto ResourceDescriptor (the fields Buildfleet writes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceDescriptor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Base64 of the resource's bytes, for small resources carried inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunDetails {
    pub builder: BuilderIdentity,
    pub metadata: RunMetadata,
    /// The outcome (one entry named [`OUTCOME_BYPRODUCT`]).
    pub byproducts: Vec<ResourceDescriptor>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuilderIdentity {
    pub id: String,
    /// `buildfleet-builder`, `recipe` and the toolchain versions the recipe reports; left
    /// out of reproduction statements.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub version: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunMetadata {
    #[serde(rename = "invocationId")]
    pub invocation_id: String,
    /// RFC 3339, UTC, whole seconds; absent from reproduction statements.
    #[serde(rename = "startedOn", default, skip_serializing_if = "Option::is_none")]
    pub started_on: Option<String>,
    #[serde(
        rename = "finishedOn",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub finished_on: Option<String>,
}

/// What both sides know of the job: from the assignment on the builder, from the job row on
/// the backend. The two must give the same statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFacts {
    pub backend_id: String,
    pub job_id: JobId,
    pub attempt: Attempt,
    pub recipe: String,
    pub mode: JobMode,
    pub parameters: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub source_url: String,
    pub source_sha256: Sha256Digest,
}

impl JobFacts {
    pub fn from_assignment(backend_id: &str, job: &JobAssignment) -> JobFacts {
        JobFacts {
            backend_id: backend_id.to_owned(),
            job_id: job.job_id,
            attempt: job.attempt,
            recipe: job.recipe.clone(),
            mode: job.mode,
            parameters: job.parameters.clone(),
            annotations: job.annotations.clone(),
            source_url: job.source.url.clone(),
            source_sha256: job.source.sha256.clone(),
        }
    }
}

/// What only the builder knows of its run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFacts {
    pub builder: Fingerprint,
    /// `buildfleet-builder`, `recipe` and toolchain versions (`rustc`, `cargo`, …).
    pub versions: BTreeMap<String, String>,
    /// Unix milliseconds.
    pub started_ms: i64,
    pub finished_ms: i64,
    pub outcome: Outcome,
}

/// The backend id without a trailing `/`, so ids built from it have one separator.
fn base(backend_id: &str) -> &str {
    backend_id.trim_end_matches('/')
}

/// `runDetails.builder.id` of an attempt's statement: the backend and the builder's key,
/// `{backend}/builders/{fingerprint}` with the fingerprint's `/`, `+` and `=`
/// percent-encoded so the id stays one URI path segment.
pub fn builder_id(backend_id: &str, builder: &Fingerprint) -> String {
    let mut segment = String::new();
    for c in builder.as_str().chars() {
        match c {
            '/' => segment.push_str("%2F"),
            '+' => segment.push_str("%2B"),
            '=' => segment.push_str("%3D"),
            c => segment.push(c),
        }
    }
    format!("{}/builders/{segment}", base(backend_id))
}

/// `runDetails.builder.id` of a reproduction statement.
pub fn reproduction_builder_id(backend_id: &str) -> String {
    format!("{}{REPRODUCTION_BUILDER_SUFFIX}", base(backend_id))
}

/// `runDetails.metadata.invocationId` of a reproduction statement: the job's address.
pub fn job_invocation_id(backend_id: &str, job: JobId) -> String {
    format!("{}/jobs/{}", base(backend_id), job.0)
}

/// `runDetails.metadata.invocationId` of an attempt's statement.
pub fn attempt_invocation_id(backend_id: &str, job: JobId, attempt: Attempt) -> String {
    format!(
        "{}/attempts/{}",
        job_invocation_id(backend_id, job),
        attempt.0
    )
}

fn outcome_byproduct(outcome: Outcome) -> ResourceDescriptor {
    ResourceDescriptor {
        name: Some(OUTCOME_BYPRODUCT.to_owned()),
        uri: None,
        digest: None,
        media_type: Some("text/plain".to_owned()),
        content: Some(dsse::base64_encode(outcome.as_str().as_bytes())),
        annotations: BTreeMap::from([("outcome".to_owned(), outcome.as_str().to_owned())]),
    }
}

fn subjects(artifacts: &[ArtifactDigest]) -> Vec<Subject> {
    let mut subjects: Vec<Subject> = artifacts
        .iter()
        .map(|a| Subject {
            name: a.name.clone(),
            digest: Digest {
                sha256: a.sha256.clone(),
            },
        })
        .collect();
    subjects.sort();
    subjects
}

fn build_definition(job: &JobFacts, attempt: Option<Attempt>) -> BuildDefinition {
    let source = Digest {
        sha256: job.source_sha256.clone(),
    };
    BuildDefinition {
        build_type: BUILD_TYPE.to_owned(),
        external_parameters: ExternalParameters {
            recipe: job.recipe.clone(),
            mode: job.mode,
            parameters: job.parameters.clone(),
            source: SourceReference {
                uri: job.source_url.clone(),
                digest: source.clone(),
            },
            annotations: job.annotations.clone(),
        },
        internal_parameters: InternalParameters {
            backend_id: job.backend_id.clone(),
            job_id: job.job_id,
            attempt,
        },
        resolved_dependencies: vec![ResourceDescriptor {
            name: Some("source".to_owned()),
            uri: Some(job.source_url.clone()),
            digest: Some(source),
            media_type: None,
            content: None,
            annotations: BTreeMap::new(),
        }],
    }
}

/// The statement of one attempt. Subjects are sorted by name.
pub fn attempt_statement(
    job: &JobFacts,
    run: &RunFacts,
    artifacts: &[ArtifactDigest],
) -> Statement {
    Statement {
        type_: STATEMENT_TYPE.to_owned(),
        subject: subjects(artifacts),
        predicate_type: PREDICATE_TYPE.to_owned(),
        predicate: Provenance {
            build_definition: build_definition(job, Some(job.attempt)),
            run_details: RunDetails {
                builder: BuilderIdentity {
                    id: builder_id(&job.backend_id, &run.builder),
                    version: run.versions.clone(),
                },
                metadata: RunMetadata {
                    invocation_id: attempt_invocation_id(&job.backend_id, job.job_id, job.attempt),
                    started_on: Some(rfc3339_utc(run.started_ms)),
                    finished_on: Some(rfc3339_utc(run.finished_ms)),
                },
                byproducts: vec![outcome_byproduct(run.outcome)],
            },
        },
    }
}

/// The reproduction statement of a job whose build succeeded with `artifacts`: what every
/// independent builder of the job writes byte for byte when the outputs agree. No attempt,
/// no times, no builder key, no versions; the builder id is the backend's plus
/// [`REPRODUCTION_BUILDER_SUFFIX`]; the outcome is `succeeded`. `job.attempt` is not read.
pub fn reproduction_statement(job: &JobFacts, artifacts: &[ArtifactDigest]) -> Statement {
    Statement {
        type_: STATEMENT_TYPE.to_owned(),
        subject: subjects(artifacts),
        predicate_type: PREDICATE_TYPE.to_owned(),
        predicate: Provenance {
            build_definition: build_definition(job, None),
            run_details: RunDetails {
                builder: BuilderIdentity {
                    id: reproduction_builder_id(&job.backend_id),
                    version: BTreeMap::new(),
                },
                metadata: RunMetadata {
                    invocation_id: job_invocation_id(&job.backend_id, job.job_id),
                    started_on: None,
                    finished_on: None,
                },
                byproducts: vec![outcome_byproduct(Outcome::Succeeded)],
            },
        },
    }
}

impl Statement {
    /// The exact text that is signed (pretty JSON, struct order, final newline).
    #[allow(
        clippy::expect_used,
        reason = "a statement is strings, numbers, maps and sequences: serialising cannot fail"
    )]
    pub fn to_signed_text(&self) -> String {
        let mut text =
            serde_json::to_string_pretty(self).expect("statements always serialise to JSON");
        text.push('\n');
        text
    }

    /// Parses a signed text. It must be an in-toto v1 statement with a SLSA v1 predicate of
    /// Buildfleet's build type, written exactly as [`Statement::to_signed_text`] writes it
    /// (so no field can hide from the checks: what was signed is what was read).
    pub fn parse(text: &str) -> Result<Statement, SigningError> {
        let statement: Statement =
            serde_json::from_str(text).map_err(|e| SigningError::Statement(e.to_string()))?;
        let expect = |field: &str, found: &str, expected: &str| {
            if found == expected {
                Ok(())
            } else {
                Err(SigningError::Statement(format!(
                    "{field} is {found:?}, expected {expected:?}"
                )))
            }
        };
        expect("_type", &statement.type_, STATEMENT_TYPE)?;
        expect("predicateType", &statement.predicate_type, PREDICATE_TYPE)?;
        expect(
            "buildType",
            &statement.predicate.build_definition.build_type,
            BUILD_TYPE,
        )?;
        if statement.to_signed_text() != text {
            return Err(SigningError::Statement(
                "the statement is not in its canonical layout (unknown fields, another order \
                 or other spacing)"
                    .into(),
            ));
        }
        Ok(statement)
    }

    /// The outcome its byproduct records.
    pub fn outcome(&self) -> Option<Outcome> {
        let byproduct = self
            .predicate
            .run_details
            .byproducts
            .iter()
            .find(|b| b.name.as_deref() == Some(OUTCOME_BYPRODUCT))?;
        let text = byproduct.annotations.get("outcome")?;
        [
            Outcome::Succeeded,
            Outcome::Failed,
            Outcome::Cancelled,
            Outcome::TimedOut,
        ]
        .into_iter()
        .find(|o| o.as_str() == text)
    }
}

/// Is `text` an in-toto statement (rather than a `buildfleet-statement/v1` document)? Decided
/// by its `_type` field, before any signature is checked.
pub fn is_in_toto(text: &str) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "_type")]
        type_: Option<String>,
    }
    serde_json::from_str::<Probe>(text).is_ok_and(|p| p.type_.is_some())
}

/// What a verifier needs from a statement of either format (in-toto, or the older
/// `buildfleet-statement/v1`): the job, the attempt, the signing key named in it, and the
/// artifacts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementSummary {
    pub job_id: JobId,
    /// `None` for a reproduction statement.
    pub attempt: Option<Attempt>,
    /// The key the statement names (`None` for a reproduction statement, whose signers are
    /// its signatures').
    pub builder: Option<Fingerprint>,
    /// Name, SHA-256 and (old format only) size.
    pub artifacts: Vec<(String, Sha256Digest, Option<u64>)>,
    pub outcome: Option<Outcome>,
}

/// Reads a statement text of either format (no signature is checked here).
pub fn summarize(text: &str) -> Result<StatementSummary, SigningError> {
    if !is_in_toto(text) {
        let old: signing::BuildStatement =
            serde_json::from_str(text).map_err(|e| SigningError::Statement(e.to_string()))?;
        return Ok(StatementSummary {
            job_id: old.job_id,
            attempt: Some(old.attempt),
            builder: Some(old.builder),
            artifacts: old
                .artifacts
                .into_iter()
                .map(|a| (a.name, a.sha256, Some(a.size)))
                .collect(),
            outcome: Some(old.outcome),
        });
    }
    let statement = Statement::parse(text)?;
    let builder = statement
        .predicate
        .run_details
        .builder
        .id
        .rsplit_once("/builders/")
        .and_then(|(_, segment)| {
            segment
                .replace("%2F", "/")
                .replace("%2B", "+")
                .replace("%3D", "=")
                .parse()
                .ok()
        });
    Ok(StatementSummary {
        job_id: statement
            .predicate
            .build_definition
            .internal_parameters
            .job_id,
        attempt: statement
            .predicate
            .build_definition
            .internal_parameters
            .attempt,
        builder,
        outcome: statement.outcome(),
        artifacts: statement
            .subject
            .into_iter()
            .map(|s| (s.name, s.digest.sha256, None))
            .collect(),
    })
}

/// A statement signed both ways: SSHSIG (armored) and DSSE (the raw signature over PAE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoublySigned {
    pub signed: SignedStatement,
    pub dsse: DsseSignature,
}

/// Signs the statement's text with SSHSIG (namespace `buildfleet-statement`) and DSSE.
pub fn sign_statement(
    key: &PrivateKey,
    statement: &Statement,
) -> Result<DoublySigned, SigningError> {
    let text = statement.to_signed_text();
    let signature = signing::sign(key, STATEMENT_NAMESPACE, text.as_bytes())?;
    let dsse = dsse::sign(key, text.as_bytes()).map_err(|e| SigningError::Sign(e.to_string()))?;
    Ok(DoublySigned {
        signed: SignedStatement {
            statement: text,
            signature,
        },
        dsse,
    })
}

/// Verifies the SSHSIG by `key` over an in-toto statement's text and parses it.
pub fn verify_statement(
    key: &PublicKey,
    signed: &SignedStatement,
) -> Result<Statement, SigningError> {
    signing::verify(
        key,
        STATEMENT_NAMESPACE,
        signed.statement.as_bytes(),
        &signed.signature,
    )?;
    Statement::parse(&signed.statement)
}

/// Unix milliseconds as RFC 3339 UTC with whole seconds (`2026-12-07T10:15:00Z`). Times
/// before 1970 or after 9999 are clamped to those years' ends (a builder clock that far off
/// is wrong either way).
pub fn rfc3339_utc(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000).clamp(0, 253_402_300_799);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Parses what [`rfc3339_utc`] writes back to unix seconds; `None` for anything else.
pub fn parse_rfc3339_utc(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let layout_ok = b.len() == 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'Z';
    if !layout_ok {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month) || day < 1 || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    // A day past the month's end comes back as another date.
    if civil_from_days(days) != (year, month, day) {
        return None;
    }
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Civil date of days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Days since 1970-01-01 of a civil date (the inverse of [`civil_from_days`]).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_key::rand_core::OsRng;
    use ssh_key::Algorithm;

    fn job() -> JobFacts {
        JobFacts {
            backend_id: "https://buildfleet.example.org/".into(),
            job_id: JobId(42),
            attempt: Attempt(2),
            recipe: "cargo-build".into(),
            mode: JobMode::Build,
            parameters: BTreeMap::from([("offline".into(), "true".into())]),
            annotations: BTreeMap::from([
                ("crate".into(), "itoa".into()),
                ("version".into(), "1.0.14".into()),
            ]),
            source_url: "https://static.crates.io/crates/itoa/itoa-1.0.14.crate".into(),
            source_sha256: "9f".repeat(32).parse().unwrap(),
        }
    }

    fn run(builder: &Fingerprint) -> RunFacts {
        RunFacts {
            builder: builder.clone(),
            versions: BTreeMap::from([
                (BUILDER_VERSION_KEY.into(), "0.1.0".into()),
                ("rustc".into(), "rustc 1.95.0 (abc 2026-01-01)".into()),
            ]),
            started_ms: 1_796_638_500_123,
            finished_ms: 1_796_638_561_999,
            outcome: Outcome::Succeeded,
        }
    }

    fn artifacts() -> Vec<ArtifactDigest> {
        vec![
            ArtifactDigest {
                name: "z.tar.gz".into(),
                size: 3,
                sha256: "2c".repeat(32).parse().unwrap(),
            },
            ArtifactDigest {
                name: "a.tar.gz".into(),
                size: 1,
                sha256: "1d".repeat(32).parse().unwrap(),
            },
        ]
    }

    const FINGERPRINT: &str = "SHA256:kKtVJKTvSbqzXwZIpgdyQ9jfx7U9t/IdkqJbTStG+80";

    #[test]
    fn the_attempt_statement_has_the_documented_layout() {
        let builder: Fingerprint = FINGERPRINT.parse().unwrap();
        let statement = attempt_statement(&job(), &run(&builder), &artifacts());
        let value: serde_json::Value = serde_json::from_str(&statement.to_signed_text()).unwrap();
        assert_eq!(value["_type"], STATEMENT_TYPE);
        assert_eq!(value["predicateType"], PREDICATE_TYPE);
        assert_eq!(value["subject"][0]["name"], "a.tar.gz");
        assert_eq!(value["subject"][1]["digest"]["sha256"], "2c".repeat(32));
        let definition = &value["predicate"]["buildDefinition"];
        assert_eq!(definition["buildType"], BUILD_TYPE);
        assert_eq!(
            definition["externalParameters"]["annotations"]["crate"],
            "itoa"
        );
        assert_eq!(
            definition["externalParameters"]["source"]["digest"]["sha256"],
            "9f".repeat(32)
        );
        assert_eq!(definition["internalParameters"]["attempt"], 2);
        assert_eq!(definition["resolvedDependencies"][0]["name"], "source");
        let details = &value["predicate"]["runDetails"];
        assert_eq!(
            details["builder"]["id"],
            "https://buildfleet.example.org/builders/SHA256:kKtVJKTvSbqzXwZIpgdyQ9jfx7U9t%2FIdkqJbTStG%2B80"
        );
        assert_eq!(
            details["builder"]["version"]["rustc"],
            "rustc 1.95.0 (abc 2026-01-01)"
        );
        assert_eq!(
            details["metadata"]["invocationId"],
            "https://buildfleet.example.org/jobs/42/attempts/2"
        );
        assert_eq!(details["metadata"]["startedOn"], "2026-12-07T10:15:00Z");
        assert_eq!(details["metadata"]["finishedOn"], "2026-12-07T10:16:01Z");
        assert_eq!(
            details["byproducts"][0]["annotations"]["outcome"],
            "succeeded"
        );
        assert_eq!(statement.outcome(), Some(Outcome::Succeeded));
        // The text parses back to the same statement.
        assert_eq!(
            Statement::parse(&statement.to_signed_text()).unwrap(),
            statement
        );
    }

    #[test]
    fn two_builders_write_the_same_reproduction_statement() {
        let mut second = job();
        second.attempt = Attempt(7);
        let mut reversed = artifacts();
        reversed.reverse();
        let one = reproduction_statement(&job(), &artifacts()).to_signed_text();
        let two = reproduction_statement(&second, &reversed).to_signed_text();
        assert_eq!(one, two);
        for absent in [
            "attempt",
            "startedOn",
            "finishedOn",
            "\"version\": {",
            "SHA256:",
        ] {
            assert!(!one.contains(absent), "{absent} in {one}");
        }
        assert!(one.contains("\"id\": \"https://buildfleet.example.org/reproduction/v1\""));
        assert!(one.contains("\"invocationId\": \"https://buildfleet.example.org/jobs/42\""));
        // Another digest is another text.
        let mut other = artifacts();
        other[0].sha256 = "3e".repeat(32).parse().unwrap();
        assert_ne!(reproduction_statement(&job(), &other).to_signed_text(), one);
    }

    #[test]
    fn a_statement_signed_both_ways_verifies_both_ways_and_refuses_tampering() {
        let key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).unwrap();
        let builder = signing::fingerprint(key.public_key());
        let statement = attempt_statement(&job(), &run(&builder), &artifacts());
        let signed = sign_statement(&key, &statement).unwrap();
        assert_eq!(
            verify_statement(key.public_key(), &signed.signed).unwrap(),
            statement
        );
        dsse::verify(
            key.public_key(),
            signed.signed.statement.as_bytes(),
            &signed.dsse,
        )
        .unwrap();
        let tampered = SignedStatement {
            statement: signed.signed.statement.replace("2c2c", "2c2d"),
            signature: signed.signed.signature.clone(),
        };
        assert!(matches!(
            verify_statement(key.public_key(), &tampered),
            Err(SigningError::BadSignature)
        ));
        assert!(dsse::verify(
            key.public_key(),
            tampered.statement.as_bytes(),
            &signed.dsse
        )
        .is_err());
    }

    #[test]
    fn parse_refuses_other_types_and_non_canonical_text() {
        let builder: Fingerprint = FINGERPRINT.parse().unwrap();
        let text = attempt_statement(&job(), &run(&builder), &artifacts()).to_signed_text();
        assert!(is_in_toto(&text));
        assert!(!is_in_toto("{\"format\": \"buildfleet-statement/v1\"}"));
        assert!(Statement::parse(
            &text.replace(STATEMENT_TYPE, "https://in-toto.io/Statement/v0.1")
        )
        .is_err());
        assert!(Statement::parse(&text.replace(BUILD_TYPE, "https://example.com/other")).is_err());
        assert!(Statement::parse(
            &text.replace("{\n  \"_type\"", "{\n  \"extra\": 1,\n  \"_type\"")
        )
        .is_err());
        assert!(Statement::parse(text.trim_end()).is_err());
        assert!(Statement::parse("not json").is_err());
    }

    #[test]
    fn both_formats_summarise_with_the_signing_key() {
        let builder: Fingerprint = FINGERPRINT.parse().unwrap();
        let text = attempt_statement(&job(), &run(&builder), &artifacts()).to_signed_text();
        let summary = summarize(&text).unwrap();
        assert_eq!(summary.builder, Some(builder));
        assert_eq!(summary.job_id, JobId(42));
        assert_eq!(summary.attempt, Some(Attempt(2)));
        assert_eq!(summary.outcome, Some(Outcome::Succeeded));
        assert_eq!(summary.artifacts[0].0, "a.tar.gz");
        let reproduction = reproduction_statement(&job(), &artifacts()).to_signed_text();
        let summary = summarize(&reproduction).unwrap();
        assert_eq!((summary.builder, summary.attempt), (None, None));
    }

    #[test]
    fn rfc3339_round_trips_and_refuses_other_layouts() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(-5), "1970-01-01T00:00:00Z");
        for ms in [0, 951_782_400_000, 1_796_638_561_999, 253_402_300_799_000] {
            let text = rfc3339_utc(ms);
            assert_eq!(parse_rfc3339_utc(&text), Some(ms / 1000), "{text}");
        }
        for bad in [
            "2026-02-30T00:00:00Z",
            "2026-12-07 10:15:00Z",
            "2026-12-07T10:15:00+01:00",
            "2026-13-07T10:15:00Z",
            "2026-12-07T24:15:00Z",
            "+026-12-07T10:15:00Z",
            "",
        ] {
            assert_eq!(parse_rfc3339_utc(bad), None, "{bad}");
        }
    }
}
