//! Latency percentiles on an HDR histogram (microsecond resolution, three
//! significant digits), for tests that measure without asserting.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Recorded latencies: constant memory however many are recorded.
pub struct Latencies {
    histogram: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies::new()
    }
}

impl Latencies {
    pub fn new() -> Latencies {
        Latencies {
            // 1 µs .. 1 hour, 3 significant digits.
            histogram: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
        }
    }

    /// Records one latency (saturating at an hour; 0 counts as 1 µs).
    pub fn record(&mut self, latency: Duration) {
        let micros = (latency.as_micros() as u64).clamp(1, self.histogram.high());
        self.histogram.record(micros).expect("value within bounds");
    }

    pub fn len(&self) -> u64 {
        self.histogram.len()
    }

    pub fn is_empty(&self) -> bool {
        self.histogram.is_empty()
    }

    /// The latency at quantile `q` (0.5 = median, 0.99 = p99; 1.0 = max);
    /// zero when nothing was recorded.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.histogram.is_empty() {
            return Duration::ZERO;
        }
        Duration::from_micros(self.histogram.value_at_quantile(q))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_a_known_distribution() {
        let mut latencies = Latencies::new();
        assert_eq!(latencies.quantile(0.5), Duration::ZERO);
        for ms in 1..=100 {
            latencies.record(Duration::from_millis(ms));
        }
        assert_eq!(latencies.len(), 100);
        let within = |d: Duration, ms: u64| {
            let want = ms as f64 * 1000.0;
            (d.as_micros() as f64 - want).abs() <= want * 0.001 + 1.0
        };
        assert!(
            within(latencies.quantile(0.5), 50),
            "{:?}",
            latencies.quantile(0.5)
        );
        assert!(
            within(latencies.quantile(0.99), 99),
            "{:?}",
            latencies.quantile(0.99)
        );
        assert!(
            within(latencies.quantile(1.0), 100),
            "{:?}",
            latencies.quantile(1.0)
        );
    }
}
