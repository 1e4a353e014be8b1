//! HTTPS and WSS end to end: the backend serves a certificate from PEM files, a real builder
//! trusting that CA (its `ca_cert`) connects over `wss://`, fetches its source and uploads its
//! artifact over `https://`, and the CLI reaches the API with `--ca-cert`, and is refused
//! without it.

use std::time::Duration;

use buildfleet_testkit::cli::run_cli;
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::e2e::{
    configure_server, small_source, upload_source, wait_outcome, E2eBuilder, QUICK_RECIPE,
};
use buildfleet_testkit::server::{test_client, TestServer};
use buildfleet_testkit::server_tests;
use buildfleet_testkit::tls::{over_tls, test_pki};
use serde_json::json;

server_tests! {
    builders_and_the_cli_work_over_tls,
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
        over_tls(config, cert_path);
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
