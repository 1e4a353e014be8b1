//! `buildfleet verify ARTIFACT_FILE`: checks a file against the signed statement of the job
//! that published it, every signature against the allowed signers at the statement's time,
//! and says who built and who reproduced it.
//!
//! Online (the default) it finds the job (`--job`, or by the file's SHA-256 through
//! `GET /api/v1/artifacts/by-sha256/{hex}`), fetches the DSSE envelope
//! (`/jobs/{id}/statement.dsse`), the SSHSIG signatures (`/jobs/{id}/signatures`) and the
//! allowed-signers file (or uses `--allowed-signers`, to trust pinned keys instead of the
//! backend's). Offline (`--envelope FILE --allowed-signers FILE`) it needs no backend.
//!
//! The allowed-signers file is parsed here (principals, `namespaces=`, `valid-after=`,
//! `valid-before=`), so the DSSE check needs nothing but this binary; each SSHSIG is
//! checked by the real `ssh-keygen -Y verify` when it is on PATH.

use std::io::Read;
use std::path::{Path, PathBuf};

use buildfleet_protocol::dsse::{self, DsseSignature, Envelope};
use buildfleet_protocol::provenance::{self, Statement};
use buildfleet_protocol::signing::{self, BuildStatement, STATEMENT_NAMESPACE};
use clap::Args;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use ssh_key::PublicKey;

use super::artifacts::ssh_keygen_verify;
use super::client::Api;
use super::exit::{CliError, Outcome, EXIT_CODES_HELP};
use super::output::{print_json, utc};
use super::GlobalArgs;

/// `buildfleet verify …`
#[derive(Debug, Args)]
#[command(after_long_help = EXIT_CODES_HELP)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The artifact file to check.
    #[arg(value_name = "ARTIFACT_FILE")]
    pub artifact: PathBuf,
    /// The job whose statement to check against [default: found by the file's SHA-256].
    #[arg(long, value_name = "N")]
    pub job: Option<i64>,
    /// Offline: the DSSE envelope of the statement (what /jobs/N/statement.dsse serves).
    /// Needs --allowed-signers; no backend is asked anything.
    #[arg(long, value_name = "FILE", requires = "allowed_signers")]
    pub envelope: Option<PathBuf>,
    /// The allowed-signers file to trust instead of the backend's (pin the builder keys you
    /// trust, so the backend itself need not be trusted).
    #[arg(long, value_name = "FILE")]
    pub allowed_signers: Option<PathBuf>,
    /// Require at least K builders' signatures on the statement (a job with `reproduce: K`).
    #[arg(long, value_name = "K")]
    pub reproduced_by: Option<usize>,
    /// Check the keys' validity at this time (YYYYMMDDhhmmssZ) instead of the statement's
    /// (its finishedOn, or online the job's end).
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
}

/// One line of an allowed-signers file.
#[derive(Debug, Clone)]
pub struct AllowedSigner {
    pub principals: Vec<String>,
    /// `namespaces=` patterns; `None`: any namespace.
    pub namespaces: Option<Vec<String>>,
    /// Unix seconds, inclusive.
    pub valid_after: Option<i64>,
    pub valid_before: Option<i64>,
    pub key: PublicKey,
    pub fingerprint: String,
}

impl AllowedSigner {
    fn allows_namespace(&self, namespace: &str) -> bool {
        self.namespaces
            .as_ref()
            .is_none_or(|patterns| pattern_list_matches(patterns, namespace))
    }

    fn valid_at(&self, secs: i64) -> bool {
        self.valid_after.is_none_or(|a| a <= secs) && self.valid_before.is_none_or(|b| secs <= b)
    }

    fn validity(&self) -> String {
        let end = |t: Option<i64>, open: &str| {
            t.map_or_else(|| open.to_owned(), |s| utc(s.saturating_mul(1000)))
        };
        format!(
            "valid from {} until {}",
            end(self.valid_after, "the beginning"),
            end(self.valid_before, "revoked or rotated")
        )
    }
}

/// An OpenSSH pattern-list (`a,b*,!c`): matches when a positive pattern matches and no
/// negated one does.
fn pattern_list_matches(patterns: &[String], value: &str) -> bool {
    let mut matched = false;
    for pattern in patterns {
        if let Some(negated) = pattern.strip_prefix('!') {
            if glob(negated.as_bytes(), value.as_bytes()) {
                return false;
            }
        } else if glob(pattern.as_bytes(), value.as_bytes()) {
            matched = true;
        }
    }
    matched
}

/// `*` and `?` wildcards, as OpenSSH's match_pattern.
fn glob(pattern: &[u8], value: &[u8]) -> bool {
    match (pattern.first(), value.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob(&pattern[1..], value) || (!value.is_empty() && glob(pattern, &value[1..]))
        }
        (Some(b'?'), Some(_)) => glob(&pattern[1..], &value[1..]),
        (Some(p), Some(v)) if p == v => glob(&pattern[1..], &value[1..]),
        _ => false,
    }
}

/// OpenSSH's `YYYYMMDD[Z]` or `YYYYMMDDHHMM[SS][Z]` as unix seconds. Buildfleet writes UTC
/// (`Z`); a time without `Z` is read as UTC too (OpenSSH reads it in local time).
pub fn parse_openssh_time(text: &str) -> Option<i64> {
    let digits = text.strip_suffix('Z').unwrap_or(text);
    if !digits.bytes().all(|b| b.is_ascii_digit()) || ![8, 12, 14].contains(&digits.len()) {
        return None;
    }
    let n = |r: std::ops::Range<usize>| digits.get(r).and_then(|p| p.parse::<i64>().ok());
    let (year, month, day) = (n(0..4)?, n(4..6)?, n(6..8)?);
    let (hour, minute, second) = match digits.len() {
        8 => (0, 0, 0),
        12 => (n(8..10)?, n(10..12)?, 0),
        _ => (n(8..10)?, n(10..12)?, n(12..14)?),
    };
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Days from civil (Howard Hinnant).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Splits `options` at commas outside double quotes.
fn split_options(options: &str) -> Vec<String> {
    let (mut parts, mut current, mut quoted) = (Vec::new(), String::new(), false);
    for c in options.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            ',' if !quoted => parts.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    parts.push(current);
    parts
}

/// The fields of a line at whitespace outside double quotes.
fn split_fields(line: &str) -> Vec<String> {
    let (mut fields, mut current, mut quoted) = (Vec::new(), String::new(), false);
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !current.is_empty() {
                    fields.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        fields.push(current);
    }
    fields
}

fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

/// Parses an allowed-signers file. A line that cannot be read is an error naming it (a
/// verifier that skipped it could accept less than the file says). `cert-authority` lines
/// are left out: Buildfleet's signers are plain keys.
pub fn parse_allowed_signers(text: &str) -> Result<Vec<AllowedSigner>, String> {
    let mut signers = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let number = number + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields = split_fields(line);
        let bad = |why: &str| format!("allowed signers, line {number}: {why}");
        let principals = fields.first().ok_or_else(|| bad("empty"))?;
        // The options field is there unless the second field is the key's type.
        let key_at = match fields.get(1) {
            Some(f)
                if PublicKey::from_openssh(&fields[1..].join(" ")).is_ok() && !f.contains('=') =>
            {
                1
            }
            Some(_) => 2,
            None => return Err(bad("no key")),
        };
        let key_text = fields
            .get(key_at..)
            .filter(|rest| !rest.is_empty())
            .map(|rest| rest.join(" "))
            .ok_or_else(|| bad("no key"))?;
        let key = PublicKey::from_openssh(&key_text).map_err(|e| bad(&format!("the key: {e}")))?;
        let mut signer = AllowedSigner {
            principals: principals.split(',').map(str::to_owned).collect(),
            namespaces: None,
            valid_after: None,
            valid_before: None,
            fingerprint: signing::fingerprint(&key).to_string(),
            key,
        };
        let mut cert_authority = false;
        if key_at == 2 {
            for option in split_options(&fields[1]) {
                let (name, value) = match option.split_once('=') {
                    Some((n, v)) => (n.to_ascii_lowercase(), Some(unquote(v))),
                    None => (option.to_ascii_lowercase(), None),
                };
                let time = |v: Option<&str>| {
                    v.and_then(parse_openssh_time)
                        .ok_or_else(|| bad(&format!("{name}: not a time {v:?}")))
                };
                match (name.as_str(), value) {
                    ("cert-authority", None) => cert_authority = true,
                    ("namespaces", Some(v)) => {
                        signer.namespaces = Some(v.split(',').map(str::to_owned).collect());
                    }
                    ("valid-after", v) => signer.valid_after = Some(time(v)?),
                    ("valid-before", v) => signer.valid_before = Some(time(v)?),
                    _ => return Err(bad(&format!("unknown option {option:?}"))),
                }
            }
        }
        if !cert_authority {
            signers.push(signer);
        }
    }
    Ok(signers)
}

/// A verified signer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    pub name: String,
    pub fingerprint: String,
    /// Unix seconds its key was checked at.
    pub at: i64,
}

/// What the statement says of the file.
struct Subjects {
    /// `(name, sha256)`.
    entries: Vec<(String, String)>,
    /// Unix seconds of `finishedOn`, when the statement has it.
    finished: Option<i64>,
    job: i64,
    /// Whether a signing key is the statement's own builder (an attempt's statement names
    /// it; a reproduction statement names none).
    builder: Option<BuiltBy>,
}

enum BuiltBy {
    /// `runDetails.builder.id` and the backend id it is built from.
    Uri { id: String, backend: String },
    /// A `buildfleet-statement/v1` names the key.
    Key(String),
}

impl BuiltBy {
    fn is(&self, fingerprint: &str) -> bool {
        match self {
            BuiltBy::Uri { id, backend } => fingerprint
                .parse()
                .is_ok_and(|fp| provenance::builder_id(backend, &fp) == *id),
            BuiltBy::Key(key) => key == fingerprint,
        }
    }
}

fn read_subjects(payload: &[u8]) -> Result<Subjects, CliError> {
    let text = std::str::from_utf8(payload)
        .map_err(|_| CliError::Verification("the statement is not UTF-8 text".into()))?;
    if provenance::is_in_toto(text) {
        let statement = Statement::parse(text)
            .map_err(|e| CliError::Verification(format!("the statement does not parse: {e}")))?;
        Ok(Subjects {
            entries: statement
                .subject
                .iter()
                .map(|s| (s.name.clone(), s.digest.sha256.to_string()))
                .collect(),
            finished: statement
                .predicate
                .run_details
                .metadata
                .finished_on
                .as_deref()
                .and_then(provenance::parse_rfc3339_utc),
            job: statement
                .predicate
                .build_definition
                .internal_parameters
                .job_id
                .0,
            builder: (!statement
                .predicate
                .run_details
                .builder
                .id
                .ends_with(provenance::REPRODUCTION_BUILDER_SUFFIX))
            .then(|| BuiltBy::Uri {
                id: statement.predicate.run_details.builder.id.clone(),
                backend: statement
                    .predicate
                    .build_definition
                    .internal_parameters
                    .backend_id
                    .clone(),
            }),
        })
    } else {
        let statement: BuildStatement = serde_json::from_str(text)
            .map_err(|e| CliError::Verification(format!("the statement does not parse: {e}")))?;
        Ok(Subjects {
            entries: statement
                .artifacts
                .iter()
                .map(|a| (a.name.clone(), a.sha256.to_string()))
                .collect(),
            finished: None,
            job: statement.job_id.0,
            builder: Some(BuiltBy::Key(statement.builder.to_string())),
        })
    }
}

/// Checks one DSSE signature against the allowed signers valid at `at` (unix seconds).
pub fn check_dsse_signature(
    signers: &[AllowedSigner],
    payload: &[u8],
    signature: &DsseSignature,
    at: i64,
) -> Result<Signer, String> {
    let with_key: Vec<&AllowedSigner> = signers
        .iter()
        .filter(|s| s.fingerprint == signature.keyid)
        .collect();
    if with_key.is_empty() {
        return Err(format!(
            "signer {} is unknown: no key with that fingerprint in the allowed signers (never \
             admitted, removed, or revoked)",
            signature.keyid
        ));
    }
    let in_namespace: Vec<&AllowedSigner> = with_key
        .into_iter()
        .filter(|s| s.allows_namespace(STATEMENT_NAMESPACE))
        .collect();
    let Some(first) = in_namespace.first() else {
        return Err(format!(
            "key {} is not allowed to sign in the namespace {STATEMENT_NAMESPACE}",
            signature.keyid
        ));
    };
    let Some(valid) = in_namespace.iter().find(|s| s.valid_at(at)) else {
        return Err(format!(
            "key {} of {} was not valid at the statement's time {} ({})",
            signature.keyid,
            first.principals.join(","),
            utc(at.saturating_mul(1000)),
            first.validity()
        ));
    };
    dsse::verify(&valid.key, payload, signature).map_err(|e| {
        format!(
            "the DSSE signature of {} ({}) does not verify: {e}",
            valid.principals.join(","),
            signature.keyid
        )
    })?;
    Ok(Signer {
        name: valid.principals.first().cloned().unwrap_or_default(),
        fingerprint: valid.fingerprint.clone(),
        at,
    })
}

fn sha256_of(path: &Path) -> Result<String, CliError> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = file
            .read(&mut buffer)
            .map_err(|e| CliError::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn read_file(path: &Path, what: &str) -> Result<String, CliError> {
    std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("--{what} {}: {e}", path.display())))
}

fn ssh_keygen_on_path() -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| dir.join("ssh-keygen").is_file())
    })
}

/// The job that published `sha256`: the newest one the caller may see.
async fn job_by_digest(api: &Api, sha256: &str) -> Result<(i64, usize), CliError> {
    let answer = api.get(&format!("/artifacts/by-sha256/{sha256}")).await?;
    let jobs: Vec<i64> = answer["artifacts"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["job"].as_i64()).collect())
        .unwrap_or_default();
    match jobs.first() {
        Some(job) => Ok((*job, jobs.len())),
        None => Err(CliError::Verification(format!(
            "no job published an artifact with SHA-256 {sha256} (that this backend shows you); \
             the file is not a Buildfleet artifact, or was changed"
        ))),
    }
}

/// The SSHSIG signatures the backend lists for the job: `(builder, fingerprint, armored)`.
fn sshsig_list(answer: &Value) -> Vec<(String, String, String)> {
    let list = answer
        .get("signatures")
        .and_then(Value::as_array)
        .or_else(|| answer.as_array());
    let field = |e: &Value, names: &[&str]| {
        names
            .iter()
            .find_map(|n| e.get(*n).and_then(Value::as_str))
            .map(str::to_owned)
    };
    list.map(|entries| {
        entries
            .iter()
            .filter_map(|e| {
                Some((
                    field(e, &["builder", "builder_name", "name"]).unwrap_or_default(),
                    field(e, &["fingerprint", "signer_fingerprint", "keyid"])?,
                    field(e, &["signature", "sshsig", "armored"])?,
                ))
            })
            .collect()
    })
    .unwrap_or_default()
}

/// Why a signer of the job is refused, with a revoked key's reason when the backend has it.
async fn explain_unknown(api: &Api, fingerprint: &str, said: String) -> CliError {
    if let Ok(answer) = api.get("/builders").await {
        let ids: Vec<i64> = answer["builders"]
            .as_array()
            .map(|b| b.iter().filter_map(|b| b["id"].as_i64()).collect())
            .unwrap_or_default();
        for id in ids {
            let Ok(keys) = api.get(&format!("/builders/{id}/keys")).await else {
                continue;
            };
            let revoked = keys["keys"].as_array().and_then(|keys| {
                keys.iter().find(|k| {
                    k["fingerprint"].as_str() == Some(fingerprint) && !k["revoked_at"].is_null()
                })
            });
            if let Some(key) = revoked {
                return CliError::Verification(format!(
                    "signer {fingerprint} (builder {}) used a revoked key: {}",
                    keys["name"].as_str().unwrap_or("?"),
                    key["revoked_reason"].as_str().unwrap_or("no reason given")
                ));
            }
        }
    }
    CliError::Verification(said)
}

pub async fn run(args: VerifyArgs) -> Result<Outcome, CliError> {
    let json_output = args.global.json;
    let sha256 = sha256_of(&args.artifact)?;
    let file_name = args
        .artifact
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let offline = args.envelope.is_some();
    let api = if offline {
        None
    } else {
        Some(Api::new(&args.global)?)
    };

    // The envelope, the allowed signers, and (online) the job.
    let (job, envelope_text, allowed_text, note) = match (&api, &args.envelope) {
        (Some(api), _) => {
            let (job, matches) = match args.job {
                Some(job) => (job, 1),
                None => job_by_digest(api, &sha256).await?,
            };
            let note = (matches > 1).then(|| {
                format!("{matches} jobs published this file; checking the newest, job {job}")
            });
            let envelope = api
                .get_bytes(&format!("/jobs/{job}/statement.dsse"))
                .await
                .map_err(|e| match e.api_code() {
                    Some("not_found") => e.hint(format!(
                        "job {job} has no DSSE envelope: no verified statement yet, or one \
                         signed before DSSE; check such a statement with `buildfleet artifact \
                         download {job} NAME` or the OpenSSH recipe in docs/provenance.md"
                    )),
                    _ => e,
                })?;
            let allowed = match &args.allowed_signers {
                Some(path) => read_file(path, "allowed-signers")?,
                None => {
                    String::from_utf8_lossy(&api.get_bytes("/allowed_signers").await?).into_owned()
                }
            };
            (
                Some(job),
                String::from_utf8_lossy(&envelope).into_owned(),
                allowed,
                note,
            )
        }
        (None, Some(path)) => {
            let allowed = match &args.allowed_signers {
                Some(allowed) => read_file(allowed, "allowed-signers")?,
                None => return Err(CliError::Usage("--envelope needs --allowed-signers".into())),
            };
            (args.job, read_file(path, "envelope")?, allowed, None)
        }
        (None, None) => return Err(CliError::Usage("nothing to verify against".into())),
    };

    let envelope = Envelope::parse(&envelope_text)
        .map_err(|e| CliError::Verification(format!("the DSSE envelope: {e}")))?;
    let payload = envelope
        .payload_bytes()
        .map_err(|e| CliError::Verification(format!("the DSSE envelope: {e}")))?;
    let subjects = read_subjects(&payload)?;
    if let Some(job) = job {
        if subjects.job != job {
            return Err(CliError::Verification(format!(
                "the statement is about job {}, not job {job}",
                subjects.job
            )));
        }
    }
    let job = subjects.job;

    // 1. The file is a subject of the statement.
    let Some((subject_name, _)) = subjects.entries.iter().find(|(_, d)| *d == sha256) else {
        let listed: Vec<String> = subjects
            .entries
            .iter()
            .map(|(n, d)| format!("{n} ({d})"))
            .collect();
        return Err(CliError::Verification(format!(
            "{} has SHA-256 {sha256}, which is not a subject of job {job}'s statement (it \
             lists {})",
            args.artifact.display(),
            if listed.is_empty() {
                "no artifacts".to_owned()
            } else {
                listed.join(", ")
            }
        )));
    };

    // 2. The time the keys must have been valid at.
    let at = match &args.at {
        Some(text) => parse_openssh_time(text)
            .ok_or_else(|| CliError::Usage(format!("--at {text:?}: use YYYYMMDDhhmmssZ")))?,
        None => match (subjects.finished, &api) {
            (Some(finished), _) => finished,
            (None, Some(api)) => {
                let detail = api.get(&format!("/jobs/{job}")).await?;
                let finished = detail["job"]["finished_at"]
                    .as_i64()
                    .or_else(|| detail["finished_at"].as_i64())
                    .ok_or_else(|| {
                        CliError::Verification(format!(
                            "job {job} has not finished: its statement has no time to check \
                             keys at"
                        ))
                    })?;
                finished.div_euclid(1000)
            }
            (None, None) => {
                return Err(CliError::Usage(
                    "the statement carries no signing time (a reproduction statement): give \
                     --at YYYYMMDDhhmmssZ"
                        .into(),
                ))
            }
        },
    };

    // The runs of a reproduced job (online): who built first, and when each run ended (each
    // key must have been valid when its own run signed).
    let runs: Vec<(String, i64)> = match &api {
        Some(api) if subjects.builder.is_none() && args.at.is_none() => {
            let detail = api.get(&format!("/jobs/{job}")).await?;
            detail["reproduction"]["runs"]
                .as_array()
                .map(|runs| {
                    runs.iter()
                        .filter_map(|r| {
                            Some((
                                r["builder_name"].as_str()?.to_owned(),
                                r["finished_at"].as_i64()?.div_euclid(1000),
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default()
        }
        _ => Vec::new(),
    };

    // 3. Every DSSE signature, against the allowed signers valid then.
    let allowed = parse_allowed_signers(&allowed_text).map_err(CliError::Verification)?;
    if envelope.signatures.is_empty() {
        return Err(CliError::Verification(
            "the DSSE envelope carries no signature".into(),
        ));
    }
    let mut signers: Vec<Signer> = Vec::new();
    for signature in &envelope.signatures {
        let signed_at = allowed
            .iter()
            .filter(|s| s.fingerprint == signature.keyid)
            .flat_map(|s| s.principals.iter())
            .find_map(|p| runs.iter().find(|(name, _)| name == p).map(|(_, t)| *t))
            .unwrap_or(at);
        match check_dsse_signature(&allowed, &payload, signature, signed_at) {
            Ok(signer) => {
                if !signers.contains(&signer) {
                    signers.push(signer);
                }
            }
            Err(said) => {
                return Err(match &api {
                    Some(api) => explain_unknown(api, &signature.keyid, said).await,
                    None => CliError::Verification(said),
                })
            }
        }
    }

    // 4. Each SSHSIG with the real ssh-keygen (online: the backend lists them).
    let mut sshsig_checked = 0usize;
    let mut sshsig_note = None;
    if let Some(api) = &api {
        if !ssh_keygen_on_path() {
            sshsig_note = Some(
                "ssh-keygen is not on PATH: the SSHSIG signatures were not checked".to_owned(),
            );
        } else {
            let listed = sshsig_list(&api.get(&format!("/jobs/{job}/signatures")).await?);
            for signer in &signers {
                let Some((_, _, armored)) =
                    listed.iter().find(|(_, f, _)| *f == signer.fingerprint)
                else {
                    return Err(CliError::Verification(format!(
                        "the backend lists no SSHSIG signature of {} ({}), who signed the DSSE \
                         envelope",
                        signer.name, signer.fingerprint
                    )));
                };
                ssh_keygen_verify(
                    allowed_text.as_bytes(),
                    &signer.name,
                    armored.as_bytes(),
                    &payload,
                    Some(signer.at.saturating_mul(1000)),
                )
                .await?;
                sshsig_checked += 1;
            }
        }
    }

    // 5. Enough independent signers.
    if let Some(wanted) = args.reproduced_by {
        if signers.len() < wanted {
            return Err(CliError::Verification(format!(
                "{} builder(s) signed the statement, fewer than the {wanted} asked for \
                 (--reproduced-by)",
                signers.len()
            )));
        }
    }

    // Who built: the statement's own builder, else the first run's; the others reproduced.
    let first = signers
        .iter()
        .position(|s| {
            subjects
                .builder
                .as_ref()
                .is_some_and(|b| b.is(&s.fingerprint))
        })
        .or_else(|| {
            let (name, _) = runs.first()?;
            signers.iter().position(|s| s.name == *name)
        });
    if let Some(first) = first {
        let signer = signers.remove(first);
        signers.insert(0, signer);
    }
    let (built, reproduced) = signers.split_at(1.min(signers.len()));
    let said = |s: &Signer| format!("{} ({})", s.name, s.fingerprint);
    if json_output {
        let signer = |s: &Signer| json!({ "builder": s.name, "fingerprint": s.fingerprint });
        print_json(&json!({
            "verified": true,
            "file": args.artifact,
            "sha256": sha256,
            "job": job,
            "subject": subject_name,
            "checked_at": signing::openssh_time(at).unwrap_or_default(),
            "built_by": built.first().map(signer),
            "reproduced_by": reproduced.iter().map(signer).collect::<Vec<_>>(),
            "dsse_signatures": envelope.signatures.len(),
            "sshsig_checked": sshsig_checked,
            "offline": offline,
        }));
        return Ok(Outcome::Success);
    }
    if let Some(note) = note {
        eprintln!("note: {note}");
    }
    println!("{file_name}: sha256 {sha256} is {subject_name} of job {job}'s statement");
    let mut line = format!("built by {}", built.first().map(said).unwrap_or_default());
    if !reproduced.is_empty() {
        line.push_str(" and reproduced by ");
        line.push_str(&reproduced.iter().map(said).collect::<Vec<_>>().join(", "));
    }
    println!("{line}");
    println!(
        "verified: {} DSSE signature(s) against the allowed signers valid at {}{}",
        envelope.signatures.len(),
        utc(at.saturating_mul(1000)),
        if sshsig_checked > 0 {
            format!("; {sshsig_checked} SSHSIG signature(s) by ssh-keygen -Y verify")
        } else {
            String::new()
        }
    );
    if let Some(note) = sshsig_note {
        eprintln!("note: {note}");
    }
    if offline {
        eprintln!(
            "note: offline: SSHSIG signatures are not part of the envelope and were not checked"
        );
    }
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openssh_times_read_back() {
        assert_eq!(parse_openssh_time("19700101000000Z"), Some(0));
        assert_eq!(parse_openssh_time("20000229"), Some(951_782_400));
        assert_eq!(parse_openssh_time("202612312359Z"), Some(1_798_761_540));
        assert_eq!(parse_openssh_time("20261231235959Z"), Some(1_798_761_599));
        for bad in ["", "2026", "20261301Z", "2026123123595Z", "x0261231235959Z"] {
            assert_eq!(parse_openssh_time(bad), None, "{bad}");
        }
        for secs in [0, 951_782_400, 1_798_761_599, 1_709_251_199] {
            let text = signing::openssh_time(secs).unwrap();
            assert_eq!(parse_openssh_time(&text), Some(secs));
        }
    }

    #[test]
    fn pattern_lists_match_like_openssh() {
        let list = |s: &str| s.split(',').map(str::to_owned).collect::<Vec<_>>();
        assert!(pattern_list_matches(
            &list("buildfleet-statement"),
            "buildfleet-statement"
        ));
        assert!(pattern_list_matches(
            &list("file,buildfleet-*"),
            "buildfleet-statement"
        ));
        assert!(!pattern_list_matches(
            &list("*,!buildfleet-*"),
            "buildfleet-statement"
        ));
        assert!(!pattern_list_matches(&list("file"), "buildfleet-statement"));
        assert!(pattern_list_matches(
            &list("b?ildfleet-statement"),
            "buildfleet-statement"
        ));
    }

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIInSJ8OxBi3WVShmcR2BPFWEdEI+DuRE2wPNIC4fUk/C";

    #[test]
    fn allowed_signers_lines_are_read_with_their_options() {
        let text = format!(
            "# comment\n\nb-1 namespaces=\"buildfleet-statement\",valid-after=\"20261207000000Z\",valid-before=\"20261208000000Z\" {KEY} comment\nb-2,b-3 {KEY}\n*@ca cert-authority {KEY}\n"
        );
        let signers = parse_allowed_signers(&text).unwrap();
        assert_eq!(signers.len(), 2);
        assert_eq!(signers[0].principals, ["b-1"]);
        assert_eq!(
            signers[0].valid_after,
            parse_openssh_time("20261207000000Z")
        );
        assert_eq!(
            signers[0].valid_before,
            parse_openssh_time("20261208000000Z")
        );
        assert!(signers[0].allows_namespace(STATEMENT_NAMESPACE));
        assert!(!signers[0].allows_namespace("file"));
        assert!(signers[0].valid_at(parse_openssh_time("20261207120000Z").unwrap()));
        assert!(!signers[0].valid_at(parse_openssh_time("20261208000001Z").unwrap()));
        assert_eq!(signers[1].principals, ["b-2", "b-3"]);
        assert_eq!(signers[1].namespaces, None);
        assert!(parse_allowed_signers(&format!("b-1 bogus=\"1\" {KEY}")).is_err());
        assert!(parse_allowed_signers("b-1 valid-after=\"x\" ssh-ed25519 AAAA").is_err());
        assert!(parse_allowed_signers("b-1").is_err());
    }
}
