//! What attempts produce: log chunk index and artifacts, fenced by attempt.

use buildfleet_backend::store::{
    Attempt, Completion, JobId, NewArtifact, NewLogChunk, Outcome, Publication, StoreError,
};
use buildfleet_testkit::db::{admit, claim_one, digest, new_job, TestDb, T0};
use buildfleet_testkit::db_tests;

fn chunk(job: JobId, attempt: Attempt, first_seq: i64, last_seq: i64) -> NewLogChunk {
    NewLogChunk {
        job,
        attempt,
        first_seq,
        last_seq,
        location: format!("logs/{job}/{attempt}"),
        byte_offset: first_seq * 10,
        length: (last_seq - first_seq + 1) * 10,
    }
}

fn artifact(job: JobId, attempt: Attempt, name: &str) -> NewArtifact {
    NewArtifact {
        job,
        attempt,
        name: name.to_owned(),
        size: 42,
        sha256: digest(name),
        storage_key: format!("artifacts/{job}/{attempt}/{name}"),
    }
}

fn publication(text: &str) -> Publication {
    Publication {
        statement: format!("statement {text}"),
        signature: format!("-----BEGIN SSH SIGNATURE-----\n{text}\n-----END SSH SIGNATURE-----"),
        plan: None,
        ..Default::default()
    }
}

fn log_chunks_grow_without_overlap(db: &TestDb) {
    let (store, _) = db.manual_store();
    let builder = admit(&store, "alpha");
    let job = store.submit_job(new_job("crate")).expect("submit").id;
    let first = claim_one(&store, builder);
    assert_eq!(
        store.last_log_seq(job, first.attempt).expect("none yet"),
        None
    );

    let stored = store
        .append_log_chunk(&chunk(job, first.attempt, 0, 9))
        .expect("append");
    assert_eq!(
        (stored.first_seq, stored.last_seq, stored.created_at),
        (0, 9, T0)
    );
    store
        .append_log_chunk(&chunk(job, first.attempt, 10, 19))
        .expect("append");
    assert_eq!(
        store.last_log_seq(job, first.attempt).expect("last"),
        Some(19)
    );

    // A replay after reconnect overlaps what is stored and is refused.
    for (a, b) in [(15, 25), (19, 19), (0, 9)] {
        match store.append_log_chunk(&chunk(job, first.attempt, a, b)) {
            Err(StoreError::LogOverlap {
                stored_last_seq: 19,
                ..
            }) => {}
            other => panic!("{a}..={b}: expected overlap, got {other:?}"),
        }
    }
    let err = store
        .append_log_chunk(&chunk(job, first.attempt, 30, 29))
        .expect_err("backwards");
    assert_eq!(err.kind(), "invalid_input");

    // The next attempt numbers its own lines.
    store
        .reject_assignment(job, first.attempt, "moving")
        .expect("reject");
    let second = claim_one(&store, builder);
    store
        .append_log_chunk(&chunk(job, second.attempt, 0, 4))
        .expect("append");
    let all: Vec<_> = store
        .log_chunks(job)
        .expect("chunks")
        .into_iter()
        .map(|c| (c.attempt.get(), c.first_seq, c.last_seq))
        .collect();
    assert_eq!(all, vec![(1, 0, 9), (1, 10, 19), (2, 0, 4)]);
    assert_eq!(
        store.last_log_seq(job, second.attempt).expect("last"),
        Some(4)
    );
}

fn artifacts_are_recorded_then_published(db: &TestDb) {
    let store = db.store();
    let builder = admit(&store, "alpha");
    let job = store.submit_job(new_job("crate")).expect("submit").id;
    let claimed = claim_one(&store, builder);
    store.mark_running(job, claimed.attempt).expect("accept");

    let bin = store
        .record_artifact(&artifact(job, claimed.attempt, "app"))
        .expect("record");
    assert!(!bin.published);
    assert_eq!(bin.statement, None);
    // A retried upload of the same bytes is fine; different bytes under the name are not.
    assert_eq!(
        store
            .record_artifact(&artifact(job, claimed.attempt, "app"))
            .expect("again"),
        bin
    );
    let mut changed = artifact(job, claimed.attempt, "app");
    changed.sha256 = digest("something else");
    let err = store
        .record_artifact(&changed)
        .expect_err("different content");
    assert!(
        matches!(
            err,
            StoreError::AlreadyExists {
                entity: "artifact",
                ..
            }
        ),
        "{err}"
    );
    store
        .record_artifact(&artifact(job, claimed.attempt, "docs.tar.gz"))
        .expect("record");

    for bad in ["", ".", "..", "../etc/passwd", "a/b", "a\\b", "nul\0"] {
        let err = store
            .record_artifact(&artifact(job, claimed.attempt, bad))
            .expect_err(bad);
        assert_eq!(err.kind(), "invalid_input", "{bad:?}");
    }

    assert!(store.artifacts(job, true).expect("published").is_empty());
    assert_eq!(
        store.artifact(job, "app").expect("lookup"),
        None,
        "not yet published"
    );
    let published = store
        .publish_artifacts(job, claimed.attempt, &publication("one"))
        .expect("publish");
    assert_eq!(published, 2);
    let names: Vec<_> = store
        .artifacts(job, true)
        .expect("published")
        .into_iter()
        .map(|a| (a.name, a.published, a.statement))
        .collect();
    assert_eq!(
        names,
        vec![
            ("app".to_owned(), true, Some("statement one".to_owned())),
            (
                "docs.tar.gz".to_owned(),
                true,
                Some("statement one".to_owned())
            ),
        ]
    );
    let app = store
        .artifact(job, "app")
        .expect("lookup")
        .expect("published");
    assert_eq!(app.statement_signature, Some(publication("one").signature));
}

fn completion_can_publish_atomically_and_the_latest_attempt_wins(db: &TestDb) {
    let store = db.store();
    let builder = admit(&store, "alpha");
    let job = store.submit_job(new_job("crate")).expect("submit").id;

    let claimed = claim_one(&store, builder);
    store.mark_running(job, claimed.attempt).expect("accept");
    store
        .record_artifact(&artifact(job, claimed.attempt, "app"))
        .expect("record");
    store
        .complete_attempt(
            job,
            claimed.attempt,
            Completion {
                outcome: Outcome::Succeeded,
                exit_status: Some(0),
                error: None,
                publication: Some(publication("first")),
            },
        )
        .expect("complete and publish");
    let latest = store
        .artifact(job, "app")
        .expect("lookup")
        .expect("published");
    assert_eq!(
        (latest.attempt, latest.statement.as_deref()),
        (claimed.attempt, Some("statement first"))
    );

    // A later attempt (after a failed one and a retry) replaces what `artifact` serves.
    let job = store.submit_job(new_job("crate")).expect("submit").id;
    let one = claim_one(&store, builder);
    store.mark_running(job, one.attempt).expect("accept");
    store
        .record_artifact(&artifact(job, one.attempt, "app"))
        .expect("record");
    store
        .publish_artifacts(job, one.attempt, &publication("old"))
        .expect("publish");
    store
        .complete_attempt(
            job,
            one.attempt,
            Completion {
                outcome: Outcome::Failed,
                exit_status: Some(1),
                error: Some("tests failed".into()),
                publication: None,
            },
        )
        .expect("fail");
    store.retry_job(job).expect("retry");
    let two = claim_one(&store, builder);
    store.mark_running(job, two.attempt).expect("accept");
    store
        .record_artifact(&artifact(job, two.attempt, "app"))
        .expect("record");
    store
        .complete_attempt(
            job,
            two.attempt,
            Completion {
                outcome: Outcome::Succeeded,
                exit_status: Some(0),
                error: None,
                publication: Some(publication("new")),
            },
        )
        .expect("complete");
    let latest = store
        .artifact(job, "app")
        .expect("lookup")
        .expect("published");
    assert_eq!(
        (latest.attempt, latest.statement.as_deref()),
        (two.attempt, Some("statement new"))
    );
    assert_eq!(store.artifacts(job, false).expect("all").len(), 2);
    assert_eq!(store.artifacts(job, true).expect("published").len(), 2);
}

db_tests! {
    log_chunks_grow_without_overlap,
    artifacts_are_recorded_then_published,
    completion_can_publish_atomically_and_the_latest_attempt_wins,
}
