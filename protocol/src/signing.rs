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
    // A key that cannot be written out is an error, never a line with an empty key.
    let key_text = PublicKey::new(key.key_data().clone(), "")
        .to_openssh()
        .map_err(|e| SigningError::Parse(e.to_string()))?;
    Ok(format!(
        "{principal} namespaces=\"{STATEMENT_NAMESPACE}\" {key_text}"
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
