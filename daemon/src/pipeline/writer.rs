//! The writer stage: puts items back in the indexer's order, writes chunks with direct chunk
//! writes, records lost indices, flushes on the configured cadence, and announces every index
//! on the notification queue. It is the only thread that calls HDF5.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, RecvTimeoutError};
use detingest_writer::{DatasetLayout, DetectorInfo, StreamFile, WriteError};

use super::job::{Item, Step};
use super::reorder::Reorder;
use super::stats::PipelineStats;
use crate::notify::{
    now_ns, FrameNotice, FrameRecord, Notification, NotifyQueue, PreviewPolicy, StreamEndNotice,
    StreamInfo, StreamStartNotice,
};

/// How often files are flushed.
#[derive(Debug, Clone, Copy)]
pub struct FlushCadence {
    /// After this many indices (0: never by count).
    pub frames: u64,
    /// At least this often while a file has unflushed indices (`None`: never by time).
    pub interval: Option<Duration>,
}

/// What became of one stream.
#[derive(Debug, Clone)]
pub struct StreamReport {
    /// The stream.
    pub stream: Arc<StreamInfo>,
    /// Indices in its file.
    pub frames: u64,
    /// Of which lost.
    pub lost: u64,
    /// The first error that stopped its file, if any.
    pub error: Option<String>,
}

struct StreamState {
    info: Arc<StreamInfo>,
    layout: DatasetLayout,
    file: Option<StreamFile>,
    preview: PreviewPolicy,
    since_flush: u64,
    last_flush: Instant,
    report: StreamReport,
}

/// The writer stage's state.
pub struct Writer {
    streams: Vec<StreamState>,
    detector: DetectorInfo,
    cadence: FlushCadence,
    reorder: Reorder,
    notify: Arc<NotifyQueue>,
    stats: Arc<PipelineStats>,
}

impl Writer {
    pub(crate) fn new(
        streams: Vec<(Arc<StreamInfo>, DatasetLayout)>,
        detector: DetectorInfo,
        cadence: FlushCadence,
        preview: PreviewPolicy,
        window: usize,
        notify: Arc<NotifyQueue>,
        stats: Arc<PipelineStats>,
    ) -> Self {
        let streams = streams
            .into_iter()
            .map(|(info, layout)| StreamState {
                report: StreamReport {
                    stream: Arc::clone(&info),
                    frames: 0,
                    lost: 0,
                    error: None,
                },
                info,
                layout,
                file: None,
                preview: preview.clone(),
                since_flush: 0,
                last_flush: Instant::now(),
            })
            .collect();
        Self {
            streams,
            detector,
            cadence,
            reorder: Reorder::new(window),
            notify,
            stats,
        }
    }

    /// Runs until the workers' queue closes; returns one report per stream.
    pub(crate) fn run(mut self, input: Receiver<Item>) -> Vec<StreamReport> {
        let tick = self.cadence.interval.unwrap_or(Duration::from_secs(1));
        loop {
            match input.recv_timeout(tick) {
                Ok(item) => {
                    if let Err((item, e)) = self.reorder.insert(item) {
                        tracing::error!(error = %e, "pipeline ordering broken; item dropped");
                        self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                        drop(item);
                    }
                    while let Some(item) = self.reorder.pop() {
                        self.handle(item);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.flush_due();
        }
        for slot in 0..self.streams.len() {
            self.close(slot);
        }
        self.notify.close();
        self.streams.into_iter().map(|s| s.report).collect()
    }

    fn handle(&mut self, item: Item) {
        let slot = usize::from(item.stream);
        match item.step {
            Step::Open => self.open(slot),
            Step::Chunk { index, meta, chunk } => {
                let s = &mut self.streams[slot];
                let Some(file) = s.file.as_mut() else {
                    self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                if let Err(e) = file.write_frame(index, chunk.as_slice(), &meta) {
                    self.fail(slot, e);
                    return;
                }
                s.since_flush += 1;
                s.report.frames = index;
                self.stats.written.fetch_add(1, Ordering::Relaxed);
                let compressed_bytes = chunk.len() as u64;
                let mut preview = None;
                if s.preview.wants(Instant::now()) {
                    preview = s.preview.copy(chunk.as_slice());
                    if preview.is_none() {
                        self.stats.previews_skipped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                self.notify.push(Notification::Frame(FrameNotice {
                    stream: Arc::clone(&s.info),
                    record: FrameRecord {
                        index,
                        frame_number: meta.frame_number,
                        lost: false,
                        raw_bytes: meta.byte_len() as u64,
                        compressed_bytes,
                        timestamp_ns: meta.timestamp_ns,
                        written_ns: now_ns(),
                        missing: meta.missing,
                    },
                    preview,
                }));
            }
            Step::Lost {
                first_index,
                first_frame_number,
                count,
            } => {
                for k in 0..count {
                    let s = &mut self.streams[slot];
                    let Some(file) = s.file.as_mut() else {
                        self.stats
                            .write_errors
                            .fetch_add(count - k, Ordering::Relaxed);
                        return;
                    };
                    let (index, frame_number) = (first_index + k, first_frame_number + k);
                    if let Err(e) = file.record_lost(index, frame_number) {
                        self.fail(slot, e);
                        continue;
                    }
                    s.since_flush += 1;
                    s.report.frames = index;
                    s.report.lost += 1;
                    self.notify.push(Notification::Frame(FrameNotice {
                        stream: Arc::clone(&s.info),
                        record: FrameRecord {
                            index,
                            frame_number,
                            lost: true,
                            raw_bytes: 0,
                            compressed_bytes: 0,
                            timestamp_ns: 0,
                            written_ns: now_ns(),
                            missing: detingest_shm::PacketMask::NONE,
                        },
                        preview: None,
                    }));
                }
            }
            Step::Close => self.close(slot),
            Step::Raw { .. } => {
                // Workers turn every Raw into Chunk or Lost; reaching here is a wiring bug.
                tracing::error!("uncompressed frame reached the writer; dropped");
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn open(&mut self, slot: usize) {
        let s = &mut self.streams[slot];
        if let Some(dir) = s.info.file.parent() {
            if let Err(e) = std::fs::create_dir_all(dir) {
                let msg = format!("cannot create {}: {e}", dir.display());
                tracing::error!(stream = %s.info.id, "{msg}");
                s.report.error.get_or_insert(msg);
                return;
            }
        }
        match StreamFile::create(&s.info.file, s.layout, &self.detector) {
            Ok(f) => {
                tracing::info!(stream = %s.info.id, file = %s.info.file.display(), "stream opened");
                s.file = Some(f);
                s.last_flush = Instant::now();
                self.notify
                    .push(Notification::StreamStart(StreamStartNotice {
                        stream: Arc::clone(&s.info),
                        started_ns: now_ns(),
                    }));
            }
            Err(e) => self.fail(slot, e),
        }
    }

    fn close(&mut self, slot: usize) {
        let s = &mut self.streams[slot];
        let Some(file) = s.file.take() else {
            return;
        };
        let lost = file.lost();
        match file.finish() {
            Ok(frames) => {
                self.stats.flushes.fetch_add(1, Ordering::Relaxed);
                self.notify.push(Notification::StreamEnd(StreamEndNotice {
                    stream: Arc::clone(&s.info),
                    frames,
                    lost,
                    ended_ns: now_ns(),
                }));
            }
            Err(e) => self.fail(slot, e),
        }
    }

    /// Records a stream's first error and closes its file, keeping what was flushed readable.
    fn fail(&mut self, slot: usize, e: WriteError) {
        let s = &mut self.streams[slot];
        tracing::error!(stream = %s.info.id, error = %e, "stream stopped writing");
        self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
        s.report.error.get_or_insert_with(|| e.to_string());
        if let Some(file) = s.file.take() {
            let _ = file.finish();
        }
    }

    /// Flushes every file whose count or time is up.
    fn flush_due(&mut self) {
        for slot in 0..self.streams.len() {
            self.flush_if_due(slot);
        }
    }

    fn flush_if_due(&mut self, slot: usize) {
        let s = &mut self.streams[slot];
        if s.since_flush == 0 {
            return;
        }
        let by_count = self.cadence.frames > 0 && s.since_flush >= self.cadence.frames;
        let late = self
            .cadence
            .interval
            .is_some_and(|i| s.last_flush.elapsed() >= i);
        if !(by_count || late) {
            return;
        }
        let Some(file) = s.file.as_mut() else {
            return;
        };
        if let Err(e) = file.flush() {
            self.fail(slot, e);
            return;
        }
        s.since_flush = 0;
        s.last_flush = Instant::now();
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
    }
}
