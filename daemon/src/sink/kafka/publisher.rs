//! The `kafka` thread: turns what the feed hands it into messages and gives them to
//! librdkafka (which batches and sends them from its own threads): a `json` record per
//! written index, an `ad00` preview now and then, and at a stream's end the file hand-off
//! (checksummed on a thread of its own, [`super::handoff`]). Buffers are reused: a frame's
//! record costs no allocation here either.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crossbeam::channel::{RecvTimeoutError, TryRecvError};
use flatbuffers::FlatBufferBuilder;
use rdkafka::producer::BaseRecord;

use super::client::{KafkaStats, Producer};
use super::feed::Msg;
use super::handoff::{self, HandOff, HandoffSettings, Job};
use super::schema::{area_detector, reports};
use crate::sink::assembly::{Placement, Preview};
use crate::sink::binning;
use crate::sink::messages::FrameMessage;
use crate::stream::{FrameRecord, StreamInfo};

/// While records flow, the channel is drained this often (a record waits at most this long
/// here, then `linger_ms` in librdkafka).
const DRAIN_EVERY: Duration = Duration::from_millis(5);

/// Where the thread sends what.
#[derive(Debug, Clone)]
pub struct Topics {
    /// Per-frame records (`""`: none).
    pub frames: String,
    /// Previews (`""`: none).
    pub previews: String,
    /// Hand-offs, unless a job names its own topic.
    pub status: String,
}

/// A stream being written, as the thread knows it.
struct Open {
    file: String,
    job: Job,
    started_ns: u64,
    user: serde_json::Value,
}

/// The thread's state.
pub struct Publisher {
    producer: Arc<Producer>,
    reports: Arc<Producer>,
    stats: Arc<KafkaStats>,
    topics: Topics,
    service_id: String,
    handoff: HandoffSettings,
    builder: FlatBufferBuilder<'static>,
    json: Vec<u8>,
    scratch: binning::Scratch,
    max_message_bytes: usize,
    streams: Vec<Option<Open>>,
    handoffs: Vec<std::thread::JoinHandle<()>>,
}

/// Hands `payload` to librdkafka under `key`; a full queue or a refusal drops it, counted
/// by its fault ([`KafkaStats::refused`]).
pub fn send(
    producer: &Producer,
    stats: &KafkaStats,
    topic: &str,
    key: &str,
    payload: &[u8],
) -> bool {
    send_marked(producer, stats, (topic, key), payload, 0)
}

/// [`send`], the message marked with `opaque` for its delivery report (a hand-off's id).
pub fn send_marked(
    producer: &Producer,
    stats: &KafkaStats,
    (topic, key): (&str, &str),
    payload: &[u8],
    opaque: usize,
) -> bool {
    let record = BaseRecord::with_opaque_to(topic, opaque)
        .key(key)
        .payload(payload);
    match producer.send(record) {
        Ok(()) => true,
        Err((e, _)) => {
            stats.refused(topic, &e, false);
            false
        }
    }
}

impl Publisher {
    /// A publisher sending records through `producer` and hand-offs through `reports`.
    pub fn new(
        producer: Arc<Producer>,
        reports: Arc<Producer>,
        stats: Arc<KafkaStats>,
        topics: Topics,
        service_id: String,
        max_message_bytes: usize,
        handoff: HandoffSettings,
    ) -> Self {
        Self {
            handoff,
            producer,
            reports,
            stats,
            topics,
            service_id,
            builder: FlatBufferBuilder::with_capacity(1 << 12),
            json: Vec::with_capacity(1 << 10),
            scratch: binning::Scratch::default(),
            max_message_bytes,
            streams: Vec::new(),
            handoffs: Vec::new(),
        }
    }

    /// Runs until every sender is gone, then waits for the hand-offs it started. While
    /// records flow it drains the channel every `DRAIN_EVERY` instead of waking for each
    /// (the notification thread then never pays a wake-up per frame); idle, it blocks until
    /// the next message. Each round serves both producers' delivery reports and errors.
    pub fn run(mut self, rx: crossbeam::channel::Receiver<Msg>) {
        let mut flowing = false;
        loop {
            if flowing {
                std::thread::sleep(DRAIN_EVERY);
            } else {
                match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(m) => self.handle(m),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            let mut drained = 0;
            let gone = loop {
                match rx.try_recv() {
                    Ok(m) => self.handle(m),
                    Err(TryRecvError::Empty) => break false,
                    Err(TryRecvError::Disconnected) => break true,
                }
                drained += 1;
            };
            flowing = drained > 0;
            self.producer.poll(Duration::ZERO);
            self.reports.poll(Duration::ZERO);
            self.handoffs.retain(|h| !h.is_finished());
            if gone {
                break;
            }
        }
        for h in self.handoffs.drain(..) {
            let _ = h.join();
        }
    }

    fn handle(&mut self, m: Msg) {
        match m {
            Msg::Start(s) => self.start(s),
            Msg::Frame(info, r) => self.frame(&info, &r),
            Msg::Preview(info, r, p) => self.preview(&info, &r, &p),
            Msg::End(e) => self.end(e),
        }
    }

    fn start(&mut self, s: crate::sink::StreamStartNotice) {
        let slot = usize::from(s.stream.slot);
        if self.streams.len() <= slot {
            self.streams.resize_with(slot + 1, || None);
        }
        let user: serde_json::Value = serde_json::from_str(&s.user_json).unwrap_or_default();
        self.streams[slot] = Some(Open {
            file: s.stream.file.display().to_string(),
            job: Job::of_run(&user, &s.stream, &self.topics.status),
            started_ns: s.started_ns,
            user,
        });
    }

    fn frame(&mut self, info: &StreamInfo, r: &FrameRecord) {
        let Some(open) = self
            .streams
            .get(usize::from(info.slot))
            .and_then(Option::as_ref)
        else {
            return;
        };
        self.json.clear();
        if serde_json::to_writer(&mut self.json, &FrameMessage::new(info, &open.file, r)).is_err() {
            return;
        }
        let text = std::str::from_utf8(&self.json).unwrap_or("{}");
        let payload = reports::json(&mut self.builder, text);
        if send(
            &self.producer,
            &self.stats,
            &self.topics.frames,
            &info.key,
            payload,
        ) {
            self.stats.frames.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn preview(&mut self, info: &StreamInfo, r: &FrameRecord, p: &Preview) {
        let preview = (&p.layout, p.bytes());
        let max = self.max_message_bytes;
        let Some(fitted) = self.scratch.fit(info, preview, Placement::Data, max) else {
            self.stats
                .previews_undecodable
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        let frame = area_detector::Frame {
            stream: &info.key,
            index: r.index,
            frame_number: r.frame_number,
            timestamp_ns: r.timestamp_ns,
            shape: fitted.shape,
            binning: fitted.factor,
            pixel: info.pixel,
            pixels: fitted.pixels,
        };
        let payload = area_detector::encode(&mut self.builder, &frame);
        if send(
            &self.producer,
            &self.stats,
            &self.topics.previews,
            &info.key,
            payload,
        ) {
            self.stats.previews.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn end(&mut self, e: crate::sink::StreamEndNotice) {
        let Some(open) = self
            .streams
            .get_mut(usize::from(e.stream.slot))
            .and_then(Option::take)
        else {
            return;
        };
        let h = HandOff {
            producer: Arc::clone(&self.reports),
            stats: Arc::clone(&self.stats),
            service_id: self.service_id.clone(),
            job: open.job,
            user: open.user,
            started_ns: open.started_ns,
            end: e,
            inline_limit: self.max_message_bytes / 2,
            settings: self.handoff.clone(),
        };
        match handoff::spawn(h) {
            Ok(t) => self.handoffs.push(t),
            Err(e) => {
                tracing::error!(error = %e, "kafka: cannot start the hand-off thread; no wrdn for this run")
            }
        }
    }
}
