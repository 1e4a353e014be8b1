//! One job's events until the backend acknowledges them.
//!
//! Events are numbered here (seq from 1 per attempt) and kept until an `event_ack` covers
//! them, so they can be resent after a reconnect. The buffer is bounded in bytes; when it
//! is full, [`EventBuffer::push`] waits, which stops the job from reading its subprocess'
//! output: the build blocks on its pipe instead of losing lines.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use buildfleet_protocol::{JobEvent, JobEventKind, JobRef};
use tokio::sync::Notify;

/// Per-event overhead beyond the line itself (ids, seq, timestamp, JSON keys).
const EVENT_OVERHEAD_BYTES: usize = 128;

pub struct EventBuffer {
    job: JobRef,
    capacity_bytes: usize,
    state: Mutex<State>,
    space_freed: Notify,
    on_event: Box<dyn Fn(JobRef) + Send + Sync>,
}

#[derive(Default)]
struct State {
    next_seq: u64,
    acked_seq: u64,
    bytes: usize,
    events: VecDeque<JobEvent>,
    /// How many pushes had to wait for an acknowledgment.
    stalls: u64,
}

impl EventBuffer {
    /// `on_event` is called after every push (the supervisor then sends what it can).
    pub fn new(
        job: JobRef,
        capacity_bytes: usize,
        on_event: impl Fn(JobRef) + Send + Sync + 'static,
    ) -> Self {
        EventBuffer {
            job,
            capacity_bytes,
            state: Mutex::new(State {
                next_seq: 1,
                ..State::default()
            }),
            space_freed: Notify::new(),
            on_event: Box::new(on_event),
        }
    }

    /// Numbers, timestamps and stores an event, waiting while the buffer is full.
    pub async fn push(&self, event: JobEventKind) {
        let size = event_size(&event);
        loop {
            let freed = self.space_freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so an ack between check and await still wakes us.
            freed.as_mut().enable();
            {
                let mut state = self.lock();
                // An empty buffer always takes one event, however large.
                if state.events.is_empty() || state.bytes + size <= self.capacity_bytes {
                    let seq = state.next_seq;
                    state.next_seq += 1;
                    state.bytes += size;
                    state.events.push_back(JobEvent {
                        job_id: self.job.job_id,
                        attempt: self.job.attempt,
                        seq,
                        timestamp_ms: now_ms(),
                        event,
                    });
                    break;
                }
                state.stalls += 1;
                if state.stalls == 1 {
                    tracing::warn!(
                        job = %self.job.job_id,
                        "event buffer full; pausing the build's output until the backend acknowledges"
                    );
                }
            }
            freed.await;
        }
        (self.on_event)(self.job);
    }

    /// Drops every event with `seq <= acked_seq`.
    pub fn ack(&self, acked_seq: u64) {
        let mut state = self.lock();
        if acked_seq <= state.acked_seq {
            return;
        }
        state.acked_seq = acked_seq;
        while state.events.front().is_some_and(|e| e.seq <= acked_seq) {
            if let Some(event) = state.events.pop_front() {
                state.bytes -= event_size(&event.event);
            }
        }
        drop(state);
        self.space_freed.notify_waiters();
    }

    /// The buffered events with `seq > after`, oldest first.
    pub fn events_after(&self, after: u64) -> Vec<JobEvent> {
        self.lock()
            .events
            .iter()
            .filter(|e| e.seq > after)
            .cloned()
            .collect()
    }

    /// The highest acknowledged seq, `None` before the first acknowledgment.
    pub fn acked_seq(&self) -> Option<u64> {
        let acked = self.lock().acked_seq;
        (acked > 0).then_some(acked)
    }

    /// The seq of the newest event, 0 when none was pushed.
    pub fn last_seq(&self) -> u64 {
        self.lock().next_seq - 1
    }

    pub fn buffered_bytes(&self) -> usize {
        self.lock().bytes
    }

    pub fn stalls(&self) -> u64 {
        self.lock().stalls
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave `State` half-updated in a way that
        // matters more than losing the job's events, so a poisoned lock is used as is.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn event_size(event: &JobEventKind) -> usize {
    match event {
        JobEventKind::Log { line, .. } => line.len() + EVENT_OVERHEAD_BYTES,
        JobEventKind::Stage { .. } => EVENT_OVERHEAD_BYTES,
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use buildfleet_protocol::{Attempt, JobId, LogStream};

    use super::*;

    fn line(text: &str) -> JobEventKind {
        JobEventKind::Log {
            stream: LogStream::Stdout,
            line: text.into(),
        }
    }

    #[tokio::test]
    async fn numbers_events_and_releases_them_on_ack() {
        let job = JobRef {
            job_id: JobId(7),
            attempt: Attempt(2),
        };
        let buffer = EventBuffer::new(job, 1 << 20, |_| {});
        for text in ["a", "b", "c"] {
            buffer.push(line(text)).await;
        }
        assert_eq!(buffer.last_seq(), 3);
        assert_eq!(
            buffer
                .events_after(1)
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>(),
            [2, 3]
        );
        buffer.ack(2);
        assert_eq!(buffer.acked_seq(), Some(2));
        assert_eq!(buffer.events_after(0).len(), 1);
    }

    #[tokio::test]
    async fn a_full_buffer_blocks_the_producer_until_acked() {
        let job = JobRef {
            job_id: JobId(1),
            attempt: Attempt(1),
        };
        let buffer = Arc::new(EventBuffer::new(
            job,
            2 * (EVENT_OVERHEAD_BYTES + 1),
            |_| {},
        ));
        buffer.push(line("a")).await;
        buffer.push(line("b")).await;
        let producer = {
            let buffer = buffer.clone();
            tokio::spawn(async move { buffer.push(line("c")).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !producer.is_finished(),
            "the third event must wait for space"
        );
        assert_eq!(buffer.stalls(), 1);
        buffer.ack(1);
        tokio::time::timeout(Duration::from_secs(5), producer)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(buffer.last_seq(), 3);
    }
}
