//! Small validated value types shared by both directions.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A job's id, assigned by the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub i64);

/// The attempt number of a job: starts at 1, grows on every requeue, and fences writes
/// from stale attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Attempt(pub i32);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An SSH public key fingerprint exactly as `ssh-keygen -lf -E sha256` prints it
/// (`SHA256:` followed by unpadded base64).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Fingerprint(String);

impl Fingerprint {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<ssh_key::Fingerprint> for Fingerprint {
    fn from(fp: ssh_key::Fingerprint) -> Self {
        Fingerprint(fp.to_string())
    }
}

impl FromStr for Fingerprint {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parsed = ssh_key::Fingerprint::from_str(s)
            .map_err(|_| InvalidValue::new("fingerprint", "expected `SHA256:<base64>`"))?;
        if parsed.algorithm() != ssh_key::HashAlg::Sha256 {
            return Err(InvalidValue::new(
                "fingerprint",
                "only SHA256 fingerprints are accepted",
            ));
        }
        Ok(Fingerprint(parsed.to_string()))
    }
}

impl TryFrom<String> for Fingerprint {
    type Error = InvalidValue;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Fingerprint> for String {
    fn from(fp: Fingerprint) -> Self {
        fp.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A SHA-256 digest as 64 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256Digest(String);

impl Sha256Digest {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Builds a digest from the 32 raw bytes of a SHA-256 hash.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Sha256Digest(crate::hex::encode(bytes))
    }
}

impl FromStr for Sha256Digest {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !valid {
            return Err(InvalidValue::new(
                "sha256",
                "expected 64 lowercase hex characters",
            ));
        }
        Ok(Sha256Digest(s.to_owned()))
    }
}

impl TryFrom<String> for Sha256Digest {
    type Error = InvalidValue;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Sha256Digest> for String {
    fn from(d: Sha256Digest) -> Self {
        d.0
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A value that does not have the shape its field requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidValue {
    pub field: &'static str,
    pub expected: &'static str,
}

impl InvalidValue {
    fn new(field: &'static str, expected: &'static str) -> Self {
        InvalidValue { field, expected }
    }
}

impl fmt::Display for InvalidValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.field, self.expected)
    }
}

impl std::error::Error for InvalidValue {}

/// Artifact names are file names in URLs and on disk: 1 to 128 characters from
/// `[A-Za-z0-9._+-]`, not starting with a dot (so no `..`, no hidden files, no paths).
pub fn validate_artifact_name(name: &str) -> Result<(), InvalidValue> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(InvalidValue::new(
            "artifact name",
            "1-128 characters of [A-Za-z0-9._+-], not starting with '.'",
        ))
    }
}
