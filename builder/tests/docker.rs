//! The docker strategy with a real daemon: a tiny image imported from a root filesystem
//! made of the host's `/bin/sh` and its libraries (no registry is needed). Skipped, with
//! the reason printed, only when no docker daemon answers.

mod common;

use std::path::PathBuf;
use std::process::Command;

use buildfleet_builder::config::{DockerSettings, Strategy};
use buildfleet_builder::recipes::{ArtifactConfig, Pack, RecipeConfig};
use buildfleet_protocol::{BuildErrorKind, Outcome};
use common::*;

const IMAGE: &str = "buildfleet-test-sh:latest";

fn docker_available() -> bool {
    Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `/bin/sh` plus every library `ldd` names, at their own paths.
fn build_image() {
    let sh = std::fs::canonicalize("/bin/sh").expect("/bin/sh");
    let ldd = Command::new("ldd").arg(&sh).output().expect("ldd");
    let mut files: Vec<PathBuf> = vec![sh.clone()];
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(PathBuf::from);
        files.extend(path);
    }
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(true);
    for file in &files {
        tar.append_path_with_name(file, file.strip_prefix("/").unwrap())
            .expect("add a file to the rootfs");
    }
    // /bin/sh itself, plus the empty mount points.
    tar.append_path_with_name(&sh, "bin/sh").unwrap();
    for dir in ["tmp", "src", "out", "proc", "sys", "dev", "etc"] {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        tar.append_data(&mut header, dir, std::io::empty()).unwrap();
    }
    let rootfs = tar.into_inner().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rootfs.tar");
    std::fs::write(&path, rootfs).unwrap();
    let status = Command::new("docker")
        .arg("import")
        .arg(&path)
        .arg(IMAGE)
        .status()
        .unwrap();
    assert!(status.success(), "docker import failed");
}

fn settings() -> Strategy {
    let mut settings = DockerSettings::with_image(Some(IMAGE.into()));
    settings.memory = "256m".into();
    settings.cpus = "1".into();
    settings.pids_limit = 64;
    Strategy::Docker(settings)
}

#[actix_rt::test]
async fn docker_jobs_see_a_read_only_source_no_network_and_a_writable_out() {
    if !docker_available() {
        eprintln!("SKIPPED: no docker daemon answers `docker info`");
        return;
    }
    build_image();
    let server = start_server();
    let archive = tar_gz(&[("pkg/input.txt", b"from the source", 0o644)]);
    let url = server.put_file("/pkg.tar.gz", archive.clone());
    let work = tempfile::tempdir().unwrap();
    // Shell builtins only: the image has nothing but sh.
    let script = r#"
        read -r line < /src/input.txt; echo "read: $line"
        if ( : > /src/written ) 2>/dev/null; then echo "src: writable"; else echo "src: read-only"; fi
        while read -r iface rest; do echo "iface: $iface"; done < /proc/net/dev
        echo "out=$BUILDFLEET_OUT param=$BUILDFLEET_PARAM_X" > /out/result.txt
    "#;
    let recipe = RecipeConfig {
        name: "probe".into(),
        version: "1".into(),
        commands: vec![vec!["/bin/sh".into(), "-c".into(), script.into()]],
        env: Default::default(),
        artifacts: vec![ArtifactConfig {
            name: "result.txt".into(),
            path: "result.txt".into(),
            pack: Pack::File,
        }],
        image: None,
        version_commands: Vec::new(),
    };
    let env = job_env(work.path(), settings(), vec![recipe]);
    let mut job = assignment(&server, &url, sha256(&archive), "probe");
    job.parameters.insert("x".into(), "42".into());
    let (response, events) = run(&env, job).await;
    let lines = log_lines(&events);
    assert_eq!(
        response.outcome,
        Outcome::Succeeded,
        "{:?}\n{}",
        response.error,
        lines.join("\n")
    );
    assert!(
        lines.contains(&"read: from the source".to_owned()),
        "{lines:?}"
    );
    assert!(lines.contains(&"src: read-only".to_owned()), "{lines:?}");
    let ifaces: Vec<_> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("iface: "))
        .filter(|i| i.ends_with(':'))
        .collect();
    assert_eq!(
        ifaces,
        ["lo:"],
        "only loopback with --network none: {lines:?}"
    );
    let uploads = server.state.uploads.lock().unwrap();
    assert_eq!(
        uploads
            .get("result.txt")
            .map(|b| String::from_utf8_lossy(b).into_owned()),
        Some("out=/out param=42\n".to_owned())
    );
}

#[actix_rt::test]
async fn cancelling_a_docker_job_kills_its_container() {
    if !docker_available() {
        eprintln!("SKIPPED: no docker daemon answers `docker info`");
        return;
    }
    build_image();
    let server = start_server();
    let archive = tar_gz(&[("pkg/a", b"a", 0o644)]);
    let url = server.put_file("/pkg.tar.gz", archive.clone());
    let work = tempfile::tempdir().unwrap();
    // `read` on a FIFO-less stdin would return at once; wait on a loop of builtins instead.
    let recipe = RecipeConfig {
        name: "spin".into(),
        version: "1".into(),
        commands: vec![vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo started; while :; do :; done".into(),
        ]],
        env: Default::default(),
        artifacts: Vec::new(),
        image: None,
        version_commands: Vec::new(),
    };
    let env = job_env(work.path(), settings(), vec![recipe]);
    let mut job = assignment(&server, &url, sha256(&archive), "spin");
    job.job_id = buildfleet_protocol::JobId(4242);
    job.timeout_secs = 3;
    let (response, _) = run(&env, job).await;
    assert_eq!(response.outcome, Outcome::TimedOut);
    assert_eq!(
        response.error.map(|e| e.kind),
        Some(BuildErrorKind::TimedOut)
    );
    let ps = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            "name=bf-job-4242-",
            "--format",
            "{{.Names}}",
        ])
        .output()
        .unwrap();
    let left = String::from_utf8_lossy(&ps.stdout).trim().to_owned();
    // `docker run --rm` removes it once killed; give the daemon a moment.
    if !left.is_empty() {
        std::thread::sleep(std::time::Duration::from_secs(2));
        let ps = Command::new("docker")
            .args([
                "ps",
                "-a",
                "--filter",
                "name=bf-job-4242-",
                "--format",
                "{{.Names}}",
            ])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&ps.stdout).trim().is_empty(),
            "container left behind: {left}"
        );
    }
}
