//! Per-frame statistics in the master: `/entry/instrument/detector/frame_statistics`, an
//! NXcollection of one value per index (`sum`, `max`, `saturated`, `masked`,
//! `above_threshold`), buffered and appended with the other per-index records. What the
//! values mean is in docs/QUALITY.md; an index without them (lost, or its frames arrived
//! encoded) has `sum` and `max` NaN and counts 0.

use hdf5::{Dataset, Group, H5Type};

use crate::nxmx;
use crate::WriteError;

/// Chunk length of the datasets.
const CHUNK: usize = 1024;

/// Where the group is.
pub const STATISTICS_PATH: &str = "/entry/instrument/detector/frame_statistics";

/// One frame's (or module frame's) statistics; pixels at the masked value are left out of
/// every figure but `masked`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FrameStats {
    /// Sum of the pixels (exact for integer pixels up to 2^53).
    pub sum: f64,
    /// Largest pixel.
    pub max: f64,
    /// Pixels at or above the saturation value.
    pub saturated: u64,
    /// Pixels at the masked value.
    pub masked: u64,
    /// Pixels above the threshold.
    pub above_threshold: u64,
}

impl FrameStats {
    /// The statistics of two parts of one frame together.
    pub fn merge(self, other: Self) -> Self {
        Self {
            sum: self.sum + other.sum,
            max: self.max.max(other.max),
            saturated: self.saturated + other.saturated,
            masked: self.masked + other.masked,
            above_threshold: self.above_threshold + other.above_threshold,
        }
    }
}

/// The figures the counts were taken against, written as attributes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StatsLimits {
    /// A pixel at this value is masked (the pixel type's largest for unsigned pixels).
    pub masked: f64,
    /// A pixel at or above this saturates.
    pub saturation: f64,
    /// `above_threshold` counts pixels above this.
    pub threshold: f64,
}

/// The datasets and what waits for the next flush.
pub(crate) struct StatisticsColumns {
    sum: (Dataset, Vec<f64>),
    max: (Dataset, Vec<f64>),
    saturated: (Dataset, Vec<u64>),
    masked: (Dataset, Vec<u64>),
    above: (Dataset, Vec<u64>),
}

impl StatisticsColumns {
    /// Creates the group under `detector` with `limits` as its attributes.
    pub(crate) fn create(detector: &Group, limits: &StatsLimits) -> Result<Self, WriteError> {
        let g = nxmx::nx_group(detector, "frame_statistics", "NXcollection")?;
        nxmx::attr_str(
            &g,
            "description",
            "per index, over the pixels of the modules written (docs/QUALITY.md); pixels at \
             masked_value count only in masked; NaN sum and max: no statistics for the index",
        )?;
        for (name, value) in [
            ("masked_value", limits.masked),
            ("saturation_value", limits.saturation),
            ("threshold", limits.threshold),
        ] {
            g.new_attr::<f64>().create(name)?.write_scalar(&value)?;
        }
        Ok(Self {
            sum: (column::<f64>(&g, "sum")?, Vec::new()),
            max: (column::<f64>(&g, "max")?, Vec::new()),
            saturated: (column::<u64>(&g, "saturated")?, Vec::new()),
            masked: (column::<u64>(&g, "masked")?, Vec::new()),
            above: (column::<u64>(&g, "above_threshold")?, Vec::new()),
        })
    }

    /// The group of an existing master, if it has one (masters of older versions do not).
    pub(crate) fn open(file: &hdf5::File) -> Option<Self> {
        let g = file.group(STATISTICS_PATH).ok()?;
        let ds = |name: &str| g.dataset(name).ok();
        Some(Self {
            sum: (ds("sum")?, Vec::new()),
            max: (ds("max")?, Vec::new()),
            saturated: (ds("saturated")?, Vec::new()),
            masked: (ds("masked")?, Vec::new()),
            above: (ds("above_threshold")?, Vec::new()),
        })
    }

    /// Buffers the next index's statistics.
    pub(crate) fn push(&mut self, stats: Option<&FrameStats>) {
        let s = stats.copied().unwrap_or(FrameStats {
            sum: f64::NAN,
            max: f64::NAN,
            ..FrameStats::default()
        });
        self.sum.1.push(s.sum);
        self.max.1.push(s.max);
        self.saturated.1.push(s.saturated);
        self.masked.1.push(s.masked);
        self.above.1.push(s.above_threshold);
    }

    /// Appends what is buffered, the datasets grown to `end` entries.
    pub(crate) fn flush(&mut self, end: usize) -> Result<(), WriteError> {
        append(&mut self.sum, end)?;
        append(&mut self.max, end)?;
        append(&mut self.saturated, end)?;
        append(&mut self.masked, end)?;
        append(&mut self.above, end)
    }

    /// Cuts every dataset to `n` entries (a crashed writer's records past the flushed ones).
    pub(crate) fn cut(&mut self, n: usize) -> Result<(), WriteError> {
        for ds in [
            &self.sum.0,
            &self.max.0,
            &self.saturated.0,
            &self.masked.0,
            &self.above.0,
        ] {
            if ds.shape().first().copied().unwrap_or(0) > n {
                ds.resize(n)?;
            }
        }
        Ok(())
    }
}

fn column<T: H5Type>(group: &Group, name: &str) -> Result<Dataset, WriteError> {
    Ok(group
        .new_dataset::<T>()
        .chunk(CHUNK)
        .shape(0..)
        .create(name)?)
}

/// Writes the buffered values as the last entries of `end` and empties the buffer.
fn append<T: H5Type>((ds, pending): &mut (Dataset, Vec<T>), end: usize) -> Result<(), WriteError> {
    if pending.is_empty() {
        return Ok(());
    }
    ds.resize(end)?;
    ds.write_slice(&pending[..], end - pending.len()..end)?;
    pending.clear();
    Ok(())
}
