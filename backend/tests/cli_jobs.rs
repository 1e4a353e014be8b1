//! `buildfleet job …` against a running backend (no builder: jobs stay queued): submit
//! from a directory, an archive, a crate and a URL; list, show, cancel, retry.

use std::io::Read;
use std::path::Path;

use buildfleet_testkit::cli::CliOutput;
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::server::TestServer;
use sha2::{Digest, Sha256};

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A small crate-like source tree, with build output and VCS files that must stay home.
fn source_tree(root: &Path) {
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::create_dir_all(root.join("target/release")).unwrap();
    std::fs::create_dir_all(root.join(".git")).unwrap();
    std::fs::write(
        root.join("Cargo.toml"),
        "[package]\nname = \"demo\"\nversion = \"0.1.0\"\n",
    )
    .unwrap();
    std::fs::write(
        root.join("src/main.rs"),
        "fn main() { println!(\"hi\"); }\n",
    )
    .unwrap();
    std::fs::write(root.join("target/release/demo"), vec![0u8; 4096]).unwrap();
    std::fs::write(root.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
}

/// A gzipped tarball of `files` under `top/`.
fn tar_gz(files: &[(&str, &str)], top: &str) -> Vec<u8> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(encoder);
    for (name, body) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        tar.append_data(&mut header, format!("{top}/{name}"), body.as_bytes())
            .unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

fn entry_names(archive: &[u8]) -> Vec<String> {
    let mut names: Vec<String> = tar::Archive::new(flate2::read::GzDecoder::new(archive))
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    names.sort();
    names
}

/// The bytes the backend serves for an uploaded source.
async fn stored_source(server: &TestServer, sha256: &str) -> Vec<u8> {
    let (status, body) = server
        .get_raw(&server.api(&format!("/sources/{sha256}")))
        .await;
    assert!(status.is_success(), "GET /sources/{sha256}: {status}");
    body
}

fn job_id(output: &CliOutput) -> String {
    output.json()["id"].as_i64().expect("a job id").to_string()
}

#[actix_rt::test]
async fn submit_a_directory_uploads_a_packed_source() {
    let server = TestServer::start(TestDb::sqlite()).await;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("demo");
    source_tree(&dir);

    let submitted = server
        .cli(&[
            "job",
            "submit",
            dir.to_str().unwrap(),
            "--recipe",
            "cargo-doc",
            "--param",
            "features=full",
            "--label",
            "os=linux",
            "--priority",
            "-5",
            "--timeout",
            "10m",
            "--max-attempts",
            "2",
            "--plan",
            "--json",
        ])
        .await
        .ok();
    let job = submitted.json();
    assert_eq!(job["state"], "queued");
    assert_eq!(job["recipe"], "cargo-doc");
    assert_eq!(job["parameters"]["features"], "full");
    assert_eq!(job["required_labels"]["os"], "linux");
    assert_eq!(job["priority"], -5);
    assert_eq!(job["timeout_secs"], 600);
    assert_eq!(job["max_attempts"], 2);
    assert_eq!(job["mode"], "plan");

    // The backend holds exactly the archive the CLI packed, addressed by its digest.
    let sha256 = job["source_sha256"].as_str().unwrap().to_owned();
    let stored = stored_source(&server, &sha256).await;
    assert_eq!(sha256_hex(&stored), sha256);
    assert!(job["source_url"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/sources/{sha256}")));
    assert_eq!(
        entry_names(&stored),
        ["demo", "demo/Cargo.toml", "demo/src", "demo/src/main.rs"],
        "target/ and .git/ stay home"
    );
    let mut main_rs = String::new();
    tar::Archive::new(flate2::read::GzDecoder::new(&stored[..]))
        .entries()
        .unwrap()
        .map(Result::unwrap)
        .find(|e| e.path().unwrap().ends_with("main.rs"))
        .unwrap()
        .read_to_string(&mut main_rs)
        .unwrap();
    assert!(main_rs.contains("println"));

    // Packing is deterministic: the same tree gives the same source.
    let again = server
        .cli(&["job", "submit", dir.to_str().unwrap(), "--json"])
        .await
        .ok()
        .json();
    assert_eq!(again["source_sha256"], sha256.as_str());
    assert_eq!(again["recipe"], "cargo-build", "the default recipe");
    server.shutdown().await;
}

#[actix_rt::test]
async fn submit_an_archive_a_crate_and_a_url() {
    let server = TestServer::start(TestDb::sqlite()).await;
    let work = tempfile::tempdir().unwrap();

    // An archive file goes up byte for byte.
    let archive = tar_gz(&[("Cargo.toml", "[package]\n")], "pkg");
    let archive_path = work.path().join("pkg.tar.gz");
    std::fs::write(&archive_path, &archive).unwrap();
    let job = server
        .cli(&["job", "submit", archive_path.to_str().unwrap(), "--json"])
        .await
        .ok()
        .json();
    assert_eq!(job["source_sha256"], sha256_hex(&archive).as_str());
    assert_eq!(stored_source(&server, &sha256_hex(&archive)).await, archive);

    // A crate from the local cargo cache.
    let cargo_home = work.path().join("cargo-home");
    let cache = cargo_home.join("registry/cache/index.crates.io-1949cf8c6b5b557f");
    std::fs::create_dir_all(&cache).unwrap();
    let crate_bytes = tar_gz(
        &[("Cargo.toml", "[package]\nname = \"tiny\"\n")],
        "tiny-0.3.1",
    );
    std::fs::write(cache.join("tiny-0.3.1.crate"), &crate_bytes).unwrap();
    let cargo_home_str = cargo_home.to_str().unwrap();
    let job = server
        .cli_env(
            &["job", "submit", "--crate", "tiny@0.3.1", "--json"],
            &[("CARGO_HOME", cargo_home_str)],
        )
        .await
        .ok()
        .json();
    assert_eq!(job["source_sha256"], sha256_hex(&crate_bytes).as_str());
    assert_eq!(
        stored_source(&server, &sha256_hex(&crate_bytes)).await,
        crate_bytes
    );

    // Not cached, and the download fails: a clear error, exit 4.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let crates_url = format!("http://{closed}/crates");
    let failed = server
        .cli_env(
            &["job", "submit", "--crate", "absent@1.0.0"],
            &[
                ("CARGO_HOME", cargo_home_str),
                ("BUILDFLEET_CRATES_URL", &crates_url),
            ],
        )
        .await
        .expect_code(4);
    assert!(
        failed.stderr.contains("absent@1.0.0 is not in") && failed.stderr.contains(&crates_url),
        "{}",
        failed.stderr
    );
    server
        .cli(&["job", "submit", "--crate", "no-version"])
        .await
        .expect_code(2);

    // A URL with its digest: nothing is uploaded, builders fetch it.
    let digest = "ab".repeat(32);
    let job = server
        .cli(&[
            "job",
            "submit",
            "https://example.invalid/src.tar.gz",
            "--sha256",
            &digest,
            "--json",
        ])
        .await
        .ok()
        .json();
    assert_eq!(job["source_url"], "https://example.invalid/src.tar.gz");
    assert_eq!(job["source_sha256"], digest.as_str());
    let job = server
        .cli(&[
            "job",
            "submit",
            "--source-url",
            "https://example.invalid/other.tar.gz",
            "--sha256",
            &digest,
            "--json",
        ])
        .await
        .ok()
        .json();
    assert_eq!(job["source_url"], "https://example.invalid/other.tar.gz");
    let no_digest = server
        .cli(&["job", "submit", "https://example.invalid/src.tar.gz"])
        .await
        .expect_code(2);
    assert!(
        no_digest.stderr.contains("--sha256"),
        "{}",
        no_digest.stderr
    );
    let bad_digest = server
        .cli(&[
            "job",
            "submit",
            "https://example.invalid/a.tgz",
            "--sha256",
            "xyz",
        ])
        .await
        .expect_code(2);
    assert!(
        bad_digest
            .stderr
            .contains("--sha256 \"xyz\" is not a SHA-256 digest"),
        "{}",
        bad_digest.stderr
    );
    server
        .cli(&["job", "submit", "/nonexistent/source/dir"])
        .await
        .expect_code(2);
    let bad_recipe = server
        .cli(&[
            "job",
            "submit",
            archive_path.to_str().unwrap(),
            "--recipe",
            "no spaces",
        ])
        .await
        .expect_code(3);
    assert!(
        bad_recipe.stderr.contains("recipe"),
        "{}",
        bad_recipe.stderr
    );
    server.shutdown().await;
}

#[actix_rt::test]
async fn list_show_cancel_retry() {
    let server = TestServer::start(TestDb::sqlite()).await;
    let work = tempfile::tempdir().unwrap();
    let archive = tar_gz(&[("Cargo.toml", "[package]\n")], "pkg");
    let archive_path = work.path().join("pkg.tar.gz");
    std::fs::write(&archive_path, &archive).unwrap();
    let path = archive_path.to_str().unwrap();

    let first = job_id(&server.cli(&["job", "submit", path, "--json"]).await.ok());
    let second = job_id(
        &server
            .cli(&["job", "submit", path, "--recipe", "cargo-doc", "--json"])
            .await
            .ok(),
    );
    let plain = server.cli(&["job", "submit", path]).await.ok();
    assert!(
        plain.stdout.starts_with("submitted job "),
        "{}",
        plain.stdout
    );

    let table = server.cli(&["job", "list"]).await.ok().stdout;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[0].starts_with("ID  STATE"), "{table}");
    assert!(
        lines[2].starts_with(&format!("{second} ")),
        "newest first:\n{table}"
    );
    assert!(
        lines[3].contains("queued") && lines[3].contains("cargo-build"),
        "{table}"
    );

    let docs = server
        .cli(&["job", "list", "--recipe", "cargo-doc", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(docs["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(docs["jobs"][0]["id"].to_string(), second);
    let limited = server
        .cli(&["job", "list", "--limit", "2", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(limited["jobs"].as_array().unwrap().len(), 2);
    server
        .cli(&["job", "list", "--state", "sleeping"])
        .await
        .expect_code(2);

    let shown = server.cli(&["job", "show", &first]).await.ok().stdout;
    assert!(
        shown.contains("state:") && shown.contains("queued"),
        "{shown}"
    );
    assert!(shown.contains(&sha256_hex(&archive)), "{shown}");
    let shown = server
        .cli(&["job", "show", &first, "--json"])
        .await
        .ok()
        .json();
    assert_eq!(shown["id"].to_string(), first);
    assert!(shown["events"].is_array());

    let cancelled = server.cli(&["job", "cancel", &first]).await.ok();
    assert!(
        cancelled.stdout.contains("cancelled"),
        "{}",
        cancelled.stdout
    );
    let listed = server
        .cli(&["job", "list", "--state", "cancelled", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 1);
    let twice = server.cli(&["job", "cancel", &first]).await.expect_code(3);
    assert!(twice.stderr.contains("conflict"), "{}", twice.stderr);

    let retried = server
        .cli(&["job", "retry", &first, "--json"])
        .await
        .ok()
        .json();
    assert_eq!(retried["state"], "queued");
    let not_finished = server.cli(&["job", "retry", &second]).await.expect_code(3);
    assert!(
        not_finished.stderr.contains("conflict"),
        "{}",
        not_finished.stderr
    );

    // A job without a log prints nothing; nor does a job that does not exist succeed.
    let log = server.cli(&["job", "logs", &second]).await.ok();
    assert_eq!(log.stdout, "");
    server.cli(&["job", "logs", "999"]).await.expect_code(3);
    server.shutdown().await;
}

#[actix_rt::test]
async fn annotations_from_the_command_line_and_the_crate() {
    let server = TestServer::start(TestDb::sqlite()).await;
    let work = tempfile::tempdir().unwrap();
    let digest = "ab".repeat(32);
    let url = "https://example.invalid/app.tar.gz";

    // --annotate, repeated; a value keeps its '=' and spaces, a message its lines.
    let annotated = server
        .cli(&[
            "job",
            "submit",
            url,
            "--sha256",
            &digest,
            "--annotate",
            "commit=0123456789abcdef0123",
            "--annotate",
            "branch=main",
            "--annotate",
            "links.ci=https://ci.invalid/run?id=7",
            "--annotate",
            "message=Fix it\n\nFor real.",
            "--json",
        ])
        .await
        .ok()
        .json();
    assert_eq!(
        annotated["annotations"],
        serde_json::json!({
            "commit": "0123456789abcdef0123",
            "branch": "main",
            "links.ci": "https://ci.invalid/run?id=7",
            "message": "Fix it\n\nFor real.",
        })
    );
    let annotated_id = annotated["id"].as_i64().unwrap().to_string();

    // --crate annotates crate and version itself, beside the given ones.
    let cargo_home = work.path().join("cargo-home");
    let cache = cargo_home.join("registry/cache/index.crates.io-1949cf8c6b5b557f");
    std::fs::create_dir_all(&cache).unwrap();
    let crate_bytes = tar_gz(
        &[("Cargo.toml", "[package]\nname = \"tiny\"\n")],
        "tiny-0.3.1",
    );
    std::fs::write(cache.join("tiny-0.3.1.crate"), &crate_bytes).unwrap();
    let cargo_home = [("CARGO_HOME", cargo_home.to_str().unwrap())];
    let submitted = server
        .cli_env(
            &[
                "job",
                "submit",
                "--crate",
                "tiny@0.3.1",
                "--annotate",
                "target=x86_64-unknown-linux-gnu",
            ],
            &cargo_home,
        )
        .await
        .ok();
    assert!(
        submitted
            .stdout
            .contains("(tiny@0.3.1 (x86_64-unknown-linux-gnu), cargo-build, queued)"),
        "{}",
        submitted.stdout
    );
    let crate_job = server
        .cli(&["job", "list", "--limit", "1", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(
        crate_job["jobs"][0]["annotations"],
        serde_json::json!({
            "crate": "tiny",
            "version": "0.3.1",
            "target": "x86_64-unknown-linux-gnu",
        })
    );
    let crate_id = crate_job["jobs"][0]["id"].as_i64().unwrap().to_string();

    // A given annotation that contradicts --crate, or one given twice, is a usage error;
    // a bad key is the server's refusal, naming it.
    let contradiction = server
        .cli_env(
            &[
                "job",
                "submit",
                "--crate",
                "tiny@0.3.1",
                "--annotate",
                "version=9",
            ],
            &cargo_home,
        )
        .await
        .expect_code(2);
    assert!(
        contradiction
            .stderr
            .contains("version=9 contradicts --crate tiny@0.3.1"),
        "{}",
        contradiction.stderr
    );
    server
        .cli(&[
            "job",
            "submit",
            url,
            "--sha256",
            &digest,
            "--annotate",
            "a=1",
            "--annotate",
            "a=2",
        ])
        .await
        .expect_code(2);
    let refused = server
        .cli(&[
            "job",
            "submit",
            url,
            "--sha256",
            &digest,
            "--annotate",
            "Commit=x",
        ])
        .await
        .expect_code(3);
    assert!(refused.stderr.contains("\"Commit\""), "{}", refused.stderr);

    // Lists filter by annotation (all must match) and show what each job builds.
    let table = server
        .cli(&["job", "list", "--annotation", "crate:tiny"])
        .await
        .ok()
        .stdout;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[0].contains("WHAT"), "{table}");
    assert!(
        lines[1].starts_with(&format!("{crate_id} "))
            && lines[1].contains("tiny@0.3.1 (x86_64-unknown-linux-gnu)"),
        "{table}"
    );
    let both = server
        .cli(&[
            "job",
            "list",
            "--annotation",
            "branch:main",
            "--annotation",
            "links.ci:https://ci.invalid/run?id=7",
            "--json",
        ])
        .await
        .ok()
        .json();
    let ids: Vec<String> = both["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].to_string())
        .collect();
    assert_eq!(ids, std::slice::from_ref(&annotated_id));
    let none = server
        .cli(&[
            "job",
            "list",
            "--annotation",
            "branch:main",
            "--annotation",
            "crate:tiny",
            "--json",
        ])
        .await
        .ok()
        .json();
    assert_eq!(none["jobs"].as_array().unwrap().len(), 0);
    let listed = server.cli(&["job", "list"]).await.ok().stdout;
    assert!(listed.contains("main@0123456789ab"), "{listed}");

    // `job show` prints every annotation, a message with its lines.
    let shown = server
        .cli(&["job", "show", &annotated_id])
        .await
        .ok()
        .stdout;
    assert!(shown.contains("annotations:"), "{shown}");
    assert!(shown.contains("  branch    main\n"), "{shown}");
    assert!(
        shown.contains("  message   Fix it\n\n            For real.\n"),
        "{shown}"
    );
}
