//! A latency histogram the hot path records into with three relaxed atomic adds (no lock, no
//! allocation), encoded as a Prometheus histogram when scraped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// Upper bounds of the buckets, in ns: 10 µs to 2.5 s in 1-2.5-5 steps (a chunk's compression
/// and write take tens of µs to ms; a notification's latency ms; a stall shows up high).
const BOUNDS_NS: [u64; 17] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
];

/// Counts of durations by bucket (the last one: above every bound), their sum and count.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl LatencyHistogram {
    /// An empty histogram (const: the daemon's histograms are statics).
    pub const fn new() -> Self {
        Self {
            buckets: [const { AtomicU64::new(0) }; BOUNDS_NS.len() + 1],
            sum_ns: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        self.observe_ns(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Records one duration given in ns.
    pub fn observe_ns(&self, ns: u64) {
        let bucket = BOUNDS_NS
            .iter()
            .position(|&b| ns <= b)
            .unwrap_or(BOUNDS_NS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts per bucket (not cumulative: the encoder adds them up) by upper bound in
    /// seconds, the last one `+Inf`; the sum in seconds; the count. Read without a lock, so a
    /// scrape racing an observation may see a bucket ahead of the count: the count is then
    /// raised to the buckets' total, as Prometheus wants the `+Inf` bucket equal to it.
    pub fn buckets(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let bounds = BOUNDS_NS.iter().map(|&b| b as f64 * 1e-9);
        let (out, count) = read_buckets(bounds, &self.buckets, &self.count);
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 * 1e-9;
        (out, sum, count)
    }
}

/// Counts per bucket by upper bound (`bounds`, then `+Inf`) and the count, raised to the
/// buckets' total should a scrape race an observation (Prometheus wants the `+Inf` bucket
/// equal to the count): the difference goes to `+Inf`.
pub(crate) fn read_buckets(
    bounds: impl Iterator<Item = f64>,
    buckets: &[AtomicU64],
    count: &AtomicU64,
) -> (Vec<(f64, u64)>, u64) {
    let mut out: Vec<(f64, u64)> = bounds
        .chain([f64::INFINITY])
        .zip(buckets)
        .map(|(bound, n)| (bound, n.load(Ordering::Relaxed)))
        .collect();
    let total: u64 = out.iter().map(|b| b.1).sum();
    let count = count.load(Ordering::Relaxed).max(total);
    if let Some(inf) = out.last_mut() {
        inf.1 += count - total;
    }
    (out, count)
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (buckets, sum, count) = self.buckets();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl EncodeMetric for &LatencyHistogram {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        (*self).encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_count_each_duration_once_and_add_up_to_the_count() {
        let h = LatencyHistogram::new();
        for us in [5, 20, 20, 700, 3_000_000] {
            h.observe(Duration::from_micros(us));
        }
        let (b, sum, count) = h.buckets();
        assert_eq!(count, 5);
        assert_eq!(b[0], (1e-5, 1));
        assert_eq!(b[1].1, 2, "two of 20 µs at or under 25 µs");
        assert_eq!(b[6].1, 1, "700 µs under 1 ms");
        assert_eq!(b.last(), Some(&(f64::INFINITY, 1)), "3 s is above 2.5 s");
        assert_eq!(b.iter().map(|b| b.1).sum::<u64>(), count);
        assert!((sum - 3.000745).abs() < 1e-9);
    }
}
