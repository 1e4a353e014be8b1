//! Builder keys made by the real `ssh-keygen`, and checks of statements with the real
//! `ssh-keygen -Y verify`, so the tests exercise what operators and submitters run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use buildfleet_protocol::signing;
use buildfleet_protocol::ssh_key::PrivateKey;
use buildfleet_protocol::Fingerprint;

use crate::builder_client::connection::Credentials;

/// An Ed25519 key pair in a temporary directory.
pub struct TestKey {
    pub name: String,
    pub private: PrivateKey,
    /// The `ssh-ed25519 AAAA… comment` line of the `.pub` file.
    pub public_openssh: String,
    pub fingerprint: Fingerprint,
    dir: tempfile::TempDir,
}

impl TestKey {
    /// Runs `ssh-keygen -t ed25519 -N '' -f <tmp>/id_ed25519` and loads the result. `name`
    /// is the builder name the key is admitted under.
    pub fn generate(name: &str) -> TestKey {
        let dir = tempfile::tempdir().expect("temp dir for a key");
        let path = dir.path().join("id_ed25519");
        let output = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&path)
            .stdin(Stdio::null())
            .output()
            .expect("running ssh-keygen (is OpenSSH installed?)");
        assert!(
            output.status.success(),
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let private_text = std::fs::read_to_string(&path).expect("reading the private key");
        let public_openssh = std::fs::read_to_string(path.with_extension("pub"))
            .expect("reading the public key")
            .trim()
            .to_owned();
        let private = signing::parse_private_key(&private_text).expect("parsing the private key");
        let fingerprint = signing::fingerprint(private.public_key());
        assert_eq!(
            fingerprint.as_str(),
            ssh_keygen_fingerprint(&path.with_extension("pub")),
            "our fingerprint must be the one `ssh-keygen -lf` prints"
        );
        TestKey {
            name: name.to_owned(),
            private,
            public_openssh,
            fingerprint,
            dir,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The private key file, for a builder's `--key`.
    pub fn private_key_path(&self) -> PathBuf {
        self.dir.path().join("id_ed25519")
    }

    /// Who the scripted builder says it is: this key, its name, builder version `test`.
    pub fn credentials(&self) -> Credentials<'_> {
        Credentials {
            name: &self.name,
            fingerprint: &self.fingerprint,
            key: &self.private,
            version: "test",
        }
    }
}

fn ssh_keygen_fingerprint(public_key: &Path) -> String {
    let output = Command::new("ssh-keygen")
        .args(["-l", "-E", "sha256", "-f"])
        .arg(public_key)
        .output()
        .expect("running ssh-keygen -l");
    assert!(output.status.success(), "ssh-keygen -l failed");
    // `256 SHA256:… comment (ED25519)`
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .nth(1)
        .expect("a fingerprint in the ssh-keygen -l output")
        .to_owned()
}

/// Checks `signature` over `message` with `ssh-keygen -Y verify`, as a submitter would.
/// Returns ssh-keygen's verdict and its output, for the assertion message.
pub fn ssh_keygen_verify(
    allowed_signers: &str,
    principal: &str,
    namespace: &str,
    message: &[u8],
    signature: &str,
) -> (bool, String) {
    let dir = tempfile::tempdir().expect("temp dir for verification");
    let write = |name: &str, bytes: &[u8]| -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("writing a verification input");
        path
    };
    let signers = write("allowed_signers", allowed_signers.as_bytes());
    let sig = write("statement.sig", signature.as_bytes());
    let message_path = write("statement", message);
    let output = Command::new("ssh-keygen")
        .args(["-Y", "verify", "-f"])
        .arg(&signers)
        .args(["-I", principal, "-n", namespace, "-s"])
        .arg(&sig)
        .stdin(std::fs::File::open(&message_path).expect("opening the statement"))
        .output()
        .expect("running ssh-keygen -Y verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}
