//! The recent past of every stream, for late joiners: a bounded ring of frame records per
//! stream, each stream's last index, and whether it has finished. Answers `range` queries with
//! the records it holds and, for indices it does not, one of three distinct answers (as
//! Blissdata's readers get): not yet written, expired from the history (read the file), or
//! never (past the end of a finished stream).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::stream::{FrameRecord, StreamInfo};

/// One stretch of a `range` answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Span {
    /// Indices held in the history.
    Frames(Vec<FrameRecord>),
    /// Written, but no longer in the history: read them from the file.
    Expired {
        /// First index.
        from: u64,
        /// Last index.
        to: u64,
    },
    /// Not written yet; the stream is still open.
    NotYet {
        /// First index.
        from: u64,
        /// Last index.
        to: u64,
    },
    /// Past the end of a finished stream: they will never be written.
    Never {
        /// First index.
        from: u64,
        /// Last index.
        to: u64,
    },
}

/// A stream's place in the history.
#[derive(Debug)]
pub struct StreamHistory {
    /// The stream.
    pub info: Arc<StreamInfo>,
    records: VecDeque<FrameRecord>,
    /// Highest index announced.
    pub last: u64,
    /// Final index count, once the stream has ended.
    pub finished: Option<u64>,
    /// The readable watermark now (every index up to it is flushed).
    pub readable: u64,
}

/// Recent frames of every stream that started since the daemon did.
#[derive(Debug)]
pub struct History {
    capacity: usize,
    streams: HashMap<String, StreamHistory>,
}

impl History {
    /// A history of `capacity` records per stream.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            streams: HashMap::new(),
        }
    }

    /// A stream began.
    pub fn start(&mut self, info: &Arc<StreamInfo>) {
        self.streams.insert(
            info.key.clone(),
            StreamHistory {
                info: Arc::clone(info),
                records: VecDeque::with_capacity(self.capacity),
                last: 0,
                finished: None,
                readable: 0,
            },
        );
    }

    /// A frame was written (or recorded lost).
    pub fn push(&mut self, key: &str, record: FrameRecord) {
        if let Some(s) = self.streams.get_mut(key) {
            if s.records.len() == self.capacity {
                s.records.pop_front();
            }
            s.records.push_back(record);
            s.last = s.last.max(record.index);
            s.readable = s.readable.max(record.readable_up_to);
        }
    }

    /// The stream's readable watermark moved to `up_to`.
    pub fn readable(&mut self, key: &str, up_to: u64) {
        if let Some(s) = self.streams.get_mut(key) {
            s.readable = s.readable.max(up_to);
        }
    }

    /// A stream ended with `frames` indices.
    pub fn finish(&mut self, key: &str, frames: u64) {
        if let Some(s) = self.streams.get_mut(key) {
            s.finished = Some(frames);
            s.last = s.last.max(frames);
            s.readable = s.readable.max(frames);
        }
    }

    /// Every stream, by key.
    pub fn streams(&self) -> impl Iterator<Item = (&String, &StreamHistory)> {
        self.streams.iter()
    }

    /// The stream called `key`.
    pub fn stream(&self, key: &str) -> Option<&StreamHistory> {
        self.streams.get(key)
    }

    /// Indices `from..=to` of stream `key`, as consecutive spans, with the stream they belong
    /// to; `None` for an unknown stream.
    pub fn range(&self, key: &str, from: u64, to: u64) -> Option<(Arc<StreamInfo>, Vec<Span>)> {
        let s = self.streams.get(key)?;
        let mut spans: Vec<Span> = Vec::new();
        let mut i = from;
        while i <= to {
            if s.finished.is_some_and(|n| i > n) {
                spans.push(Span::Never { from: i, to });
                break;
            }
            if i > s.last {
                let end = s.finished.map_or(to, |n| n.min(to));
                spans.push(Span::NotYet { from: i, to: end });
                i = end + 1;
                continue;
            }
            // Records are in index order; find the first at or after `i`.
            let at = s.records.partition_point(|r| r.index < i);
            match s.records.get(at) {
                Some(r) if r.index == i => {
                    let mut frames = Vec::new();
                    for r in s.records.range(at..) {
                        if r.index != i || i > to.min(s.last) {
                            break;
                        }
                        frames.push(*r);
                        i += 1;
                    }
                    spans.push(Span::Frames(frames));
                }
                next => {
                    // Not held: expired (or its notification was dropped); both are in the file.
                    let end = next.map_or(s.last, |r| r.index - 1).min(to);
                    spans.push(Span::Expired { from: i, to: end });
                    i = end + 1;
                }
            }
        }
        Some((Arc::clone(&s.info), spans))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detingest_shm::{Name, PixelType, StreamId};
    use detingest_writer::Codec;

    fn info() -> Arc<StreamInfo> {
        let n = |s: &str| Name::new(s).unwrap();
        Arc::new(StreamInfo {
            slot: 0,
            id: StreamId {
                beamtime: n("b"),
                source: n("d"),
                stream: n("s"),
            },
            key: "b/d/s".into(),
            file: "/tmp/x.h5".into(),
            dataset: "/entry/data/data",
            codec: Codec::BitshuffleLz4,
            pixel: PixelType::U16,
            shape: [4, 4],
            modules: 1,
            expected: 1,
            parts: Vec::new(),
            frames_per_file: 1000,
            kind: crate::stream::StreamKind::Frames,
        })
    }

    fn rec(index: u64) -> FrameRecord {
        FrameRecord {
            index,
            frame_number: index,
            sequence: 0,
            raw_bytes: 32,
            compressed_bytes: 8,
            timestamp_ns: 0,
            detector_timestamp: 0,
            bunch_id: 0,
            written_ns: 0,
            readable_up_to: 0,
            modules: 1,
            dropped: 0,
            packets_lost: 0,
            missing: detingest_shm::PacketMask::NONE,
            stats: None,
        }
    }

    fn indices(spans: &[Span]) -> Vec<String> {
        spans
            .iter()
            .map(|s| match s {
                Span::Frames(f) => format!("frames {}..{}", f[0].index, f[f.len() - 1].index),
                Span::Expired { from, to } => format!("expired {from}..{to}"),
                Span::NotYet { from, to } => format!("not_yet {from}..{to}"),
                Span::Never { from, to } => format!("never {from}..{to}"),
            })
            .collect()
    }

    #[test]
    fn the_three_answers_outside_the_history_are_distinct() {
        let mut h = History::new(3);
        h.start(&info());
        for i in 1..=5 {
            h.push("b/d/s", rec(i));
        }
        let spans = h.range("b/d/s", 1, 8).unwrap().1;
        assert_eq!(
            indices(&spans),
            ["expired 1..2", "frames 3..5", "not_yet 6..8"]
        );
        // The stream ends with 6 indices; index 6's notification never reached the history,
        // so it is in the file only.
        h.finish("b/d/s", 6);
        let spans = h.range("b/d/s", 2, 9).unwrap().1;
        assert_eq!(
            indices(&spans),
            ["expired 2..2", "frames 3..5", "expired 6..6", "never 7..9"]
        );
        assert!(h.range("x/y/z", 1, 1).is_none());
    }

    #[test]
    fn a_gap_from_a_dropped_notification_reads_as_expired() {
        let mut h = History::new(10);
        h.start(&info());
        for i in [1, 2, 4] {
            h.push("b/d/s", rec(i));
        }
        let spans = h.range("b/d/s", 1, 4).unwrap().1;
        assert_eq!(
            indices(&spans),
            ["frames 1..2", "expired 3..3", "frames 4..4"]
        );
    }
}
