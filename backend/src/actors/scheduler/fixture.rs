//! Test fixture shared by the scheduler's unit tests: a real SQLite store with one admitted
//! builder holding one claimed job.

use super::*;
use crate::store::{JobMode, NewBuilder, NewJob};

pub(super) const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGCESyFVhjj3+3Pxrf0PHQ2oy+Y72SGDbtjxPvfFd+h9 c";

/// A SQLite store with one admitted builder running one claimed job.
pub(super) fn assigned_job() -> (tempfile::TempDir, Store, BuilderId, JobId, Attempt) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("db.sqlite").display());
    let store = Store::open(&url, 2).expect("store");
    let builder = store
        .admit_builder(NewBuilder {
            name: "completer".into(),
            public_key: KEY.into(),
            fingerprint: "SHA256:kKtVJKTvSbqzXwZIpgdyQ9jfx7U9t/IdkqJbTStGu80".into(),
            labels: Labels::new(),
        })
        .expect("admit")
        .id;
    let job = store
        .submit_job(NewJob {
            source_url: "https://example.invalid/s.tar.gz".into(),
            source_sha256: "ab".repeat(32),
            source_max_bytes: 1 << 20,
            recipe: "r".into(),
            parameters: Labels::new(),
            required_labels: Labels::new(),
            annotations: Labels::new(),
            mode: JobMode::Build,
            priority: 0,
            max_attempts: 3,
            retry: None,
            timeout_secs: 60,
            submitter: "unit".into(),
            project: crate::store::ProjectId::DEFAULT,
            reproduce: None,
            on_mismatch: Default::default(),
        })
        .expect("submit")
        .id;
    let now = store.now_ms();
    let claimed = store
        .claim_jobs(&ClaimRequest {
            builder,
            recipes: vec!["r".into()],
            labels: Labels::new(),
            limit: 1,
            lease_ms: 60_000,
            now_ms: now,
            exclude: Vec::new(),
            projects: None,
            fair_share_window_ms: crate::store::DEFAULT_FAIR_SHARE_WINDOW_MS,
        })
        .expect("claim");
    (dir, store, builder, job, claimed[0].attempt)
}
