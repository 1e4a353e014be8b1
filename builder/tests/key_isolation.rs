//! The signing key stays out of the build's reach (SLSA Build L3: "provenance signing key
//! not accessible to the build"): with `build_user`, process-strategy commands run as that
//! user and get "Permission denied" on the builder's key while their own job directory
//! works; without it they can read the key (the default, shown here so the difference is
//! tested); the builder refuses a key file open to other users and a build user it cannot
//! use; the docker strategy never mounts the key. Real processes, a real local HTTP server,
//! and the real docker daemon when one answers.
//!
//! Switching users needs root: the tests that do are skipped, with the reason printed, when
//! the tests do not run as root (CI runs them as root).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use buildfleet_builder::config::{
    BuildUser, BuilderConfig, Cli, Command as CliCommand, ConfigError, DockerSettings, Strategy,
};
use buildfleet_builder::isolation;
use buildfleet_builder::job::JobEnv;
use buildfleet_builder::recipes::{ArtifactConfig, Pack, RecipeConfig};
use buildfleet_builder::BuilderError;
use buildfleet_protocol::{BuildErrorKind, JobResponse, Outcome};
use clap::Parser;
use common::*;

const NOBODY_UID: u32 = 65534;

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// Skips (returns true) with the reason printed when not root.
fn skip_unless_root() -> bool {
    if is_root() {
        return false;
    }
    eprintln!("SKIPPED: switching to a build user needs root; these tests run as uid != 0");
    true
}

fn nobody() -> BuildUser {
    BuildUser::resolve("nobody").expect("the nobody user exists")
}

fn shell_recipe(name: &str, script: &str, artifacts: Vec<ArtifactConfig>) -> RecipeConfig {
    RecipeConfig {
        name: name.into(),
        version: "1".into(),
        commands: vec![vec!["sh".into(), "-c".into(), script.into()]],
        env: Default::default(),
        artifacts,
        image: None,
        version_commands: Vec::new(),
    }
}

/// Where `job_env` put the builder's key (mode 0600, the builder's).
fn key_path(work: &Path) -> PathBuf {
    let path = work.join("builder_key");
    assert!(path.is_file(), "the test identity is at {}", path.display());
    path
}

/// A work directory the build user can pass through, whatever the umask: the builder's own
/// start-up check asks the same of a real work dir.
fn work_dir() -> tempfile::TempDir {
    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    work
}

async fn run_script(env: &JobEnv, server: &TestServer, recipe: &str) -> (JobResponse, Vec<String>) {
    let archive = tar_gz(&[("pkg/input.txt", b"from the source", 0o644)]);
    let url = server.put_file("/pkg.tar.gz", archive.clone());
    let job = assignment(server, &url, sha256(&archive), recipe);
    let (response, events) = run(env, job).await;
    (response, log_lines(&events))
}

#[actix_rt::test]
async fn with_build_user_a_build_gets_permission_denied_on_the_key() {
    if skip_unless_root() {
        return;
    }
    let server = start_server();
    let work = work_dir();
    let script = "id -u; cat \"$KEY\"";
    let mut env = job_env(work.path(), Strategy::Process, Vec::new());
    let key = key_path(work.path());
    let recipe = RecipeConfig {
        env: [("KEY".to_owned(), key.display().to_string())].into(),
        ..shell_recipe("steal", script, Vec::new())
    };
    env.recipes = buildfleet_builder::recipes::RecipeBook::with_builtins(vec![recipe]).unwrap();
    env.build_user = Some(nobody());

    let (response, lines) = run_script(&env, &server, "steal").await;
    let all = lines.join("\n");
    assert_eq!(response.outcome, Outcome::Failed, "{all}");
    assert_eq!(
        response.error.as_ref().map(|e| e.kind),
        Some(BuildErrorKind::CommandFailed),
        "{all}"
    );
    assert!(
        response.exit_status.is_some_and(|code| code != 0),
        "{:?}",
        response.exit_status
    );
    assert!(
        lines.iter().any(|l| l.contains("Permission denied")),
        "cat must be refused: {all}"
    );
    assert!(
        lines.iter().any(|l| l.trim() == NOBODY_UID.to_string()),
        "id -u prints the build user's uid: {all}"
    );
    assert!(
        !all.contains("PRIVATE KEY"),
        "no key material in the log: {all}"
    );
}

#[actix_rt::test]
async fn with_build_user_a_build_reads_its_source_and_writes_its_outputs() {
    if skip_unless_root() {
        return;
    }
    let server = start_server();
    let work = work_dir();
    // The build writes next to its source too (cargo writes target/ there) and to its HOME,
    // and cannot list the source cache.
    let script = r#"
        set -e
        id -u > "$BUILDFLEET_OUT/who.txt"
        cat "$BUILDFLEET_SRC/input.txt" >> "$BUILDFLEET_OUT/who.txt"
        mkdir "$BUILDFLEET_SRC/target" && echo built > "$BUILDFLEET_SRC/target/x"
        echo home > "$HOME/.probe"
        if ls "$SOURCES" >/dev/null 2>&1; then echo "sources: listed"; else echo "sources: refused"; fi
    "#;
    let mut env = job_env(work.path(), Strategy::Process, Vec::new());
    // The builder's start-up makes the cache private when a build user is set.
    std::fs::set_permissions(
        work.path().join("sources"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    let recipe = RecipeConfig {
        env: [(
            "SOURCES".to_owned(),
            work.path().join("sources").display().to_string(),
        )]
        .into(),
        ..shell_recipe(
            "write",
            script,
            vec![ArtifactConfig {
                name: "who.txt".into(),
                path: "who.txt".into(),
                pack: Pack::File,
            }],
        )
    };
    env.recipes = buildfleet_builder::recipes::RecipeBook::with_builtins(vec![recipe]).unwrap();
    env.build_user = Some(nobody());

    let (response, lines) = run_script(&env, &server, "write").await;
    let all = lines.join("\n");
    assert_eq!(
        response.outcome,
        Outcome::Succeeded,
        "{:?}\n{all}",
        response.error
    );
    assert_eq!(response.artifacts.len(), 1);
    let uploads = server.state.uploads.lock().unwrap();
    assert_eq!(
        uploads
            .get("who.txt")
            .map(|b| String::from_utf8_lossy(b).into_owned()),
        Some(format!("{NOBODY_UID}\nfrom the source"))
    );
    assert!(
        lines.contains(&"sources: refused".to_owned()),
        "the source cache is the builder's: {all}"
    );
}

#[actix_rt::test]
async fn without_build_user_a_process_build_can_read_the_key() {
    // The default, stated plainly in docs/builder.md: the process strategy runs builds as
    // the builder's own user, which owns the key.
    let server = start_server();
    let work = tempfile::tempdir().unwrap();
    let mut env = job_env(work.path(), Strategy::Process, Vec::new());
    let key = key_path(work.path());
    let recipe = RecipeConfig {
        env: [("KEY".to_owned(), key.display().to_string())].into(),
        ..shell_recipe("steal", "cat \"$KEY\" | head -n 1", Vec::new())
    };
    env.recipes = buildfleet_builder::recipes::RecipeBook::with_builtins(vec![recipe]).unwrap();
    assert!(env.build_user.is_none());

    let (response, lines) = run_script(&env, &server, "steal").await;
    let all = lines.join("\n");
    assert_eq!(
        response.outcome,
        Outcome::Succeeded,
        "{:?}\n{all}",
        response.error
    );
    assert!(
        lines.contains(&"-----BEGIN OPENSSH PRIVATE KEY-----".to_owned()),
        "without build_user the build reads the key: {all}"
    );
}

fn keygen(dir: &Path, mode: u32) -> PathBuf {
    let path = dir.join("id_ed25519");
    buildfleet_builder::identity::keygen(&path, "isolation").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[actix_rt::test]
async fn a_key_file_open_to_others_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), 0o644);
    // Nothing listens on port 9: the builder must stop before it dials.
    let config = BuilderConfig::new("ws://127.0.0.1:9", &key, "kt", dir.path().join("work"))
        .expect("config");
    let err = match buildfleet_builder::start(config).await {
        Ok(_) => panic!("a 0644 key must be refused"),
        Err(err) => err,
    };
    assert!(
        matches!(&err, BuilderError::KeyFileMode { mode: 0o644, .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("mode 0644"), "{message}");
    assert!(
        message.contains(&format!("chmod 600 {}", key.display())),
        "{message}"
    );
    assert!(
        !dir.path().join("work").exists(),
        "refused before the work directory is touched"
    );

    for mode in [0o640, 0o604, 0o660] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        assert!(
            matches!(
                isolation::check_key_file(&key, None),
                Err(BuilderError::KeyFileMode { .. })
            ),
            "mode {mode:o}"
        );
    }
    for mode in [0o600, 0o400] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        isolation::check_key_file(&key, None).unwrap_or_else(|e| panic!("mode {mode:o}: {e}"));
    }
}

#[test]
fn a_key_owned_by_the_build_user_is_refused() {
    if skip_unless_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), 0o600);
    std::os::unix::fs::chown(&key, Some(NOBODY_UID), None).unwrap();
    let err = isolation::check_key_file(&key, Some(&nobody())).unwrap_err();
    assert!(err.to_string().contains("owns the key file"), "{err}");
}

#[actix_rt::test]
async fn start_refuses_a_work_dir_the_build_user_cannot_reach() {
    if skip_unless_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let key = keygen(dir.path(), 0o600);
    let mut config =
        BuilderConfig::new("ws://127.0.0.1:9", &key, "kt", dir.path().join("work")).unwrap();
    config.build_user = Some(nobody());
    let err = match buildfleet_builder::start(config).await {
        Ok(_) => panic!("an unreachable work dir must be refused"),
        Err(err) => err,
    };
    let message = err.to_string();
    assert!(
        message.starts_with("build_user = \"nobody\": it cannot reach the work directory"),
        "{message}"
    );
    assert!(
        message.contains(&format!("{} (mode 0700)", dir.path().display())),
        "{message}"
    );
    // Root may switch users: the capability check passes here.
    isolation::check_can_switch(&nobody()).unwrap();
}

fn resolve(args: &[&str]) -> Result<BuilderConfig, ConfigError> {
    let mut argv = vec![
        "buildfleet-builder",
        "run",
        "--backend-url",
        "ws://127.0.0.1:8000",
        "--key",
        "/k",
        "--name",
        "b1",
    ];
    argv.extend_from_slice(args);
    let CliCommand::Run(run) = Cli::try_parse_from(argv).expect("flags parse").command else {
        panic!("not run");
    };
    run.resolve()
}

#[test]
fn build_user_is_resolved_from_the_flag_or_the_file_and_bad_ones_are_config_errors() {
    let config = resolve(&["--build-user", "nobody"]).unwrap();
    let user = config.build_user.expect("set");
    assert_eq!((user.uid, user.gid), (NOBODY_UID, NOBODY_UID));
    assert!(user.groups.contains(&NOBODY_UID), "{:?}", user.groups);

    let config = resolve(&["--build-user", "1234:5678"]).unwrap();
    let user = config.build_user.expect("set");
    assert_eq!((user.uid, user.gid, user.groups), (1234, 5678, vec![5678]));

    assert!(resolve(&[]).unwrap().build_user.is_none(), "off by default");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("builder.toml");
    std::fs::write(&file, "build_user = \"nobody\"\n").unwrap();
    let config = resolve(&["--config", file.to_str().unwrap()]).unwrap();
    assert_eq!(config.build_user.map(|u| u.uid), Some(NOBODY_UID));

    for (value, expected) in [
        ("no-such-user-buildfleet", "no such user"),
        ("root", "it is root (uid 0)"),
        ("0:0", "it is root (uid 0)"),
        ("x:1", "expected UID:GID with numbers"),
    ] {
        let err = resolve(&["--build-user", value]).unwrap_err();
        assert!(
            matches!(&err, ConfigError::BuildUser { value: v, .. } if v == value),
            "{value}: {err:?}"
        );
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("invalid build_user {value:?}"))
                && message.contains(expected),
            "{value}: {message}"
        );
    }

    let err = resolve(&[
        "--build-user",
        "nobody",
        "--strategy",
        "docker",
        "--docker-image",
        "x",
    ])
    .unwrap_err();
    assert!(err.to_string().contains("process strategy only"), "{err}");
}

// The docker strategy: the key and the work directory do not exist inside the container.

const IMAGE: &str = "buildfleet-test-sh-keyiso:latest";

fn docker_available() -> bool {
    Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `/bin/sh` plus every library `ldd` names, at their own paths (as tests/docker.rs does).
fn build_image() {
    let sh = std::fs::canonicalize("/bin/sh").expect("/bin/sh");
    let ldd = Command::new("ldd").arg(&sh).output().expect("ldd");
    let mut files: Vec<PathBuf> = vec![sh.clone()];
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        files.extend(
            line.split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(PathBuf::from),
        );
    }
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(true);
    for file in &files {
        tar.append_path_with_name(file, file.strip_prefix("/").unwrap())
            .expect("add a file to the rootfs");
    }
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

#[actix_rt::test]
async fn the_docker_strategy_never_mounts_the_key() {
    if !docker_available() {
        eprintln!("SKIPPED: no docker daemon answers `docker info`");
        return;
    }
    build_image();
    let server = start_server();
    let work = tempfile::tempdir().unwrap();
    let mut settings = DockerSettings::with_image(Some(IMAGE.into()));
    settings.memory = "256m".into();
    settings.cpus = "1".into();
    settings.pids_limit = 64;
    let mut env = job_env(work.path(), Strategy::Docker(settings), Vec::new());
    let key = key_path(work.path());
    // Shell builtins only: the image has nothing but sh.
    let script = r#"
        if [ -e "$KEY" ]; then echo "key: present"; else echo "key: absent"; fi
        if [ -e "$WORK" ]; then echo "work: present"; else echo "work: absent"; fi
        if ( read -r line < "$KEY" ) 2>/dev/null; then echo "key: readable"; fi
        read -r line < /src/input.txt; echo "src: $line"
    "#;
    let recipe = RecipeConfig {
        name: "steal".into(),
        version: "1".into(),
        commands: vec![vec!["/bin/sh".into(), "-c".into(), script.into()]],
        env: [
            ("KEY".to_owned(), key.display().to_string()),
            ("WORK".to_owned(), work.path().display().to_string()),
        ]
        .into(),
        artifacts: Vec::new(),
        image: None,
        version_commands: Vec::new(),
    };
    env.recipes = buildfleet_builder::recipes::RecipeBook::with_builtins(vec![recipe]).unwrap();

    let (response, lines) = run_script(&env, &server, "steal").await;
    let all = lines.join("\n");
    assert_eq!(
        response.outcome,
        Outcome::Succeeded,
        "{:?}\n{all}",
        response.error
    );
    assert!(lines.contains(&"src: from the source".to_owned()), "{all}");
    assert!(lines.contains(&"key: absent".to_owned()), "{all}");
    assert!(lines.contains(&"work: absent".to_owned()), "{all}");
    assert!(!lines.contains(&"key: readable".to_owned()), "{all}");
}

/// Process groups and the stop handling work for a build user's commands: the builder (root)
/// still kills what the command left running in its group.
#[actix_rt::test]
async fn a_build_users_background_processes_are_killed_with_its_command() {
    use buildfleet_builder::event_buffer::EventBuffer;
    use buildfleet_builder::process::{CommandSpec, RunOptions, StopSignal};
    use buildfleet_protocol::{Attempt, JobEventKind, JobId, JobRef};

    if skip_unless_root() {
        return;
    }
    let dir = work_dir();
    let spec = CommandSpec {
        program: "sh".into(),
        args: vec!["-c".into(), "sleep 1000 & echo $!; id -u".into()],
        env: [("PATH".to_owned(), "/usr/bin:/bin".to_owned())].into(),
        cwd: dir.path().to_owned(),
        on_stop: None,
        run_as: Some(nobody()),
    };
    let events = std::sync::Arc::new(EventBuffer::new(
        JobRef {
            job_id: JobId(1),
            attempt: Attempt(1),
        },
        1 << 20,
        |_| {},
    ));
    let (_handle, mut stop) = StopSignal::new(None);
    let options = RunOptions {
        max_line_bytes: 1024,
        grace: std::time::Duration::from_millis(200),
    };
    let exit = buildfleet_builder::process::run(&spec, events.as_ref(), &mut stop, options)
        .await
        .expect("runs");
    assert!(exit.success(), "{exit:?}");
    let lines: Vec<String> = events
        .events_after(0)
        .into_iter()
        .filter_map(|e| match e.event {
            JobEventKind::Log { line, .. } => Some(line),
            JobEventKind::Stage { .. } => None,
        })
        .collect();
    assert_eq!(lines.get(1).map(String::as_str), Some("65534"), "{lines:?}");
    let sleeper = lines[0].trim().to_owned();
    // Gone, or a zombie waiting for init: either way no longer running.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{sleeper}/stat"))
            .ok()
            .and_then(|s| s.rsplit(')').next().map(|r| r.trim().chars().next()))
            .flatten();
        if matches!(state, None | Some('Z') | Some('X')) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the build user's background sleep {sleeper} still runs ({state:?})"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
