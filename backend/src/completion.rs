//! Checks a builder's `job_response` before anything is published: the statement must be
//! signed by the builder's admitted key, describe this job and attempt (its annotations
//! included, exactly), and list exactly the artifacts that were uploaded under the attempt's
//! token, with the same sizes and digests.
//! A plan-mode attempt's plan output comes along, within [`MAX_PLAN_BYTES`].

use std::collections::BTreeMap;

use buildfleet_protocol::signing::{self, BuildStatement, STATEMENT_FORMAT};
use buildfleet_protocol::ssh_key::PublicKey;
use buildfleet_protocol::{JobMode, JobResponse};

use crate::store::{Artifact, Job, Publication, MAX_PLAN_BYTES};

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
    if statement.artifacts != response.artifacts {
        return Err(StatementError::Mismatch {
            field: "artifacts",
            found: format!("{:?}", statement.artifacts),
            expected: format!("{:?}", response.artifacts),
        });
    }
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
    })
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
