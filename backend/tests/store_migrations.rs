//! Migrations run up, down and up again on both backends; both backends ship the same
//! migration names; URLs that name no supported database are refused.

use std::collections::BTreeSet;
use std::path::Path;

use buildfleet_backend::store::{
    connect, pending_migrations, revert_all_migrations, run_migrations, Store, StoreError,
};
use buildfleet_testkit::db::{new_job, with_database, TestDb};
use buildfleet_testkit::db_tests;

fn migration_names(backend: &str) -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../migrations")
        .join(backend);
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| {
            let entry = entry.expect("directory entry");
            assert!(
                entry.path().join("up.sql").is_file(),
                "{:?} lacks up.sql",
                entry.path()
            );
            assert!(
                entry.path().join("down.sql").is_file(),
                "{:?} lacks down.sql",
                entry.path()
            );
            entry.file_name().to_string_lossy().into_owned()
        })
        .collect()
}

#[test]
fn both_backends_have_the_same_migrations() {
    let postgres = migration_names("postgres");
    assert!(!postgres.is_empty());
    assert_eq!(postgres, migration_names("sqlite"));
}

#[test]
fn unsupported_urls_are_refused() {
    for url in ["mysql://localhost/db", "", ":memory:", "sqlite://"] {
        let err = Store::open(url, 1).expect_err(url);
        assert!(matches!(err, StoreError::UnsupportedUrl(_)), "{url}: {err}");
    }
}

#[test]
fn test_database_urls_swap_the_database_name() {
    assert_eq!(
        with_database("postgres://u@h:5432/postgres", "x"),
        "postgres://u@h:5432/x"
    );
    assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
    assert_eq!(
        with_database("postgresql://u:p@h/db?sslmode=disable", "x"),
        "postgresql://u:p@h/x?sslmode=disable"
    );
}

fn migrations_go_down_and_up_again(db: &TestDb) {
    let store = db.store();
    store
        .submit_job(new_job("crate"))
        .expect("submit on a migrated store");
    let mut conn = connect(db.url()).expect("connect");
    assert!(pending_migrations(&mut conn).expect("pending").is_empty());
    assert!(
        run_migrations(&mut conn).expect("re-run").is_empty(),
        "nothing left to apply"
    );

    let reverted = revert_all_migrations(&mut conn).expect("revert all");
    assert_eq!(reverted.len(), migration_names("sqlite").len());
    assert!(!pending_migrations(&mut conn).expect("pending").is_empty());
    let err = store
        .submit_job(new_job("crate"))
        .expect_err("tables are gone");
    assert_eq!(err.kind(), "database", "{err}");

    let applied = run_migrations(&mut conn).expect("migrate again");
    assert_eq!(applied.len(), reverted.len());
    let job = store
        .submit_job(new_job("crate"))
        .expect("submit after re-migration");
    assert_eq!(job.id.get(), 1, "a fresh schema numbers from 1");
}

fn opening_twice_is_harmless(db: &TestDb) {
    let other = db.open_store(2);
    other.ping().expect("ping");
    assert_eq!(other.queue_depth().expect("depth"), 0);
}

db_tests! {
    migrations_go_down_and_up_again,
    opening_twice_is_harmless,
}
