//! Process-wide counters and the dispatch-latency histogram, rendered in the Prometheus text
//! format by `/metrics` together with gauges read from the store at scrape time.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Bucket upper bounds of the dispatch latency histogram, in seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, value: Duration) {
        let secs = value.as_secs_f64();
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

#[derive(Default)]
pub struct Metrics {
    pub builders_connected: AtomicI64,
    pub jobs_dispatched: AtomicU64,
    pub jobs_completed: AtomicU64,
    pub auth_failures: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub log_bytes_stored: AtomicU64,
    pub log_lines_stored: AtomicU64,
    /// Chunk writes that failed; their events were kept for a retry.
    pub log_store_failures: AtomicU64,
    /// Times an attempt's unstored events were let go and its session closed for a resend.
    pub log_sheds: AtomicU64,
    pub artifact_bytes_uploaded: AtomicU64,
    /// Live viewers of running jobs' logs, as the LogSink holds them.
    pub log_subscribers: AtomicI64,
    /// Open server-sent event streams: logs and job states.
    pub event_streams: AtomicI64,
    /// Submission (or requeue) to the `jobs` frame being sent to a builder.
    pub dispatch_latency: Histogram,
    /// Bytes stored per project, as the janitor last read them.
    pub project_storage: std::sync::Mutex<Vec<ProjectStorage>>,
}

/// What one project stores (`buildfleet_project_storage_bytes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectStorage {
    /// `organisation/project`.
    pub project: String,
    pub artifact_bytes: i64,
    pub log_bytes: i64,
}

/// Gauges read from the database when `/metrics` is scraped.
pub struct StoreGauges {
    pub queue_depth: i64,
    pub jobs_by_state: Vec<(&'static str, i64)>,
}

impl Metrics {
    pub fn set_project_storage(&self, usage: Vec<ProjectStorage>) {
        *self
            .project_storage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = usage;
    }

    pub fn render(&self, gauges: &StoreGauges) -> String {
        let mut out = String::with_capacity(4096);
        let gauge = |out: &mut String, name: &str, help: &str, value: i64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        let counter = |out: &mut String, name: &str, help: &str, value: &AtomicU64| {
            let v = value.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        gauge(
            &mut out,
            "buildfleet_queue_depth",
            "Jobs waiting for a builder.",
            gauges.queue_depth,
        );
        gauge(
            &mut out,
            "buildfleet_builders_connected",
            "Authenticated builder sessions.",
            self.builders_connected.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "buildfleet_log_subscribers",
            "Live log viewers the LogSink sends new lines to.",
            self.log_subscribers.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "buildfleet_event_streams",
            "Open server-sent event streams (live logs and job states).",
            self.event_streams.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP buildfleet_jobs Jobs by state.\n# TYPE buildfleet_jobs gauge"
        );
        for (state, count) in &gauges.jobs_by_state {
            let _ = writeln!(out, "buildfleet_jobs{{state=\"{state}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "# HELP buildfleet_project_storage_bytes Bytes of artifacts and logs a project stores (read by the janitor).\n# TYPE buildfleet_project_storage_bytes gauge"
        );
        for usage in self
            .project_storage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            for (kind, bytes) in [
                ("artifacts", usage.artifact_bytes),
                ("logs", usage.log_bytes),
            ] {
                let _ = writeln!(
                    out,
                    "buildfleet_project_storage_bytes{{project=\"{}\",kind=\"{kind}\"}} {bytes}",
                    usage.project
                );
            }
        }
        counter(
            &mut out,
            "buildfleet_jobs_dispatched_total",
            "Assignments pushed to builders.",
            &self.jobs_dispatched,
        );
        counter(
            &mut out,
            "buildfleet_jobs_completed_total",
            "Attempts completed by builders.",
            &self.jobs_completed,
        );
        counter(
            &mut out,
            "buildfleet_auth_failures_total",
            "Failed builder authentications.",
            &self.auth_failures,
        );
        counter(
            &mut out,
            "buildfleet_protocol_errors_total",
            "Sessions closed for a protocol error.",
            &self.protocol_errors,
        );
        counter(
            &mut out,
            "buildfleet_log_bytes_stored_total",
            "Log bytes written to storage.",
            &self.log_bytes_stored,
        );
        counter(
            &mut out,
            "buildfleet_log_lines_stored_total",
            "Log lines written to storage.",
            &self.log_lines_stored,
        );
        counter(
            &mut out,
            "buildfleet_log_store_failures_total",
            "Log chunk writes that failed and were retried (no event dropped).",
            &self.log_store_failures,
        );
        counter(
            &mut out,
            "buildfleet_log_sheds_total",
            "Times an attempt's unstored log events passed the cap and its session was closed so the builder resends them.",
            &self.log_sheds,
        );
        counter(
            &mut out,
            "buildfleet_artifact_bytes_uploaded_total",
            "Artifact bytes received.",
            &self.artifact_bytes_uploaded,
        );
        self.dispatch_latency.render(
            &mut out,
            "buildfleet_dispatch_latency_seconds",
            "Time from a job becoming queued to its assignment frame being sent.",
        );
        out
    }
}
