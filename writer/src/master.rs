//! A run's master file, `<stream>_master.h5`: the NXmx metadata, one external link per data
//! file (`/entry/data/data_NNNNNN`), the per-index records under `detectorSpecific`, and at the
//! end the virtual dataset over every data file and the finish marker.
//!
//! Per-index records (`frame_number`, `sequence`, `frame_lost`, `frame_dropped`, `timestamp`,
//! `detector_timestamp`, `bunch_id`, `module_mask`, `dropped_mask`, `packets_lost`,
//! `missing_packets`) are buffered and appended on [`MasterFile::flush`] together with
//! `nimages`, so a crash loses at most what came after the last flush.

use std::path::Path;
use std::time::SystemTime;

use hdf5::{Dataset, Group, H5Type};
use ndarray::ArrayView3;

use crate::data_file::{create_file, reopen_after_swmr, start_swmr};
use crate::detector_info::DetectorInfo;
use crate::frame_statistics::{FrameStats, StatisticsColumns};
use crate::geometry;
use crate::layout::RunLayout;
use crate::master_end::MasterEnd;
use crate::nxmx;
use crate::run_files::FileOptions;
use crate::WriteError;

/// Chunk length of the per-index datasets.
const RECORD_CHUNK: usize = 1024;

/// What is known of one index when its dataset closes.
#[derive(Debug, Clone, Copy)]
pub struct IndexRecord<'a> {
    /// The detector's frame number, as sent.
    pub frame_number: u64,
    /// The detector numbering it belongs to: 0, one more at each detector restart.
    pub sequence: u32,
    /// When its first module frame was taken as the source knows it (UDP: arrival on the
    /// host), ns since the Unix epoch (0 when lost).
    pub timestamp_ns: u64,
    /// The detector's own timestamp, as sent (0: none).
    pub detector_timestamp: u64,
    /// The bunch id the detector sent (0: none).
    pub bunch_id: u64,
    /// Bit `m` set: module `m`'s tile was written. 0: the frame is lost.
    pub modules: u64,
    /// Bit `m` set: module `m` reached the daemon and was dropped there.
    pub dropped: u64,
    /// Per module, bit `k` of the 512-bit mask set: packet `k` never arrived. One entry per
    /// module, or empty when nothing is known (a lost frame).
    pub missing_packets: &'a [[u8; 64]],
    /// Its pixels' statistics (`None`: not taken).
    pub stats: Option<FrameStats>,
}

/// Buffered per-index records; capacity is kept between flushes.
#[derive(Default)]
struct Pending {
    frame_number: Vec<u64>,
    sequence: Vec<u32>,
    lost: Vec<u8>,
    dropped: Vec<u8>,
    timestamp: Vec<u64>,
    detector_timestamp: Vec<u64>,
    bunch_id: Vec<u64>,
    modules: Vec<u64>,
    dropped_mask: Vec<u64>,
    packets_lost: Vec<u32>,
    missing: Vec<[u8; 64]>,
    late_mask: Vec<u64>,
}

impl Pending {
    fn len(&self) -> usize {
        self.frame_number.len()
    }

    fn clear(&mut self) {
        self.frame_number.clear();
        self.sequence.clear();
        self.lost.clear();
        self.dropped.clear();
        self.timestamp.clear();
        self.detector_timestamp.clear();
        self.bunch_id.clear();
        self.modules.clear();
        self.dropped_mask.clear();
        self.packets_lost.clear();
        self.missing.clear();
        self.late_mask.clear();
    }
}

/// How a run ended, recorded in the master's `/entry/detingest`.
#[derive(Debug, Clone, Default)]
pub struct RunEnd {
    /// The stream that follows this one, if the operator named it (ASAPO's `next_stream`).
    pub next_stream: Option<String>,
    /// Why the run ended early, if it did.
    pub error: Option<String>,
    /// When its last frame came (`/entry/end_time`); `None`: now.
    pub ended: Option<SystemTime>,
}

/// The per-index datasets under `detectorSpecific`.
struct Records {
    frame_number: Dataset,
    sequence: Dataset,
    lost: Dataset,
    dropped: Dataset,
    timestamp: Dataset,
    detector_timestamp: Dataset,
    bunch_id: Dataset,
    modules: Dataset,
    dropped_mask: Dataset,
    packets_lost: Dataset,
    missing: Dataset,
    late_mask: Dataset,
}

impl Records {
    fn create(specific: &Group, modules: usize) -> Result<Self, WriteError> {
        let timestamp = records::<u64>(specific, "timestamp")?;
        nxmx::attr_str(&timestamp, "units", "ns")?;
        nxmx::attr_str(
            &timestamp,
            "description",
            "when the frame was taken as its source knows it (UDP: arrival of its first packet \
             on the host), ns since the Unix epoch",
        )?;
        let detector_timestamp = records::<u64>(specific, "detector_timestamp")?;
        nxmx::attr_str(
            &detector_timestamp,
            "description",
            "the detector's own timestamp as sent, in its clock's ticks",
        )?;
        let late_mask = records::<u64>(specific, "late_mask")?;
        nxmx::attr_str(
            &late_mask,
            "description",
            "bit m set: module m's frame arrived after the index was closed without it (it ran \
             behind by more than the dataset window or timeout) and was discarded; clear bits of \
             missing modules mean never arrived (or dropped_mask: dropped here)",
        )?;
        let sequence = records::<u32>(specific, "sequence")?;
        nxmx::attr_str(
            &sequence,
            "description",
            "the detector numbering frame_number belongs to: 0, one more at each detector restart",
        )?;
        Ok(Self {
            frame_number: records::<u64>(specific, "frame_number")?,
            sequence,
            lost: records::<u8>(specific, "frame_lost")?,
            dropped: records::<u8>(specific, "frame_dropped")?,
            timestamp,
            detector_timestamp,
            bunch_id: records::<u64>(specific, "bunch_id")?,
            modules: records::<u64>(specific, "module_mask")?,
            dropped_mask: records::<u64>(specific, "dropped_mask")?,
            packets_lost: records::<u32>(specific, "packets_lost")?,
            missing: missing_packets(specific, modules)?,
            late_mask,
        })
    }
}

impl Records {
    /// The 1-D record datasets (all but `missing_packets`).
    fn all(&self) -> [&Dataset; 11] {
        [
            &self.frame_number,
            &self.sequence,
            &self.lost,
            &self.dropped,
            &self.timestamp,
            &self.detector_timestamp,
            &self.bunch_id,
            &self.modules,
            &self.dropped_mask,
            &self.packets_lost,
            &self.late_mask,
        ]
    }

    /// The per-index datasets of an existing master.
    fn open(specific: &Group) -> Result<Self, WriteError> {
        let ds = |name: &str| specific.dataset(name);
        Ok(Self {
            frame_number: ds("frame_number")?,
            sequence: ds("sequence")?,
            lost: ds("frame_lost")?,
            dropped: ds("frame_dropped")?,
            timestamp: ds("timestamp")?,
            detector_timestamp: ds("detector_timestamp")?,
            bunch_id: ds("bunch_id")?,
            modules: ds("module_mask")?,
            dropped_mask: ds("dropped_mask")?,
            packets_lost: ds("packets_lost")?,
            missing: ds("missing_packets")?,
            late_mask: ds("late_mask")?,
        })
    }
}

/// The open master file.
pub(crate) struct MasterFile {
    end: MasterEnd,
    records: Records,
    nimages: Dataset,
    modules: usize,
    flushed: usize,
    pending: Pending,
    statistics: Option<StatisticsColumns>,
}

impl MasterFile {
    /// Creates the master with its metadata; `user_json` goes to `/entry/detingest/user_metadata`.
    pub(crate) fn create(
        path: &Path,
        layout: &RunLayout,
        info: &DetectorInfo,
        user_json: &str,
        options: FileOptions,
    ) -> Result<Self, WriteError> {
        let (master_data, swmr) = (options.master_data, options.swmr);
        let file = create_file(path, swmr)?;
        let entry = nxmx::nx_group(&file, "entry", "NXentry")?;
        nxmx::ds_str(&entry, "definition", "NXmx")?;
        let data_group = nxmx::nx_group(&entry, "data", "NXdata")?;
        if master_data.vds() {
            // NeXus defaults down to the VDS, for silx and nexusformat.
            nxmx::attr_str(&file, "default", "entry")?;
            nxmx::attr_str(&entry, "default", "data")?;
            nxmx::attr_str(&data_group, "signal", "data")?;
        }
        geometry::write_times(&entry, info, options.frames, SystemTime::now())?;
        geometry::write_identity(&entry, info)?;
        let specific = nxmx::write_detector(&entry, info, layout)?;
        geometry::write_sample(&entry, info)?;
        let nimages = nxmx::ds_num(&specific, "nimages", 0u64, None)?;
        let m = layout.modules() as usize;
        let records = Records::create(&specific, m)?;
        nxmx::write_specific(&specific, info)?;
        let statistics = match &options.statistics {
            Some(limits) => Some(StatisticsColumns::create(
                &file.group("/entry/instrument/detector")?,
                limits,
            )?),
            None => None,
        };
        let ours = nxmx::nx_group(&entry, "detingest", "NXcollection")?;
        nxmx::ds_str(&ours, "user_metadata", user_json)?;
        nxmx::ds_num(&ours, "modules", layout.modules(), None)?;
        nxmx::ds_str(&ours, "chunking", layout.effective_chunking().name())?;
        nxmx::ds_str(&ours, "master_data", master_data.name())?;
        // What finishing the run from its files alone needs (`recover.rs`).
        nxmx::ds_num(&ours, "frames_per_file", options.frames_per_file, None)?;
        let finished = nxmx::ds_num(&ours, "finished", 0u8, None)?;
        file.flush()?;
        Ok(Self {
            end: MasterEnd {
                file,
                data_group,
                finished,
            },
            records,
            nimages,
            modules: m,
            flushed: 0,
            pending: Pending::default(),
            statistics,
        })
    }

    /// Opens the master at `path` (written by a process that ended, its write marks cleared)
    /// to append records after the `nimages` it has; `modules` per index in the grid.
    pub(crate) fn open(path: &Path, modules: usize) -> Result<Self, WriteError> {
        let file = crate::data_file::reopen_after_swmr(path)?;
        let specific = file.group("/entry/instrument/detector/detectorSpecific")?;
        let nimages = specific.dataset("nimages")?;
        let records = Records::open(&specific)?;
        // `nimages` (raw data) reaches the disk when written, the record datasets' extents
        // (metadata) with the flush after it: a writer killed in between leaves `nimages`
        // ahead of them. What every dataset holds is what was flushed.
        let flushed = records
            .all()
            .iter()
            .map(|d| d.shape().first().copied().unwrap_or(0))
            .chain([records.missing.shape().first().copied().unwrap_or(0)])
            .fold(nimages.read_scalar::<u64>()? as usize, usize::min);
        let statistics = StatisticsColumns::open(&file);
        Ok(Self {
            end: MasterEnd {
                data_group: file.group("/entry/data")?,
                finished: file.dataset("/entry/detingest/finished")?,
                file,
            },
            records,
            nimages,
            modules,
            flushed,
            pending: Pending::default(),
            statistics,
        })
    }

    /// Indices recorded (flushed).
    pub(crate) fn flushed(&self) -> usize {
        self.flushed
    }

    /// Cuts every record dataset back to the flushed records (a writer that died may have
    /// grown some before writing `nimages`); returns how many of those are lost.
    pub(crate) fn cut_to_flushed(&mut self) -> Result<u64, WriteError> {
        let n = self.flushed;
        let r = &self.records;
        for ds in r.all() {
            if ds.shape().first().copied().unwrap_or(0) > n {
                ds.resize(n)?;
            }
        }
        self.nimages.write_scalar(&(n as u64))?;
        if r.missing.shape().first().copied().unwrap_or(0) > n {
            r.missing.resize((n, self.modules, 64))?;
        }
        if let Some(s) = self.statistics.as_mut() {
            s.cut(n)?;
        }
        if n == 0 {
            return Ok(0);
        }
        let lost = r.lost.read_slice_1d::<u8, _>(0..n)?;
        Ok(lost.iter().filter(|&&l| l != 0).count() as u64)
    }

    /// When the last flushed index with a timestamp was taken (a crashed run's end).
    pub(crate) fn last_timestamp(&self) -> Option<SystemTime> {
        let n = self.flushed;
        let from = n.saturating_sub(RECORD_CHUNK);
        let ts = self
            .records
            .timestamp
            .read_slice_1d::<u64, _>(from..n)
            .ok()?;
        let last = ts.iter().rev().copied().find(|&t| t != 0)?;
        SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::from_nanos(last))
    }

    /// Buffers the next index's record.
    pub(crate) fn push(&mut self, r: &IndexRecord<'_>) {
        let p = &mut self.pending;
        p.frame_number.push(r.frame_number);
        p.sequence.push(r.sequence);
        p.lost.push(u8::from(r.modules == 0));
        p.dropped.push(u8::from(r.dropped != 0));
        p.timestamp.push(r.timestamp_ns);
        p.detector_timestamp.push(r.detector_timestamp);
        p.bunch_id.push(r.bunch_id);
        p.modules.push(r.modules);
        p.dropped_mask.push(r.dropped);
        let mut lost = 0;
        for k in 0..self.modules {
            let mask = r.missing_packets.get(k).copied().unwrap_or([0; 64]);
            lost += detingest_shm::PacketMask(mask).count();
            p.missing.push(mask);
        }
        p.packets_lost.push(lost);
        p.late_mask.push(0);
        if let Some(s) = self.statistics.as_mut() {
            s.push(r.stats.as_ref());
        }
    }

    /// Marks module bits `late` in the record of `index` (1-based, already pushed): in the
    /// buffer if it is not flushed yet, else in the file (read, or-ed, written back; a plain
    /// write of existing elements, which SWMR allows).
    pub(crate) fn mark_late(&mut self, index: u64, late: u64) -> Result<(), WriteError> {
        let row = index.saturating_sub(1) as usize;
        if let Some(pending) = row.checked_sub(self.flushed) {
            if let Some(m) = self.pending.late_mask.get_mut(pending) {
                *m |= late;
            }
            return Ok(());
        }
        let ds = &self.records.late_mask;
        let old: Vec<u64> = ds.read_slice_1d(row..row + 1)?.to_vec();
        let new = [old.first().copied().unwrap_or(0) | late];
        ds.write_slice(&new[..], row..row + 1)?;
        Ok(())
    }

    /// Adds modules a part wrote late to the record of `index` (1-based, already pushed): the
    /// module, dropped and missing-packet bits of `r`'s modules, `frame_lost` cleared when a
    /// module is now there. In the buffer if not flushed yet, else in the file (elements
    /// read and written back, which SWMR allows). The whole detector's master uses it when a
    /// part that could not be reached comes back with indices merged without it.
    pub(crate) fn amend(&mut self, index: u64, r: &IndexRecord<'_>) -> Result<(), WriteError> {
        let row = index.saturating_sub(1) as usize;
        let mine = |k: usize| (r.modules | r.dropped) & (1 << k) != 0;
        let added: u32 = (0..self.modules)
            .filter(|&k| mine(k))
            .filter_map(|k| r.missing_packets.get(k))
            .map(|m| detingest_shm::PacketMask(*m).count())
            .sum();
        if let Some(at) = row.checked_sub(self.flushed) {
            let p = &mut self.pending;
            if at >= p.len() {
                return Ok(());
            }
            p.modules[at] |= r.modules;
            p.lost[at] = u8::from(p.modules[at] == 0);
            p.dropped_mask[at] |= r.dropped;
            p.dropped[at] = u8::from(p.dropped_mask[at] != 0);
            p.packets_lost[at] += added;
            for k in (0..self.modules).filter(|&k| mine(k)) {
                p.missing[at * self.modules + k] =
                    r.missing_packets.get(k).copied().unwrap_or([0; 64]);
            }
            return Ok(());
        }
        let one = row..row + 1;
        let rec = &self.records;
        let modules = rec.modules.read_slice_1d::<u64, _>(one.clone())?[0] | r.modules;
        let dropped = rec.dropped_mask.read_slice_1d::<u64, _>(one.clone())?[0] | r.dropped;
        let lost = rec.packets_lost.read_slice_1d::<u32, _>(one.clone())?[0] + added;
        rec.modules.write_slice(&[modules][..], one.clone())?;
        rec.lost
            .write_slice(&[u8::from(modules == 0)][..], one.clone())?;
        rec.dropped_mask.write_slice(&[dropped][..], one.clone())?;
        rec.dropped
            .write_slice(&[u8::from(dropped != 0)][..], one.clone())?;
        rec.packets_lost.write_slice(&[lost][..], one)?;
        for k in (0..self.modules).filter(|&k| mine(k)) {
            let mask = r.missing_packets.get(k).copied().unwrap_or([0; 64]);
            let view = ArrayView3::from_shape((1, 1, 64), &mask[..])
                .map_err(|e| WriteError::Metadata(e.to_string()))?;
            rec.missing
                .write_slice(view, (row..row + 1, k..k + 1, ..))?;
        }
        Ok(())
    }

    /// Appends the buffered records, writes `nimages` and flushes the file.
    pub(crate) fn flush(&mut self) -> Result<(), WriteError> {
        let new = self.pending.len();
        if new > 0 {
            let end = self.flushed + new;
            let (r, p) = (&self.records, &self.pending);
            append(&r.frame_number, &p.frame_number, end)?;
            append(&r.sequence, &p.sequence, end)?;
            append(&r.lost, &p.lost, end)?;
            append(&r.dropped, &p.dropped, end)?;
            append(&r.timestamp, &p.timestamp, end)?;
            append(&r.detector_timestamp, &p.detector_timestamp, end)?;
            append(&r.bunch_id, &p.bunch_id, end)?;
            append(&r.modules, &p.modules, end)?;
            append(&r.dropped_mask, &p.dropped_mask, end)?;
            append(&r.packets_lost, &p.packets_lost, end)?;
            append(&r.late_mask, &p.late_mask, end)?;
            let missing = &r.missing;
            missing.resize((end, self.modules, 64))?;
            let bytes = self.pending.missing.as_flattened();
            let view = ArrayView3::from_shape((new, self.modules, 64), bytes)
                .map_err(|e| WriteError::Metadata(e.to_string()))?;
            missing.write_slice(view, (self.flushed..end, .., ..))?;
            if let Some(s) = self.statistics.as_mut() {
                s.flush(end)?;
            }
            self.pending.clear();
            self.flushed = end;
            // The records on disk before `nimages` says they are there: a reader (or a
            // crash) never finds `nimages` ahead of them.
            self.end.file.flush()?;
        }
        self.nimages.write_scalar(&(self.flushed as u64))?;
        self.end.file.flush()?;
        Ok(())
    }

    /// What the end of the run writes to (also the links and VDS written at its start).
    pub(crate) fn end(&self) -> &MasterEnd {
        &self.end
    }

    /// Switches the master to SWMR writing (every object it has during the run exists).
    pub(crate) fn start_swmr(&self) -> Result<(), WriteError> {
        start_swmr(&self.end.file)
    }

    /// The master for the end of the run, the records flushed (call [`Self::flush`] first).
    /// Under SWMR no object may be added, so the file is closed and opened again for
    /// writing without it.
    pub(crate) fn into_end(self, swmr: bool) -> Result<MasterEnd, WriteError> {
        if !swmr {
            return Ok(self.end);
        }
        let path = std::path::PathBuf::from(self.end.file.filename());
        drop(self); // every handle: HDF5 closes the file only when the last one goes
        let file = reopen_after_swmr(&path)?;
        Ok(MasterEnd {
            data_group: file.group("/entry/data")?,
            finished: file.dataset("/entry/detingest/finished")?,
            file,
        })
    }
}

/// Creates an extendable 1-D per-index dataset.
fn records<T: H5Type>(group: &Group, name: &str) -> Result<Dataset, WriteError> {
    Ok(group
        .new_dataset::<T>()
        .chunk(RECORD_CHUNK)
        .shape(0..)
        .create(name)?)
}

/// `missing_packets`: `[index, module, 64]` bytes, bit `k % 8` of byte `k / 8` set when packet
/// `k` never arrived. A plain 3-D u8 dataset (not an array type), which generic NeXus
/// readers load.
fn missing_packets(group: &Group, modules: usize) -> Result<Dataset, WriteError> {
    let m = modules.max(1);
    Ok(group
        .new_dataset::<u8>()
        .chunk((RECORD_CHUNK.div_ceil(m), m, 64))
        .shape((0.., m, 64))
        .create("missing_packets")?)
}

/// Grows a 1-D dataset to `end` and writes `values` into its last `values.len()` entries.
fn append<T: H5Type>(ds: &Dataset, values: &[T], end: usize) -> Result<(), WriteError> {
    ds.resize(end)?;
    ds.write_slice(values, end - values.len()..end)?;
    Ok(())
}
