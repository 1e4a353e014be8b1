//! `buildfleet-bench-stamp`: the no-op command of the real-builder suite and of its floor.
//! Its first act is to print the wall clock (`bf-stamp <unix ns>`), so the suite can tell
//! when a job's command started running. Links std only, so it starts as fast as a
//! program can.

fn main() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    println!("bf-stamp {now}");
}
