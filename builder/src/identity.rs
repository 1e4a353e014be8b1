//! The builder's SSH identity: loading its private key, and `keygen` for new builders.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use buildfleet_protocol::signing::{fingerprint, parse_private_key};
use buildfleet_protocol::Fingerprint;
use ssh_key::{Algorithm, LineEnding, PrivateKey};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read the private key {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid private key {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0} already exists; keygen never overwrites a key")]
    Exists(PathBuf),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot generate a key: {0}")]
    Generate(String),
}

/// The key a builder signs with, and its fingerprint.
pub struct Identity {
    pub key: PrivateKey,
    pub fingerprint: Fingerprint,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Identity {
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let text = std::fs::read_to_string(path).map_err(|source| IdentityError::Read {
            path: path.to_owned(),
            source,
        })?;
        let key = parse_private_key(&text).map_err(|e| IdentityError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Ok(Identity {
            fingerprint: fingerprint(key.public_key()),
            key,
        })
    }
}

/// What `keygen` made: the public key line to admit and its fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedKey {
    pub private_path: PathBuf,
    pub public_path: PathBuf,
    pub public_key: String,
    pub fingerprint: Fingerprint,
}

/// Writes a new Ed25519 key to `out` (mode 0600) and its public key to `out.pub`; refuses
/// to overwrite either.
pub fn keygen(out: &Path, comment: &str) -> Result<GeneratedKey, IdentityError> {
    let public_path = PathBuf::from(format!("{}.pub", out.display()));
    for path in [out, public_path.as_path()] {
        if path.exists() {
            return Err(IdentityError::Exists(path.to_owned()));
        }
    }
    let mut key = PrivateKey::random(&mut rand::rngs::OsRng, Algorithm::Ed25519)
        .map_err(|e| IdentityError::Generate(e.to_string()))?;
    key.set_comment(comment);
    let private_text = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| IdentityError::Generate(e.to_string()))?;
    let public_key = key
        .public_key()
        .to_openssh()
        .map_err(|e| IdentityError::Generate(e.to_string()))?;

    write_new(out, private_text.as_bytes(), 0o600)?;
    if let Err(e) = write_new(&public_path, format!("{public_key}\n").as_bytes(), 0o644) {
        // Half a key pair is worse than none: the operator would re-run keygen and fail.
        let _ = std::fs::remove_file(out);
        return Err(e);
    }
    Ok(GeneratedKey {
        private_path: out.to_owned(),
        public_path,
        fingerprint: fingerprint(key.public_key()),
        public_key,
    })
}

/// Creates `path` exclusively (no overwrite, no symlink following races) with `mode`.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), IdentityError> {
    let write_error = |source| IdentityError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                IdentityError::Exists(path.to_owned())
            } else {
                write_error(e)
            }
        })?;
    file.write_all(contents).map_err(write_error)?;
    file.sync_all().map_err(write_error)
}
