//! The writer stage: puts items back in the indexer's order, writes chunks into the run's file
//! set with direct chunk writes, records each index when its dataset closes (or is lost),
//! flushes on the configured cadence, and announces every index on the notification queue.
//! It is the only thread that calls HDF5.
//!
//! What an index's record says (which modules were written, lost packets, sizes) is gathered
//! from its chunks in a small ring of accumulators (`accum.rs`). A module frame that arrived
//! after its index was recorded is marked late in the record.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics;
use crossbeam::channel::{Receiver, RecvTimeoutError};
use detingest_shm::{FrameMeta, PoolBuf};
use detingest_writer::{
    Chunking, DetectorInfo, FileOptions, FrameStats, IndexRecord, RunEnd, RunFiles, RunLayout,
    WriteError,
};

use self::accum::{accum, add_to_preview, merge_missing, take_preview, Accum};
use super::job::{Item, Step};
use super::reorder::Reorder;
use super::stats::PipelineStats;
use crate::sink::{
    FrameNotice, Notification, NotifyQueue, PreviewGeometry, PreviewPolicy, ReadableNotice,
    StreamEndNotice, StreamStartNotice,
};
use crate::stream::{now_ns, FrameRecord, StreamInfo};

/// Shortest time between two flushes that a data file's close asks for.
const CLOSED_FILE_FLUSH: Duration = Duration::from_millis(100);

/// How often files are flushed.
#[derive(Debug, Clone, Copy)]
pub struct FlushCadence {
    /// After this many indices (0: never by count).
    pub frames: u64,
    /// At least this often while a file has unflushed indices (`None`: never by time).
    pub interval: Option<Duration>,
}

/// What one stream's files look like and say.
#[derive(Debug, Clone)]
pub struct StreamSetup {
    /// Geometry, chunking and codec.
    pub layout: RunLayout,
    /// Rollover and VDS.
    pub files: FileOptions,
    /// NXmx detector description.
    pub detector: DetectorInfo,
    /// Free user metadata (JSON text).
    pub user_json: String,
    /// The stream after this one, for the finish marker.
    pub next_stream: Option<String>,
    /// Datasets open at once at most (`dataset_ahead`).
    pub open_datasets: usize,
}

/// What became of one stream.
#[derive(Debug, Clone)]
pub struct StreamReport {
    /// The stream.
    pub stream: Arc<StreamInfo>,
    /// True once its files were created (a stream that received nothing has none).
    pub opened: bool,
    /// Indices in its files.
    pub frames: u64,
    /// Of which nothing was written and nothing reached the daemon (never arrived).
    pub lost: u64,
    /// Of which nothing was written because the daemon dropped what arrived.
    pub dropped: u64,
    /// Module frames that arrived after their index was recorded (discarded, marked late).
    pub late: u64,
    /// The first error that stopped its files, if any.
    pub error: Option<String>,
}

/// One stream as the writer holds it: its description, its file set once opened, and the
/// per-index accumulators of the datasets still open.
struct StreamFiles {
    info: Arc<StreamInfo>,
    setup: StreamSetup,
    files: Option<RunFiles>,
    accums: Vec<Accum>,
    preview: PreviewPolicy,
    /// Where its modules go in a preview.
    geometry: PreviewGeometry,
    since_flush: u64,
    last_flush: Instant,
    /// Every index up to this one is flushed (the readable watermark).
    readable: u64,
    report: StreamReport,
}

/// The writer stage's state.
pub struct Writer {
    streams: Vec<StreamFiles>,
    cadence: FlushCadence,
    reorder: Reorder,
    notify: Arc<NotifyQueue>,
    stats: Arc<PipelineStats>,
    stop: Arc<AtomicBool>,
}

impl Writer {
    pub(crate) fn new(
        streams: Vec<(Arc<StreamInfo>, StreamSetup)>,
        cadence: FlushCadence,
        preview: PreviewPolicy,
        window: usize,
        notify: Arc<NotifyQueue>,
        stats: Arc<PipelineStats>,
        stop: Arc<AtomicBool>,
    ) -> Self {
        let streams = streams
            .into_iter()
            .map(|(info, setup)| StreamFiles {
                report: StreamReport {
                    stream: Arc::clone(&info),
                    opened: false,
                    frames: 0,
                    lost: 0,
                    dropped: 0,
                    late: 0,
                    error: None,
                },
                accums: (0..setup.open_datasets + 2)
                    .map(|_| Accum::new(setup.layout.modules() as usize))
                    .collect(),
                geometry: PreviewGeometry::new(&setup.layout, setup.detector.module_gap),
                info,
                setup,
                files: None,
                preview: preview.clone(),
                since_flush: 0,
                last_flush: Instant::now(),
                readable: 0,
            })
            .collect();
        Self {
            streams,
            cadence,
            reorder: Reorder::new(window),
            notify,
            stats,
            stop,
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
            Step::Chunk {
                index,
                meta,
                chunk,
                stats,
            } => self.chunk(slot, index, (&meta, stats), chunk),
            Step::Seen { index, meta } => {
                let s = &mut self.streams[slot];
                if s.files.is_some() {
                    accum(&mut s.accums, index, &self.stats).module(&meta);
                }
            }
            Step::Failed { index } => {
                // Counted by the worker; the module stays missing from the index's record.
                let s = &mut self.streams[slot];
                if s.files.is_some() {
                    accum(&mut s.accums, index, &self.stats);
                }
            }
            Step::Closed {
                index,
                frame_number,
                sequence,
                dropped,
            } => self.record(slot, index, (frame_number, sequence), dropped, false),
            Step::Lost {
                first_index,
                first_frame_number,
                count,
                sequence,
                dropped,
            } => {
                for k in 0..count {
                    let numbering = (first_frame_number + k, sequence);
                    self.record(slot, first_index + k, numbering, dropped, true);
                }
            }
            Step::Late { index, module } => self.late(slot, index, module),
            Step::Close => self.close(slot),
            Step::Raw { .. } => {
                // Workers turn every Raw into Chunk or Failed; reaching here is a wiring bug.
                tracing::error!("uncompressed chunk reached the writer; dropped");
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn chunk(
        &mut self,
        slot: usize,
        index: u64,
        (meta, stats): (&FrameMeta, Option<FrameStats>),
        chunk: PoolBuf,
    ) {
        let s = &mut self.streams[slot];
        let Some(files) = s.files.as_mut() else {
            self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let started = Instant::now();
        if let Err(e) = files.write_chunk(index, u32::from(meta.module), chunk.as_slice()) {
            self.fail(slot, e);
            return;
        }
        metrics::WRITE_SECONDS.observe(started.elapsed());
        self.stats.written.fetch_add(1, Ordering::Relaxed);
        let frame_chunking = s.setup.layout.effective_chunking() == Chunking::Frame;
        let a = accum(&mut s.accums, index, &self.stats);
        if frame_chunking {
            a.image = true;
        } else {
            a.module(meta);
        }
        a.compressed_bytes += chunk.len() as u64;
        a.add_stats(stats);
        let part = (u32::from(meta.module), chunk.as_slice());
        add_to_preview(a, &mut s.preview, &s.geometry, part, &self.stats);
    }

    /// Records `index` (the detector's `(frame number, sequence)`, the modules `dropped` here)
    /// in the master and announces it.
    fn record(
        &mut self,
        slot: usize,
        index: u64,
        (frame_number, sequence): (u64, u32),
        dropped: u64,
        lost: bool,
    ) {
        let s = &mut self.streams[slot];
        if s.files.is_none() {
            // The stream failed (or never opened): counted, and the run has been stopped.
            self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let frame_chunking = s.setup.layout.effective_chunking() == Chunking::Frame;
        let a = accum(&mut s.accums, index, &self.stats);
        let mut modules = if lost { 0 } else { a.modules };
        if frame_chunking && !a.image {
            modules = 0; // its image never reached the file
        }
        let (union, packets_lost) = merge_missing(&a.missing);
        let record = FrameRecord {
            index,
            frame_number,
            sequence,
            raw_bytes: if modules == 0 { 0 } else { a.raw_bytes },
            compressed_bytes: a.compressed_bytes,
            timestamp_ns: a.timestamp_ns,
            detector_timestamp: a.detector_timestamp,
            bunch_id: a.bunch_id,
            written_ns: 0,
            readable_up_to: 0,
            modules,
            dropped,
            packets_lost,
            missing: union,
            stats: if modules == 0 { None } else { a.stats },
        };
        let preview = take_preview(a);
        let Some(files) = s.files.as_mut() else {
            self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let result = files.record(
            index,
            &IndexRecord {
                frame_number,
                sequence,
                timestamp_ns: record.timestamp_ns,
                detector_timestamp: record.detector_timestamp,
                bunch_id: record.bunch_id,
                modules,
                dropped,
                missing_packets: &a.missing,
                stats: record.stats,
            },
        );
        a.index = 0;
        if let Err(e) = result {
            self.fail(slot, e);
            return;
        }
        if let Some(st) = &record.stats {
            metrics::frame_values::observe(st);
        }
        s.since_flush += 1;
        s.report.frames = index;
        self.stats.recorded.fetch_add(1, Ordering::Relaxed);
        match (modules, dropped) {
            (0, 0) => s.report.lost += 1,
            (0, _) => s.report.dropped += 1,
            _ => {}
        }
        let stream = Arc::clone(&s.info);
        // A flush due now goes first, so the notice carries the watermark it made.
        self.flush_if_due(slot);
        self.notify.push(Notification::Frame(FrameNotice {
            stream,
            record: FrameRecord {
                written_ns: now_ns(),
                readable_up_to: self.streams[slot].readable,
                ..record
            },
            preview,
        }));
    }

    /// Marks module `module` of `index` late in its record.
    fn late(&mut self, slot: usize, index: u64, module: u32) {
        let s = &mut self.streams[slot];
        s.report.late += 1;
        let Some(files) = s.files.as_mut() else {
            return;
        };
        if let Err(e) = files.mark_late(index, 1 << module) {
            self.fail(slot, e);
        }
    }

    fn open(&mut self, slot: usize) {
        let s = &mut self.streams[slot];
        let Some(dir) = s.info.file.parent() else {
            return;
        };
        if let Err(e) = std::fs::create_dir_all(dir) {
            let msg = format!("cannot create {}: {e}", dir.display());
            tracing::error!(stream = %s.info.id, "{msg}");
            s.report.error.get_or_insert(msg);
            self.stop.store(true, Ordering::Relaxed);
            return;
        }
        let setup = &s.setup;
        match RunFiles::create(
            dir,
            s.info.id.stream.as_str(),
            setup.layout,
            &setup.detector,
            &setup.user_json,
            setup.files,
        ) {
            Ok(f) => {
                tracing::info!(stream = %s.info.id, master = %s.info.file.display(), "stream opened");
                s.files = Some(f);
                self.stats.files_open.fetch_add(1, Ordering::Relaxed);
                s.report.opened = true;
                s.last_flush = Instant::now();
                self.notify
                    .push(Notification::StreamStart(StreamStartNotice {
                        stream: Arc::clone(&s.info),
                        started_ns: now_ns(),
                        detector: Arc::new(setup.detector.clone()),
                        user_json: setup.user_json.clone(),
                        files: setup.files,
                    }));
            }
            Err(e) => self.fail(slot, e),
        }
    }

    fn close(&mut self, slot: usize) {
        let s = &mut self.streams[slot];
        let Some(files) = s.files.take() else {
            return;
        };
        self.stats.files_open.fetch_sub(1, Ordering::Relaxed);
        let lost = files.lost();
        let end = RunEnd {
            next_stream: s.setup.next_stream.clone(),
            error: None,
            ended: None,
        };
        match files.finish(&end) {
            Ok(frames) => {
                tracing::info!(stream = %s.info.id, frames, lost, "stream closed");
                self.stats.flushes.fetch_add(1, Ordering::Relaxed);
                if frames > s.readable {
                    s.readable = frames;
                    self.notify.push(Notification::Readable(ReadableNotice {
                        stream: Arc::clone(&s.info),
                        up_to: frames,
                    }));
                }
                self.notify.push(Notification::StreamEnd(StreamEndNotice {
                    stream: Arc::clone(&s.info),
                    frames,
                    lost,
                    late: s.report.late,
                    ended_ns: now_ns(),
                    error: None,
                }));
            }
            Err(e) => self.fail(slot, e),
        }
    }

    /// Records a stream's first error, closes its files (keeping what was flushed readable,
    /// with the error in the master) and stops the pipeline: the run ends.
    fn fail(&mut self, slot: usize, e: WriteError) {
        let s = &mut self.streams[slot];
        let msg = e.to_string();
        tracing::error!(stream = %s.info.id, error = %msg, "stream stopped writing; the run ends");
        self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
        s.report.error.get_or_insert_with(|| msg.clone());
        if let Some(files) = s.files.take() {
            self.stats.files_open.fetch_sub(1, Ordering::Relaxed);
            let lost = files.lost();
            let end = RunEnd {
                next_stream: s.setup.next_stream.clone(),
                error: Some(msg.clone()),
                ended: None,
            };
            let frames = files.finish(&end).unwrap_or_else(|e| {
                tracing::error!(stream = %s.info.id, error = %e, "closing the files after the error failed too");
                s.readable
            });
            // The sinks hear of the end too: a scan is closed, a hand-off says it failed.
            self.notify.push(Notification::StreamEnd(StreamEndNotice {
                stream: Arc::clone(&s.info),
                frames,
                lost,
                late: s.report.late,
                ended_ns: now_ns(),
                error: Some(msg),
            }));
        }
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Flushes every file whose count or time is up, and announces the watermark it moved
    /// (no frame notice carries it).
    fn flush_due(&mut self) {
        for slot in 0..self.streams.len() {
            if self.flush_if_due(slot) {
                let s = &self.streams[slot];
                self.notify.push(Notification::Readable(ReadableNotice {
                    stream: Arc::clone(&s.info),
                    up_to: s.readable,
                }));
            }
        }
    }

    /// Flushes the stream's files if their count or time is up; true when it did.
    fn flush_if_due(&mut self, slot: usize) -> bool {
        let s = &mut self.streams[slot];
        if s.since_flush == 0 {
            return false;
        }
        let Some(files) = s.files.as_mut() else {
            return false;
        };
        let by_count = self.cadence.frames > 0 && s.since_flush >= self.cadence.frames;
        let late = self
            .cadence
            .interval
            .is_some_and(|i| s.last_flush.elapsed() >= i);
        // A closed data file's records go to disk with it (at most every CLOSED_FILE_FLUSH:
        // with a data file per index, a flush per index would cost more than it saves).
        let closed = files.data_file_closed() && s.last_flush.elapsed() >= CLOSED_FILE_FLUSH;
        if !(by_count || late || closed) {
            return false;
        }
        if let Err(e) = files.flush() {
            self.fail(slot, e);
            return false;
        }
        s.since_flush = 0;
        s.last_flush = Instant::now();
        s.readable = s.report.frames;
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        true
    }
}

mod accum;

#[cfg(test)]
mod tests;
