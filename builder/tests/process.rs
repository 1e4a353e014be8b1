//! The process runner: output streamed line by line with timestamps and the right stream,
//! a clean environment, and timeout/cancel killing the whole process tree.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use buildfleet_builder::event_buffer::EventBuffer;
use buildfleet_builder::process::{run, CommandSpec, RunOptions, StopReason, StopSignal};
use buildfleet_builder::signals::ProcessGroup;
use buildfleet_protocol::{Attempt, JobEvent, JobEventKind, JobId, JobRef, LogStream};

const OPTIONS: RunOptions = RunOptions {
    max_line_bytes: 64,
    grace: Duration::from_millis(500),
};

fn buffer() -> Arc<EventBuffer> {
    Arc::new(EventBuffer::new(
        JobRef {
            job_id: JobId(1),
            attempt: Attempt(1),
        },
        1 << 20,
        |_| {},
    ))
}

fn sh(script: &str) -> CommandSpec {
    CommandSpec {
        program: "sh".into(),
        args: vec!["-c".into(), script.into()],
        env: BTreeMap::from([
            ("PATH".to_owned(), "/usr/bin:/bin".to_owned()),
            ("ONLY".to_owned(), "this".to_owned()),
        ]),
        cwd: std::env::temp_dir(),
        on_stop: None,
        run_as: None,
    }
}

fn lines(events: &[JobEvent]) -> Vec<(LogStream, String)> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            JobEventKind::Log { stream, line } => Some((*stream, line.clone())),
            JobEventKind::Stage { .. } => None,
        })
        .collect()
}

/// The pgid of a script that prints `$$` first (the shell leads its own group).
fn group_of(events: &[JobEvent]) -> ProcessGroup {
    let (_, first) = &lines(events)[0];
    ProcessGroup::led_by(first.trim().parse().expect("a pid")).expect("a group")
}

/// Every process of the group is gone or dead. Dead-but-unreaped members (zombies) are
/// allowed: orphans are reparented to init, and whether init reaps them promptly is up
/// to the machine (a container's init often does not), not to the builder.
async fn assert_group_gone(group: ProcessGroup) {
    for _ in 0..100 {
        if !group.exists() || members(group.id()).iter().all(|(_, state, _)| state == "Z") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "process group {} still has live members: {:?}",
        group.id(),
        members(group.id())
    );
}

/// `(pid, state, command)` of every process in group `pgid`, from /proc.
fn members(pgid: i32) -> Vec<(String, String, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...; comm may contain spaces, so split after ')'.
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(2) == Some(&pgid.to_string().as_str()) {
            let comm = head
                .split_once(" (")
                .map(|(_, c)| c.to_owned())
                .unwrap_or_default();
            found.push((
                entry.file_name().to_string_lossy().into_owned(),
                fields[0].to_owned(),
                comm,
            ));
        }
    }
    found
}

#[tokio::test]
async fn streams_stdout_and_stderr_lines_with_timestamps() {
    let events = buffer();
    let (_stop, mut signal) = StopSignal::new(None);
    let script = "echo out1; echo err1 >&2; printf 'out2\\r\\n'; echo \"env=$ONLY home=${HOME:-unset}\"; printf 'no newline'";
    let exit = run(&sh(script), events.as_ref(), &mut signal, OPTIONS)
        .await
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    let all = events.events_after(0);
    let got = lines(&all);
    let stdout: Vec<_> = got
        .iter()
        .filter(|(s, _)| *s == LogStream::Stdout)
        .map(|(_, l)| l.as_str())
        .collect();
    let stderr: Vec<_> = got
        .iter()
        .filter(|(s, _)| *s == LogStream::Stderr)
        .map(|(_, l)| l.as_str())
        .collect();
    assert_eq!(
        stdout,
        ["out1", "out2", "env=this home=unset", "no newline"]
    );
    assert_eq!(stderr, ["err1"]);
    let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=5).collect::<Vec<_>>());
    let now = buildfleet_builder::event_buffer::now_ms();
    assert!(all
        .iter()
        .all(|e| e.timestamp_ms > now - 60_000 && e.timestamp_ms <= now));
}

#[tokio::test]
async fn long_lines_are_truncated_and_exit_codes_reported() {
    let events = buffer();
    let (_stop, mut signal) = StopSignal::new(None);
    let exit = run(
        &sh("head -c 1000 /dev/zero | tr '\\0' a; echo; echo after; exit 3"),
        events.as_ref(),
        &mut signal,
        OPTIONS,
    )
    .await
    .unwrap();
    assert_eq!(exit.code, Some(3));
    assert!(!exit.success());
    let got = lines(&events.events_after(0));
    assert_eq!(got.len(), 2);
    assert!(
        got[0].1.len() <= 64 && got[0].1.ends_with("[truncated]"),
        "{:?}",
        got[0].1
    );
    assert_eq!(got[1].1, "after");
}

#[tokio::test]
async fn cancel_kills_the_whole_process_tree() {
    let events = buffer();
    let (stop, mut signal) = StopSignal::new(None);
    let spec = sh("echo $$; sleep 1000 & sleep 1000 & wait");
    let watcher = {
        let events = events.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            while events.last_seq() == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            stop.stop(StopReason::Cancelled);
        })
    };
    let exit = tokio::time::timeout(
        Duration::from_secs(10),
        run(&spec, events.as_ref(), &mut signal, OPTIONS),
    )
    .await
    .expect("cancel must end the command")
    .unwrap();
    watcher.await.unwrap();
    assert_eq!(exit.stopped, Some(StopReason::Cancelled));
    assert_group_gone(group_of(&events.events_after(0))).await;
}

#[tokio::test]
async fn a_timeout_kills_a_tree_that_ignores_sigterm() {
    let events = buffer();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    let (_stop, mut signal) = StopSignal::new(Some(deadline));
    // Every member ignores SIGTERM, so only the SIGKILL after the grace period ends them.
    let spec = sh("trap '' TERM; echo $$; sh -c 'trap \"\" TERM; sleep 1000' & sleep 1000 & wait");
    let started = std::time::Instant::now();
    let exit = tokio::time::timeout(
        Duration::from_secs(10),
        run(&spec, events.as_ref(), &mut signal, OPTIONS),
    )
    .await
    .expect("the timeout must end the command")
    .unwrap();
    assert_eq!(exit.stopped, Some(StopReason::TimedOut));
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "SIGKILL came before the grace period"
    );
    assert_group_gone(group_of(&events.events_after(0))).await;
}

#[tokio::test]
async fn background_children_do_not_outlive_a_finished_command() {
    let events = buffer();
    let (_stop, mut signal) = StopSignal::new(None);
    let exit = tokio::time::timeout(
        Duration::from_secs(10),
        run(
            &sh("echo $$; sleep 1000 > /dev/null 2>&1 & echo done"),
            events.as_ref(),
            &mut signal,
            OPTIONS,
        ),
    )
    .await
    .expect("a finished command must not wait for its background children")
    .unwrap();
    assert!(exit.success());
    assert_group_gone(group_of(&events.events_after(0))).await;
}

#[tokio::test]
async fn a_missing_program_is_a_spawn_error() {
    let events = buffer();
    let (_stop, mut signal) = StopSignal::new(None);
    let mut spec = sh("");
    spec.program = "/nonexistent/program".into();
    let err = run(&spec, events.as_ref(), &mut signal, OPTIONS)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot start"), "{err}");
}
