//! Histograms of the per-frame statistics (`detingest_frame_*`): how the frames' sums,
//! maxima and pixel counts are spread, recorded by the writer with a few relaxed atomic adds
//! per index and encoded as Prometheus histograms when scraped.

use std::sync::atomic::{AtomicU64, Ordering};

use detingest_writer::FrameStats;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// Upper bounds: 0, then 1 to 10^12 in 1-3 steps (decades of counts).
const BOUNDS: [f64; 26] = [
    0.0, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e3, 3e3, 1e4, 3e4, 1e5, 3e5, 1e6, 3e6, 1e7, 3e7, 1e8,
    3e8, 1e9, 3e9, 1e10, 3e10, 1e11, 3e11, 1e12,
];

/// Counts of values by bucket (the last: above every bound), their sum and count.
#[derive(Debug)]
pub struct ValueHistogram {
    buckets: [AtomicU64; BOUNDS.len() + 1],
    /// The sum, as f64 bits (added with a compare-and-swap loop: one writer, no contention).
    sum_bits: AtomicU64,
    count: AtomicU64,
}

impl ValueHistogram {
    /// An empty histogram.
    pub const fn new() -> Self {
        Self {
            buckets: [const { AtomicU64::new(0) }; BOUNDS.len() + 1],
            sum_bits: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one value (NaN is not recorded).
    pub fn observe(&self, v: f64) {
        if v.is_nan() {
            return;
        }
        let bucket = BOUNDS.iter().position(|&b| v <= b).unwrap_or(BOUNDS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts per bucket by upper bound (`+Inf` last), the sum and the count (raised to the
    /// buckets' total should a scrape race an observation).
    pub fn buckets(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let (out, count) =
            super::histogram::read_buckets(BOUNDS.iter().copied(), &self.buckets, &self.count);
        (
            out,
            f64::from_bits(self.sum_bits.load(Ordering::Relaxed)),
            count,
        )
    }
}

impl Default for ValueHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl EncodeMetric for &ValueHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (buckets, sum, count) = self.buckets();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Per-frame sums.
pub static FRAME_SUM: ValueHistogram = ValueHistogram::new();
/// Per-frame maxima.
pub static FRAME_MAX: ValueHistogram = ValueHistogram::new();
/// Saturated pixels per frame.
pub static FRAME_SATURATED: ValueHistogram = ValueHistogram::new();
/// Pixels above the threshold per frame.
pub static FRAME_ABOVE: ValueHistogram = ValueHistogram::new();

/// Records one index's statistics.
pub fn observe(s: &FrameStats) {
    FRAME_SUM.observe(s.sum);
    FRAME_MAX.observe(s.max);
    FRAME_SATURATED.observe(s.saturated as f64);
    FRAME_ABOVE.observe(s.above_threshold as f64);
}

/// `(name, help, histogram)` of each, for the scrape.
pub fn families() -> [(&'static str, &'static str, &'static ValueHistogram); 4] {
    [
        (
            "detingest_frame_sum",
            "Sum of each written frame's pixels (masked pixels left out)",
            &FRAME_SUM,
        ),
        (
            "detingest_frame_max",
            "Largest pixel of each written frame (masked pixels left out)",
            &FRAME_MAX,
        ),
        (
            "detingest_frame_saturated_pixels",
            "Saturated pixels per written frame",
            &FRAME_SATURATED,
        ),
        (
            "detingest_frame_pixels_above_threshold",
            "Pixels above [quality] threshold per written frame",
            &FRAME_ABOVE,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_fall_in_their_decade_and_add_up() {
        let h = ValueHistogram::new();
        for v in [0.0, 2.0, 2.5, 5e6, 1e13, f64::NAN] {
            h.observe(v);
        }
        let (b, sum, count) = h.buckets();
        assert_eq!(count, 5, "NaN is not a value");
        assert_eq!(b[0], (0.0, 1));
        assert_eq!(b[2], (3.0, 2));
        assert_eq!(b.last(), Some(&(f64::INFINITY, 1)));
        assert_eq!(sum, 1e13 + 5e6 + 4.5);
    }
}
