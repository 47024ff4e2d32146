//! Merging the daemons' per-index records into the whole detector's: which indices every
//! daemon has recorded (or will never record, having ended), and one record per index with
//! the modules any daemon wrote.

use detingest_writer::{IndexRecord, Part, PartEnd, PartOutcome, PartRecords};

/// Where one daemon's part stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Its run goes on: indices beyond what it recorded may still come.
    Running,
    /// Its run ended: it recorded all it will.
    Finished,
    /// Its daemon is proven gone with its run going: nothing more comes from it.
    Died,
    /// Its daemon does not answer and is not proven gone (frozen, cut off, on another host):
    /// the whole detector goes on without it, and merges it on if it comes back.
    Unreachable,
    /// It was still unreachable when every other part had ended: left as it was.
    Unknown,
}

impl Progress {
    /// `running`, `finished`, `died`, `unreachable` or `unknown`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Finished => "finished",
            Self::Died => "died",
            Self::Unreachable => "unreachable",
            Self::Unknown => "unknown",
        }
    }
}

/// One daemon's records not merged yet.
#[derive(Debug)]
pub struct Feed {
    /// Which daemon, which modules.
    pub part: Part,
    /// Its records from position `buf.from` on.
    pub buf: PartRecords,
    /// Indices its master has recorded (flushed).
    pub recorded: u64,
    /// Where it stands.
    pub progress: Progress,
}

impl Feed {
    /// A part nothing was read of yet.
    pub fn new(part: Part) -> Self {
        Self {
            part,
            buf: PartRecords::default(),
            recorded: 0,
            progress: Progress::Running,
        }
    }

    /// Appends what was read from position `more.from` on (skipping what it holds already).
    pub fn append(&mut self, more: PartRecords) {
        let have = self.buf.from + self.buf.len();
        let skip = have.saturating_sub(more.from);
        if more.from > have || skip >= more.len() {
            return;
        }
        let b = &mut self.buf;
        b.frame_number.extend_from_slice(&more.frame_number[skip..]);
        b.sequence.extend_from_slice(&more.sequence[skip..]);
        b.timestamp.extend_from_slice(&more.timestamp[skip..]);
        b.detector_timestamp
            .extend_from_slice(&more.detector_timestamp[skip..]);
        b.bunch_id.extend_from_slice(&more.bunch_id[skip..]);
        b.modules.extend_from_slice(&more.modules[skip..]);
        b.dropped.extend_from_slice(&more.dropped[skip..]);
        let width = more.missing.len() / more.len().max(1);
        b.missing.extend_from_slice(&more.missing[skip * width..]);
        self.recorded = self.recorded.max((b.from + b.len()) as u64);
    }

    /// Positions (0-based) it holds records of below `to`: records of indices merged without
    /// them (it could not be reached then).
    pub fn held_below(&self, to: usize) -> std::ops::Range<usize> {
        self.buf.from..to.min(self.buf.from + self.buf.len())
    }

    /// Forgets records before position `to`.
    fn drain_to(&mut self, to: usize) {
        let b = &mut self.buf;
        let n = to.saturating_sub(b.from).min(b.len());
        if n == 0 {
            return;
        }
        let width = b.missing.len() / b.len();
        b.frame_number.drain(..n);
        b.sequence.drain(..n);
        b.timestamp.drain(..n);
        b.detector_timestamp.drain(..n);
        b.bunch_id.drain(..n);
        b.modules.drain(..n);
        b.dropped.drain(..n);
        b.missing.drain(..n * width);
        b.from += n;
    }

    /// Its record at 0-based position `pos`, when it holds it.
    fn at(&self, pos: usize) -> Option<usize> {
        let b = &self.buf;
        (pos >= b.from && pos < b.from + b.len()).then(|| pos - b.from)
    }
}

/// The last index the whole detector can be merged up to: every running daemon has recorded
/// it; once none runs, the last any recorded. In a run being stopped (`stopping`: the
/// daemons stop one after the other, each at its own index), the last every daemon that
/// runs or finished recorded: the whole detector ends with its last whole index. A part
/// that is dead or unreachable holds nothing back.
pub fn ready(feeds: &[Feed], stopping: bool) -> u64 {
    let alive = |f: &&Feed| match stopping {
        true => matches!(f.progress, Progress::Running | Progress::Finished),
        false => f.progress == Progress::Running,
    };
    match feeds.iter().filter(alive).map(|f| f.recorded).min() {
        Some(n) => n,
        None => feeds.iter().map(|f| f.recorded).max().unwrap_or(0),
    }
}

/// True when every daemon's part has ended (finished, died or unknown).
pub fn all_ended(feeds: &[Feed]) -> bool {
    (feeds.iter()).all(|f| !matches!(f.progress, Progress::Running | Progress::Unreachable))
}

/// One merged index.
#[derive(Debug, Default, Clone)]
pub struct Merged {
    pub frame_number: u64,
    pub sequence: u32,
    pub timestamp_ns: u64,
    pub detector_timestamp: u64,
    pub bunch_id: u64,
    /// Modules written by any daemon.
    pub modules: u64,
    /// Modules dropped on their daemon.
    pub dropped: u64,
    /// Missing packets per module of the grid, each from the daemon that owns the module.
    pub missing: Vec<[u8; 64]>,
}

impl Merged {
    /// The index's record for the master.
    pub fn record(&self) -> IndexRecord<'_> {
        IndexRecord {
            frame_number: self.frame_number,
            sequence: self.sequence,
            timestamp_ns: self.timestamp_ns,
            detector_timestamp: self.detector_timestamp,
            bunch_id: self.bunch_id,
            modules: self.modules,
            dropped: self.dropped,
            missing_packets: &self.missing,
            // The parts' statistics are in their own masters; the whole's has none.
            stats: None,
        }
    }
}

/// Merges index `index` (1-based) over `feeds` into `out` (`width` modules in the grid). A
/// daemon that has not recorded it contributes nothing: its modules are missing.
pub fn merge(feeds: &[Feed], index: u64, width: usize, out: &mut Merged) {
    let pos = (index - 1) as usize;
    *out = Merged {
        missing: std::mem::take(&mut out.missing),
        ..Merged::default()
    };
    out.missing.clear();
    out.missing.resize(width, [0; 64]);
    let mut first = true;
    for f in feeds.iter() {
        let Some(k) = f.at(pos) else {
            continue;
        };
        let b = &f.buf;
        if first || (out.modules == 0 && b.modules[k] != 0) {
            out.frame_number = b.frame_number[k];
            out.sequence = b.sequence[k];
            out.detector_timestamp = b.detector_timestamp[k];
            out.bunch_id = b.bunch_id[k];
            first = false;
        }
        let t = b.timestamp[k];
        if t != 0 && (out.timestamp_ns == 0 || t < out.timestamp_ns) {
            out.timestamp_ns = t;
        }
        out.modules |= b.modules[k] & f.part.modules;
        out.dropped |= b.dropped[k] & f.part.modules;
        let w = b.missing.len() / b.len().max(1);
        for m in (0..width.min(w)).filter(|m| f.part.modules & (1 << m) != 0) {
            out.missing[m] = b.missing[k * w + m];
        }
    }
}

/// Lets the feeds forget the records of indices up to `index` (merged): once per batch, so
/// the buffers shift once, not once per index.
pub fn forget(feeds: &mut [Feed], index: u64) {
    for f in feeds.iter_mut() {
        f.drain_to(index as usize);
    }
}

/// How each part ended, as the master records it.
pub fn ends(feeds: &[Feed]) -> Vec<PartEnd> {
    (feeds.iter())
        .map(|f| PartEnd {
            recorded: f.recorded,
            outcome: match f.progress {
                Progress::Finished => PartOutcome::Finished,
                Progress::Died => PartOutcome::Died,
                _ => PartOutcome::Unknown,
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(daemon: &str, modules: u64, masks: &[u64]) -> Feed {
        let n = masks.len();
        let mut f = Feed::new(Part {
            daemon: daemon.into(),
            stream: format!("s_{daemon}"),
            modules,
        });
        f.append(PartRecords {
            from: 0,
            frame_number: (1..=n as u64).map(|i| 99 + i).collect(),
            sequence: vec![0; n],
            timestamp: (0..n as u64).map(|i| 1000 + i).collect(),
            detector_timestamp: vec![0; n],
            bunch_id: vec![0; n],
            modules: masks.to_vec(),
            dropped: vec![0; n],
            missing: vec![[0; 64]; n * 4],
        });
        f
    }

    #[test]
    fn an_index_is_whole_when_every_daemon_wrote_its_modules() {
        let mut feeds = vec![
            feed("a", 0b0011, &[0b0011, 0b0001, 0]),
            feed("b", 0b1100, &[0b1100, 0b1100]),
        ];
        // b runs and recorded 2: index 3 waits for it.
        assert_eq!(ready(&feeds, false), 2);
        let mut m = Merged::default();
        merge(&feeds, 1, 4, &mut m);
        assert_eq!(
            (m.modules, m.frame_number, m.timestamp_ns),
            (0b1111, 100, 1000)
        );
        merge(&feeds, 2, 4, &mut m);
        assert_eq!(m.modules, 0b1101);
        // b died after 2: index 3 is merged without it, and a had lost it: lost.
        feeds[1].progress = Progress::Died;
        feeds[0].progress = Progress::Finished;
        assert!(all_ended(&feeds));
        assert_eq!(ready(&feeds, false), 3);
        assert_eq!(
            ready(&feeds, true),
            3,
            "a dead part does not hold a stopped run back"
        );
        merge(&feeds, 3, 4, &mut m);
        assert_eq!((m.modules, m.frame_number), (0, 102));
    }

    #[test]
    fn a_stopped_run_ends_with_the_last_index_every_daemon_recorded() {
        let mut feeds = vec![feed("a", 1, &[1, 1, 1]), feed("b", 2, &[2, 2, 2, 2, 2])];
        feeds[0].progress = Progress::Finished; // a was stopped first, at 3
        assert_eq!(
            ready(&feeds, false),
            5,
            "b still runs: its indices 4, 5 would merge"
        );
        assert_eq!(ready(&feeds, true), 3, "stopping: not beyond a's last");
        feeds[1].progress = Progress::Finished;
        assert_eq!(ready(&feeds, true), 3);
    }

    #[test]
    fn an_unreachable_part_holds_nothing_back_and_is_unknown_at_the_end() {
        let mut feeds = vec![feed("a", 1, &[1, 1, 1]), feed("b", 2, &[2])];
        assert_eq!(ready(&feeds, false), 1);
        feeds[1].progress = Progress::Unreachable;
        assert_eq!((ready(&feeds, false), ready(&feeds, true)), (3, 3));
        feeds[0].progress = Progress::Finished;
        assert!(!all_ended(&feeds), "an unreachable part may come back");
        feeds[1].progress = Progress::Unknown;
        assert!(all_ended(&feeds));
        assert_eq!(ends(&feeds)[1].outcome, PartOutcome::Unknown);
        assert_eq!(
            feeds[1].held_below(3),
            0..1,
            "its index 1, if 3 were merged"
        );
    }

    #[test]
    fn records_read_twice_are_appended_once() {
        let mut f = feed("a", 1, &[1, 1]);
        let again = feed("a", 1, &[1, 1, 1]).buf;
        f.append(again);
        assert_eq!((f.buf.len(), f.recorded), (3, 3));
        f.drain_to(2);
        assert_eq!((f.buf.from, f.buf.len(), f.at(2)), (2, 1, Some(0)));
    }
}
