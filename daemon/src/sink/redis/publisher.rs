//! The Redis thread: turns the feed's messages into Blissdata scans. A stream's open writes
//! its scan (document, history entry, states CREATED, PREPARED, STARTED) in one transaction;
//! each batch is one pipelined round trip (one `XADD` per data stream, `MAXLEN` trimming);
//! the close seals every data stream at the stream's length and writes STOPPED and CLOSED
//! with the final metadata. Indices are 0-based in Blissdata: detingest index `i` is entry
//! `i - 1`. The image stream holds one entry, the newest image: Blissdata takes the indices
//! before a stream's first entry for trimmed ones (and reads them from the file), but an index
//! between two entries for one not there yet, or never. A server that is away drops (and
//! counts) what comes meanwhile; the files never wait for it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crossbeam::channel::{Receiver, Sender, TryRecvError};
use serde_json::json;

use super::config::RedisConfig;
use super::connection::Link;
use super::feed::{Batch, Close, Msg, Open};
use super::scan::{ScanDoc, ScanState, SCAN_HISTORY, SEAL_ID};
use super::RedisStats;
use crate::sink::assembly::{assemble, AssemblyScratch, Decode, Placement};

/// One stream's scan as the thread keeps it.
struct Scan {
    doc: ScanDoc,
    /// Written to the server (false: created while the server was away; never published).
    published: bool,
    /// Indices this thread could not publish.
    dropped: u64,
    /// Images published.
    images: u64,
    /// The index of the newest image published (0: none).
    last_image: u64,
    /// The link's connection its key was last seen on ([`Link::generation`]): on another
    /// (the server may have restarted without it) it is checked before anything is written.
    seen_on: u64,
}

/// The Redis thread's state.
pub struct Publisher {
    cfg: RedisConfig,
    link: Link,
    stats: Arc<RedisStats>,
    scans: HashMap<String, Scan>,
    /// Closes that found the server away, retried when it is back.
    unclosed: Vec<(Scan, Box<Close>)>,
    /// Decoded pixels of the image being published.
    pixels: Vec<u8>,
    assembly: AssemblyScratch,
}

impl Publisher {
    /// A publisher over `link`.
    pub fn new(cfg: RedisConfig, link: Link, stats: Arc<RedisStats>) -> Self {
        Self {
            cfg,
            link,
            stats,
            scans: HashMap::new(),
            unclosed: Vec::new(),
            pixels: Vec::new(),
            assembly: AssemblyScratch::default(),
        }
    }

    /// Runs until the feed side of `rx` is gone, handing emptied batches back on `returns`.
    /// Batches of one stream that queued while a round trip was on are merged into one
    /// (one entry per data stream), so a busy or slow server costs fewer, larger entries.
    pub fn run(mut self, rx: Receiver<Msg>, returns: Sender<Batch>) {
        let mut next: Option<Msg> = None;
        loop {
            // Idle and connected, nothing to time: wake for messages only (and now and then).
            let wait = if self.link.is_up() {
                Duration::from_millis(500)
            } else {
                self.link
                    .next_attempt()
                    .saturating_duration_since(std::time::Instant::now())
                    .clamp(Duration::from_millis(10), Duration::from_millis(500))
            };
            // Parked, not blocked in the channel: the feed unparks this thread after each send
            // (a channel's blocking receive spins and yields first, costing CPU per batch).
            let msg = match next.take() {
                Some(m) => Ok(m),
                None => match rx.try_recv() {
                    Err(TryRecvError::Empty) => {
                        std::thread::park_timeout(wait);
                        Err(TryRecvError::Empty)
                    }
                    other => other,
                },
            };
            match msg {
                Ok(Msg::Open(o)) => self.open(*o),
                Ok(Msg::Batch(mut b)) => {
                    while b.len() < MERGE_MAX {
                        match rx.try_recv() {
                            Ok(Msg::Batch(mut more)) => {
                                if merge(&mut b, &mut more) {
                                    let _ = returns.try_send(more);
                                } else {
                                    next = Some(Msg::Batch(more));
                                    break;
                                }
                            }
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.batch(&b);
                    let _ = returns.try_send(b);
                }
                Ok(Msg::Close(c)) => self.close(c),
                Err(TryRecvError::Empty) => {
                    if !self.unclosed.is_empty() {
                        self.connection();
                    }
                }
                Err(TryRecvError::Disconnected) => break,
            }
            self.stats
                .connected
                .store(self.link.is_up(), Ordering::Relaxed);
        }
    }

    /// The connection, reconnecting when due; after a reconnection, closes that waited are
    /// done.
    fn connection(&mut self) -> Option<&mut redis::Connection> {
        let dropped = self.stats.indices_dropped.load(Ordering::Relaxed);
        let (_, reconnected) = self.link.get(dropped);
        if reconnected {
            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            for (scan, close) in std::mem::take(&mut self.unclosed) {
                self.finish(scan, close);
            }
        }
        self.link.get(dropped).0
    }

    fn open(&mut self, o: Open) {
        let prefix = self.cfg.prefix.clone();
        let mut scan = Scan {
            doc: ScanDoc::new(
                &prefix,
                Arc::clone(&o.stream),
                0,
                &o.detector,
                &o.user_json,
                &o.files,
            ),
            published: false,
            dropped: 0,
            images: 0,
            last_image: 0,
            seen_on: 0,
        };
        self.link.try_now();
        if let Some(con) = self.connection() {
            let result = create(con, &prefix, &mut scan.doc);
            match result {
                Ok(()) => {
                    let dropped = self.stats.indices_dropped.load(Ordering::Relaxed);
                    self.link.succeeded(dropped);
                    scan.published = true;
                    scan.seen_on = self.link.generation();
                    self.stats.scans.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(stream = %o.stream.key, scan = %scan.doc.key, "redis: scan published");
                }
                Err(e) => self.failed(&e),
            }
        }
        if !scan.published {
            self.stats.scans_unpublished.fetch_add(1, Ordering::Relaxed);
        }
        self.scans.insert(o.stream.key.clone(), scan);
    }

    fn batch(&mut self, b: &Batch) {
        // Connected first: a reconnection may find the scan gone, and nothing is then
        // written into its streams (they would be keys of no scan).
        if self.connection().is_none() {
            return self.dropped(b);
        }
        let Some(scan) = self.scans.get_mut(&b.stream.key) else {
            return self.dropped(b);
        };
        if !still_there(&mut self.link, scan, &self.stats) {
            return self.dropped(b);
        }
        let image = b.image.as_ref().and_then(|(index, preview)| {
            let s = &b.stream;
            let how = Decode {
                codec: s.codec,
                pixel: s.pixel,
                placement: Placement::Data,
            };
            let bytes = preview.bytes();
            match assemble(
                &preview.layout,
                bytes,
                how,
                &mut self.assembly,
                &mut self.pixels,
            ) {
                true => Some(*index),
                false => {
                    self.stats
                        .images_undecodable
                        .fetch_add(1, Ordering::Relaxed);
                    None
                }
            }
        });
        let Some(scan) = self.scans.get(&b.stream.key) else {
            return;
        };
        let mut pipe = redis::pipe();
        if !b.is_empty() {
            let id = format!("{}-1", b.first - 1);
            let columns: [&[u8]; 4] = [
                as_bytes_u64(&b.frame_number),
                &b.lost,
                as_bytes_u32(&b.packets_lost),
                as_bytes_f64(&b.timestamp),
            ];
            for (key, payload) in scan.doc.stream_keys[1..].iter().zip(columns) {
                let cmd = pipe
                    .cmd("XADD")
                    .arg(key)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(self.cfg.max_entries)
                    .arg(&id)
                    .arg("payload")
                    .arg(payload);
                if b.len() > 1 {
                    cmd.arg("len").arg(b.len());
                }
                cmd.ignore();
            }
        }
        if let Some(index) = image {
            add_image(&mut pipe, &scan.doc.stream_keys[0], index, &self.pixels);
        }
        if b.is_empty() && image.is_none() {
            return;
        }
        let Some(con) = self.link.get(0).0 else {
            return self.dropped(b);
        };
        match pipe.query::<()>(con) {
            Ok(()) => {
                let dropped = self.stats.indices_dropped.load(Ordering::Relaxed);
                self.link.succeeded(dropped);
                self.stats
                    .indices
                    .fetch_add(b.len() as u64, Ordering::Relaxed);
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                if image.is_some() {
                    self.stats.images.fetch_add(1, Ordering::Relaxed);
                    if let Some(s) = self.scans.get_mut(&b.stream.key) {
                        s.images += 1;
                        s.last_image = image.unwrap_or(0);
                    }
                }
            }
            Err(e) => {
                self.failed(&e);
                self.dropped(b);
            }
        }
    }

    fn dropped(&mut self, b: &Batch) {
        let n = b.len() as u64;
        self.stats.indices_dropped.fetch_add(n, Ordering::Relaxed);
        self.stats.batches_dropped.fetch_add(1, Ordering::Relaxed);
        if let Some(s) = self.scans.get_mut(&b.stream.key) {
            s.dropped += n;
        }
    }

    fn close(&mut self, c: Box<Close>) {
        let Some(scan) = self.scans.remove(&c.stream.key) else {
            return;
        };
        self.finish(scan, c);
    }

    /// Seals and closes `scan`, or keeps it for when the server is back.
    fn finish(&mut self, mut scan: Scan, c: Box<Close>) {
        if !scan.published {
            return;
        }
        let dropped = scan.dropped + c.dropped_here;
        scan.dropped = dropped;
        let prefix = self.cfg.prefix.clone();
        if self.connection().is_none() {
            self.unclosed.push((scan, c));
            return;
        }
        if !still_there(&mut self.link, &mut scan, &self.stats) {
            return;
        }
        scan.doc.set_info("end_reason", json!("SUCCESS"));
        scan.doc.set_info(
            "publishing",
            json!({
                "complete": dropped == 0,
                "indices_not_published": dropped,
                "images_in_redis": scan.images,
                "frames": c.frames,
                "lost": c.lost,
            }),
        );
        let mut pixels = std::mem::take(&mut self.pixels);
        let last = last_image(&scan, &c, &mut pixels);
        let sealed = match self.link.get(0).0 {
            Some(con) => seal(con, &prefix, &scan.doc, c.frames, last),
            None => Err((redis::ErrorKind::Io, "not connected").into()),
        };
        self.pixels = pixels;
        match sealed {
            Ok(()) => {
                let all_dropped = self.stats.indices_dropped.load(Ordering::Relaxed);
                self.link.succeeded(all_dropped);
                if dropped > 0 {
                    self.stats.scans_incomplete.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(scan = %scan.doc.key, indices_not_published = dropped,
                        "redis: scan closed incomplete (marked in its info.publishing)");
                }
            }
            Err(e) => {
                self.failed(&e);
                self.unclosed.push((scan, c));
            }
        }
    }

    fn failed(&mut self, e: &dyn std::fmt::Display) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        self.stats.set_last_error(e);
        let dropped = self.stats.indices_dropped.load(Ordering::Relaxed);
        self.link.failed(e, dropped);
    }
}

/// Whether `scan` may be written to: published, and its document still on the server. On a
/// connection other than the one it was last seen on, its key is checked first: a server
/// restarted without persistence lost it, and the rest of its stream is then not published
/// (counted as dropped), so no stream key of no scan is ever written.
fn still_there(link: &mut Link, scan: &mut Scan, stats: &super::RedisStats) -> bool {
    if !scan.published {
        return false;
    }
    let now = link.generation();
    if scan.seen_on == now {
        return true;
    }
    let exists: Option<bool> =
        (link.get(0).0).and_then(|c| redis::cmd("EXISTS").arg(&scan.doc.key).query(c).ok());
    match exists {
        Some(true) => {
            scan.seen_on = now;
            true
        }
        Some(false) => {
            tracing::warn!(scan = %scan.doc.key, "redis: the server lost this scan (restarted?); the rest of its stream is not published");
            scan.published = false;
            stats.scans_lost.fetch_add(1, Ordering::Relaxed);
            false
        }
        None => false, // the check failed: the next round trip tells why
    }
}

/// Most indices merged into one entry.
const MERGE_MAX: usize = 8192;

/// Appends `more` to `b` when it continues `b`'s indices in the same stream (its image, if
/// any, replaces `b`'s). False, and both untouched, otherwise.
fn merge(b: &mut Batch, more: &mut Batch) -> bool {
    let continues = Arc::ptr_eq(&b.stream, &more.stream)
        && (b.is_empty() || more.is_empty() || more.first == b.first + b.len() as u64);
    if !continues {
        return false;
    }
    if b.is_empty() {
        b.first = more.first;
    }
    b.frame_number.append(&mut more.frame_number);
    b.lost.append(&mut more.lost);
    b.packets_lost.append(&mut more.packets_lost);
    b.timestamp.append(&mut more.timestamp);
    if more.image.is_some() {
        b.image = more.image.take();
    }
    true
}

/// Writes `doc`'s scan: CREATED, PREPARED and STARTED in one transaction, the document
/// before the history entry that announces it.
fn create(con: &mut redis::Connection, prefix: &str, doc: &mut ScanDoc) -> redis::RedisResult<()> {
    let number: u64 = redis::cmd("INCR")
        .arg(format!("{prefix}:detingest:scan_number"))
        .query(con)?;
    doc.set_number(number);
    let state = doc.state_key(prefix);
    let mut pipe = redis::pipe();
    pipe.atomic();
    set_document(&mut pipe, doc);
    pipe.cmd("XADD")
        .arg(SCAN_HISTORY)
        .arg("MAXLEN")
        .arg("~")
        .arg(2048)
        .arg("*")
        .arg("key")
        .arg(&doc.key)
        .ignore();
    for s in [ScanState::Created, ScanState::Prepared, ScanState::Started] {
        add_state(&mut pipe, &state, s);
    }
    pipe.cmd("SET")
        .arg(format!("{prefix}:detingest:scan:{}", doc.stream.key))
        .arg(&doc.key)
        .ignore();
    pipe.query::<()>(con)
}

/// The pixels of the stream's last index, read back from its data file, when the image
/// stream does not end with it: Blissdata readers take an index past a stream's last entry
/// for one that will never come, even below the seal.
fn last_image<'p>(scan: &Scan, c: &Close, pixels: &'p mut Vec<u8>) -> Option<&'p [u8]> {
    if c.frames == 0 || scan.last_image == c.frames {
        return None;
    }
    let s = &c.stream;
    let (file, position) = s.data_file(c.frames);
    let path = std::path::PathBuf::from(file.to_string());
    match detingest_writer::read_frame(&path, position, s.codec, s.pixel.size(), pixels) {
        Ok(()) => Some(&pixels[..]),
        Err(e) => {
            tracing::warn!(stream = %s.key, error = %e, "redis: the last image could not be read back; readers of the last indices by number get 'won't be there'");
            None
        }
    }
}

/// Seals every data stream at `frames` entries (after the last image, if given), then writes
/// STOPPED and the final document with CLOSED, in one transaction.
fn seal(
    con: &mut redis::Connection,
    prefix: &str,
    doc: &ScanDoc,
    frames: u64,
    last_image: Option<&[u8]>,
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    pipe.atomic();
    if let Some(pixels) = last_image {
        add_image(&mut pipe, &doc.stream_keys[0], frames, pixels);
    }
    for key in &doc.stream_keys {
        pipe.cmd("XADD")
            .arg(key)
            .arg(SEAL_ID)
            .arg("id")
            .arg(frames)
            .ignore();
    }
    let state = doc.state_key(prefix);
    add_state(&mut pipe, &state, ScanState::Stopped);
    set_document(&mut pipe, doc);
    add_state(&mut pipe, &state, ScanState::Closed);
    pipe.query::<()>(con)
}

/// Appends `doc`'s whole JSON document (Blissdata rewrites it at each state it changes).
fn set_document(pipe: &mut redis::Pipeline, doc: &ScanDoc) {
    pipe.cmd("JSON.SET")
        .arg(&doc.key)
        .arg("$")
        .arg(doc.document(true))
        .ignore();
}

/// Appends state `s` to the state stream `state`.
fn add_state(pipe: &mut redis::Pipeline, state: &str, s: ScanState) {
    pipe.cmd("XADD")
        .arg(state)
        .arg("*")
        .arg("state")
        .arg(s as u8)
        .ignore();
}

/// Appends index `index`'s image (1-based; entry `index - 1`) to the image stream `key`,
/// trimming it to that one entry.
fn add_image(pipe: &mut redis::Pipeline, key: &str, index: u64, pixels: &[u8]) {
    pipe.cmd("XADD")
        .arg(key)
        .arg("MAXLEN")
        .arg(1)
        .arg(format!("{}-1", index - 1))
        .arg("payload")
        .arg(pixels)
        .ignore();
}

/// The bytes of `v`, little-endian (the machine's order; checked at compile time).
fn as_bytes_u64(v: &[u64]) -> &[u8] {
    zerocopy::IntoBytes::as_bytes(v)
}

fn as_bytes_u32(v: &[u32]) -> &[u8] {
    zerocopy::IntoBytes::as_bytes(v)
}

fn as_bytes_f64(v: &[f64]) -> &[u8] {
    zerocopy::IntoBytes::as_bytes(v)
}

#[cfg(not(target_endian = "little"))]
compile_error!(
    "the Redis sink writes numeric payloads in the machine's byte order, declared little-endian"
);
