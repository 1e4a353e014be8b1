//! Whole job runs in process mode against a real local HTTP server: fetch, unpack, run,
//! upload, sign. Includes the built-in `cargo-build` recipe building the real `itoa` crate
//! offline from the local cargo registry cache.

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use buildfleet_builder::config::Strategy;
use buildfleet_builder::event_buffer::EventBuffer;
use buildfleet_builder::job::{run_job, JobRun};
use buildfleet_builder::process::{StopReason, StopSignal};
use buildfleet_builder::recipes::{ArtifactConfig, Pack, RecipeConfig};
use buildfleet_protocol::provenance::verify_statement;
use buildfleet_protocol::{dsse, provenance};
use buildfleet_protocol::{BuildErrorKind, JobEventKind, JobMode, JobRef, Outcome, Stage};
use common::*;

fn itoa_crate() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .expect("CARGO_HOME or HOME");
    let cache = home.join("registry").join("cache");
    let found = std::fs::read_dir(&cache)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|index| {
            std::fs::read_dir(index.path())
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|entry| entry.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("itoa-") && n.ends_with(".crate"))
        })
        .max();
    found.unwrap_or_else(|| panic!("no itoa-*.crate under {}: run `cargo fetch` in the workspace (itoa is a dependency of serde_json)", cache.display()))
}

fn shell_recipe(name: &str, script: &str, artifacts: Vec<ArtifactConfig>) -> RecipeConfig {
    RecipeConfig {
        name: name.into(),
        version: "1".into(),
        commands: vec![vec!["sh".into(), "-c".into(), script.into()]],
        env: [(
            "GREETING".to_owned(),
            "hello from ${BUILDFLEET_JOB_ID}".to_owned(),
        )]
        .into(),
        artifacts,
        image: None,
        version_commands: Vec::new(),
    }
}

#[actix_rt::test]
async fn cargo_build_builds_itoa_offline_and_uploads_a_tarball() {
    let server = start_server();
    let crate_bytes = std::fs::read(itoa_crate()).unwrap();
    let url = server.put_file("/itoa.crate", crate_bytes.clone());
    let work = tempfile::tempdir().unwrap();
    let env = job_env(work.path(), Strategy::Process, Vec::new());
    let mut job = assignment(&server, &url, sha256(&crate_bytes), "cargo-build");
    job.annotations = [("crate", "itoa"), ("version", "1.0.14")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let annotations = job.annotations.clone();
    let assignment = job.clone();
    let (response, events) = run(&env, job).await;
    assert_eq!(
        response.outcome,
        Outcome::Succeeded,
        "{:?}\n{}",
        response.error,
        log_lines(&events).join("\n")
    );
    assert_eq!(response.exit_status, Some(0));
    assert_eq!(response.artifacts.len(), 1);
    let artifact = &response.artifacts[0];
    assert!(
        artifact.name.starts_with("itoa-") && artifact.name.ends_with(".tar.gz"),
        "{}",
        artifact.name
    );

    let uploads = server.state.uploads.lock().unwrap();
    let body = uploads.get(&artifact.name).expect("uploaded");
    assert_eq!(sha256(body), artifact.sha256);
    let mut names = Vec::new();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(body.as_slice()));
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        assert!(!data.is_empty());
        names.push(entry.path().unwrap().display().to_string());
    }
    assert_eq!(names, ["libitoa.rlib"], "a library crate ships its rlib");

    let key = env.identity.key.public_key();
    let statement = verify_statement(key, &response.statement).expect("signed statement");
    let subjects: Vec<(String, String)> = statement
        .subject
        .iter()
        .map(|s| (s.name.clone(), s.digest.sha256.to_string()))
        .collect();
    let uploaded: Vec<(String, String)> = response
        .artifacts
        .iter()
        .map(|a| (a.name.clone(), a.sha256.to_string()))
        .collect();
    assert_eq!(subjects, uploaded);
    assert_eq!(statement.outcome(), Some(Outcome::Succeeded));
    let definition = &statement.predicate.build_definition;
    assert_eq!(definition.internal_parameters.backend_id, "test-backend");
    assert_eq!(
        definition.external_parameters.annotations, annotations,
        "the job's annotations are signed"
    );
    // The cargo recipe reports its toolchain, run on this machine.
    let versions = &statement.predicate.run_details.builder.version;
    assert!(versions["rustc"].starts_with("rustc 1."), "{versions:?}");
    assert!(versions["cargo"].starts_with("cargo 1."), "{versions:?}");
    assert_eq!(versions["recipe"], "cargo-build@1");
    // The same text carries a DSSE signature by the same key.
    let dsse_signature = dsse::DsseSignature {
        keyid: dsse::keyid(key),
        sig: response.dsse_signature.clone().expect("a DSSE signature"),
    };
    dsse::verify(
        key,
        response.statement.statement.as_bytes(),
        &dsse_signature,
    )
    .expect("the DSSE signature verifies");
    // And the reproduction statement is the one the backend rebuilds from the job.
    let reproduction = response
        .reproduction
        .as_ref()
        .expect("a reproduction statement");
    let facts = provenance::JobFacts::from_assignment("test-backend", &assignment);
    assert_eq!(
        reproduction.statement,
        provenance::reproduction_statement(&facts, &response.artifacts).to_signed_text()
    );
    assert!(
        log_lines(&events)
            .iter()
            .any(|l| l.contains("Compiling itoa")),
        "cargo's output is streamed"
    );
    let stages: Vec<Stage> = events
        .iter()
        .filter_map(|e| match e.event {
            JobEventKind::Stage { stage } => Some(stage),
            _ => None,
        })
        .collect();
    assert_eq!(
        stages,
        [
            Stage::FetchingSource,
            Stage::Unpacking,
            Stage::Running,
            Stage::Uploading,
            Stage::Finishing
        ]
    );
    assert!(
        !env.jobs_dir.join("42-1").exists(),
        "the job directory is removed"
    );
}

#[actix_rt::test]
async fn a_configured_recipe_gets_a_clean_environment_and_uploads_declared_artifacts() {
    let server = start_server();
    let archive = tar_gz(&[("pkg/input.txt", b"input", 0o644)]);
    let url = server.put_file("/pkg.tar.gz", archive.clone());
    let work = tempfile::tempdir().unwrap();
    std::env::set_var("BUILDER_SECRET", "must-not-leak");
    let script = "cat input.txt > \"$BUILDFLEET_OUT/copy.txt\"; mkdir -p \"$BUILDFLEET_OUT/tree\"; echo x > \"$BUILDFLEET_OUT/tree/x\"; \
                  echo \"greeting=$GREETING param=$BUILDFLEET_PARAM_FLAVOUR secret=${BUILDER_SECRET:-none} home=$HOME\"";
    let recipe = shell_recipe(
        "shell",
        script,
        vec![
            ArtifactConfig {
                name: "copy.txt".into(),
                path: "copy.txt".into(),
                pack: Pack::File,
            },
            ArtifactConfig {
                name: "tree.tar.gz".into(),
                path: "tree".into(),
                pack: Pack::TarGz,
            },
        ],
    );
    let env = job_env(work.path(), Strategy::Process, vec![recipe]);
    let mut job = assignment(&server, &url, sha256(&archive), "shell");
    job.parameters.insert("flavour".into(), "vanilla".into());
    let (response, events) = run(&env, job).await;
    assert_eq!(
        response.outcome,
        Outcome::Succeeded,
        "{:?} {:?}",
        response.error,
        log_lines(&events)
    );
    let line = log_lines(&events)
        .into_iter()
        .find(|l| l.starts_with("greeting="))
        .expect("the script's line");
    assert!(
        line.starts_with("greeting=hello from 42 param=vanilla secret=none home="),
        "{line}"
    );
    assert!(line.ends_with("/42-1/home"), "{line}");
    let uploads = server.state.uploads.lock().unwrap();
    assert_eq!(
        uploads.get("copy.txt").map(Vec::as_slice),
        Some(&b"input"[..])
    );
    assert!(uploads.contains_key("tree.tar.gz"));
    assert_eq!(
        response
            .artifacts
            .iter()
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>(),
        ["copy.txt", "tree.tar.gz"]
    );
}

#[actix_rt::test]
async fn failures_have_stable_kinds() {
    let server = start_server();
    let archive = tar_gz(&[("pkg/a", b"a", 0o644)]);
    let url = server.put_file("/pkg.tar.gz", archive.clone());
    let work = tempfile::tempdir().unwrap();
    let recipes = vec![
        shell_recipe("fails", "echo oops >&2; exit 7", Vec::new()),
        shell_recipe(
            "no-output",
            "true",
            vec![ArtifactConfig {
                name: "missing".into(),
                path: "missing".into(),
                pack: Pack::File,
            }],
        ),
        shell_recipe(
            "leaks",
            "ln -s /etc/passwd \"$BUILDFLEET_OUT/passwd\"",
            vec![ArtifactConfig {
                name: "passwd".into(),
                path: "passwd".into(),
                pack: Pack::File,
            }],
        ),
    ];
    let env = job_env(work.path(), Strategy::Process, recipes);
    let cases = [
        ("fails", BuildErrorKind::CommandFailed, Some(7)),
        ("no-output", BuildErrorKind::ArtifactMissing, Some(0)),
        ("leaks", BuildErrorKind::ArtifactMissing, Some(0)),
        ("unknown-recipe", BuildErrorKind::UnknownRecipe, None),
    ];
    for (recipe, kind, exit_status) in cases {
        let (response, _) = run(&env, assignment(&server, &url, sha256(&archive), recipe)).await;
        assert_eq!(response.outcome, Outcome::Failed, "{recipe}");
        assert_eq!(
            response.error.as_ref().map(|e| e.kind),
            Some(kind),
            "{recipe}: {:?}",
            response.error
        );
        assert_eq!(response.exit_status, exit_status, "{recipe}");
    }
    assert!(server.state.uploads.lock().unwrap().is_empty());

    let (response, _) = run(
        &env,
        assignment(
            &server,
            &format!("{}/missing.tar.gz", server.base),
            sha256(b""),
            "fails",
        ),
    )
    .await;
    assert_eq!(
        response.error.map(|e| e.kind),
        Some(BuildErrorKind::SourceFetch)
    );
}

#[actix_rt::test]
async fn plan_mode_reports_and_uploads_nothing() {
    let server = start_server();
    let crate_bytes = std::fs::read(itoa_crate()).unwrap();
    let url = server.put_file("/itoa.crate", crate_bytes.clone());
    let work = tempfile::tempdir().unwrap();
    let env = job_env(work.path(), Strategy::Process, Vec::new());
    let mut job = assignment(&server, &url, sha256(&crate_bytes), "cargo-build");
    job.mode = JobMode::Plan;
    let (response, _) = run(&env, job).await;
    assert_eq!(response.outcome, Outcome::Succeeded);
    let plan = response.plan.expect("a plan");
    assert!(plan.contains("cargo build --release --offline"), "{plan}");
    assert!(plan.contains("itoa-"), "{plan}");
    assert!(response.artifacts.is_empty());
    assert!(server.state.uploads.lock().unwrap().is_empty());
    let statement = verify_statement(env.identity.key.public_key(), &response.statement).unwrap();
    assert_eq!(
        statement
            .predicate
            .build_definition
            .external_parameters
            .mode,
        JobMode::Plan
    );
    assert!(statement.subject.is_empty());
    assert!(response.reproduction.is_none(), "plans are not reproduced");
}

#[actix_rt::test]
async fn cancel_and_timeout_end_a_running_job() {
    let server = start_server();
    let archive = tar_gz(&[("pkg/a", b"a", 0o644)]);
    let url = server.put_file("/pkg.tar.gz", archive.clone());
    let work = tempfile::tempdir().unwrap();
    let env = job_env(
        work.path(),
        Strategy::Process,
        vec![shell_recipe(
            "sleepy",
            "echo started; sleep 1000",
            Vec::new(),
        )],
    );

    for (reason, outcome) in [
        (StopReason::Cancelled, Outcome::Cancelled),
        (StopReason::TimedOut, Outcome::TimedOut),
    ] {
        let job = assignment(&server, &url, sha256(&archive), "sleepy");
        let events = Arc::new(EventBuffer::new(
            JobRef {
                job_id: job.job_id,
                attempt: job.attempt,
            },
            1 << 20,
            |_| {},
        ));
        let deadline = (reason == StopReason::TimedOut)
            .then(|| tokio::time::Instant::now() + Duration::from_millis(500));
        let (stop, signal) = StopSignal::new(deadline);
        let run = JobRun {
            assignment: job,
            backend_id: "b".into(),
            events: events.clone(),
            stop: signal,
        };
        if reason == StopReason::Cancelled {
            let events = events.clone();
            actix_rt::spawn(async move {
                while !events.events_after(0).iter().any(
                    |e| matches!(&e.event, JobEventKind::Log { line, .. } if line == "started"),
                ) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                stop.stop(StopReason::Cancelled);
            });
        }
        let response = tokio::time::timeout(Duration::from_secs(20), run_job(&env, run))
            .await
            .expect("the job ends")
            .clean_up()
            .await;
        assert_eq!(response.outcome, outcome);
        let statement =
            verify_statement(env.identity.key.public_key(), &response.statement).unwrap();
        assert_eq!(statement.outcome(), Some(outcome));
        assert!(response.reproduction.is_none());
    }
}
