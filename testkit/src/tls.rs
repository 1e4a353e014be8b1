//! A throwaway PKI for TLS tests, made with the `openssl` CLI: a CA, and a server
//! certificate for 127.0.0.1 that it signed; and the builder setting that dials a backend
//! over TLS.

use std::path::{Path, PathBuf};

use buildfleet_builder::config::BuilderConfig;

/// Runs the `openssl` CLI in `dir`; panics if it fails.
pub fn openssl(args: &[&str], dir: &Path) {
    let status = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success(), "openssl {args:?} failed");
}

/// A test CA and a server certificate for 127.0.0.1 it signed, made by the `openssl` command
/// line (webpki refuses a CA certificate used as the server's own). Returns the CA
/// certificate, the server's certificate and its key.
/// Makes `ca.pem`, `server.pem` and `server.key` in `dir`; returns their paths (CA,
/// certificate, key).
pub fn test_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=buildfleet test CA",
    ];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(&ca, dir);
    let mut csr = vec!["req", "-subj", "/CN=127.0.0.1"];
    csr.extend(ec);
    csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
    openssl(&csr, dir);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .expect("extensions file");
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ],
        dir,
    );
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// Points a builder made for a plain backend at the same backend over TLS, trusting `ca`.
pub fn over_tls(config: &mut BuilderConfig, ca: PathBuf) {
    config.connect_urls = vec![format!(
        "wss://{}/api/v1/builders/connect",
        server_addr(&config.connect_urls[0])
    )];
    config.ca_cert = Some(ca);
}

/// `host:port` of a `ws://host:port/...` URL.
fn server_addr(url: &str) -> String {
    url.trim_start_matches("ws://")
        .split('/')
        .next()
        .expect("host:port")
        .to_owned()
}
