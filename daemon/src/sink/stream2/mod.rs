//! The Stream V2 output (`[sink.stream2]`): every written stream as a DECTRIS SIMPLON Stream
//! V2 series on a ZeroMQ PUSH (as a detector) or PUB (fan-out) socket, so clients of EIGER2
//! and PILATUS4 detectors read any detector detingest takes.
//!
//! `start` when a stream's files open (its metadata: [`encode::start`]); one `image` per
//! written index, carrying the chunk as the files hold it in the DECTRIS compression tag (no
//! re-encoding); `end` when the stream closes. A lost index sends no image: its image id is
//! missing from the series, as when a detector loses one. Never slowing ingest: the
//! notification path copies each chunk into one of `buffers` (none free: the image is
//! skipped), the notification thread hands it to a bounded queue (full: dropped) and the
//! `stream2-out` thread encodes it into a ZeroMQ message (the one copy ZeroMQ needs, the
//! chunk after the CBOR head) sent without waiting (no client, or its queue full: dropped).
//! A start or end that cannot be sent now waits (the series' images are dropped meanwhile)
//! so a client never sees images without their start. All of it is counted.

pub mod config;
pub mod encode;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, RecvTimeoutError, Sender, TrySendError};

pub use config::{Mode, Stream2SinkConfig};
use encode::{ImageFormat, SeriesIds};

use crate::check::ConfigError;
use crate::contract::Counters;
use crate::sink::{
    assembly::Placement, Backlog, Notification, NotificationSink, Preview, Sink, SinkCores,
    StreamStartNotice, TableAt,
};
use crate::stream::StreamInfo;
use crate::threads;

/// Counters of the output.
#[derive(Debug, Default)]
pub struct Stream2Stats {
    /// Series started (`start` sent).
    pub series: AtomicU64,
    /// Images sent.
    pub images_sent: AtomicU64,
    /// Images dropped: the queue to the output thread was full, no client took it, or the
    /// series' start was still waiting for a client.
    pub images_dropped: AtomicU64,
    /// Written indices sent without an image: no chunk copy was free, or the stream's chunks
    /// are module tiles rather than whole images.
    pub images_skipped: AtomicU64,
    /// Lost indices (no image, as a detector that lost one).
    pub lost: AtomicU64,
    /// `end` messages sent.
    pub ends: AtomicU64,
    /// Start or end messages given up (no client within the wait at shutdown).
    pub control_dropped: AtomicU64,
    /// Clients connected now.
    pub clients: AtomicU64,
}

/// A socket that receives `socket`'s connection events (clients accepted, disconnected), on
/// an in-process address of `context` only this sink knows.
fn watch_clients(context: &zmq::Context, socket: &zmq::Socket) -> Result<zmq::Socket, zmq::Error> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let address = format!(
        "inproc://stream2-clients-{}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let events = zmq::SocketEvent::ACCEPTED.to_raw() | zmq::SocketEvent::DISCONNECTED.to_raw();
    socket.monitor(&address, i32::from(events))?;
    let watch = context.socket(zmq::PAIR)?;
    watch.connect(&address)?;
    Ok(watch)
}

enum Msg {
    Start(Box<StreamStartNotice>),
    Image(Arc<StreamInfo>, u64, Arc<Preview>),
    End(Arc<StreamInfo>),
}

/// The Stream V2 output.
pub struct Stream2Sink {
    stats: Arc<Stream2Stats>,
    bound: String,
    tx: Option<Sender<Msg>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Stream2Sink {
    /// Binds the socket and starts the `stream2-out` thread (on the notification thread's
    /// core); `None` when no endpoint is configured.
    pub fn start(
        cfg: &Stream2SinkConfig,
        cores: SinkCores,
        at: &TableAt,
    ) -> Result<Option<Self>, ConfigError> {
        if !cfg.enabled() {
            return Ok(None);
        }
        let refuse = |why: String| ConfigError::new(at.key("endpoint"), why);
        let kind = match cfg.mode {
            Mode::Push => zmq::PUSH,
            Mode::Pub => zmq::PUB,
        };
        let before = threads::thread_ids();
        let context = zmq::Context::new();
        let socket = context.socket(kind).map_err(|e| refuse(e.to_string()))?;
        socket
            .set_sndhwm(cfg.high_water_mark)
            .and_then(|()| socket.set_linger(0))
            .and_then(|()| socket.bind(&cfg.endpoint))
            .map_err(|e| refuse(format!("cannot bind {}: {e}", cfg.endpoint)))?;
        let bound = socket
            .get_last_endpoint()
            .ok()
            .and_then(Result::ok)
            .unwrap_or_else(|| cfg.endpoint.clone());
        threads::adopt_started_since(&before, "stream2-zmq", cores.notify);
        tracing::info!(endpoint = %bound, mode = ?cfg.mode, "Stream V2 output bound");
        let clients = watch_clients(&context, &socket).map_err(|e| refuse(e.to_string()))?;
        let (tx, rx) = crossbeam::channel::bounded(cfg.buffers + 8);
        let stats = Arc::new(Stream2Stats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut out = Output {
            socket,
            clients,
            channel: Arc::from(cfg.channel.as_str()),
            stats: Arc::clone(&stats),
            buf: Vec::new(),
            series: 0,
            current: Vec::new(),
            waiting: VecDeque::new(),
        };
        let st = Arc::clone(&stop);
        let thread = threads::spawn("stream2-out".into(), cores.notify, move || {
            out.run(&rx, &st);
        })
        .map_err(|e| refuse(format!("cannot start its thread: {e}")))?;
        Ok(Some(Self {
            stats,
            bound,
            tx: Some(tx),
            stop,
            thread: Some(thread),
        }))
    }
}

impl Stream2Sink {
    /// The endpoint it bound (a port 0 resolved).
    pub fn endpoint(&self) -> &str {
        &self.bound
    }
}

impl Sink for Stream2Sink {
    fn for_run(&self) -> Option<Box<dyn NotificationSink>> {
        Some(Box::new(Feed {
            tx: self.tx.clone()?,
            stats: Arc::clone(&self.stats),
            backlog: Backlog::default(),
        }))
    }
    fn counters(&self) -> Counters {
        let s = &self.stats;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counters::new()
            .total("series", "Series started (start sent)", n(&s.series))
            .total("images_sent", "Images sent", n(&s.images_sent))
            .total(
                "images_dropped",
                "Images dropped: the queue was full, no client took it, or the start still waited",
                n(&s.images_dropped),
            )
            .total(
                "images_skipped",
                "Written indices sent without an image (no copy free, or module tiles)",
                n(&s.images_skipped),
            )
            .total("lost", "Lost indices (no image)", n(&s.lost))
            .total("ends", "End messages sent", n(&s.ends))
            .level("clients", "Clients connected now", n(&s.clients))
            .total(
                "control_dropped",
                "Start or end messages given up at shutdown",
                n(&s.control_dropped),
            )
            .text("endpoint", Some(self.bound.clone()))
    }
    fn summary_line(&self) -> Option<String> {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let s = &self.stats;
        Some(format!(
            "stream2 output   {} series, {} images sent, {} dropped, {} skipped, {} lost indices without image",
            n(&s.series), n(&s.images_sent), n(&s.images_dropped), n(&s.images_skipped), n(&s.lost)
        ))
    }
    fn stop(&mut self) {
        self.tx = None;
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The notification thread's side: hands starts, images and ends to the output thread.
struct Feed {
    tx: Sender<Msg>,
    stats: Arc<Stream2Stats>,
    /// Starts and ends the queue had no room for, sent before anything else.
    backlog: Backlog<Msg>,
}

impl Feed {
    fn control(&mut self, m: Msg) {
        self.backlog.hold(m);
        self.backlog.retry(&self.tx);
    }
}

impl NotificationSink for Feed {
    fn notify(&mut self, n: &Notification) {
        if n.of_events() {
            return; // an event run has no image to publish here
        }
        self.backlog.retry(&self.tx);
        match n {
            Notification::StreamStart(s) => self.control(Msg::Start(Box::new(s.clone()))),
            Notification::StreamEnd(e) => self.control(Msg::End(Arc::clone(&e.stream))),
            Notification::Quality(_) => {}
            Notification::Frame(f) if f.record.lost() => {
                self.stats.lost.fetch_add(1, Ordering::Relaxed);
            }
            Notification::Frame(f) => {
                let Some(chunk) = &f.preview else {
                    self.stats.images_skipped.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let image = Msg::Image(Arc::clone(&f.stream), f.record.index, Arc::clone(chunk));
                if !self.backlog.is_empty() {
                    self.stats.images_dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                if let Err(TrySendError::Full(_)) = self.tx.try_send(image) {
                    self.stats.images_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Notification::Readable(_) => {}
        }
    }

    fn finish(&mut self) {
        let lost = self.backlog.drain(&self.tx, Duration::from_secs(2), || {});
        self.stats
            .control_dropped
            .fetch_add(lost as u64, Ordering::Relaxed);
    }
}

/// The output thread: encodes and sends.
struct Output {
    socket: zmq::Socket,
    /// The output socket's connection events (clients arriving and leaving).
    clients: zmq::Socket,
    channel: Arc<str>,
    stats: Arc<Stream2Stats>,
    buf: Vec<u8>,
    /// Series sent so far (the next one's id is one more).
    series: u64,
    /// The open series of each stream slot, with its image format.
    current: Vec<Option<(SeriesIds, ImageFormat)>>,
    /// Starts and ends no client has taken yet, in order.
    waiting: VecDeque<Vec<u8>>,
}

/// How long a start or end waits for a client at shutdown.
const CONTROL_WAIT: Duration = Duration::from_secs(5);

impl Output {
    fn run(&mut self, rx: &Receiver<Msg>, stop: &AtomicBool) {
        loop {
            self.count_clients();
            self.flush_waiting();
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(m) => self.take(m),
                Err(RecvTimeoutError::Timeout) if stop.load(Ordering::Relaxed) => break,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let deadline = Instant::now() + CONTROL_WAIT;
        while !self.waiting.is_empty() && Instant::now() < deadline {
            self.flush_waiting();
            std::thread::sleep(Duration::from_millis(10));
        }
        let given_up = self.waiting.len() as u64;
        self.stats
            .control_dropped
            .fetch_add(given_up, Ordering::Relaxed);
    }

    /// Counts the clients that connected or left since last time (`clients` in the counters).
    fn count_clients(&mut self) {
        while let Ok(event) = self.clients.recv_multipart(zmq::DONTWAIT) {
            let id = (event.first())
                .and_then(|f| f.get(..2))
                .map(|b| u16::from_le_bytes([b[0], b[1]]));
            let change = match id.map(zmq::SocketEvent::from_raw) {
                Some(zmq::SocketEvent::ACCEPTED) => 1,
                Some(zmq::SocketEvent::DISCONNECTED) => -1,
                _ => 0,
            };
            let clients = &self.stats.clients;
            match change {
                1 => {
                    clients.fetch_add(1, Ordering::Relaxed);
                }
                -1 => {
                    let _ = clients.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                        Some(n.saturating_sub(1))
                    });
                }
                _ => {}
            }
        }
    }

    /// Sends the waiting starts and ends a client takes now.
    fn flush_waiting(&mut self) {
        while let Some(bytes) = self.waiting.front() {
            if self.socket.send(&bytes[..], zmq::DONTWAIT).is_err() {
                return;
            }
            self.waiting.pop_front();
        }
    }

    fn take(&mut self, m: Msg) {
        match m {
            Msg::Start(s) => self.start(&s),
            Msg::Image(info, index, chunk) => self.image(&info, index, &chunk),
            Msg::End(info) => self.end(&info),
        }
    }

    fn slot(&mut self, info: &StreamInfo) -> &mut Option<(SeriesIds, ImageFormat)> {
        let slot = usize::from(info.slot);
        if self.current.len() <= slot {
            self.current.resize_with(slot + 1, || None);
        }
        &mut self.current[slot]
    }

    fn start(&mut self, s: &StreamStartNotice) {
        self.series += 1;
        let ids = SeriesIds {
            id: self.series,
            unique: format!("{}@{}", s.stream.key, s.started_ns),
        };
        let format = ImageFormat {
            shape: s.stream.shape,
            pixel: s.stream.pixel,
            codec: s.stream.codec,
        };
        let user = serde_json::from_str(&s.user_json).unwrap_or(serde_json::Value::Null);
        let ok = encode::start(
            &mut self.buf,
            &encode::StartFields {
                ids: &ids,
                format: &format,
                channel: &self.channel,
                images: s.files.frames,
                detector: &s.detector,
                user: &user,
                started_ns: s.started_ns,
            },
        );
        if ok.is_ok() {
            self.control();
            self.stats.series.fetch_add(1, Ordering::Relaxed);
        }
        *self.slot(&s.stream) = Some((ids, format));
    }

    fn image(&mut self, info: &StreamInfo, index: u64, preview: &Preview) {
        // A Stream V2 image is the whole frame in the stream's codec: a preview of several
        // module chunks is not one (module chunking of a grid is not served; counted).
        let Some(chunk) = preview.whole_chunk(Placement::Data) else {
            self.stats.images_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let counter = if self.send_image(info, index, chunk) {
            &self.stats.images_sent
        } else {
            &self.stats.images_dropped
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The CBOR head and the chunk into one ZeroMQ message, sent without waiting.
    fn send_image(&mut self, info: &StreamInfo, index: u64, chunk: &[u8]) -> bool {
        if !self.waiting.is_empty() {
            return false; // the series' start has not reached a client yet
        }
        let Some(Some((ids, format))) = self.current.get(usize::from(info.slot)) else {
            return false;
        };
        let head = &mut self.buf;
        if encode::image_head(head, ids, index - 1, &self.channel, format, chunk.len()).is_err() {
            return false;
        }
        let mut msg = zmq::Message::with_size(head.len() + chunk.len());
        msg[..head.len()].copy_from_slice(head);
        msg[head.len()..].copy_from_slice(chunk);
        self.socket.send(msg, zmq::DONTWAIT).is_ok()
    }

    fn end(&mut self, info: &StreamInfo) {
        let Some((ids, _)) = self.slot(info).take() else {
            return;
        };
        if encode::end(&mut self.buf, &ids).is_ok() {
            self.control();
            self.stats.ends.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sends the start or end in `buf` after those waiting, or keeps it until a client takes
    /// it (a series' images are dropped meanwhile).
    fn control(&mut self) {
        self.waiting.push_back(self.buf.clone());
        self.flush_waiting();
    }
}
