//! HTTPS and WSS end to end: the backend serves a certificate from PEM files, a real builder
//! trusting that CA (its `ca_cert`) connects over `wss://`, fetches its source and uploads its
//! artifact over `https://`, and the CLI reaches the API with `--ca-cert`, and is refused
//! without it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use buildfleet_testkit::cli::run_cli;
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::e2e::{
    configure_server, small_source, upload_source, wait_outcome, E2eBuilder, QUICK_RECIPE,
};
use buildfleet_testkit::server::{test_client, TestServer};
use buildfleet_testkit::server_tests;
use serde_json::json;

server_tests! {
    builders_and_the_cli_work_over_tls,
}

fn openssl(args: &[&str], dir: &Path) {
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
fn test_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
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

async fn builders_and_the_cli_work_over_tls(db: TestDb) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, server_cert, key) = test_pki(dir.path());
    let (cert_for_server, key_for_server) = (server_cert, key);
    let mut server = TestServer::start_with(db, move |config| {
        configure_server(config);
        config.tls = Some((cert_for_server, key_for_server));
    })
    .await;
    server.http = test_client(Some(&cert));
    assert!(server.url.starts_with("https://"), "{}", server.url);

    let cert_path = cert.clone();
    let builder = E2eBuilder::start(&server, "over-tls", move |config| {
        config.connect_url = format!(
            "wss://{}/api/v1/builders/connect",
            server_addr(&config.connect_url)
        );
        config.ca_cert = Some(cert_path);
    })
    .await;
    let (digest, _) = upload_source(&server, small_source()).await;
    let id = server
        .submit(json!({ "source_url": null, "source_sha256": digest, "recipe": QUICK_RECIPE }))
        .await;
    wait_outcome(&server, id, "succeeded", Duration::from_secs(30)).await;

    let url = server.url.clone();
    let token = server.admin_token.clone();
    let cert_arg = cert.display().to_string();
    run_cli(
        &[
            "builder",
            "list",
            "--url",
            &url,
            "--token",
            &token,
            "--ca-cert",
            &cert_arg,
        ],
        &[],
    )
    .await
    .ok();
    let refused = run_cli(&["builder", "list", "--url", &url, "--token", &token], &[]).await;
    assert_ne!(refused.code, 0, "an unknown issuer is refused: {refused:?}");
    assert!(
        refused.stderr.to_lowercase().contains("certificate")
            || refused.stderr.contains("UnknownIssuer"),
        "{}",
        refused.stderr
    );
    builder.stop().await;
    server.shutdown().await;
}

/// `host:port` of a `ws://host:port/...` URL.
fn server_addr(url: &str) -> String {
    url.trim_start_matches("ws://")
        .split('/')
        .next()
        .expect("host:port")
        .to_owned()
}
