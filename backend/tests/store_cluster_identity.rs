//! The cluster's backend id in the store, both databases (issue 16 item 6): the first
//! candidate is stored and every later one gets it back; replicas starting at once on a fresh
//! database agree on one id; the table holds one non-empty id at most.

use std::sync::{Arc, Barrier};
use std::thread;

use buildfleet_backend::store::{connect, DbConnection, StoreError};
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::db_tests;
use diesel::RunQueryDsl as _;

db_tests! {
    the_first_candidate_is_kept,
    replicas_starting_at_once_agree,
    the_table_holds_one_non_empty_id,
}

fn the_first_candidate_is_kept(db: &TestDb) {
    let store = db.store();
    let first = "https://a.builds.example";
    assert_eq!(store.cluster_backend_id(first).expect("first start"), first);
    // Another replica, on its own pool, proposing its own URL.
    let other = db.open_store(1);
    assert_eq!(
        other
            .cluster_backend_id("https://b.builds.example")
            .expect("second start"),
        first
    );
    assert_eq!(store.cluster_backend_id(first).expect("restart"), first);
    for empty in ["", "  "] {
        assert!(
            matches!(
                store.cluster_backend_id(empty),
                Err(StoreError::InvalidInput(_))
            ),
            "{empty:?}"
        );
    }
    assert_eq!(stored_ids(db), vec![first.to_owned()]);
}

fn replicas_starting_at_once_agree(db: &TestDb) {
    const REPLICAS: usize = 4;
    let barrier = Arc::new(Barrier::new(REPLICAS));
    let racers: Vec<_> = (0..REPLICAS)
        .map(|i| {
            let (store, barrier) = (db.open_store(1), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                store.cluster_backend_id(&format!("https://replica-{i}.builds.example"))
            })
        })
        .collect();
    let ids: Vec<String> = racers
        .into_iter()
        .map(|racer| racer.join().expect("racer").expect("backend id"))
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert!(
        ids[0].starts_with("https://replica-"),
        "one of the candidates: {ids:?}"
    );
    assert_eq!(stored_ids(db), vec![ids[0].clone()]);
}

fn the_table_holds_one_non_empty_id(db: &TestDb) {
    db.store()
        .cluster_backend_id("https://builds.example")
        .expect("stored");
    let mut conn = connect(db.url()).expect("connect");
    for refused in [
        "INSERT INTO cluster_identity (id, backend_id) VALUES (2, 'https://other.example')",
        "INSERT INTO cluster_identity (id, backend_id) VALUES (1, 'https://other.example')",
        "UPDATE cluster_identity SET backend_id = ''",
    ] {
        assert!(execute(&mut conn, refused).is_err(), "{refused}");
    }
    // The documented way to change the cluster's id.
    execute(
        &mut conn,
        "UPDATE cluster_identity SET backend_id = 'https://renamed.example'",
    )
    .expect("rename");
    assert_eq!(
        db.store()
            .cluster_backend_id("https://builds.example")
            .expect("after the rename"),
        "https://renamed.example"
    );
}

fn execute(conn: &mut DbConnection, sql: &str) -> Result<usize, diesel::result::Error> {
    match conn {
        DbConnection::Postgresql(pg) => diesel::sql_query(sql).execute(pg),
        DbConnection::Sqlite(lite) => diesel::sql_query(sql).execute(lite),
    }
}

fn stored_ids(db: &TestDb) -> Vec<String> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        backend_id: String,
    }
    let mut conn = connect(db.url()).expect("connect");
    let sql = "SELECT backend_id FROM cluster_identity";
    let rows: Vec<Row> = match &mut conn {
        DbConnection::Postgresql(pg) => diesel::sql_query(sql).load(pg),
        DbConnection::Sqlite(lite) => diesel::sql_query(sql).load(lite),
    }
    .expect("reading cluster_identity");
    rows.into_iter().map(|row| row.backend_id).collect()
}
