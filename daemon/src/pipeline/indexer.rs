//! Index assignment: index = detector frame number - first frame number + 1, per stream. A
//! frame number that was skipped (dropped by its source or never delivered) becomes a
//! [`Step::Lost`] range, so every index 1..N reaches the writer exactly once.

use std::sync::atomic::Ordering;

use crossbeam::channel::{Receiver, Sender};

use super::job::{Item, SourceMsg, Step, StreamSlot};

/// Largest jump in frame numbers recorded as lost indices. A bigger jump is not a loss but a
/// detector restart or a corrupt number: the frame is refused (counted stale) rather than
/// filling the file with millions of lost records.
pub const MAX_GAP: u64 = 1 << 20;
use super::stats::PipelineStats;

/// Where one stream's numbering stands.
#[derive(Clone, Copy)]
struct Numbering {
    /// Frame number that index 1 belongs to.
    first_frame_number: u64,
    /// Next frame number expected.
    next_frame_number: u64,
    /// Set after `End`.
    closed: bool,
}

impl Numbering {
    fn next_index(&self) -> u64 {
        self.next_frame_number - self.first_frame_number + 1
    }
}

/// The indexer stage: owns the numbering of every stream.
pub struct Indexer {
    streams: Vec<Option<Numbering>>,
    seq: u64,
    out: Sender<Item>,
    stats: std::sync::Arc<PipelineStats>,
}

impl Indexer {
    pub(crate) fn new(
        streams: usize,
        out: Sender<Item>,
        stats: std::sync::Arc<PipelineStats>,
    ) -> Self {
        Self {
            streams: vec![None; streams],
            seq: 0,
            out,
            stats,
        }
    }

    /// Runs until every source has disconnected.
    pub(crate) fn run(mut self, input: Receiver<SourceMsg>) {
        for msg in input {
            self.handle(msg);
        }
    }

    fn handle(&mut self, msg: SourceMsg) {
        match msg {
            SourceMsg::Start {
                stream,
                first_frame_number,
            } => {
                self.streams[usize::from(stream)] = Some(Numbering {
                    first_frame_number,
                    next_frame_number: first_frame_number,
                    closed: false,
                });
                self.emit(stream, Step::Open);
            }
            SourceMsg::Frame { stream, meta, data } => {
                let Some(mut num) = self.open_stream(stream) else {
                    self.stats.stale.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let n = meta.frame_number;
                if n < num.next_frame_number {
                    // Behind the numbering (duplicate or before the first frame): it cannot
                    // take an index another frame already has.
                    self.stats.stale.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                if n - num.next_frame_number > MAX_GAP {
                    tracing::warn!(
                        frame_number = n,
                        expected = num.next_frame_number,
                        "frame number jumped too far; frame refused"
                    );
                    self.stats.stale.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                self.lose_until(stream, &mut num, n);
                let index = num.next_index();
                num.next_frame_number = n + 1;
                self.streams[usize::from(stream)] = Some(num);
                self.stats.indexed.fetch_add(1, Ordering::Relaxed);
                self.emit(
                    stream,
                    Step::Raw {
                        index,
                        meta,
                        pixels: data,
                    },
                );
            }
            SourceMsg::End {
                stream,
                last_frame_number,
            } => {
                let Some(mut num) = self.open_stream(stream) else {
                    return;
                };
                match last_frame_number {
                    Some(last) if last.saturating_sub(num.next_frame_number) > MAX_GAP => {
                        tracing::warn!(last, "stream end jumped too far; tail not recorded lost");
                    }
                    Some(last) => self.lose_until(stream, &mut num, last.saturating_add(1)),
                    None => {}
                }
                num.closed = true;
                self.streams[usize::from(stream)] = Some(num);
                self.emit(stream, Step::Close);
            }
        }
    }

    fn open_stream(&self, stream: StreamSlot) -> Option<Numbering> {
        self.streams
            .get(usize::from(stream))
            .copied()
            .flatten()
            .filter(|n| !n.closed)
    }

    /// Emits a lost range for frame numbers `num.next_frame_number .. until`.
    fn lose_until(&mut self, stream: StreamSlot, num: &mut Numbering, until: u64) {
        if until <= num.next_frame_number {
            return;
        }
        let count = until - num.next_frame_number;
        self.stats.lost.fetch_add(count, Ordering::Relaxed);
        self.emit(
            stream,
            Step::Lost {
                first_index: num.next_index(),
                first_frame_number: num.next_frame_number,
                count,
            },
        );
        num.next_frame_number = until;
    }

    fn emit(&mut self, stream: StreamSlot, step: Step) {
        let item = Item {
            seq: self.seq,
            stream,
            step,
        };
        self.seq += 1;
        // A closed channel means the workers are gone; the pipeline is shutting down.
        let _ = self.out.send(item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam::channel;
    use detingest_shm::{BufferPool, FrameMeta, PixelType};

    fn frame(pool: &BufferPool, n: u64) -> SourceMsg {
        SourceMsg::Frame {
            stream: 0,
            meta: FrameMeta {
                frame_number: n,
                module: 0,
                pixel: PixelType::U8,
                shape: [1, 1],
                timestamp_ns: 0,
                missing: detingest_shm::PacketMask::NONE,
            },
            data: pool.acquire().into(),
        }
    }

    /// (seq, what) for every emitted item, with lost ranges spelled out.
    fn run(msgs: impl FnOnce(&BufferPool) -> Vec<SourceMsg>) -> Vec<(u64, String)> {
        let pool = BufferPool::new(16, 1);
        let (tx, rx) = channel::unbounded();
        let stats = std::sync::Arc::new(PipelineStats::default());
        let mut ix = Indexer::new(1, tx, stats);
        for m in msgs(&pool) {
            ix.handle(m);
        }
        drop(ix);
        rx.iter()
            .map(|it| {
                let what = match it.step {
                    Step::Open => "open".to_string(),
                    Step::Raw { index, meta, .. } => format!("{index}:{}", meta.frame_number),
                    Step::Lost {
                        first_index,
                        first_frame_number,
                        count,
                    } => format!("lost {first_index}:{first_frame_number}+{count}"),
                    Step::Chunk { .. } => "chunk".into(),
                    Step::Close => "close".into(),
                };
                (it.seq, what)
            })
            .collect()
    }

    #[test]
    fn gaps_become_lost_ranges_and_indices_stay_dense() {
        let out = run(|p| {
            vec![
                SourceMsg::Start {
                    stream: 0,
                    first_frame_number: 100,
                },
                frame(p, 101),
                frame(p, 102),
                frame(p, 105),
                frame(p, 104), // behind: stale
                SourceMsg::End {
                    stream: 0,
                    last_frame_number: Some(107),
                },
            ]
        });
        let what: Vec<&str> = out.iter().map(|(_, w)| w.as_str()).collect();
        assert_eq!(
            what,
            [
                "open",
                "lost 1:100+1",
                "2:101",
                "3:102",
                "lost 4:103+2",
                "6:105",
                "lost 7:106+2",
                "close"
            ]
        );
        let seqs: Vec<u64> = out.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn a_jump_beyond_max_gap_is_refused_not_recorded_lost() {
        let out = run(|p| {
            vec![
                SourceMsg::Start {
                    stream: 0,
                    first_frame_number: 1,
                },
                frame(p, 1),
                frame(p, 2 + MAX_GAP + 1),
                frame(p, 2),
            ]
        });
        let what: Vec<&str> = out.iter().map(|(_, w)| w.as_str()).collect();
        assert_eq!(what, ["open", "1:1", "2:2"]);
    }

    #[test]
    fn frames_of_an_unopened_or_closed_stream_are_refused() {
        let out = run(|p| {
            vec![
                frame(p, 1),
                SourceMsg::Start {
                    stream: 0,
                    first_frame_number: 1,
                },
                SourceMsg::End {
                    stream: 0,
                    last_frame_number: None,
                },
                frame(p, 1),
            ]
        });
        let what: Vec<&str> = out.iter().map(|(_, w)| w.as_str()).collect();
        assert_eq!(what, ["open", "close"]);
    }
}
