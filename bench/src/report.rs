//! Results: one record per suite and database, printed as a table and written as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

/// How a metric compares with its target.
#[derive(Debug, Clone, Copy, Serialize)]
pub enum Goal {
    #[serde(rename = "<")]
    Below(f64),
    #[serde(rename = "<=")]
    AtMost(f64),
    #[serde(rename = ">=")]
    AtLeast(f64),
}

impl Goal {
    fn met(self, value: f64) -> bool {
        match self {
            Goal::Below(t) => value < t,
            Goal::AtMost(t) => value <= t,
            Goal::AtLeast(t) => value >= t,
        }
    }

    fn describe(self) -> String {
        match self {
            Goal::Below(t) => format!("< {}", number(t)),
            Goal::AtMost(t) => format!("<= {}", number(t)),
            Goal::AtLeast(t) => format!(">= {}", number(t)),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Metric {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<Goal>,
    /// Whether the target was met; absent without a target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub met: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SuiteResult {
    pub suite: &'static str,
    pub db: &'static str,
    /// Sizes the suite ran with (builders, jobs, bytes…).
    pub params: BTreeMap<&'static str, serde_json::Value>,
    pub metrics: Vec<Metric>,
    pub notes: Vec<String>,
    /// Set when the suite could not produce its numbers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl SuiteResult {
    pub fn new(suite: &'static str, db: &'static str) -> Self {
        SuiteResult {
            suite,
            db,
            params: BTreeMap::new(),
            metrics: Vec::new(),
            notes: Vec::new(),
            error: None,
        }
    }

    pub fn param(&mut self, name: &'static str, value: impl Into<serde_json::Value>) {
        self.params.insert(name, value.into());
    }

    pub fn metric(&mut self, name: impl Into<String>, value: f64, unit: &'static str) {
        self.metrics.push(Metric {
            name: name.into(),
            value,
            unit,
            target: None,
            met: None,
        });
    }

    pub fn metric_with_target(
        &mut self,
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
        target: Goal,
    ) {
        self.metrics.push(Metric {
            name: name.into(),
            value,
            unit,
            target: Some(target),
            met: Some(target.met(value)),
        });
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Produced at least one finite number and no error: what `--smoke` checks.
    pub fn has_numbers(&self) -> bool {
        self.error.is_none()
            && !self.metrics.is_empty()
            && self.metrics.iter().all(|m| m.value.is_finite())
    }
}

fn number(v: f64) -> String {
    if v == 0.0 || (v.abs() >= 0.01 && v.abs() < 1e9) {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        format!("{v:.3e}")
    }
}

/// The results as an aligned text table, then the notes.
pub fn table(results: &[SuiteResult]) -> String {
    let mut rows = vec![[
        "suite".to_owned(),
        "db".to_owned(),
        "metric".to_owned(),
        "value".to_owned(),
        "target".to_owned(),
        "ok".to_owned(),
    ]];
    for r in results {
        if let Some(error) = &r.error {
            rows.push([
                r.suite.into(),
                r.db.into(),
                "ERROR".into(),
                error.chars().take(60).collect(),
                String::new(),
                "FAIL".into(),
            ]);
        }
        for m in &r.metrics {
            rows.push([
                r.suite.into(),
                r.db.into(),
                m.name.clone(),
                format!("{} {}", number(m.value), m.unit),
                m.target
                    .map(|t| format!("{} {}", t.describe(), m.unit))
                    .unwrap_or_default(),
                match m.met {
                    Some(true) => "yes".into(),
                    Some(false) => "MISS".into(),
                    None => String::new(),
                },
            ]);
        }
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join(" | ").trim_end());
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            let _ = writeln!(out, "{}", rule.join("-|-"));
        }
    }
    for r in results {
        for note in &r.notes {
            let _ = writeln!(out, "note [{} {}]: {note}", r.suite, r.db);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_numbers() {
        let mut r = SuiteResult::new("dispatch", "sqlite");
        r.metric_with_target("p50", 1.5, "ms", Goal::Below(2.0));
        r.metric_with_target("rate", 10.0, "jobs/s", Goal::AtLeast(5000.0));
        assert_eq!(r.metrics[0].met, Some(true));
        assert_eq!(r.metrics[1].met, Some(false));
        assert!(r.has_numbers());
        let text = table(&[r]);
        assert!(text.contains("MISS"), "{text}");
        assert_eq!(number(2.0), "2");
        assert_eq!(number(0.125), "0.125");
    }
}
