//! SSH identities and signatures: fingerprints as OpenSSH prints them, the challenge
//! signature and the build statement signature, both as SSHSIG that `ssh-keygen -Y` accepts.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use ssh_key::{HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};

use crate::messages::{ArtifactDigest, JobMode, Outcome, SignedStatement};
use crate::types::{Attempt, Fingerprint, JobId, Sha256Digest};

/// SSHSIG namespace of challenge signatures; a statement signature cannot pass as one.
pub const CHALLENGE_NAMESPACE: &str = "buildfleet-challenge";
/// SSHSIG namespace of build statements (`ssh-keygen -Y verify -n buildfleet-statement`).
pub const STATEMENT_NAMESPACE: &str = "buildfleet-statement";
/// Version tag inside every build statement.
pub const STATEMENT_FORMAT: &str = "buildfleet-statement/v1";
/// Number of random bytes in a challenge.
pub const CHALLENGE_BYTES: usize = 32;

#[derive(Debug)]
pub enum SigningError {
    /// The key or signature text could not be parsed.
    Parse(String),
    /// Signing failed (e.g. an unsupported key type).
    Sign(String),
    /// The signature was made by another key than the expected one.
    WrongKey,
    /// The signature does not verify over this message and namespace.
    BadSignature,
    /// The signed statement is not a valid statement document.
    Statement(String),
}

impl fmt::Display for SigningError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SigningError::Parse(e) => write!(f, "cannot parse: {e}"),
            SigningError::Sign(e) => write!(f, "cannot sign: {e}"),
            SigningError::WrongKey => f.write_str("signature was made by another key"),
            SigningError::BadSignature => f.write_str("signature does not verify"),
            SigningError::Statement(e) => write!(f, "invalid build statement: {e}"),
        }
    }
}

impl std::error::Error for SigningError {}

/// The SHA-256 fingerprint of a public key, as `ssh-keygen -lf` prints it.
pub fn fingerprint(key: &PublicKey) -> Fingerprint {
    key.fingerprint(HashAlg::Sha256).into()
}

pub fn parse_public_key(openssh: &str) -> Result<PublicKey, SigningError> {
    PublicKey::from_openssh(openssh.trim()).map_err(|e| SigningError::Parse(e.to_string()))
}

pub fn parse_private_key(openssh: &str) -> Result<PrivateKey, SigningError> {
    let key = PrivateKey::from_openssh(openssh).map_err(|e| SigningError::Parse(e.to_string()))?;
    if key.is_encrypted() {
        return Err(SigningError::Parse(
            "the private key is encrypted; builders need an unencrypted key".into(),
        ));
    }
    Ok(key)
}

/// The bytes a builder signs to answer a challenge. They bind the challenge to the backend
/// that issued it and to the key that answers, so a signature cannot be replayed elsewhere.
pub fn challenge_message(backend_id: &str, challenge_hex: &str, builder: &Fingerprint) -> Vec<u8> {
    format!(
        "buildfleet challenge v1\nbackend: {backend_id}\nbuilder: {builder}\nchallenge: {challenge_hex}\n"
    )
    .into_bytes()
}

pub fn sign_challenge(
    key: &PrivateKey,
    backend_id: &str,
    challenge_hex: &str,
) -> Result<String, SigningError> {
    let message = challenge_message(backend_id, challenge_hex, &fingerprint(key.public_key()));
    sign(key, CHALLENGE_NAMESPACE, &message)
}

pub fn verify_challenge(
    key: &PublicKey,
    backend_id: &str,
    challenge_hex: &str,
    armored_signature: &str,
) -> Result<(), SigningError> {
    let message = challenge_message(backend_id, challenge_hex, &fingerprint(key));
    verify(key, CHALLENGE_NAMESPACE, &message, armored_signature)
}

/// Signs `message` as an armored SSHSIG with SHA-512, as `ssh-keygen -Y sign` does.
pub fn sign(key: &PrivateKey, namespace: &str, message: &[u8]) -> Result<String, SigningError> {
    let signature = key
        .sign(namespace, HashAlg::Sha512, message)
        .map_err(|e| SigningError::Sign(e.to_string()))?;
    signature
        .to_pem(LineEnding::LF)
        .map_err(|e| SigningError::Sign(e.to_string()))
}

/// Verifies an armored SSHSIG made by `key` over `message` in `namespace`.
pub fn verify(
    key: &PublicKey,
    namespace: &str,
    message: &[u8],
    armored_signature: &str,
) -> Result<(), SigningError> {
    let signature =
        SshSig::from_pem(armored_signature).map_err(|e| SigningError::Parse(e.to_string()))?;
    if signature.public_key() != key.key_data() {
        return Err(SigningError::WrongKey);
    }
    key.verify(namespace, message, &signature)
        .map_err(|_| SigningError::BadSignature)
}

/// What a builder attests about one attempt. Serialised as pretty JSON, signed verbatim, and
/// served beside the artifacts so anyone can check them with `ssh-keygen -Y verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildStatement {
    pub format: String,
    pub backend_id: String,
    pub builder: Fingerprint,
    pub job_id: JobId,
    pub attempt: Attempt,
    pub source_sha256: Sha256Digest,
    pub recipe: String,
    pub mode: JobMode,
    /// The job's annotations (what was built: `crate`, `version`, `commit`, …), copied from
    /// the assignment. Left out of the text when there are none, so the statement of a job
    /// without annotations is byte for byte what it was before the field existed (the same
    /// format tag, and statements signed then still verify).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    pub outcome: Outcome,
    pub artifacts: Vec<ArtifactDigest>,
}

impl BuildStatement {
    /// The exact text that is signed.
    #[allow(
        clippy::expect_used,
        reason = "a statement is strings, numbers and sequences: serialising cannot fail"
    )]
    pub fn to_signed_text(&self) -> String {
        let mut text =
            serde_json::to_string_pretty(self).expect("statements always serialise to JSON");
        text.push('\n');
        text
    }
}

pub fn sign_statement(
    key: &PrivateKey,
    statement: &BuildStatement,
) -> Result<SignedStatement, SigningError> {
    let text = statement.to_signed_text();
    let signature = sign(key, STATEMENT_NAMESPACE, text.as_bytes())?;
    Ok(SignedStatement {
        statement: text,
        signature,
    })
}

/// Verifies the signature by `key` and parses the statement it covers.
pub fn verify_statement(
    key: &PublicKey,
    signed: &SignedStatement,
) -> Result<BuildStatement, SigningError> {
    verify(
        key,
        STATEMENT_NAMESPACE,
        signed.statement.as_bytes(),
        &signed.signature,
    )?;
    let statement: BuildStatement = serde_json::from_str(&signed.statement)
        .map_err(|e| SigningError::Statement(e.to_string()))?;
    if statement.format != STATEMENT_FORMAT {
        return Err(SigningError::Statement(format!(
            "unknown format {:?}, expected {STATEMENT_FORMAT:?}",
            statement.format
        )));
    }
    if statement.builder != fingerprint(key) {
        return Err(SigningError::Statement(
            "statement names another builder".into(),
        ));
    }
    Ok(statement)
}

/// One line of an OpenSSH allowed-signers file, limited to the statement namespace.
pub fn allowed_signers_line(principal: &str, key: &PublicKey) -> Result<String, SigningError> {
    allowed_signers_line_within(principal, key, KeyValidity::default())
}

/// When a key signs for its principal, in unix seconds, both ends inclusive as OpenSSH reads
/// `valid-after`/`valid-before`; `None` leaves that end open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyValidity {
    pub after: Option<i64>,
    pub before: Option<i64>,
}

/// One line of an OpenSSH allowed-signers file, limited to the statement namespace and to
/// the key's validity (`valid-after="YYYYMMDDhhmmssZ"`, `valid-before=…`, UTC), so that a
/// statement signed before the key was rotated out verifies at its signing time
/// (`ssh-keygen -Y verify … -Overify-time=…`) and not after.
pub fn allowed_signers_line_within(
    principal: &str,
    key: &PublicKey,
    validity: KeyValidity,
) -> Result<String, SigningError> {
    // A key that cannot be written out is an error, never a line with an empty key.
    let key_text = PublicKey::new(key.key_data().clone(), "")
        .to_openssh()
        .map_err(|e| SigningError::Parse(e.to_string()))?;
    let mut options = format!("namespaces=\"{STATEMENT_NAMESPACE}\"");
    if let Some(after) = validity.after {
        options.push_str(&format!(",valid-after=\"{}\"", openssh_time(after)?));
    }
    if let Some(before) = validity.before {
        options.push_str(&format!(",valid-before=\"{}\"", openssh_time(before)?));
    }
    Ok(format!("{principal} {options} {key_text}"))
}

/// Unix seconds as OpenSSH's `YYYYMMDDhhmmssZ` (UTC), for allowed-signers validity and
/// `-Overify-time=`. Years 1970 to 9999.
pub fn openssh_time(unix_secs: i64) -> Result<String, SigningError> {
    // 9999-12-31T23:59:59Z
    if !(0..=253_402_300_799).contains(&unix_secs) {
        return Err(SigningError::Parse(format!(
            "time {unix_secs} is outside the years 1970 to 9999"
        )));
    }
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    Ok(format!(
        "{year:04}{month:02}{day:02}{:02}{:02}{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    ))
}

/// Builder names are principals in allowed-signers files and path segments in URLs, so
/// they are restricted to a safe alphabet.
pub fn validate_builder_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 64 {
        return Err("builder names are 1 to 64 characters long");
    }
    let safe = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !safe || name.starts_with('.') {
        return Err(
            "builder names use letters, digits, '-', '_' and '.', and do not start with '.'",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::ArtifactDigest;

    fn statement(annotations: &[(&str, &str)]) -> BuildStatement {
        BuildStatement {
            format: STATEMENT_FORMAT.into(),
            backend_id: "https://buildfleet.example.org".into(),
            builder: "SHA256:kKtVJKTvSbqzXwZIpgdyQ9jfx7U9t/IdkqJbTStGu80"
                .parse()
                .unwrap(),
            job_id: JobId(42),
            attempt: Attempt(1),
            source_sha256: "9f".repeat(32).parse().unwrap(),
            recipe: "cargo-build".into(),
            mode: JobMode::Build,
            annotations: annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            outcome: Outcome::Succeeded,
            artifacts: vec![ArtifactDigest {
                name: "a.tar.gz".into(),
                size: 1,
                sha256: "2c".repeat(32).parse().unwrap(),
            }],
        }
    }

    const WITHOUT_ANNOTATIONS: &str = r#"{
  "format": "buildfleet-statement/v1",
  "backend_id": "https://buildfleet.example.org",
  "builder": "SHA256:kKtVJKTvSbqzXwZIpgdyQ9jfx7U9t/IdkqJbTStGu80",
  "job_id": 42,
  "attempt": 1,
  "source_sha256": "9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f",
  "recipe": "cargo-build",
  "mode": "build",
  "outcome": "succeeded",
  "artifacts": [
    {
      "name": "a.tar.gz",
      "size": 1,
      "sha256": "2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c"
    }
  ]
}
"#;

    #[test]
    fn openssh_times_are_utc_calendar_times() {
        assert_eq!(openssh_time(0).unwrap(), "19700101000000Z");
        assert_eq!(openssh_time(951_782_400).unwrap(), "20000229000000Z");
        assert_eq!(openssh_time(1_798_761_599).unwrap(), "20261231235959Z");
        assert_eq!(openssh_time(1_709_251_199).unwrap(), "20240229235959Z");
        assert_eq!(openssh_time(253_402_300_799).unwrap(), "99991231235959Z");
        assert!(openssh_time(-1).is_err());
        assert!(openssh_time(253_402_300_800).is_err());
    }

    #[test]
    fn a_statement_without_annotations_is_the_text_it_always_was() {
        let plain = statement(&[]);
        assert_eq!(plain.to_signed_text(), WITHOUT_ANNOTATIONS);
        let parsed: BuildStatement = serde_json::from_str(WITHOUT_ANNOTATIONS).unwrap();
        assert_eq!(parsed, plain);
    }

    #[test]
    fn annotations_are_signed_between_mode_and_outcome_in_key_order() {
        let annotated = statement(&[("version", "1.0.14"), ("crate", "itoa")]);
        let text = annotated.to_signed_text();
        assert!(
            text.contains(
                "  \"mode\": \"build\",\n  \"annotations\": {\n    \"crate\": \"itoa\",\n    \"version\": \"1.0.14\"\n  },\n  \"outcome\": \"succeeded\",\n"
            ),
            "{text}"
        );
        let parsed: BuildStatement = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed, annotated);
    }
}
