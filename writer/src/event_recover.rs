//! Event files a crash left unfinished: a daemon killed during a neutron run leaves its
//! `<stream>.nxs` with HDF5's write marks set (a plain reader refuses it until they are
//! cleared), no `end_time`, and columns whose lengths may disagree (each is flushed in turn).
//! [`finish_unfinished_events`] finishes one from what it holds: on a copy, the marks are
//! cleared, every NXevent_data is cut to the pulses whose events are all there and every
//! NXlog to the entries whose time and value are both there, `end_time` (the last time in the
//! file) and the reason are written, and the copy replaces the file. A file that is not a
//! detingest event file, or is finished, is left as it is. Values are read chunk by chunk as
//! stored and decoded here (no filter plugin needed); cutting a compressed column that is too
//! long goes through HDF5, which then needs the bitshuffle plugin (Debian's
//! hdf5-filter-plugin): without it the file is left as it is and the error says so.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use hdf5::{Dataset, File, Group};

use crate::filter::recorded_filters;
use crate::geometry::iso_time;
use crate::nxmx::ds_str;
use crate::part_records::clear_write_marks;
use crate::recover::holders;
use crate::WriteError;

/// What finishing an event file kept.
#[derive(Debug, Clone)]
pub struct EventsRecovered {
    /// The file.
    pub path: PathBuf,
    /// Pulses kept, summed over its NXevent_data groups.
    pub pulses: u64,
    /// Events kept, summed likewise.
    pub events: u64,
    /// Its `end_time`: the last time it holds (the file's change time if it holds none).
    pub ended: SystemTime,
}

/// True when `path` looks like an event file a run may have left unfinished: a `.nxs`
/// whose `end_time` is not there, or that a plain reader cannot open (write marks).
pub fn may_be_unfinished_events(path: &Path) -> bool {
    if path.extension().and_then(|e| e.to_str()) != Some("nxs") {
        return false;
    }
    let Ok(f) = File::open(path) else {
        return true; // write marks, or a file killed before its first flush
    };
    f.group("entry/detingest").is_ok() && f.dataset("entry/end_time").is_err()
}

/// Finishes the event file at `path` with `reason`. `Ok(None)`: not a detingest event file,
/// or finished already (nothing was changed).
pub fn finish_unfinished_events(
    path: &Path,
    reason: &str,
) -> Result<Option<EventsRecovered>, WriteError> {
    let bad = |what: String| WriteError::Metadata(format!("{}: {what}", path.display()));
    if let Some((pid, _)) = holders(&[path.to_owned()]).first() {
        return Err(bad(format!(
            "process {pid} holds it open: its writer may be alive; nothing was changed"
        )));
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("run.nxs");
    let copy = path.with_file_name(format!(".{name}.finishing"));
    let _ = std::fs::remove_file(&copy); // a finishing that was itself killed
    std::fs::copy(path, &copy).map_err(|e| bad(format!("cannot copy it: {e}")))?;
    let finished = clear_write_marks(&copy).and_then(|()| finish_copy(&copy, path, reason));
    match finished {
        Ok(Some(r)) => {
            std::fs::rename(&copy, path).map_err(|e| bad(format!("cannot replace it: {e}")))?;
            Ok(Some(EventsRecovered {
                path: path.to_owned(),
                ..r
            }))
        }
        other => {
            let _ = std::fs::remove_file(&copy);
            other
        }
    }
}

/// Finishes the copy (marks cleared) of `original`.
fn finish_copy(
    copy: &Path,
    original: &Path,
    reason: &str,
) -> Result<Option<EventsRecovered>, WriteError> {
    let file = File::open_rw(copy)?;
    let Ok(entry) = file.group("entry") else {
        return Ok(None);
    };
    if entry.group("detingest").is_err() || entry.dataset("end_time").is_ok() {
        return Ok(None);
    }
    let mut r = EventsRecovered {
        path: original.to_owned(),
        pulses: 0,
        events: 0,
        ended: SystemTime::UNIX_EPOCH,
    };
    let mut last_ns = 0i64;
    visit(&entry, 6, &mut |g, class| match class {
        "NXevent_data" => {
            let (pulses, events, last) = cut_events(g)?;
            r.pulses += pulses;
            r.events += events;
            last_ns = last_ns.max(last);
            Ok(())
        }
        "NXlog" => {
            last_ns = last_ns.max(cut_log(g)?);
            Ok(())
        }
        _ => Ok(()),
    })?;
    r.ended = if last_ns > 0 {
        SystemTime::UNIX_EPOCH + Duration::from_nanos(last_ns as u64)
    } else {
        std::fs::metadata(original)
            .and_then(|m| m.modified())
            .unwrap_or_else(|_| SystemTime::now())
    };
    ds_str(&entry, "end_time", &iso_time(r.ended))?;
    ds_str(&entry.group("detingest")?, "error", reason)?;
    file.flush()?;
    Ok(Some(r))
}

/// Calls `f` on every group under `g` (to `depth` levels) with its NX_class.
fn visit(
    g: &Group,
    depth: usize,
    f: &mut dyn FnMut(&Group, &str) -> Result<(), WriteError>,
) -> Result<(), WriteError> {
    if depth == 0 {
        return Ok(());
    }
    for name in g.member_names()? {
        let Ok(child) = g.group(&name) else {
            continue; // a dataset
        };
        let class = child
            .attr("NX_class")
            .and_then(|a| a.read_scalar::<hdf5::types::VarLenUnicode>())
            .map(|s| s.to_string())
            .unwrap_or_default();
        f(&child, &class)?;
        visit(&child, depth - 1, f)?;
    }
    Ok(())
}

fn len(ds: &Dataset) -> usize {
    ds.shape().first().copied().unwrap_or(0)
}

fn cut(ds: &Dataset, n: usize) -> Result<(), WriteError> {
    if len(ds) > n {
        ds.resize(n)?;
    }
    Ok(())
}

/// Cuts an NXevent_data to whole pulses (see below); `(pulses, events, the last pulse's
/// time)`.
fn cut_events(g: &Group) -> Result<(u64, u64, i64), WriteError> {
    let (Ok(tz), Ok(ix), Ok(off)) = (
        g.dataset("event_time_zero"),
        g.dataset("event_index"),
        g.dataset("event_time_offset"),
    ) else {
        return Ok((0, 0, 0));
    };
    let id = g.dataset("event_id").ok();
    let events = id.iter().map(len).fold(len(&off), usize::min);
    let pulses = len(&tz).min(len(&ix));
    let index = read_i64(&ix, pulses)?;
    // The pulses whose first event is there; when a later pulse's is not, the last of them
    // lost the tail of its events: it goes too, with them. (The last pulse of the file keeps
    // the events there are: where it ended is not written anywhere.)
    let starting = index.iter().take_while(|&&i| i as usize <= events).count();
    let (pulses, events) = if starting < pulses && starting > 0 {
        (starting - 1, index[starting - 1] as usize)
    } else {
        (starting, events)
    };
    let last = read_i64(&tz, pulses)?.last().copied().unwrap_or(0);
    cut(&tz, pulses)?;
    cut(&ix, pulses)?;
    cut(&off, events)?;
    if let Some(id) = &id {
        cut(id, events)?;
    }
    Ok((pulses as u64, events as u64, last))
}

/// Cuts an NXlog to the entries whose time and value (and alarms) are there; its last time.
fn cut_log(g: &Group) -> Result<i64, WriteError> {
    let (Ok(time), Ok(value)) = (g.dataset("time"), g.dataset("value")) else {
        return Ok(0);
    };
    let n = len(&time).min(len(&value));
    cut(&time, n)?;
    cut(&value, n)?;
    let alarms: Vec<Dataset> = ["alarm_time", "alarm_status", "alarm_severity"]
        .iter()
        .filter_map(|a| g.dataset(a).ok())
        .collect();
    let m = alarms.iter().map(len).min().unwrap_or(0);
    for a in &alarms {
        cut(a, m)?;
    }
    Ok(read_i64(&time, n)?.last().copied().unwrap_or(0))
}

/// The first `n` values of a 1-D i64 column, read chunk by chunk as stored
/// (`H5Dread_chunk`) and decoded with the codec its filter names, so no filter plugin is
/// needed.
fn read_i64(ds: &Dataset, n: usize) -> Result<Vec<i64>, WriteError> {
    let bad = |what: String| WriteError::Metadata(format!("{}: {what}", ds.name()));
    let mut out = vec![0i64; n];
    if n == 0 {
        return Ok(out);
    }
    let codec = match recorded_filters(ds)?.first().map(|f| f.0) {
        Some(32008) => crate::Codec::BitshuffleLz4,
        Some(32004) => crate::Codec::Lz4,
        None => crate::Codec::None,
        Some(other) => return Err(bad(format!("filter {other} is not one of ours"))),
    };
    let c = ds.chunk().and_then(|c| c.first().copied()).unwrap_or(n);
    let (mut stored, mut decoded) = (Vec::new(), vec![0u8; c * 8]);
    let _hdf5 = hdf5_sys::LOCK.lock();
    for i in 0..ds.num_chunks().unwrap_or(0) {
        let Some(info) = ds.chunk_info(i) else {
            continue;
        };
        let start = info.offset.first().copied().unwrap_or(0) as usize;
        if start >= n {
            continue;
        }
        let Some(mask) = crate::read_back::read_stored(ds, &info, &mut stored) else {
            return Err(bad(format!("cannot read the chunk at {start}")));
        };
        let codec = if mask == 0 { codec } else { crate::Codec::None };
        let got = codec
            .decompress_into(&stored, 8, &mut decoded)
            .map_err(|e| bad(e.to_string()))?;
        for (k, v) in decoded[..got].chunks_exact(8).enumerate() {
            if let Some(o) = out.get_mut(start + k) {
                *o = i64::from_le_bytes(v.try_into().unwrap_or([0; 8]));
            }
        }
    }
    Ok(out)
}
