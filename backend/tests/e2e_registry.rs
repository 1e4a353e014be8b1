//! The registry follower end to end, with a real builder and a local registry (sparse index
//! and `.crate` downloads over HTTP on loopback): a version published while the system runs
//! gets its metadata job, then the build its metadata asks for; the build's archive is served
//! at the stable binstall URL, its statement verifies with `ssh-keygen -Y verify`, and the real
//! `cargo-binstall` installs the binary from it, which runs. A version whose index `cksum`
//! does not match its file fails `source_digest_mismatch` with nothing published; a
//! library-only crate gets no build.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use awc::http::StatusCode;
use buildfleet_backend::config::ServerConfig;
use buildfleet_backend::registry::{BuildSpec, RegistryFile};
use buildfleet_protocol::signing::STATEMENT_NAMESPACE;
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::e2e::{
    configure_server, sha256_hex, tar_gz_files, wait_outcome, E2eBuilder,
};
use buildfleet_testkit::keys::ssh_keygen_verify;
use buildfleet_testkit::registry::{
    binary_greeting, CrateFile, LocalRegistry, SAMPLE_BINARY, SAMPLE_LIBRARY, SAMPLE_TAMPERED,
};
use buildfleet_testkit::server::{test_client, TestServer};
use buildfleet_testkit::server_tests;
use buildfleet_testkit::tls::{over_tls, test_pki};
use serde_json::{json, Value};

server_tests! {
    a_published_version_is_built_served_verified_and_installed,
}

const TARGET: &str = "x86_64-unknown-linux-gnu";
const JOB_LIMIT: Duration = Duration::from_secs(180);

fn follow(config: &mut ServerConfig, index: String) {
    configure_server(config);
    let mut settings = RegistryFile {
        name: Some("local".into()),
        index,
        crates: [SAMPLE_BINARY, SAMPLE_LIBRARY, SAMPLE_TAMPERED]
            .map(str::to_owned)
            .into(),
        builds: vec![BuildSpec {
            recipe: "cargo-build".into(),
            target: TARGET.into(),
            labels: Default::default(),
        }],
        ..RegistryFile::default()
    }
    .resolve()
    .expect("registry settings");
    settings.poll_interval = Duration::from_millis(200);
    config.registry = Some(settings);
}

async fn crate_page(server: &TestServer, krate: &str) -> Value {
    server.get(&format!("/crates/{krate}")).await.1
}

fn version<'a>(page: &'a Value, v: &str) -> Option<&'a Value> {
    page["versions"]
        .as_array()?
        .iter()
        .find(|x| x["version"] == v)
}

/// Waits until the version's status is `status`; returns its entry.
async fn wait_status(server: &TestServer, krate: &str, v: &str, status: &str) -> Value {
    for _ in 0..1200 {
        let page = crate_page(server, krate).await;
        if let Some(entry) = version(&page, v).filter(|e| e["status"] == status) {
            return entry.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{krate} {v} never became {status}: {}",
        crate_page(server, krate).await
    );
}

async fn a_published_version_is_built_served_verified_and_installed(db: TestDb) {
    let (registry, samples) = LocalRegistry::start_with_samples();
    let release = CrateFile::binary(SAMPLE_BINARY, "0.2.0");
    let tampered = CrateFile::binary(SAMPLE_TAMPERED, "1.0.2");
    let index = registry.sparse_index_url();
    // Over TLS: cargo-binstall downloads from https URLs only.
    let pki = tempfile::tempdir().expect("pki dir");
    let (ca, cert, key) = test_pki(pki.path());
    let mut server = TestServer::start_with(db, |c| {
        follow(c, index);
        c.tls = Some((cert, key));
    })
    .await;
    server.http = test_client(Some(&ca));
    let builder_ca = ca.clone();
    let builder = E2eBuilder::start(&server, "registry-builder", move |c| {
        c.offline = true;
        over_tls(c, builder_ca);
    })
    .await;
    wait_status(&server, SAMPLE_BINARY, &samples.binary.version, "existing").await;

    // Published while everything runs: metadata first, then the build it asks for.
    registry.publish(&release);
    let planned = wait_status(&server, SAMPLE_BINARY, "0.2.0", "planned").await;
    let builds = planned["builds"].as_array().cloned().unwrap_or_default();
    let metadata_job = builds
        .iter()
        .find(|b| b["recipe"] == "crate-metadata")
        .expect("metadata job")["job"]
        .as_i64()
        .unwrap();
    let build = builds
        .iter()
        .find(|b| b["recipe"] == "cargo-build")
        .expect("a build")["job"]
        .as_i64()
        .unwrap();
    assert_eq!(server.job(metadata_job).await["follow_ups"], json!([build]));
    let job = wait_outcome(&server, build, "succeeded", JOB_LIMIT).await;
    assert_eq!(job["follows_from"], metadata_job);
    assert_eq!(job["builder_id"], builder.id);
    assert_eq!(job["annotations"]["target"], TARGET);
    assert_eq!(job["source_sha256"], release.sha256());

    // The stable URL redirects to the build's archive; its digest is the signed one.
    let base = format!(
        "{}/api/v1/crates/{SAMPLE_BINARY}/0.2.0/{TARGET}",
        server.url
    );
    let tls = buildfleet_builder::http::tls_config(Some(&ca)).expect("TLS config");
    let no_redirects = awc::Client::builder()
        .connector(awc::Connector::new().rustls_0_23(tls))
        .disable_redirects()
        .finish();
    let redirect = no_redirects
        .get(format!("{base}/download"))
        .send()
        .await
        .expect("the binstall URL answers");
    assert_eq!(redirect.status(), StatusCode::FOUND);
    let location = redirect
        .headers()
        .get("Location")
        .and_then(|v| v.to_str().ok())
        .expect("Location")
        .to_owned();
    let (status, archive) = server.get_raw(&location).await;
    assert_eq!(status, StatusCode::OK);
    let files = tar_gz_files(&archive);
    assert!(
        files.iter().any(|(name, _)| name == SAMPLE_BINARY),
        "{files:?}"
    );
    let (_, statement) = server.get_raw(&format!("{base}/statement")).await;
    let (_, signature) = server.get_raw(&format!("{base}/statement.sig")).await;
    let (_, allowed) = server.get_raw(&server.api("/allowed_signers")).await;
    let (verified, output) = ssh_keygen_verify(
        std::str::from_utf8(&allowed).expect("text"),
        &builder.name,
        STATEMENT_NAMESPACE,
        &statement,
        std::str::from_utf8(&signature).expect("armored"),
    );
    assert!(verified, "ssh-keygen -Y verify: {output}");
    let signed: Value = serde_json::from_slice(&statement).expect("statement JSON");
    // An in-toto statement: the archive is its subject, the crate in its build definition.
    assert_eq!(
        signed["subject"][0]["digest"]["sha256"],
        sha256_hex(&archive),
        "{signed:#}"
    );
    assert_eq!(
        signed["predicate"]["buildDefinition"]["externalParameters"]["annotations"]["crate"],
        SAMPLE_BINARY
    );

    install_with_cargo_binstall(&server, &ca, &release, &archive);

    // The crate page shows the version, its build, the binary's digest and how to install it;
    // the registry page where the follower stands.
    let (status, page) = server
        .get_raw(&format!("{}/crates/{SAMPLE_BINARY}", server.url))
        .await;
    assert_eq!(status, StatusCode::OK);
    let page = String::from_utf8(page).expect("HTML");
    for expected in [
        "0.2.0",
        "planned",
        TARGET,
        &sha256_hex(&archive),
        "cargo binstall --pkg-url",
    ] {
        assert!(page.contains(expected), "the crate page shows {expected}");
    }
    let (status, page) = server.get_raw(&format!("{}/registry", server.url)).await;
    assert_eq!(status, StatusCode::OK);
    let page = String::from_utf8(page).expect("HTML");
    assert!(
        page.contains("sparse+") && page.contains(&format!("/crates/{SAMPLE_BINARY}")),
        "{page}"
    );

    // A version whose index cksum is not its file's: the metadata job refuses the source,
    // nothing is built or published.
    registry.publish_with_wrong_cksum(&tampered);
    let failed = wait_status(&server, SAMPLE_TAMPERED, "1.0.2", "failed").await;
    let meta = failed["builds"][0]["job"].as_i64().unwrap();
    let job = server.job(meta).await;
    assert!(
        job["error"]
            .as_str()
            .is_some_and(|e| e.contains("source_digest_mismatch") || e.contains("digest")),
        "{job:#}"
    );
    assert_eq!(job["artifacts"], json!([]));
    assert_eq!(
        failed["builds"].as_array().map(Vec::len),
        Some(1),
        "no build follows"
    );

    // A library-only crate: its metadata decides that nothing is built.
    let (status, done) = server
        .post_admin("/registry/backfill", &json!({ "crate": SAMPLE_LIBRARY, "versions": format!("={}", samples.library.version) }))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{done}");
    let library = wait_status(&server, SAMPLE_LIBRARY, &samples.library.version, "library").await;
    assert_eq!(
        library["builds"].as_array().map(Vec::len),
        Some(1),
        "{library}"
    );
}

/// Installs the crate with the real cargo-binstall from the backend's stable URL, runs the
/// binary and checks it is the one in the signed archive.
fn install_with_cargo_binstall(
    server: &TestServer,
    ca: &Path,
    release: &CrateFile,
    archive: &[u8],
) {
    let Some(binstall) = which("cargo-binstall") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "cargo-binstall is missing; .ci/run installs it"
        );
        eprintln!("skipped the cargo-binstall step: cargo-binstall is not installed");
        return;
    };
    let root = tempfile::tempdir().expect("install root");
    let home = tempfile::tempdir().expect("cargo home");
    // The crate's own manifest (binstall reads the binaries' names from it), as the
    // registry published it; binstall fetches registries over https only.
    let package = tempfile::tempdir().expect("package dir");
    for file in ["Cargo.toml", "src/main.rs"] {
        let path = package.path().join(file);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("package dirs");
        std::fs::write(&path, release.file(file).expect("a file of the crate"))
            .expect("writing it");
    }
    let pkg_url = format!(
        "{}/api/v1/crates/{{ name }}/{{ version }}/{{ target }}/download",
        server.url
    );
    let output = Command::new(binstall)
        .args([
            "binstall",
            "--no-confirm",
            "--no-discover-github-token",
            "--disable-telemetry",
        ])
        .arg("--manifest-path")
        .arg(package.path())
        .arg("--root-certificates")
        .arg(ca)
        .args([
            "--pkg-url",
            &pkg_url,
            "--pkg-fmt",
            "tgz",
            "--bin-dir",
            "{ bin }{ binary-ext }",
        ])
        .args(["--disable-strategies", "quick-install,compile"])
        .args(["--targets", TARGET])
        .arg("--root")
        .arg(root.path())
        .arg(SAMPLE_BINARY)
        .env("CARGO_HOME", home.path())
        .env("BINSTALL_DISABLE_TELEMETRY", "true")
        .output()
        .expect("running cargo-binstall");
    assert!(
        output.status.success(),
        "cargo-binstall failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let installed = root.path().join("bin").join(SAMPLE_BINARY);
    let ran = Command::new(&installed)
        .output()
        .expect("running the installed binary");
    assert_eq!(
        String::from_utf8_lossy(&ran.stdout).trim(),
        binary_greeting(SAMPLE_BINARY, "0.2.0")
    );
    let in_archive = file_in_tar_gz(archive, SAMPLE_BINARY);
    let on_disk = std::fs::read(&installed).expect("the installed binary");
    assert_eq!(
        sha256_hex(&on_disk),
        sha256_hex(&in_archive),
        "installed what was signed"
    );
}

fn file_in_tar_gz(bytes: &[u8], name: &str) -> Vec<u8> {
    use std::io::Read as _;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    for entry in archive.entries().expect("a tarball") {
        let mut entry = entry.expect("an entry");
        if entry.path().ok().as_deref() == Some(Path::new(name)) {
            let mut out = Vec::new();
            entry.read_to_end(&mut out).expect("reading the entry");
            return out;
        }
    }
    panic!("{name} is not in the archive");
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}
