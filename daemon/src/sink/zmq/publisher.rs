//! The ZeroMQ PUB sink: turns notifications into multipart messages on the topics `run`,
//! `frame` and `preview`, records frames in the [`History`], and never waits: sends use
//! `DONTWAIT`, and ZeroMQ drops a slow subscriber's messages at its high-water mark instead of
//! queueing without bound.
//!
//! Frame messages are encoded as they come and sent together when the notification thread's
//! batch ends, so that ZeroMQ's I/O thread, woken by the first, finds the rest already queued
//! and writes them to each subscriber in one go. Any other message sends the frames before it
//! first: the order on the socket is the order of the notifications.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::bluesky::Bluesky;
use super::history::History;
use crate::sink::assembly::{assemble, AssemblyScratch, Decode, Placement};
use crate::sink::messages::{
    FrameMessage, PreviewHeader, QualityMessage, ReadableMessage, RunMessage,
};
use crate::sink::{Notification, NotificationSink, Preview, Thinning};
use crate::stream::{now_ns, FrameRecord, StreamInfo, StreamKind};

/// Counters of the publisher. Relaxed atomics, read for reporting.
#[derive(Debug, Default)]
pub struct LiveStats {
    /// Messages handed to the socket.
    pub published: AtomicU64,
    /// Messages the socket refused (it would have blocked); they are not sent.
    pub refused: AtomicU64,
    /// Previews published.
    pub previews: AtomicU64,
}

/// Publishes every notification on a PUB socket.
pub struct Publisher {
    socket: zmq::Socket,
    history: Arc<Mutex<History>>,
    stats: Arc<LiveStats>,
    /// JSON of the message being sent; its capacity is reused.
    json: Vec<u8>,
    /// Bluesky documents, when configured.
    bluesky: Option<Bluesky>,
    /// Frame messages' JSON waiting for the end of the batch, and emptied buffers for more.
    frames: Vec<Vec<u8>>,
    spare: Vec<Vec<u8>>,
    /// Its own preview pace (another sink may have previews picked more often), per stream.
    pace: Thinning,
    thinning: Vec<Thinning>,
    /// Where previews of several modules are assembled.
    assembly: AssemblyScratch,
    assembled: Vec<u8>,
}

impl Publisher {
    /// A publisher on a bound PUB `socket`.
    pub fn new(
        socket: zmq::Socket,
        history: Arc<Mutex<History>>,
        stats: Arc<LiveStats>,
        bluesky: bool,
        pace: Thinning,
    ) -> Self {
        Self {
            socket,
            history,
            stats,
            json: Vec::with_capacity(1024),
            bluesky: bluesky.then(Bluesky::default),
            frames: Vec::new(),
            spare: Vec::new(),
            pace,
            thinning: Vec::new(),
            assembly: AssemblyScratch::default(),
            assembled: Vec::new(),
        }
    }

    /// Whether the preview of stream `slot`'s `index` is one to publish.
    fn wants_preview(&mut self, slot: usize, index: u64) -> bool {
        if self.thinning.len() <= slot {
            self.thinning.resize(slot + 1, self.pace);
        }
        self.thinning[slot].take(index, Instant::now())
    }

    /// Sends a preview: its chunk as it is when it is the whole image, else its modules
    /// decoded into the image as the file holds it (`compression: "none"`).
    fn send_preview(&mut self, info: &StreamInfo, record: &FrameRecord, p: &Preview) {
        if let Some(chunk) = p.whole_chunk(Placement::Data) {
            encode_into(
                &mut self.json,
                &PreviewHeader::new(info, record, chunk.len()),
            );
            self.send_parts(&[b"preview", &self.json, chunk]);
        } else {
            let how = Decode {
                codec: info.codec,
                pixel: info.pixel,
                placement: Placement::Data,
            };
            let mut out = std::mem::take(&mut self.assembled);
            if assemble(&p.layout, p.bytes(), how, &mut self.assembly, &mut out) {
                let header = PreviewHeader {
                    compression: "none",
                    ..PreviewHeader::new(info, record, out.len())
                };
                encode_into(&mut self.json, &header);
                self.send_parts(&[b"preview", &self.json, &out]);
            }
            self.assembled = out;
        }
        self.stats.previews.fetch_add(1, Ordering::Relaxed);
    }

    /// Sends one Bluesky document as `[b"bluesky", name, document]`.
    fn send_document(&mut self, name: &str, doc: &serde_json::Value) {
        self.encode(doc);
        self.send_parts(&[b"bluesky", name.as_bytes(), &self.json]);
    }

    /// Sends `[topic, the encoded JSON]`, or `[topic, JSON, payload]`.
    fn send(&self, topic: &[u8], payload: Option<&[u8]>) {
        match payload {
            None => self.send_parts(&[topic, &self.json]),
            Some(p) => self.send_parts(&[topic, &self.json, p]),
        }
    }

    /// Reads away the (un)subscription messages the XPUB socket keeps for us, one per viewer
    /// arriving or leaving: unread, they would pile up for as long as the daemon runs.
    fn discard_subscriptions(&self) {
        while self.socket.recv_bytes(zmq::DONTWAIT).is_ok() {}
    }

    /// Encodes the frame message into a buffer kept for the end of the batch.
    fn hold_frame(&mut self, message: &FrameMessage) {
        let mut json = self.spare.pop().unwrap_or_default();
        encode_into(&mut json, message);
        self.frames.push(json);
    }

    /// Sends the frame messages held, in order (their buffers, and the list's, are kept).
    fn send_frames(&mut self) {
        let mut frames = std::mem::take(&mut self.frames);
        for json in frames.drain(..) {
            self.send_parts(&[b"frame", &json]);
            self.spare.push(json);
        }
        self.frames = frames;
    }

    /// Sends a multipart message without waiting, counting it published or refused.
    fn send_parts(&self, parts: &[&[u8]]) {
        let sent = self.socket.send_multipart(parts, zmq::DONTWAIT);
        let counter = if sent.is_ok() {
            &self.stats.published
        } else {
            &self.stats.refused
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn encode<T: serde::Serialize>(&mut self, message: &T) {
        encode_into(&mut self.json, message);
    }

    fn history(&self) -> std::sync::MutexGuard<'_, History> {
        // A panic elsewhere while holding the lock leaves plain data behind: keep using it.
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Replaces `buf` with the JSON of `message`, keeping its capacity.
fn encode_into<T: serde::Serialize>(buf: &mut Vec<u8>, message: &T) {
    buf.clear();
    // Writing into a Vec cannot fail, and these messages have no maps with non-string keys.
    let _ = serde_json::to_writer(buf, message);
}

impl NotificationSink for Publisher {
    fn notify(&mut self, n: &Notification) {
        match n {
            Notification::StreamStart(s) => {
                if let Some(t) = self.thinning.get_mut(usize::from(s.stream.slot)) {
                    t.reset();
                }
                self.send_frames();
                self.discard_subscriptions();
                self.history().start(&s.stream);
                let file = s.stream.file.to_string_lossy();
                self.encode(&RunMessage::start(&s.stream, &file, s.started_ns));
                self.send(b"run", None);
                if let Some(docs) = (self.bluesky.as_mut())
                    .filter(|_| s.stream.kind == StreamKind::Frames)
                    .map(|b| b.start(s))
                {
                    for (name, doc) in &docs {
                        self.send_document(name, doc);
                    }
                }
            }
            Notification::Frame(f) => {
                let record = f.record;
                self.history().push(&f.stream.key, record);
                let file = f.stream.file.to_string_lossy();
                self.hold_frame(&FrameMessage {
                    published_ns: Some(now_ns()),
                    ..FrameMessage::new(&f.stream, &file, &record)
                });
                let slot = usize::from(f.stream.slot);
                let preview = f
                    .preview
                    .as_ref()
                    .filter(|_| self.wants_preview(slot, record.index));
                if let Some(p) = preview {
                    self.send_frames();
                    self.send_preview(&f.stream, &record, p);
                }
                self.announce_readable(&f.stream, record.readable_up_to);
            }
            Notification::Readable(r) => {
                self.history().readable(&r.stream.key, r.up_to);
                self.send_frames();
                self.encode(&ReadableMessage::new(&r.stream, r.up_to));
                self.send(b"readable", None);
                self.announce_readable(&r.stream, r.up_to);
            }
            Notification::Quality(q) => {
                self.send_frames();
                self.encode(&QualityMessage::new(q));
                self.send(b"quality", None);
            }
            Notification::StreamEnd(e) => {
                self.send_frames();
                self.history().finish(&e.stream.key, e.frames);
                let file = e.stream.file.to_string_lossy();
                self.encode(&RunMessage {
                    late_module_frames: Some(e.late),
                    ..RunMessage::end(&e.stream, &file, e.ended_ns, e.frames, e.lost)
                });
                self.send(b"run", None);
                // Every index is readable once the files are closed (should a `readable`
                // notice have been dropped at a full queue).
                self.announce_readable(&e.stream, e.frames);
                if let Some(doc) = (self.bluesky.as_mut())
                    .filter(|_| e.stream.kind == StreamKind::Frames)
                    .and_then(|b| b.stop(e))
                {
                    self.send_document("stop", &doc);
                }
            }
        }
    }

    fn batch_done(&mut self) {
        self.send_frames();
    }
}

impl Publisher {
    /// The Bluesky documents of the indices the watermark `up_to` made readable.
    fn announce_readable(&mut self, stream: &StreamInfo, up_to: u64) {
        let Some(docs) = (self.bluesky.as_mut())
            .filter(|_| stream.kind == StreamKind::Frames)
            .map(|b| b.readable(stream, up_to))
        else {
            return;
        };
        if docs.is_empty() {
            return;
        }
        self.send_frames();
        for (name, doc) in &docs {
            self.send_document(name, doc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::{fixture, StreamEndNotice};

    /// Topic and JSON of every message waiting on `sub` within `wait_ms`.
    fn received(sub: &zmq::Socket, wait_ms: i64) -> Vec<(String, serde_json::Value)> {
        let mut out = Vec::new();
        while sub.poll(zmq::POLLIN, wait_ms).unwrap() > 0 {
            let parts = sub.recv_multipart(0).unwrap();
            let json = serde_json::from_slice(&parts[1]).unwrap();
            out.push((String::from_utf8_lossy(&parts[0]).into_owned(), json));
        }
        out
    }

    #[test]
    fn frames_leave_at_the_end_of_their_batch_and_in_order() {
        let ctx = zmq::Context::new();
        let xpub = ctx.socket(zmq::XPUB).unwrap();
        xpub.bind("inproc://publisher-order").unwrap();
        let sub = ctx.socket(zmq::SUB).unwrap();
        sub.set_subscribe(b"").unwrap();
        sub.connect("inproc://publisher-order").unwrap();
        assert_eq!(xpub.recv_bytes(0).unwrap(), [1], "the subscription arrived");
        let history = Arc::new(Mutex::new(History::new(100)));
        let mut p = Publisher::new(xpub, history, Arc::default(), false, Thinning::new(1, None));
        let stream = fixture::stream(1);

        p.notify(&fixture::start(&stream));
        p.notify(&fixture::frame(&stream, 1));
        p.notify(&fixture::frame(&stream, 2));
        let got = received(&sub, 100);
        assert_eq!(
            got.len(),
            1,
            "only the run start before the batch ends: {got:?}"
        );
        assert_eq!(
            (got[0].0.as_str(), &got[0].1["event"]),
            ("run", &"start".into())
        );

        p.batch_done();
        let got = received(&sub, 100);
        let indices: Vec<&serde_json::Value> = got.iter().map(|m| &m.1["index"]).collect();
        assert_eq!(indices, [1, 2]);

        p.notify(&fixture::frame(&stream, 3));
        p.notify(&Notification::StreamEnd(StreamEndNotice {
            stream: Arc::clone(&stream),
            frames: 3,
            lost: 0,
            late: 0,
            ended_ns: 2,
            error: None,
        }));
        let got = received(&sub, 100);
        let topics: Vec<&str> = got.iter().map(|m| m.0.as_str()).collect();
        assert_eq!(
            topics,
            ["frame", "run"],
            "the held frame goes before the end"
        );
        assert_eq!(got[0].1["index"], 3);
        assert_eq!(got[1].1["event"], "end");
    }
}
