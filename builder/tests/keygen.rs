//! `keygen` writes a key pair OpenSSH agrees with, private half 0600, never overwriting.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use buildfleet_builder::identity::{keygen, Identity, IdentityError};

#[test]
fn keygen_writes_a_key_ssh_keygen_agrees_with() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("builder_ed25519");
    let generated = keygen(&out, "test-builder").expect("keygen");
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(generated.public_key.starts_with("ssh-ed25519 "));

    let output = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(&generated.public_path)
        .output()
        .expect("run ssh-keygen (openssh-client)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listed = String::from_utf8(output.stdout).unwrap();
    assert!(
        listed.contains(generated.fingerprint.as_str()),
        "ssh-keygen printed {listed:?}, we said {}",
        generated.fingerprint
    );

    // The private key too: ssh-keygen derives the same public key from it.
    let derived = Command::new("ssh-keygen")
        .arg("-yf")
        .arg(&out)
        .output()
        .unwrap();
    assert!(derived.status.success());
    assert!(String::from_utf8(derived.stdout).unwrap().starts_with(
        generated
            .public_key
            .split(' ')
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
            .as_str()
    ));

    assert_eq!(
        Identity::load(&out).unwrap().fingerprint,
        generated.fingerprint
    );
}

#[test]
fn keygen_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("key");
    std::fs::write(&out, "precious").unwrap();
    assert!(matches!(keygen(&out, "x"), Err(IdentityError::Exists(_))));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "precious");

    let other = dir.path().join("other");
    std::fs::write(dir.path().join("other.pub"), "precious").unwrap();
    assert!(matches!(keygen(&other, "x"), Err(IdentityError::Exists(_))));
    assert!(!other.exists());
}

#[test]
fn loads_ecdsa_and_rsa_keys_made_by_ssh_keygen() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, bits) in [("ecdsa", "256"), ("rsa", "2048")] {
        let path = dir.path().join(kind);
        let status = Command::new("ssh-keygen")
            .args(["-q", "-t", kind, "-b", bits, "-N", "", "-f"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success());
        let identity = Identity::load(&path).unwrap_or_else(|e| panic!("{kind}: {e}"));
        let listed = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(&path)
            .output()
            .unwrap();
        assert!(String::from_utf8(listed.stdout)
            .unwrap()
            .contains(identity.fingerprint.as_str()));
    }
}

#[test]
fn an_unreadable_or_invalid_key_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = Identity::load(&dir.path().join("nope")).unwrap_err();
    assert!(
        missing.to_string().contains("cannot read the private key"),
        "{missing}"
    );
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "not a key").unwrap();
    let invalid = Identity::load(&bad).unwrap_err();
    assert!(
        invalid.to_string().contains("invalid private key"),
        "{invalid}"
    );
}
