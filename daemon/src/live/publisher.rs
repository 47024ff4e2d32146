//! The ZeroMQ PUB sink: turns notifications into multipart messages on the topics `run`,
//! `frame` and `preview`, records frames in the [`History`], and never waits: sends use
//! `DONTWAIT`, and ZeroMQ drops a slow subscriber's messages at its high-water mark instead of
//! queueing without bound.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::bluesky::Bluesky;
use super::history::History;
use super::messages::{FrameMessage, PreviewHeader, RunMessage};
use crate::notify::{now_ns, Notification, NotificationSink};

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
}

impl Publisher {
    /// A publisher on a bound PUB `socket`.
    pub fn new(
        socket: zmq::Socket,
        history: Arc<Mutex<History>>,
        stats: Arc<LiveStats>,
        bluesky: bool,
    ) -> Self {
        Self {
            socket,
            history,
            stats,
            json: Vec::with_capacity(1024),
            bluesky: bluesky.then(Bluesky::default),
        }
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
        self.json.clear();
        // Writing into a Vec cannot fail, and these messages have no maps with non-string keys.
        let _ = serde_json::to_writer(&mut self.json, message);
    }

    fn history(&self) -> std::sync::MutexGuard<'_, History> {
        // A panic elsewhere while holding the lock leaves plain data behind: keep using it.
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl NotificationSink for Publisher {
    fn notify(&mut self, n: &Notification) {
        match n {
            Notification::StreamStart(s) => {
                self.history().start(&s.stream);
                let file = s.stream.file.to_string_lossy();
                self.encode(&RunMessage::start(&s.stream, &file, s.started_ns));
                self.send(b"run", None);
                if let Some(docs) = self.bluesky.as_mut().map(|b| b.start(s)) {
                    for (name, doc) in &docs {
                        self.send_document(name, doc);
                    }
                }
            }
            Notification::Frame(f) => {
                let record = f.record;
                self.history().push(&f.stream.key, record);
                let file = f.stream.file.to_string_lossy();
                self.encode(&FrameMessage {
                    published_ns: Some(now_ns()),
                    ..FrameMessage::new(&f.stream, &file, &record)
                });
                self.send(b"frame", None);
                if let Some(chunk) = &f.preview {
                    let pixels = chunk.as_slice();
                    self.encode(&PreviewHeader::new(&f.stream, &record, pixels.len()));
                    self.send(b"preview", Some(pixels));
                    self.stats.previews.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(doc) = self.bluesky.as_ref().and_then(|b| b.datum(f)) {
                    self.send_document("stream_datum", &doc);
                }
            }
            Notification::StreamEnd(e) => {
                self.history().finish(&e.stream.key, e.frames);
                let file = e.stream.file.to_string_lossy();
                self.encode(&RunMessage::end(
                    &e.stream, &file, e.ended_ns, e.frames, e.lost,
                ));
                self.send(b"run", None);
                if let Some(doc) = self.bluesky.as_mut().and_then(|b| b.stop(e)) {
                    self.send_document("stop", &doc);
                }
            }
        }
    }
}
