//! A neutron run's NeXus file: one NXevent_data per detector bank and monitor, NXlogs for
//! sample environment and run-log values and for the pulses' metadata, and what was lost,
//! as kafka-to-nexus lays them out and scippnexus and Mantid read them (docs/EVENTS.md).
//!
//! Every group and dataset is made when the file is created, so the file can switch to SWMR
//! writing at once; values are appended by whole encoded chunks ([`Column`]) and each
//! [`EventFile::flush`] makes everything appended readable. What is only known at the end
//! (`end_time`, the counters) is written after SWMR, as the frame master's end is.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use hdf5::{File, Group};

use crate::data_file::{create_file, reopen_after_swmr, start_swmr};
use crate::event_column::Column;
use crate::geometry::iso_time;
use crate::nxmx::{attr_str, ds_str, nx_group};
use crate::{Codec, WriteError};

/// Values per chunk of the event columns (1 MiB of i32).
const EVENT_CHUNK: usize = 1 << 18;
/// Values per chunk of the per-pulse and per-log columns.
const PULSE_CHUNK: usize = 4096;
/// `offset` of every time in the file: times are ns since the Unix epoch.
const EPOCH: &str = "1970-01-01T00:00:00Z";

/// A detector bank or a monitor, and where its events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSourceSpec {
    /// The `source_name` its messages carry.
    pub source_name: String,
    /// Its group under `/entry` (`instrument/bank0`, `monitor_1`).
    pub path: String,
    /// A monitor (NXmonitor, no pixel ids) rather than a detector bank (NXdetector).
    pub monitor: bool,
    /// The detector's pixel ids, first and count: written as `detector_number` (scippnexus
    /// then groups the events by pixel).
    pub pixels: Option<(i32, u32)>,
}

/// A logged value (f144/f142) and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSpec {
    /// The `source_name` its messages carry.
    pub source_name: String,
    /// Its NXlog's path under `/entry` (`selog/temperature`).
    pub path: String,
    /// Units of its values, if known.
    pub units: Option<String>,
    /// Keep its EPICS alarms (f142): `alarm_time`, `alarm_status`, `alarm_severity`, one entry
    /// per change (scippnexus then loads the log as `value` and `alarm`).
    pub alarms: bool,
}

/// What a run's event file holds.
#[derive(Debug, Clone, Default)]
pub struct EventFileSpec {
    /// Banks and monitors.
    pub sources: Vec<EventSourceSpec>,
    /// Logged values.
    pub logs: Vec<LogSpec>,
    /// Write pulse metadata (pu00) under `/entry/framelog`.
    pub pulse_log: bool,
    /// `/entry/title`.
    pub title: String,
    /// `/entry/experiment_identifier`.
    pub experiment_identifier: String,
    /// `/entry/instrument/name`.
    pub instrument_name: String,
}

/// How a run's event file ended.
#[derive(Debug, Clone, Default)]
pub struct EventRunEnd {
    /// When the run ended.
    pub ended: Option<SystemTime>,
    /// Why writing stopped, if on an error.
    pub error: Option<String>,
    /// `(name, value)` counters written into `/entry/detingest`.
    pub counters: Vec<(String, u64)>,
}

struct Bank {
    time_zero: Column,
    index: Column,
    offset: Column,
    id: Option<Column>,
    /// Gaps in message ids: `(first missing, count)`.
    gaps: Column,
    last_time_zero: Option<i64>,
    /// The pixel id of events sent without one: the bank's first pixel, or 0.
    implicit_id: i32,
}

struct Log {
    time: Column,
    value: Column,
    /// `alarm_time`, `alarm_status`, `alarm_severity`.
    alarm: Option<[Column; 3]>,
}

/// An open event file.
pub struct EventFile {
    file: File,
    path: PathBuf,
    banks: Vec<Bank>,
    logs: Vec<Log>,
    pulses: Option<PulseLogs>,
}

/// `/entry/framelog`: each pulse's proton charge, period and veto flags (pu00).
struct PulseLogs {
    charge: Log,
    period: Log,
    veto: Log,
}

impl EventFile {
    /// Creates `path` (refusing to replace a file) with every group of `spec`, encoding with
    /// `codec`; with `swmr` it is switched to SWMR writing before anything is appended.
    pub fn create(
        path: &Path,
        spec: &EventFileSpec,
        codec: Codec,
        swmr: bool,
        started: SystemTime,
    ) -> Result<Self, WriteError> {
        let file = create_file(path, swmr)?;
        let entry = nx_group(&file, "entry", "NXentry")?;
        ds_str(&entry, "start_time", &iso_time(started))?;
        ds_str(&entry, "title", &spec.title)?;
        ds_str(&entry, "experiment_identifier", &spec.experiment_identifier)?;
        let instrument = nx_group(&entry, "instrument", "NXinstrument")?;
        ds_str(&instrument, "name", &spec.instrument_name)?;
        let book = nx_group(&entry, "detingest", "NXcollection")?;
        let mut banks = Vec::with_capacity(spec.sources.len());
        for s in &spec.sources {
            let group = make_path(
                &entry,
                &s.path,
                if s.monitor { "NXmonitor" } else { "NXdetector" },
            )?;
            if let Some((first, count)) = s.pixels {
                let ids: Vec<i32> = (0..count as i32).map(|k| first + k).collect();
                group
                    .new_dataset_builder()
                    .with_data(&ids)
                    .create("detector_number")?;
            }
            let ev = nx_group(&group, "events", "NXevent_data")?;
            let time_zero = Column::create::<i64>(&ev, "event_time_zero", codec, PULSE_CHUNK)?;
            attr_str(time_zero.dataset(), "units", "ns")?;
            attr_str(time_zero.dataset(), "offset", EPOCH)?;
            let index = Column::create::<i64>(&ev, "event_index", codec, PULSE_CHUNK)?;
            let offset = Column::create::<i32>(&ev, "event_time_offset", codec, EVENT_CHUNK)?;
            attr_str(offset.dataset(), "units", "ns")?;
            let id = if s.monitor {
                None
            } else {
                Some(Column::create::<i32>(&ev, "event_id", codec, EVENT_CHUNK)?)
            };
            let gaps = Column::create::<i64>(
                &book,
                &format!("{}_lost_messages", s.source_name),
                Codec::None,
                PULSE_CHUNK,
            )?;
            banks.push(Bank {
                time_zero,
                index,
                offset,
                id,
                gaps,
                last_time_zero: None,
                implicit_id: s.pixels.map_or(0, |(first, _)| first),
            });
        }
        let mut logs = Vec::with_capacity(spec.logs.len());
        for l in &spec.logs {
            let group = make_path(&entry, &l.path, "NXlog")?;
            let mut log = log_columns(&group, l.units.as_deref(), codec)?;
            if l.alarms {
                let time = Column::create::<i64>(&group, "alarm_time", codec, PULSE_CHUNK)?;
                attr_str(time.dataset(), "units", "ns")?;
                attr_str(time.dataset(), "start", EPOCH)?;
                log.alarm = Some([
                    time,
                    Column::create::<u16>(&group, "alarm_status", codec, PULSE_CHUNK)?,
                    Column::create::<u16>(&group, "alarm_severity", codec, PULSE_CHUNK)?,
                ]);
            }
            logs.push(log);
        }
        let pulses = if spec.pulse_log {
            let framelog = nx_group(&entry, "framelog", "NXcollection")?;
            let log = |name: &str, units: Option<&str>| {
                log_columns(&nx_group(&framelog, name, "NXlog")?, units, codec)
            };
            Some(PulseLogs {
                charge: log("proton_charge", Some("uAh"))?,
                period: log("period_number", None)?,
                veto: log("veto_flags", None)?,
            })
        } else {
            None
        };
        if swmr {
            start_swmr(&file)?;
        }
        Ok(Self {
            file,
            path: path.to_owned(),
            banks,
            logs,
            pulses,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends events of bank `bank` (spec order) that belong to the pulse at `time_zero`
    /// (ns since the epoch): a new pulse entry unless it is the bank's last pulse continued
    /// (a pulse split over messages). `offsets` and `ids` are the events' little-endian i32
    /// times of flight and pixel ids (`ids` ignored for a monitor; for a bank the same count
    /// of values as `offsets`, or empty: the bank's first pixel id, or 0, for every event).
    /// Returns true when the pulse is new.
    pub fn append_events(
        &mut self,
        bank: usize,
        time_zero: i64,
        offsets: &[u8],
        ids: &[u8],
    ) -> Result<bool, WriteError> {
        let b = &mut self.banks[bank];
        let new = b.last_time_zero != Some(time_zero);
        if new {
            b.time_zero.push_bytes(&time_zero.to_le_bytes())?;
            b.index.push_bytes(&(b.offset.len() as i64).to_le_bytes())?;
            b.last_time_zero = Some(time_zero);
        }
        b.offset.push_bytes(offsets)?;
        if let Some(id) = &mut b.id {
            if ids.len() == offsets.len() {
                id.push_bytes(ids)?;
            } else {
                // No pixel ids sent: the id is implicit (a one-pixel detector), its first.
                id.push_repeated(b.implicit_id.to_le_bytes(), offsets.len() / 4)?;
            }
        }
        Ok(new)
    }

    /// Records that bank `bank`'s messages `first .. first + count` never arrived.
    pub fn record_gap(&mut self, bank: usize, first: i64, count: i64) -> Result<(), WriteError> {
        let g = &mut self.banks[bank].gaps;
        g.push_bytes(&first.to_le_bytes())?;
        g.push_bytes(&count.to_le_bytes())
    }

    /// Events and pulses of bank `bank` so far.
    pub fn bank_len(&self, bank: usize) -> (u64, u64) {
        let b = &self.banks[bank];
        (b.offset.len(), b.time_zero.len())
    }

    /// Appends a value of log `log` (spec order) at `time` (ns since the epoch).
    pub fn append_log(&mut self, log: usize, time: i64, value: f64) -> Result<(), WriteError> {
        let l = &mut self.logs[log];
        l.time.push_bytes(&time.to_le_bytes())?;
        l.value.push_bytes(&value.to_le_bytes())
    }

    /// Appends an alarm change of log `log` at `time`: EPICS `status` and `severity` (f142's
    /// codes). Nothing when the log keeps no alarms.
    pub fn append_alarm(
        &mut self,
        log: usize,
        time: i64,
        status: u16,
        severity: u16,
    ) -> Result<(), WriteError> {
        let Some([t, st, sev]) = &mut self.logs[log].alarm else {
            return Ok(());
        };
        t.push_bytes(&time.to_le_bytes())?;
        st.push_bytes(&status.to_le_bytes())?;
        sev.push_bytes(&severity.to_le_bytes())
    }

    /// Appends a pulse's metadata (pu00) under `/entry/framelog`, if the file has it.
    pub fn append_pulse_meta(
        &mut self,
        time: i64,
        proton_charge: f64,
        period: u32,
        vetos: u32,
    ) -> Result<(), WriteError> {
        let Some(p) = &mut self.pulses else {
            return Ok(());
        };
        for (log, value) in [
            (&mut p.charge, proton_charge),
            (&mut p.period, f64::from(period)),
            (&mut p.veto, f64::from(vetos)),
        ] {
            log.time.push_bytes(&time.to_le_bytes())?;
            log.value.push_bytes(&value.to_le_bytes())?;
        }
        Ok(())
    }

    /// Makes everything appended readable (SWMR readers see it after `refresh`).
    pub fn flush(&mut self) -> Result<(), WriteError> {
        for b in &mut self.banks {
            b.time_zero.flush()?;
            b.index.flush()?;
            b.offset.flush()?;
            if let Some(id) = &mut b.id {
                id.flush()?;
            }
            b.gaps.flush()?;
        }
        for l in &mut self.logs {
            l.time.flush()?;
            l.value.flush()?;
            for c in l.alarm.iter_mut().flatten() {
                c.flush()?;
            }
        }
        if let Some(p) = &mut self.pulses {
            for log in [&mut p.charge, &mut p.period, &mut p.veto] {
                log.time.flush()?;
                log.value.flush()?;
            }
        }
        self.file.flush()?;
        Ok(())
    }

    /// Flushes and closes the file, then writes its end: `end_time`, and the counters and
    /// error under `/entry/detingest`.
    pub fn close(mut self, end: &EventRunEnd) -> Result<(), WriteError> {
        self.flush()?;
        let path = self.path.clone();
        drop(self);
        let file = reopen_after_swmr(&path)?;
        let entry = file.group("entry")?;
        let ended = end.ended.unwrap_or_else(SystemTime::now);
        ds_str(&entry, "end_time", &iso_time(ended))?;
        let book = entry.group("detingest")?;
        for (name, value) in &end.counters {
            book.new_dataset::<u64>()
                .create(name.as_str())?
                .write_scalar(value)?;
        }
        if let Some(e) = &end.error {
            ds_str(&book, "error", e)?;
        }
        file.flush()?;
        Ok(())
    }
}

/// An NXlog's `time` (ns since the epoch) and `value` (f64) in `group`.
fn log_columns(group: &Group, units: Option<&str>, codec: Codec) -> Result<Log, WriteError> {
    let time = Column::create::<i64>(group, "time", codec, PULSE_CHUNK)?;
    attr_str(time.dataset(), "units", "ns")?;
    attr_str(time.dataset(), "start", EPOCH)?;
    let value = Column::create::<f64>(group, "value", codec, PULSE_CHUNK)?;
    if let Some(u) = units {
        attr_str(value.dataset(), "units", u)?;
    }
    Ok(Log {
        time,
        value,
        alarm: None,
    })
}

/// The group at `path` under `entry` (made with its parents; parents NXcollection unless
/// they are `instrument`), the last of class `class`.
fn make_path(entry: &Group, path: &str, class: &str) -> Result<Group, WriteError> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let mut g = entry.clone();
    for (k, part) in parts.iter().enumerate() {
        g = if g.link_exists(part) {
            g.group(part)?
        } else if k + 1 == parts.len() {
            nx_group(&g, part, class)?
        } else if *part == "instrument" && k == 0 {
            nx_group(&g, part, "NXinstrument")?
        } else {
            nx_group(&g, part, "NXcollection")?
        };
    }
    Ok(g)
}
