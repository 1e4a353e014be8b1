//! Checks a builder's `job_response` before anything is published: the statement must be
//! signed by the builder's admitted key, describe this job and attempt (its annotations
//! included, exactly), and list exactly the artifacts that were uploaded under the attempt's
//! token, with the same sizes and digests.
//! A plan-mode attempt's plan output comes along, within [`MAX_PLAN_BYTES`].
//!
//! Two statement formats are accepted: the in-toto Statement v1 with a SLSA provenance
//! predicate (`docs/provenance.md`), with its DSSE signature and, for a succeeded build,
//! the reproduction statement, which must be byte for byte the backend's own rebuild; and
//! the older `buildfleet-statement/v1` text that builders from before sent (no DSSE).

use std::collections::BTreeMap;

use buildfleet_protocol::dsse::{self, DsseError, DsseSignature};
use buildfleet_protocol::provenance::{self, JobFacts, Statement};
use buildfleet_protocol::signing::{self, BuildStatement, STATEMENT_FORMAT};
use buildfleet_protocol::ssh_key::PublicKey;
use buildfleet_protocol::{
    ArtifactDigest, Attempt, JobMode, JobResponse, Outcome, SignedStatement,
};

use crate::store::{Artifact, Job, Publication, Reproduction, MAX_PLAN_BYTES};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StatementError {
    #[error("signature: {0}")]
    Signature(String),
    #[error("statement field {field} is {found:?}, expected {expected:?}")]
    Mismatch {
        field: &'static str,
        found: String,
        expected: String,
    },
    #[error("annotation {key:?} {problem}")]
    AnnotationDiffers { key: String, problem: &'static str },
    #[error("artifact {0:?} is in the statement but was not uploaded")]
    NotUploaded(String),
    #[error("artifact {0:?} was uploaded but is not in the statement")]
    NotDeclared(String),
    #[error("artifact {name:?}: statement says {declared}, upload was {uploaded}")]
    ArtifactDiffers {
        name: String,
        declared: String,
        uploaded: String,
    },
    #[error("a plan-mode job must not upload artifacts")]
    ArtifactsInPlanMode,
    #[error("the plan output is {size} bytes, over the limit of {limit} bytes")]
    PlanTooLarge { size: usize, limit: usize },
    #[error("a build-mode job reported plan output; plan is for plan-mode jobs only")]
    PlanInBuildMode,
    #[error("the in-toto statement came without its DSSE signature")]
    DsseMissing,
    #[error("DSSE signature of the statement: {0}")]
    Dsse(DsseError),
    #[error("a succeeded build came without its reproduction statement")]
    ReproductionMissing,
    #[error("a reproduction statement came with a {0}; only succeeded builds have one")]
    UnexpectedReproduction(&'static str),
    #[error("the reproduction statement differs from the backend's rebuild of it (first difference at line {line})")]
    ReproductionDiffers { line: usize },
    #[error("reproduction statement SSH signature: {0}")]
    ReproductionSignature(String),
    #[error("DSSE signature of the reproduction statement: {0}")]
    ReproductionDsse(DsseError),
    #[error("statement time {field} is {value:?}, not RFC 3339 UTC or after finishedOn")]
    BadTime { field: &'static str, value: String },
}

fn expect_eq(
    field: &'static str,
    found: impl ToString,
    expected: impl ToString,
) -> Result<(), StatementError> {
    let (found, expected) = (found.to_string(), expected.to_string());
    if found == expected {
        Ok(())
    } else {
        Err(StatementError::Mismatch {
            field,
            found,
            expected,
        })
    }
}

/// Like [`expect_eq`] for values without a display form (lists, descriptors): compared as
/// values, shown as their debug form when they differ.
fn expect_same<T: PartialEq + std::fmt::Debug>(
    field: &'static str,
    found: &T,
    expected: &T,
) -> Result<(), StatementError> {
    if found == expected {
        Ok(())
    } else {
        Err(StatementError::Mismatch {
            field,
            found: format!("{found:?}"),
            expected: format!("{expected:?}"),
        })
    }
}

/// Verifies `response` for `job` against the key and the attempt's uploads, and returns
/// what to publish.
pub fn verify_completion(
    job: &Job,
    response: &JobResponse,
    key: &PublicKey,
    backend_id: &str,
    uploads: &[Artifact],
) -> Result<Publication, StatementError> {
    if let Some(plan) = &response.plan {
        if job.mode != crate::store::JobMode::Plan {
            return Err(StatementError::PlanInBuildMode);
        }
        if plan.len() > MAX_PLAN_BYTES {
            return Err(StatementError::PlanTooLarge {
                size: plan.len(),
                limit: MAX_PLAN_BYTES,
            });
        }
    }
    if provenance::is_in_toto(&response.statement.statement) {
        return verify_in_toto(job, response, key, backend_id, uploads);
    }
    let statement: BuildStatement = signing::verify_statement(key, &response.statement)
        .map_err(|e| StatementError::Signature(e.to_string()))?;
    expect_eq("format", &statement.format, STATEMENT_FORMAT)?;
    expect_eq("backend_id", &statement.backend_id, backend_id)?;
    expect_eq("job_id", statement.job_id, response.job_id)?;
    expect_eq("job_id", statement.job_id.0, job.id.0)?;
    expect_eq("attempt", statement.attempt, response.attempt)?;
    expect_eq(
        "source_sha256",
        &statement.source_sha256,
        &job.source_sha256,
    )?;
    expect_eq("recipe", &statement.recipe, &job.recipe)?;
    expect_eq("mode", mode_name(statement.mode), job.mode.as_str())?;
    expect_annotations(&statement.annotations, &job.annotations)?;
    expect_eq(
        "outcome",
        statement.outcome.as_str(),
        response.outcome.as_str(),
    )?;
    expect_same("artifacts", &statement.artifacts, &response.artifacts)?;
    if statement.mode == JobMode::Plan && !(statement.artifacts.is_empty() && uploads.is_empty()) {
        return Err(StatementError::ArtifactsInPlanMode);
    }
    let mut uploaded: BTreeMap<&str, &Artifact> =
        uploads.iter().map(|a| (a.name.as_str(), a)).collect();
    for declared in &statement.artifacts {
        let upload = uploaded
            .remove(declared.name.as_str())
            .ok_or_else(|| StatementError::NotUploaded(declared.name.clone()))?;
        let size_ok = u64::try_from(upload.size).is_ok_and(|s| s == declared.size);
        if !size_ok || upload.sha256 != declared.sha256.as_str() {
            return Err(StatementError::ArtifactDiffers {
                name: declared.name.clone(),
                declared: format!("{} bytes sha256:{}", declared.size, declared.sha256),
                uploaded: format!("{} bytes sha256:{}", upload.size, upload.sha256),
            });
        }
    }
    // Everything uploaded under the attempt's token is published with the statement, so the
    // statement must vouch for every upload.
    if let Some(name) = uploaded.keys().next() {
        return Err(StatementError::NotDeclared((*name).to_owned()));
    }
    Ok(Publication {
        statement: response.statement.statement.clone(),
        signature: response.statement.signature.clone(),
        plan: response.plan.clone(),
        dsse_signature: None,
        signer_fingerprint: Some(signing::fingerprint(key).to_string()),
        reproduction: None,
    })
}

/// What the backend knows of the job, as the builder's assignment carried it.
fn job_facts(job: &Job, backend_id: &str, attempt: Attempt) -> Result<JobFacts, StatementError> {
    Ok(JobFacts {
        backend_id: backend_id.to_owned(),
        job_id: buildfleet_protocol::JobId(job.id.0),
        attempt,
        recipe: job.recipe.clone(),
        mode: match job.mode {
            crate::store::JobMode::Build => JobMode::Build,
            crate::store::JobMode::Plan => JobMode::Plan,
        },
        parameters: job.parameters.clone(),
        annotations: job.annotations.clone(),
        source_url: job.source_url.clone(),
        source_sha256: job
            .source_sha256
            .parse()
            .map_err(|_| StatementError::Mismatch {
                field: "source digest",
                found: job.source_sha256.clone(),
                expected: "a SHA-256 hex digest".into(),
            })?,
    })
}

/// Checks an in-toto statement: its SSHSIG and DSSE signatures by `key`, every field against
/// the job (a field the builder alone knows, its times and versions, only for form), its
/// subjects against the uploads, and the reproduction statement against the backend's own.
fn verify_in_toto(
    job: &Job,
    response: &JobResponse,
    key: &PublicKey,
    backend_id: &str,
    uploads: &[Artifact],
) -> Result<Publication, StatementError> {
    let statement: Statement = provenance::verify_statement(key, &response.statement)
        .map_err(|e| StatementError::Signature(e.to_string()))?;
    let dsse_sig = response
        .dsse_signature
        .clone()
        .ok_or(StatementError::DsseMissing)?;
    let keyid = dsse::keyid(key);
    dsse::verify(
        key,
        response.statement.statement.as_bytes(),
        &DsseSignature {
            keyid: keyid.clone(),
            sig: dsse_sig.clone(),
        },
    )
    .map_err(StatementError::Dsse)?;

    expect_eq("job_id", response.job_id.0, job.id.0)?;
    let facts = job_facts(job, backend_id, response.attempt)?;
    let definition = &statement.predicate.build_definition;
    let external = &definition.external_parameters;
    let internal = &definition.internal_parameters;
    expect_eq("externalParameters.recipe", &external.recipe, &facts.recipe)?;
    expect_eq(
        "externalParameters.mode",
        mode_name(external.mode),
        mode_name(facts.mode),
    )?;
    expect_eq(
        "externalParameters.parameters",
        format!("{:?}", external.parameters),
        format!("{:?}", facts.parameters),
    )?;
    expect_eq(
        "externalParameters.source.uri",
        &external.source.uri,
        &facts.source_url,
    )?;
    expect_eq(
        "externalParameters.source.digest.sha256",
        &external.source.digest.sha256,
        &facts.source_sha256,
    )?;
    expect_annotations(&external.annotations, &job.annotations)?;
    expect_eq(
        "internalParameters.backendId",
        &internal.backend_id,
        backend_id,
    )?;
    expect_eq("internalParameters.jobId", internal.job_id.0, job.id.0)?;
    expect_eq(
        "internalParameters.attempt",
        format!("{:?}", internal.attempt),
        format!("{:?}", Some(response.attempt)),
    )?;
    // The rest of the build definition (resolvedDependencies) and the ids follow from the
    // job: rebuild the statement with the builder's own run facts and compare whole parts.
    let details = &statement.predicate.run_details;
    let started = time_of("startedOn", details.metadata.started_on.as_deref())?;
    let finished = time_of("finishedOn", details.metadata.finished_on.as_deref())?;
    if started > finished {
        return Err(StatementError::BadTime {
            field: "startedOn",
            value: details.metadata.started_on.clone().unwrap_or_default(),
        });
    }
    let outcome = statement
        .outcome()
        .ok_or_else(|| StatementError::Mismatch {
            field: "runDetails.byproducts outcome",
            found: "none".into(),
            expected: response.outcome.as_str().into(),
        })?;
    expect_eq("outcome", outcome.as_str(), response.outcome.as_str())?;
    let rebuilt = provenance::attempt_statement(
        &facts,
        &provenance::RunFacts {
            builder: signing::fingerprint(key),
            versions: details.builder.version.clone(),
            started_ms: started.saturating_mul(1000),
            finished_ms: finished.saturating_mul(1000),
            outcome,
        },
        &response.artifacts,
    );
    let expected = &rebuilt.predicate;
    expect_eq(
        "runDetails.builder.id",
        &details.builder.id,
        &expected.run_details.builder.id,
    )?;
    expect_eq(
        "runDetails.metadata.invocationId",
        &details.metadata.invocation_id,
        &expected.run_details.metadata.invocation_id,
    )?;
    expect_same(
        "runDetails.byproducts",
        &details.byproducts,
        &expected.run_details.byproducts,
    )?;
    expect_same(
        "buildDefinition.resolvedDependencies",
        &definition.resolved_dependencies,
        &expected.build_definition.resolved_dependencies,
    )?;
    // Subjects: exactly the response's artifacts (names and digests), which are checked
    // against the uploads below.
    expect_same("subject", &statement.subject, &rebuilt.subject)?;
    if facts.mode == JobMode::Plan && !(response.artifacts.is_empty() && uploads.is_empty()) {
        return Err(StatementError::ArtifactsInPlanMode);
    }
    check_uploads(&response.artifacts, uploads)?;
    if rebuilt.to_signed_text() != response.statement.statement {
        // Every part was compared above; a difference left is one of layout.
        return Err(StatementError::Mismatch {
            field: "statement text",
            found: "a text other than the canonical one".into(),
            expected: "the canonical statement of these values".into(),
        });
    }
    let reproduction = verify_reproduction(&facts, response, key, &keyid)?;
    Ok(Publication {
        statement: response.statement.statement.clone(),
        signature: response.statement.signature.clone(),
        plan: response.plan.clone(),
        dsse_signature: Some(dsse_sig),
        signer_fingerprint: Some(keyid),
        reproduction,
    })
}

/// A succeeded build-mode attempt must carry the reproduction statement, exactly as the
/// backend rebuilds it from the job and the artifacts, signed both ways by the same key;
/// any other attempt must carry none.
fn verify_reproduction(
    facts: &JobFacts,
    response: &JobResponse,
    key: &PublicKey,
    keyid: &str,
) -> Result<Option<Reproduction>, StatementError> {
    let wanted = response.outcome == Outcome::Succeeded && facts.mode == JobMode::Build;
    let Some(sent) = &response.reproduction else {
        return if wanted {
            Err(StatementError::ReproductionMissing)
        } else {
            Ok(None)
        };
    };
    if !wanted {
        return Err(StatementError::UnexpectedReproduction(
            if facts.mode == JobMode::Plan {
                "plan"
            } else {
                "build that did not succeed"
            },
        ));
    }
    let expected = provenance::reproduction_statement(facts, &response.artifacts).to_signed_text();
    if sent.statement != expected {
        let line = sent
            .statement
            .lines()
            .zip(expected.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| sent.statement.lines().count().min(expected.lines().count()))
            + 1;
        return Err(StatementError::ReproductionDiffers { line });
    }
    provenance::verify_statement(
        key,
        &SignedStatement {
            statement: sent.statement.clone(),
            signature: sent.signature.clone(),
        },
    )
    .map_err(|e| StatementError::ReproductionSignature(e.to_string()))?;
    dsse::verify(
        key,
        sent.statement.as_bytes(),
        &DsseSignature {
            keyid: keyid.to_owned(),
            sig: sent.dsse_signature.clone(),
        },
    )
    .map_err(StatementError::ReproductionDsse)?;
    Ok(Some(Reproduction {
        statement: sent.statement.clone(),
        signature: sent.signature.clone(),
        dsse_signature: sent.dsse_signature.clone(),
    }))
}

fn time_of(field: &'static str, value: Option<&str>) -> Result<i64, StatementError> {
    value
        .and_then(provenance::parse_rfc3339_utc)
        .ok_or_else(|| StatementError::BadTime {
            field,
            value: value.unwrap_or_default().to_owned(),
        })
}

/// Every declared artifact was uploaded with its size and digest, and nothing else was.
fn check_uploads(declared: &[ArtifactDigest], uploads: &[Artifact]) -> Result<(), StatementError> {
    let mut uploaded: BTreeMap<&str, &Artifact> =
        uploads.iter().map(|a| (a.name.as_str(), a)).collect();
    for declared in declared {
        let upload = uploaded
            .remove(declared.name.as_str())
            .ok_or_else(|| StatementError::NotUploaded(declared.name.clone()))?;
        let size_ok = u64::try_from(upload.size).is_ok_and(|s| s == declared.size);
        if !size_ok || upload.sha256 != declared.sha256.as_str() {
            return Err(StatementError::ArtifactDiffers {
                name: declared.name.clone(),
                declared: format!("{} bytes sha256:{}", declared.size, declared.sha256),
                uploaded: format!("{} bytes sha256:{}", upload.size, upload.sha256),
            });
        }
    }
    match uploaded.keys().next() {
        Some(name) => Err(StatementError::NotDeclared((*name).to_owned())),
        None => Ok(()),
    }
}

/// The statement must carry exactly the job's annotations: a verifier reads what was built
/// from them. The first key that differs is named (values can be long; they are not quoted).
fn expect_annotations(
    signed: &BTreeMap<String, String>,
    job: &BTreeMap<String, String>,
) -> Result<(), StatementError> {
    let differs = |key: &String, problem| StatementError::AnnotationDiffers {
        key: key.clone(),
        problem,
    };
    for (key, value) in job {
        match signed.get(key) {
            None => return Err(differs(key, "is missing from the statement")),
            Some(signed) if signed != value => {
                return Err(differs(
                    key,
                    "has another value in the statement than on the job",
                ))
            }
            Some(_) => {}
        }
    }
    match signed.keys().find(|key| !job.contains_key(*key)) {
        Some(key) => Err(differs(key, "is in the statement but not on the job")),
        None => Ok(()),
    }
}

fn mode_name(mode: JobMode) -> &'static str {
    match mode {
        JobMode::Build => "build",
        JobMode::Plan => "plan",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use buildfleet_protocol::provenance::{attempt_statement, reproduction_statement, RunFacts};
    use buildfleet_protocol::signing::{fingerprint, sign_statement};
    use buildfleet_protocol::ssh_key::rand_core::OsRng;
    use buildfleet_protocol::ssh_key::{Algorithm, PrivateKey};
    use buildfleet_protocol::{Sha256Digest, SignedReproduction};

    const BACKEND: &str = "https://buildfleet.example.org";

    fn job() -> Job {
        Job {
            id: crate::store::JobId(7),
            source_url: "https://crates.example/source.crate".into(),
            source_sha256: "9f".repeat(32),
            source_max_bytes: 1 << 20,
            recipe: "cargo-build".into(),
            parameters: BTreeMap::from([("offline".into(), "true".into())]),
            required_labels: Default::default(),
            annotations: BTreeMap::from([("crate".into(), "itoa".into())]),
            mode: crate::store::JobMode::Build,
            priority: 0,
            state: crate::store::JobState::Running,
            attempt: crate::store::Attempt(2),
            max_attempts: 3,
            failed_attempts: 0,
            timeout_secs: 3600,
            submitter: "test".into(),
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
            project: crate::store::ProjectId::DEFAULT,
            reproduce: 1,
            on_mismatch: crate::store::OnMismatch::Fail,
        }
    }

    fn digest(c: char) -> Sha256Digest {
        c.to_string().repeat(64).parse().unwrap()
    }

    fn artifacts() -> Vec<ArtifactDigest> {
        vec![ArtifactDigest {
            name: "a.tar.gz".into(),
            size: 5,
            sha256: digest('a'),
        }]
    }

    fn uploads() -> Vec<Artifact> {
        vec![Artifact {
            job: crate::store::JobId(7),
            attempt: crate::store::Attempt(2),
            name: "a.tar.gz".into(),
            size: 5,
            sha256: "a".repeat(64),
            storage_key: "k".into(),
            statement: None,
            statement_signature: None,
            published: false,
            created_at: 0,
        }]
    }

    /// What a current builder sends for a succeeded build of [`job`].
    fn response(key: &PrivateKey) -> JobResponse {
        let facts = job_facts(&job(), BACKEND, Attempt(2)).unwrap();
        let run = RunFacts {
            builder: fingerprint(key.public_key()),
            versions: BTreeMap::from([("rustc".into(), "rustc 1.95.0".into())]),
            started_ms: 1_000_000,
            finished_ms: 1_060_000,
            outcome: Outcome::Succeeded,
        };
        let signed =
            provenance::sign_statement(key, &attempt_statement(&facts, &run, &artifacts()))
                .unwrap();
        let reproduction =
            provenance::sign_statement(key, &reproduction_statement(&facts, &artifacts())).unwrap();
        JobResponse {
            job_id: buildfleet_protocol::JobId(7),
            attempt: Attempt(2),
            outcome: Outcome::Succeeded,
            exit_status: Some(0),
            error: None,
            artifacts: artifacts(),
            plan: None,
            statement: signed.signed,
            dsse_signature: Some(signed.dsse.sig),
            reproduction: Some(SignedReproduction {
                statement: reproduction.signed.statement,
                signature: reproduction.signed.signature,
                dsse_signature: reproduction.dsse.sig,
            }),
        }
    }

    fn key() -> PrivateKey {
        PrivateKey::random(&mut OsRng, Algorithm::Ed25519).unwrap()
    }

    fn verify(response: &JobResponse, key: &PrivateKey) -> Result<Publication, StatementError> {
        verify_completion(&job(), response, key.public_key(), BACKEND, &uploads())
    }

    #[test]
    fn an_in_toto_response_is_accepted_with_its_dsse_and_reproduction() {
        let key = key();
        let publication = verify(&response(&key), &key).unwrap();
        assert!(publication.dsse_signature.is_some());
        assert!(publication.reproduction.is_some());
        assert_eq!(
            publication.signer_fingerprint,
            Some(fingerprint(key.public_key()).to_string())
        );
    }

    #[test]
    fn a_wrong_dsse_signature_is_refused() {
        let (key, other) = (key(), key());
        let mut bad = response(&key);
        // Signed by another key over the same text: the SSHSIG is right, the DSSE is not.
        bad.dsse_signature = Some(
            dsse::sign(&other, bad.statement.statement.as_bytes())
                .unwrap()
                .sig,
        );
        assert!(matches!(
            verify(&bad, &key),
            Err(StatementError::Dsse(DsseError::BadSignature { .. }))
        ));
        bad.dsse_signature = Some("@@not base64@@".into());
        assert_eq!(
            verify(&bad, &key).unwrap_err(),
            StatementError::Dsse(DsseError::Base64 { field: "sig" })
        );
        bad.dsse_signature = None;
        assert_eq!(verify(&bad, &key).unwrap_err(), StatementError::DsseMissing);
    }

    #[test]
    fn a_reproduction_statement_other_than_the_backends_is_refused() {
        let key = key();
        let mut bad = response(&key);
        // A builder that put its attempt into the reproduction statement, signed properly.
        let facts = job_facts(&job(), BACKEND, Attempt(2)).unwrap();
        let mut statement = reproduction_statement(&facts, &artifacts());
        statement
            .predicate
            .build_definition
            .internal_parameters
            .attempt = Some(Attempt(2));
        let signed = provenance::sign_statement(&key, &statement).unwrap();
        bad.reproduction = Some(SignedReproduction {
            statement: signed.signed.statement,
            signature: signed.signed.signature,
            dsse_signature: signed.dsse.sig,
        });
        assert!(matches!(
            verify(&bad, &key),
            Err(StatementError::ReproductionDiffers { .. })
        ));
        // The right text with a DSSE signature of the attempt statement instead.
        let mut swapped = response(&key);
        let attempt_sig = swapped.dsse_signature.clone().unwrap();
        if let Some(reproduction) = swapped.reproduction.as_mut() {
            reproduction.dsse_signature = attempt_sig;
        }
        assert!(matches!(
            verify(&swapped, &key),
            Err(StatementError::ReproductionDsse(
                DsseError::BadSignature { .. }
            ))
        ));
        let mut missing = response(&key);
        missing.reproduction = None;
        assert_eq!(
            verify(&missing, &key).unwrap_err(),
            StatementError::ReproductionMissing
        );
    }

    #[test]
    fn a_field_that_differs_from_the_job_is_named() {
        let key = key();
        let mut other_job = job();
        other_job.source_url = "https://elsewhere.example/source.crate".into();
        let err = verify_completion(
            &other_job,
            &response(&key),
            key.public_key(),
            BACKEND,
            &uploads(),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                StatementError::Mismatch {
                    field: "externalParameters.source.uri",
                    ..
                }
            ),
            "{err}"
        );
        let err =
            verify_completion(&job(), &response(&key), key.public_key(), BACKEND, &[]).unwrap_err();
        assert_eq!(err, StatementError::NotUploaded("a.tar.gz".into()));
    }

    #[test]
    fn an_older_builders_v1_statement_is_still_accepted() {
        let key = key();
        let old = BuildStatement {
            format: STATEMENT_FORMAT.into(),
            backend_id: BACKEND.into(),
            builder: fingerprint(key.public_key()),
            job_id: buildfleet_protocol::JobId(7),
            attempt: Attempt(2),
            source_sha256: "9f".repeat(32).parse().unwrap(),
            recipe: "cargo-build".into(),
            mode: JobMode::Build,
            annotations: BTreeMap::from([("crate".into(), "itoa".into())]),
            outcome: Outcome::Succeeded,
            artifacts: artifacts(),
        };
        let mut response = response(&key);
        response.statement = sign_statement(&key, &old).unwrap();
        response.dsse_signature = None;
        response.reproduction = None;
        let publication = verify(&response, &key).unwrap();
        assert_eq!(publication.dsse_signature, None);
        assert_eq!(publication.reproduction, None);
        // And it stays verifiable as before.
        signing::verify_statement(key.public_key(), &response.statement).unwrap();
    }
}
