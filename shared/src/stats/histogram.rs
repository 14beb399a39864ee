//! Latency as a fixed-bucket histogram, so that per-minute and per-hour rollups add up exactly and any span's
//! percentiles come from its buckets' sums, never from the attempts themselves.

use serde::Serialize;

/// Upper bounds (inclusive, milliseconds) of every bucket but the last, which holds everything slower. Roughly
/// ten per decade (each about 25 % above the one before), so an estimated percentile is within about 12 % of
/// the true one, from 1 ms to 100 s (a partner's timeout is at most 30 s).
pub const BOUNDS_MS: [u32; 48] = [
    1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 20, 25, 32, 40, 50, 64, 80, 100, 125, 160, 200, 250, 320, 400, 500, 640, 800,
    1_000, 1_250, 1_600, 2_000, 2_500, 3_200, 4_000, 5_000, 6_400, 8_000, 10_000, 12_500, 16_000, 20_000, 25_000,
    32_000, 40_000, 50_000, 64_000, 80_000, 100_000,
];

/// How many buckets a histogram has: one per bound and one for everything above the last.
pub const BUCKETS: usize = BOUNDS_MS.len() + 1;

/// Counts per bucket of [`BOUNDS_MS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencyHistogram {
    counts: [i64; BUCKETS],
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self { counts: [0; BUCKETS] }
    }
}

/// The usual percentiles of a span, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LatencySummary {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
}

impl LatencyHistogram {
    /// The histogram as stored (missing trailing buckets read as zero, extra ones are ignored).
    pub fn from_counts(stored: &[i64]) -> Self {
        let mut counts = [0; BUCKETS];
        for (c, s) in counts.iter_mut().zip(stored) {
            *c = (*s).max(0);
        }
        Self { counts }
    }

    pub fn counts(&self) -> &[i64; BUCKETS] {
        &self.counts
    }

    pub fn record(&mut self, latency_ms: u32) {
        let bucket = BOUNDS_MS.partition_point(|bound| *bound < latency_ms);
        self.counts[bucket] += 1;
    }

    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
    }

    pub fn total(&self) -> i64 {
        self.counts.iter().sum()
    }

    /// The latency below which `q` (0..=1) of the attempts fell, interpolated linearly inside its bucket (as
    /// Prometheus' `histogram_quantile` does); `None` when the histogram is empty. The open last bucket answers
    /// with its lower bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
        let mut below = 0_i64;
        for (i, count) in self.counts.iter().enumerate() {
            if *count > 0 && (below + count) as f64 >= rank {
                let lower = if i == 0 { 0.0 } else { f64::from(BOUNDS_MS[i - 1]) };
                let Some(upper) = BOUNDS_MS.get(i).map(|b| f64::from(*b)) else { return Some(lower) };
                let within = (rank - below as f64) / *count as f64;
                return Some(lower + (upper - lower) * within);
            }
            below += count;
        }
        Some(f64::from(BOUNDS_MS[BOUNDS_MS.len() - 1]))
    }

    /// p50, p95 and p99 with the mean (from the exact sum the rollups keep beside the buckets).
    pub fn summary(&self, sum_ms: i64) -> Option<LatencySummary> {
        let total = self.total();
        let round = |v: f64| (v * 10.0).round() / 10.0;
        Some(LatencySummary {
            p50_ms: round(self.quantile(0.50)?),
            p95_ms: round(self.quantile(0.95)?),
            p99_ms: round(self.quantile(0.99)?),
            mean_ms: round(sum_ms as f64 / total as f64),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_latency_lands_in_the_bucket_whose_bound_it_does_not_pass() {
        let mut h = LatencyHistogram::default();
        for ms in [0, 1, 2, 100, 101, 100_000, 100_001, u32::MAX] {
            h.record(ms);
        }
        let c = h.counts();
        assert_eq!(c[0], 2, "0 and 1 ms");
        assert_eq!(c[1], 1);
        let at = |bound: u32| BOUNDS_MS.iter().position(|b| *b == bound).unwrap();
        assert_eq!(c[at(100)], 1);
        assert_eq!(c[at(125)], 1);
        assert_eq!(c[at(100_000)], 1);
        assert_eq!(c[BUCKETS - 1], 2);
        assert_eq!(h.total(), 8);
    }

    #[test]
    fn quantiles_are_within_a_bucket_of_the_truth() {
        let mut h = LatencyHistogram::default();
        let mut sum = 0_i64;
        for ms in 1..=1000_u32 {
            h.record(ms);
            sum += i64::from(ms);
        }
        let s = h.summary(sum).unwrap();
        for (estimate, truth) in [(s.p50_ms, 500.0), (s.p95_ms, 950.0), (s.p99_ms, 990.0)] {
            assert!((estimate - truth).abs() / truth < 0.13, "{estimate} vs {truth}");
        }
        assert_eq!(s.mean_ms, 500.5);
    }

    #[test]
    fn merged_histograms_answer_as_one() {
        let (mut a, mut b, mut both) =
            (LatencyHistogram::default(), LatencyHistogram::default(), LatencyHistogram::default());
        for ms in [3, 40, 40, 900] {
            a.record(ms);
            both.record(ms);
        }
        for ms in [7, 7, 12_000] {
            b.record(ms);
            both.record(ms);
        }
        a.merge(&b);
        assert_eq!(a, both);
        assert_eq!(LatencyHistogram::from_counts(a.counts()), both);
    }

    #[test]
    fn an_empty_histogram_has_no_percentiles_and_a_slow_one_answers_its_floor() {
        assert_eq!(LatencyHistogram::default().summary(0), None);
        let mut h = LatencyHistogram::default();
        h.record(500_000);
        assert_eq!(h.quantile(0.99), Some(100_000.0));
    }
}
