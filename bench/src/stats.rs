//! Percentiles of measured durations.

use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub mean: Duration,
}

/// Nearest-rank percentiles; `None` for no samples.
pub fn summarize(samples: &[Duration]) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = |p: f64| {
        let index = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[index.clamp(1, sorted.len()) - 1]
    };
    let total: Duration = sorted.iter().sum();
    Some(Summary {
        p50: rank(50.0),
        p99: rank(99.0),
        max: sorted[sorted.len() - 1],
        mean: total / u32::try_from(sorted.len()).unwrap_or(u32::MAX),
    })
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<_> = (1..=100).map(Duration::from_millis).collect();
        let s = summarize(&samples).expect("samples");
        assert_eq!(s.p50, Duration::from_millis(50));
        assert_eq!(s.p99, Duration::from_millis(99));
        assert_eq!(s.max, Duration::from_millis(100));
        assert!(summarize(&[]).is_none());
        let one = summarize(&[Duration::from_millis(7)]).expect("one sample");
        assert_eq!(
            (one.p50, one.p99),
            (Duration::from_millis(7), Duration::from_millis(7))
        );
    }
}
