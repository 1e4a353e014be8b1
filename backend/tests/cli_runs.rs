//! The CLI against jobs that really run: an in-process builder with shell recipes takes
//! them; `job logs --follow`, `job submit --wait` and `artifact download` (with the real
//! `ssh-keygen -Y verify`) see them through.

use std::path::Path;

use buildfleet_testkit::cli::{shell_recipe, wait_connected, TestBuilder};
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::keys::TestKey;
use buildfleet_testkit::server::TestServer;

/// Prints on both streams around a pause (so a follower sees lines arrive live), then
/// writes the artifact.
const DEMO_SCRIPT: &str = r#"echo "first line"; echo "complaint" >&2; sleep 1; echo "last line"; printf 'artifact-bytes-v1' > "${BUILDFLEET_OUT}/out.txt""#;

struct Fleet {
    server: TestServer,
    builder_key: TestKey,
    _builder: TestBuilder,
    source: tempfile::TempDir,
}

impl Fleet {
    /// A backend, a builder admitted through the CLI and connected, and a source directory.
    async fn start() -> Fleet {
        let server = TestServer::start(TestDb::sqlite()).await;
        let builder_key = TestKey::generate("runner");
        let key_file = builder_key.dir().join("id_ed25519.pub");
        let admitted = server
            .cli(&[
                "builder",
                "admit",
                "runner",
                "--key-file",
                key_file.to_str().unwrap(),
                "--json",
            ])
            .await
            .ok()
            .json();
        let builder = TestBuilder::start(
            &server,
            &builder_key,
            vec![
                shell_recipe("demo", DEMO_SCRIPT, &[("out.txt", "out.txt")]),
                shell_recipe("broken", "echo 'about to fail'; exit 3", &[]),
            ],
        )
        .await;
        wait_connected(&server, admitted["id"].as_i64().unwrap()).await;
        let source = tempfile::tempdir().unwrap();
        std::fs::write(source.path().join("README"), "a source\n").unwrap();
        Fleet {
            server,
            builder_key,
            _builder: builder,
            source,
        }
    }

    fn source(&self) -> &str {
        self.source.path().to_str().unwrap()
    }

    async fn submit(&self, recipe: &str) -> String {
        let job = self
            .server
            .cli(&["job", "submit", self.source(), "--recipe", recipe, "--json"])
            .await
            .ok()
            .json();
        job["id"].as_i64().unwrap().to_string()
    }
}

#[actix_rt::test]
async fn follow_streams_the_log_and_exits_with_the_outcome() {
    let fleet = Fleet::start().await;
    let job = fleet.submit("demo").await;
    let followed = fleet
        .server
        .cli(&["job", "logs", &job, "--follow"])
        .await
        .ok();
    let stdout_lines: Vec<&str> = followed.stdout.lines().collect();
    assert_eq!(
        stdout_lines,
        ["first line", "last line"],
        "stdout lines once each, in order; stderr:\n{}",
        followed.stderr
    );
    assert!(followed.stderr.contains("complaint"), "{}", followed.stderr);
    assert!(
        followed.stderr.contains(&format!("job {job} succeeded")),
        "{}",
        followed.stderr
    );
    assert!(
        !followed.stderr.contains('\u{1b}'),
        "no spinner when stderr is not a terminal: {:?}",
        followed.stderr
    );

    // Once finished, the whole stored log; --json gives the records.
    let stored = fleet.server.cli(&["job", "logs", &job]).await.ok();
    assert_eq!(stored.stdout, "first line\nlast line\n");
    let records = fleet
        .server
        .cli(&["job", "logs", &job, "--json"])
        .await
        .ok();
    let records: Vec<serde_json::Value> = records
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(records
        .iter()
        .any(|r| r["stream"] == "stderr" && r["line"] == "complaint"));
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // A failing job: exit 1, for --follow and for --wait.
    let broken = fleet.submit("broken").await;
    let followed = fleet
        .server
        .cli(&["job", "logs", &broken, "--follow"])
        .await
        .expect_code(1);
    assert!(
        followed.stdout.contains("about to fail"),
        "{}",
        followed.stdout
    );
    assert!(
        followed.stderr.contains(&format!("job {broken} failed")),
        "{}",
        followed.stderr
    );
    let waited = fleet
        .server
        .cli(&[
            "job",
            "submit",
            fleet.source(),
            "--recipe",
            "broken",
            "--wait",
        ])
        .await
        .expect_code(1);
    assert!(waited.stderr.contains("failed"), "{}", waited.stderr);
    let waited = fleet
        .server
        .cli(&[
            "job",
            "submit",
            fleet.source(),
            "--recipe",
            "demo",
            "--wait",
            "--json",
        ])
        .await
        .ok()
        .json();
    assert_eq!(waited["state"], "succeeded");
    assert_eq!(waited["artifacts"][0]["name"], "out.txt");
    fleet.server.shutdown().await;
}

#[actix_rt::test]
async fn download_verifies_the_signed_statement() {
    let fleet = Fleet::start().await;
    let job = fleet.submit("demo").await;
    fleet
        .server
        .cli(&["job", "logs", &job, "--follow"])
        .await
        .ok();

    let listed = fleet
        .server
        .cli(&["artifact", "list", &job])
        .await
        .ok()
        .stdout;
    assert!(
        listed.contains("out.txt") && listed.contains("17 B"),
        "{listed}"
    );

    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("got.txt");
    let downloaded = fleet
        .server
        .cli(&[
            "artifact",
            "download",
            &job,
            "out.txt",
            "-o",
            target.to_str().unwrap(),
        ])
        .await
        .ok();
    assert_eq!(std::fs::read(&target).unwrap(), b"artifact-bytes-v1");
    assert!(
        downloaded.stdout.contains("verified: build statement")
            && downloaded.stdout.contains("signed by builder runner")
            && downloaded
                .stdout
                .contains(fleet.builder_key.fingerprint.as_str()),
        "{}",
        downloaded.stdout
    );
    let report = fleet
        .server
        .cli(&[
            "artifact",
            "download",
            &job,
            "out.txt",
            "-o",
            out.path().to_str().unwrap(),
            "--json",
        ])
        .await
        .ok()
        .json();
    assert_eq!(report["verified"], true);
    assert_eq!(report["builder"], "runner");
    assert_eq!(report["size"], 17);
    assert_eq!(
        std::fs::read(out.path().join("out.txt")).unwrap(),
        b"artifact-bytes-v1"
    );

    // An allowed-signers file that pins another key: ssh-keygen refuses.
    let stranger = TestKey::generate("runner");
    let pinned = out.path().join("allowed_signers");
    std::fs::write(
        &pinned,
        format!(
            "runner namespaces=\"buildfleet-statement\" {}\n",
            stranger.public_openssh
        ),
    )
    .unwrap();
    let refused = fleet
        .server
        .cli(&[
            "artifact",
            "download",
            &job,
            "out.txt",
            "-o",
            out.path().join("pinned.txt").to_str().unwrap(),
            "--allowed-signers",
            pinned.to_str().unwrap(),
        ])
        .await
        .expect_code(5);
    assert!(refused.stderr.contains("ssh-keygen"), "{}", refused.stderr);
    assert!(!out.path().join("pinned.txt").exists());
    assert!(!out.path().join("pinned.txt.part").exists());

    // Tamper with the stored artifact (same length): the digest no longer matches.
    let attempt = fleet.server.get_ok(&format!("/jobs/{job}")).await["attempt"].clone();
    let blob = fleet
        .server
        .data_dir()
        .join(format!("blobs/artifacts/{job}/{attempt}/out.txt"));
    assert!(
        blob.is_file(),
        "the stored artifact is at {}",
        blob.display()
    );
    std::fs::write(&blob, b"artifact-bytes-v2").unwrap();
    let tampered_path = out.path().join("tampered.txt");
    let tampered = fleet
        .server
        .cli(&[
            "artifact",
            "download",
            &job,
            "out.txt",
            "-o",
            tampered_path.to_str().unwrap(),
        ])
        .await
        .expect_code(5);
    assert!(
        tampered.stderr.contains("verification failed") && tampered.stderr.contains("sha256"),
        "{}",
        tampered.stderr
    );
    assert!(
        !tampered_path.exists(),
        "a file that failed verification is not kept"
    );
    // --no-verify takes it as it is.
    fleet
        .server
        .cli(&[
            "artifact",
            "download",
            &job,
            "out.txt",
            "-o",
            tampered_path.to_str().unwrap(),
            "--no-verify",
        ])
        .await
        .ok();
    assert_eq!(std::fs::read(&tampered_path).unwrap(), b"artifact-bytes-v2");

    // Unknown artifacts and bad names.
    fleet
        .server
        .cli(&[
            "artifact",
            "download",
            &job,
            "missing.bin",
            "-o",
            out.path().to_str().unwrap(),
        ])
        .await
        .expect_code(3);
    fleet
        .server
        .cli(&["artifact", "download", &job, "../escape"])
        .await
        .expect_code(2);
    assert!(!Path::new("missing.bin.part").exists());
    fleet.server.shutdown().await;
}
