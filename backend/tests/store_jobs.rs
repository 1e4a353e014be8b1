//! Jobs: submission and its checks, lookup, listing with filters and paging, statistics.

use buildfleet_backend::store::{
    Attempt, ClaimRequest, JobFilter, JobId, JobMode, JobState, Labels, NewJob,
};
use buildfleet_testkit::db::{admit, new_job, TestDb, T0};
use buildfleet_testkit::db_tests;

fn submitted_jobs_are_queued_at_attempt_one(db: &TestDb) {
    let (store, _) = db.manual_store();
    let mut new = new_job("crate");
    new.mode = JobMode::Plan;
    new.priority = 7;
    new.required_labels = Labels::from([("arch".to_owned(), "aarch64".to_owned())]);
    let job = store.submit_job(new.clone()).expect("submit");

    assert_eq!(job.state, JobState::Queued);
    assert_eq!(job.attempt, Attempt(1));
    assert_eq!(job.failed_attempts, 0);
    assert_eq!((job.created_at, job.updated_at), (T0, T0));
    assert_eq!(
        (job.started_at, job.finished_at, job.builder_id),
        (None, None, None)
    );
    assert_eq!(job.source_url, new.source_url);
    assert_eq!(job.source_sha256, new.source_sha256);
    assert_eq!(job.source_max_bytes, new.source_max_bytes);
    assert_eq!(job.recipe, "crate");
    assert_eq!(job.parameters, new.parameters);
    assert_eq!(job.required_labels, new.required_labels);
    assert_eq!(job.mode, JobMode::Plan);
    assert_eq!(job.priority, 7);
    assert_eq!(job.max_attempts, 3);
    assert_eq!(job.timeout_secs, 600);
    assert_eq!(job.submitter, "tests");

    assert_eq!(store.job(job.id).expect("get"), Some(job.clone()));
    assert_eq!(store.job(JobId(job.id.get() + 100)).expect("get"), None);

    let events = store.job_events(job.id).expect("events");
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].from, events[0].to), (None, JobState::Queued));
    assert_eq!((events[0].attempt, events[0].at), (Attempt(1), T0));
}

fn invalid_jobs_are_refused(db: &TestDb) {
    let store = db.store();
    type Break = fn(&mut NewJob);
    let cases: [(&str, Break); 7] = [
        ("empty url", |j| j.source_url = String::new()),
        ("short digest", |j| j.source_sha256 = "abc".into()),
        ("uppercase digest", |j| {
            j.source_sha256 = j.source_sha256.to_uppercase()
        }),
        ("no size limit", |j| j.source_max_bytes = 0),
        ("empty recipe", |j| j.recipe = " ".into()),
        ("no attempts", |j| j.max_attempts = 0),
        ("no timeout", |j| j.timeout_secs = 0),
    ];
    for (what, break_it) in cases {
        let mut new = new_job("crate");
        break_it(&mut new);
        let err = store.submit_job(new).expect_err(what);
        assert_eq!(err.kind(), "invalid_input", "{what}: {err}");
    }
    assert_eq!(store.queue_depth().expect("depth"), 0);
}

fn jobs_list_newest_first_with_filters_and_paging(db: &TestDb) {
    let (store, _) = db.manual_store();
    let builder = admit(&store, "alpha");
    let mut ids = Vec::new();
    for i in 0..6 {
        let recipe = if i % 2 == 0 { "even" } else { "odd" };
        ids.push(store.submit_job(new_job(recipe)).expect("submit").id);
    }
    let claimed = store
        .claim_jobs(&ClaimRequest {
            builder,
            recipes: vec!["odd".into()],
            labels: Labels::new(),
            limit: 1,
            lease_ms: 10_000,
            now_ms: T0,
            exclude: Vec::new(),
            projects: None,
            fair_share_window_ms: buildfleet_backend::store::DEFAULT_FAIR_SHARE_WINDOW_MS,
        })
        .expect("claim");
    assert_eq!(claimed[0].job.id, ids[1], "oldest odd job");

    let list = |filter: JobFilter| -> Vec<JobId> {
        store
            .list_jobs(&filter)
            .expect("list")
            .into_iter()
            .map(|j| j.id)
            .collect()
    };
    let newest_first: Vec<JobId> = ids.iter().rev().copied().collect();
    assert_eq!(list(JobFilter::default()), newest_first);
    assert_eq!(
        list(JobFilter {
            recipe: Some("even".into()),
            ..JobFilter::default()
        }),
        vec![ids[4], ids[2], ids[0]]
    );
    assert_eq!(
        list(JobFilter {
            state: Some(JobState::Assigned),
            ..JobFilter::default()
        }),
        vec![ids[1]]
    );
    assert_eq!(
        list(JobFilter {
            builder: Some(builder),
            ..JobFilter::default()
        }),
        vec![ids[1]]
    );
    let page1 = list(JobFilter {
        limit: 4,
        ..JobFilter::default()
    });
    assert_eq!(page1, newest_first[..4]);
    let page2 = list(JobFilter {
        limit: 4,
        before_id: page1.last().copied(),
        ..JobFilter::default()
    });
    assert_eq!(page2, newest_first[4..]);
}

fn queue_statistics_count_every_state(db: &TestDb) {
    let store = db.store();
    let builder = admit(&store, "alpha");
    for _ in 0..3 {
        store.submit_job(new_job("crate")).expect("submit");
    }
    let cancelled = store.submit_job(new_job("crate")).expect("submit");
    store.cancel_job(cancelled.id).expect("cancel");
    store
        .claim_jobs(&ClaimRequest {
            builder,
            recipes: vec!["crate".into()],
            labels: Labels::new(),
            limit: 1,
            lease_ms: 10_000,
            now_ms: store.now_ms(),
            exclude: Vec::new(),
            projects: None,
            fair_share_window_ms: buildfleet_backend::store::DEFAULT_FAIR_SHARE_WINDOW_MS,
        })
        .expect("claim");

    let counts = store.count_jobs_by_state().expect("counts");
    assert_eq!(counts.len(), JobState::ALL.len(), "every state listed");
    assert_eq!(counts[&JobState::Queued], 2);
    assert_eq!(counts[&JobState::Assigned], 1);
    assert_eq!(counts[&JobState::Cancelled], 1);
    assert_eq!(counts[&JobState::Running], 0);
    assert_eq!(store.queue_depth().expect("depth"), 2);
}

db_tests! {
    submitted_jobs_are_queued_at_attempt_one,
    invalid_jobs_are_refused,
    jobs_list_newest_first_with_filters_and_paging,
    queue_statistics_count_every_state,
}
