//! `buildfleet artifact …`: list a job's artifacts; download one and verify it the way any
//! user could by hand: `ssh-keygen -Y verify` on the signed build statement, then the
//! file's SHA-256 and size against the statement's entry.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use buildfleet_protocol::provenance;
use buildfleet_protocol::signing::STATEMENT_NAMESPACE;
use clap::{Args, Subcommand};
use futures_util::StreamExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::client::{encode, Api};
use super::exit::{CliError, Outcome, EXIT_CODES_HELP};
use super::output::{print_json, size, Table};
use buildfleet_api::builders::BuilderKeyList;
use buildfleet_api::{Artifact, JobDetail};

use super::client::parse;

#[derive(Debug, Subcommand)]
pub enum ArtifactCommand {
    /// List the published artifacts of a job.
    List(JobArg),
    /// Download an artifact and verify its signed build statement.
    ///
    /// The download streams to NAME.part beside the destination. Then, unless --no-verify:
    /// fetches the job's build statement, its signature and the backend's allowed-signers
    /// file (or uses --allowed-signers), runs
    /// `ssh-keygen -Y verify -f ALLOWED_SIGNERS -I BUILDER -n buildfleet-statement -s SIG
    /// -Overify-time=TIME` with the statement on stdin, BUILDER being the name of the builder
    /// that ran the attempt and TIME when the backend accepted the statement (so a statement
    /// signed before its builder's key was rotated verifies with that key), and checks the file's SHA-256 and size against the statement's entry. Only
    /// then is the file moved to its destination; on any mismatch it is deleted and the exit
    /// code is 5.
    Download(DownloadArgs),
    /// Delete a finished job's artifacts now (the project's admin); the job records when.
    Delete(JobArg),
}

#[derive(Debug, Args)]
pub struct JobArg {
    /// The job's id.
    pub job: i64,
}

#[derive(Debug, Args)]
#[command(after_long_help = EXIT_CODES_HELP)]
pub struct DownloadArgs {
    /// The job's id.
    pub job: i64,
    /// The artifact's name.
    pub name: String,
    /// Where to write it [default: NAME in the current directory; into it when a directory].
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Skip the verification (the file is written as received).
    #[arg(long)]
    pub no_verify: bool,
    /// Trust this allowed-signers file instead of fetching the backend's (pin the builder
    /// keys you trust, so the backend itself need not be trusted).
    #[arg(long, value_name = "PATH")]
    pub allowed_signers: Option<PathBuf>,
}

pub async fn run(api: &Api, json: bool, command: ArtifactCommand) -> Result<Outcome, CliError> {
    match command {
        ArtifactCommand::List(arg) => list(api, json, arg.job).await,
        ArtifactCommand::Download(args) => download(api, json, args).await,
        ArtifactCommand::Delete(arg) => delete(api, json, arg.job).await,
    }
}

async fn delete(api: &Api, json: bool, job: i64) -> Result<Outcome, CliError> {
    let answer = api
        .delete(&format!("/jobs/{job}/artifacts"))
        .await?
        .unwrap_or(Value::Null);
    if json {
        print_json(&answer);
        return Ok(Outcome::Success);
    }
    let deleted: buildfleet_api::notifications::DeletedArtifacts = parse(&answer)?;
    println!(
        "deleted {} artifact(s) of job {}",
        deleted.deleted, deleted.job
    );
    Ok(Outcome::Success)
}

async fn list(api: &Api, json: bool, job: i64) -> Result<Outcome, CliError> {
    let answer = api.get(&format!("/jobs/{job}/artifacts")).await?;
    if json {
        print_json(&answer);
        return Ok(Outcome::Success);
    }
    let artifacts: Vec<Artifact> = parse(&answer["artifacts"])?;
    let mut table = Table::new(&["NAME", "SIZE", "ATTEMPT", "SHA256"]);
    for a in &artifacts {
        table.row(vec![
            a.name.clone(),
            size(a.size),
            a.attempt.to_string(),
            a.sha256.clone(),
        ]);
    }
    table.print();
    Ok(Outcome::Success)
}

/// `path` with `suffix` appended to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name: OsString = path.file_name().unwrap_or_default().to_owned();
    name.push(suffix);
    path.with_file_name(name)
}

/// Removes a partial download when dropped, unless kept.
struct PartFile {
    path: PathBuf,
    keep: bool,
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

async fn download(api: &Api, json: bool, args: DownloadArgs) -> Result<Outcome, CliError> {
    buildfleet_protocol::validate_artifact_name(&args.name)
        .map_err(|e| CliError::Usage(format!("artifact name {:?}: {e}", args.name)))?;
    let destination = match &args.output {
        Some(path) if path.is_dir() => path.join(&args.name),
        Some(path) => path.clone(),
        None => PathBuf::from(&args.name),
    };
    let mut part = PartFile {
        path: with_suffix(&destination, ".part"),
        keep: false,
    };
    let (sha256, length) = fetch_to(api, args.job, &args.name, &part.path).await?;

    let verified = if args.no_verify {
        None
    } else {
        Some(verify(api, &args, &sha256, length).await?)
    };
    std::fs::rename(&part.path, &destination).map_err(|e| {
        CliError::io(
            format!("moving the download to {}", destination.display()),
            e,
        )
    })?;
    part.keep = true;

    if json {
        let mut report = json!({
            "job": args.job,
            "name": args.name,
            "path": destination,
            "size": length,
            "sha256": sha256,
            "verified": verified.is_some(),
        });
        if let Some(v) = &verified {
            report["builder"] = v.builder.clone().into();
            report["fingerprint"] = v.fingerprint.clone().into();
            report["attempt"] = v.attempt.into();
            report["outcome"] = v.outcome.clone().into();
        }
        print_json(&report);
        return Ok(Outcome::Success);
    }
    println!(
        "downloaded {} to {} ({}, sha256 {sha256})",
        args.name,
        destination.display(),
        size(length)
    );
    match verified {
        Some(v) => {
            println!(
                "verified: build statement of job {} attempt {} ({}) signed by builder {} ({}), per ssh-keygen -Y verify",
                args.job, v.attempt, v.outcome, v.builder, v.fingerprint
            );
            println!(
                "verified: the statement lists {} with this sha256 and size {length}",
                args.name
            );
        }
        None => println!("not verified (--no-verify)"),
    }
    Ok(Outcome::Success)
}

/// Streams the artifact to `path`, hashing on the way: `(sha256, size)`.
async fn fetch_to(api: &Api, job: i64, name: &str, path: &Path) -> Result<(String, u64), CliError> {
    let mut response = api
        .get_response(&format!("/jobs/{job}/artifacts/{}", encode(name)))
        .await?;
    let writing = |e| CliError::io(format!("writing {}", path.display()), e);
    let mut file = tokio::fs::File::create(path).await.map_err(writing)?;
    let mut hasher = Sha256::new();
    let mut length = 0u64;
    while let Some(chunk) = response.next().await {
        let chunk = chunk.map_err(|e| CliError::Network(format!("downloading {name}: {e}")))?;
        hasher.update(&chunk);
        length += chunk.len() as u64;
        file.write_all(&chunk).await.map_err(writing)?;
    }
    file.flush().await.map_err(writing)?;
    file.sync_all().await.map_err(writing)?;
    Ok((hex::encode(hasher.finalize()), length))
}

/// What a successful verification established.
struct Verified {
    builder: String,
    fingerprint: String,
    attempt: i32,
    outcome: String,
}

async fn verify(
    api: &Api,
    args: &DownloadArgs,
    sha256: &str,
    length: u64,
) -> Result<Verified, CliError> {
    let job = args.job;
    let statement_bytes = api.get_bytes(&format!("/jobs/{job}/statement")).await?;
    let signature = api.get_bytes(&format!("/jobs/{job}/statement.sig")).await?;
    // Either format: an in-toto statement, or a buildfleet-statement/v1 of older builders.
    let statement = std::str::from_utf8(&statement_bytes)
        .map_err(|e| e.to_string())
        .and_then(|text| provenance::summarize(text).map_err(|e| e.to_string()))
        .map_err(|e| CliError::Verification(format!("the build statement does not parse: {e}")))?;
    if statement.job_id.0 != job {
        return Err(CliError::Verification(format!(
            "the statement is about job {}, not job {job}",
            statement.job_id.0
        )));
    }

    // The signer: the builder of the attempt the statement covers.
    let detail: JobDetail = parse(&api.get(&format!("/jobs/{job}")).await?)?;
    let attempt = statement.attempt.map(|a| a.0).ok_or_else(|| {
        CliError::Verification("the statement names no attempt: nobody to check it against".into())
    })?;
    let builder_id = detail
        .attempts
        .iter()
        .find(|a| a.attempt == attempt)
        .and_then(|a| a.builder)
        .ok_or_else(|| {
            CliError::Verification(format!(
                "attempt {attempt} has no builder on record (removed?): nobody to check the signature against"
            ))
        })?;
    // When the statement was signed: its attempt's end, when the backend verified it against
    // the builder's key of that time (keys are rotated; each is valid for its lifetime).
    let signed_at = detail
        .attempts
        .iter()
        .find(|a| a.attempt == attempt)
        .and_then(|a| a.finished_at)
        .ok_or_else(|| {
            CliError::Verification(format!(
                "attempt {attempt} has not finished: its statement has no signing time"
            ))
        })?;
    let keys: BuilderKeyList = parse(&api.get(&format!("/builders/{builder_id}/keys")).await?)?;
    let signer = statement
        .builder
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    let Some(key) = keys.keys.iter().find(|k| k.fingerprint == signer) else {
        return Err(CliError::Verification(format!(
            "the statement names key {signer}, which is not a key of builder {}",
            keys.name
        )));
    };
    if let Some(reason) = &key.revoked_reason {
        return Err(CliError::Verification(format!(
            "the statement was signed by key {signer} of builder {}, revoked: {reason}",
            keys.name
        )));
    }
    let builder = BuilderSigner {
        name: keys.name.clone(),
        fingerprint: key.fingerprint.clone(),
    };
    let allowed_signers = match &args.allowed_signers {
        Some(path) => std::fs::read(path)
            .map_err(|e| CliError::Usage(format!("--allowed-signers {}: {e}", path.display())))?,
        None => api.get_bytes("/allowed_signers").await?.to_vec(),
    };

    ssh_keygen_verify(
        &allowed_signers,
        &builder.name,
        &signature,
        &statement_bytes,
        Some(signed_at),
    )
    .await?;

    let (_, entry_sha256, entry_size) = statement
        .artifacts
        .iter()
        .find(|(name, _, _)| *name == args.name)
        .ok_or_else(|| {
            CliError::Verification(format!(
                "the signed statement does not list an artifact named {:?}",
                args.name
            ))
        })?;
    if entry_sha256.as_str() != sha256 {
        return Err(CliError::Verification(format!(
            "{} has sha256 {sha256}, but the signed statement says {entry_sha256}",
            args.name
        )));
    }
    // Only the older format signs sizes; the digest above covers the bytes either way.
    if let Some(size) = entry_size.filter(|size| *size != length) {
        return Err(CliError::Verification(format!(
            "{} has {length} bytes, but the signed statement says {size}",
            args.name
        )));
    }
    Ok(Verified {
        builder: builder.name,
        fingerprint: builder.fingerprint,
        attempt,
        outcome: statement
            .outcome
            .map(|o| o.as_str().to_owned())
            .unwrap_or_default(),
    })
}

/// The builder and key that signed a statement.
struct BuilderSigner {
    name: String,
    fingerprint: String,
}

/// Runs the real `ssh-keygen -Y verify` with the statement on stdin, at `verify_at` (unix
/// milliseconds; the key must have been valid then) or else now.
pub(super) async fn ssh_keygen_verify(
    allowed_signers: &[u8],
    principal: &str,
    signature: &[u8],
    statement: &[u8],
    verify_at: Option<i64>,
) -> Result<(), CliError> {
    let dir = tempfile::tempdir().map_err(|e| CliError::io("creating a temporary directory", e))?;
    let signers_path = dir.path().join("allowed_signers");
    let signature_path = dir.path().join("statement.sig");
    std::fs::write(&signers_path, allowed_signers)
        .and_then(|()| std::fs::write(&signature_path, signature))
        .map_err(|e| CliError::io("writing temporary files", e))?;
    let mut command = tokio::process::Command::new("ssh-keygen");
    if let Some(at) = verify_at {
        let time = buildfleet_protocol::signing::openssh_time(at.div_euclid(1000))
            .map_err(|e| CliError::Verification(format!("the signing time: {e}")))?;
        command.arg(format!("-Overify-time={time}"));
    }
    let mut child = command
        .arg("-Y")
        .arg("verify")
        .arg("-f")
        .arg(&signers_path)
        .arg("-I")
        .arg(principal)
        .arg("-n")
        .arg(STATEMENT_NAMESPACE)
        .arg("-s")
        .arg(&signature_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            CliError::Verification(format!(
                "cannot run ssh-keygen ({e}); install OpenSSH, or pass --no-verify"
            ))
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(statement)
            .await
            .map_err(|e| CliError::io("writing to ssh-keygen", e))?;
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| CliError::io("waiting for ssh-keygen", e))?;
    if !output.status.success() {
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        return Err(CliError::Verification(format!(
            "ssh-keygen -Y verify rejected the statement signature for {principal:?}: {}",
            said.trim()
        )));
    }
    Ok(())
}
