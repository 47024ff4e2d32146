//! The shared-memory source: one ring that producer processes (vendor software linking
//! libdetingest) write frames into. Each committed slot goes down the pipeline as the
//! frame's buffer itself and returns to the producer when the codec is done with it.
//!
//! Producers come and go: one at a time may attach; one that dies mid-frame costs that
//! frame (counted torn; its index is recorded lost once a later frame arrives) and the next
//! producer continues the stream. A frame whose description the stream cannot take (wrong
//! shape, pixel type or module; a producer not using our library) is counted malformed and
//! released unwritten.

use std::sync::atomic::Ordering;
use std::time::Duration;

use detingest_shm::ring::{pixel_from_code, Descriptor, RingConsumer, RingEvent, RingSlot};
use detingest_shm::{FrameBuf, FrameMeta};

use detingest_shm::ring::RingSpec;
use detingest_shm::PixelType;

use self::config::ShmConfig;
use super::{PreparedSource, SourceConfig, SourceError, SourceKind, SourceOutput};
use crate::check::ConfigError;

pub mod config;

impl SourceKind for ShmConfig {
    fn table(&self) -> &'static str {
        "shm"
    }
    fn validate(&self, i: usize) -> Result<(), ConfigError> {
        self.check(i)
    }
    fn frame_format(&self) -> (PixelType, [u32; 2]) {
        (self.pixel, self.shape)
    }
    /// Creates the ring, replacing a stale one a dead daemon left.
    fn prepare(
        &self,
        src: &SourceConfig,
        i: usize,
        modules: u32,
    ) -> Result<Box<dyn PreparedSource>, SourceError> {
        let path = self.ring_path(&src.name);
        let spec = RingSpec {
            slots: self.slots,
            slot_bytes: self.pixel.frame_bytes(self.shape) as u64,
            mode: self.file_mode(),
            gid: self.gid(i)?,
            frame: Some((self.pixel, self.shape)),
            module: u32::from(self.module),
        };
        let mut ring =
            RingConsumer::create(&path, &spec).map_err(|error| SourceError::Resource {
                what: format!("create ring {}", path.display()),
                error: Box::new(error),
            })?;
        ring.set_spin(Duration::from_micros(self.spin_us));
        if ring.replaced_stale() {
            tracing::warn!(ring = %path.display(), "replaced a stale ring left by a daemon that died");
        }
        tracing::info!(ring = %path.display(), slots = self.slots, slot_bytes = ring.identity().slot_bytes, "ring ready");
        Ok(Box::new(Prepared {
            cfg: self.clone(),
            modules,
            ring,
        }))
    }
}

/// A shared-memory source with its ring created.
struct Prepared {
    cfg: ShmConfig,
    modules: u32,
    ring: RingConsumer,
}

impl PreparedSource for Prepared {
    /// None: the ring's slots are the buffers.
    fn buffers(&self, _input_buffers: usize) -> (usize, usize) {
        (0, 0)
    }
    fn run(self: Box<Self>, out: &mut SourceOutput) {
        run(&self.cfg, self.modules, self.ring, out);
    }
}

/// Longest the source waits for a frame before it checks for a stop request.
const POLL: Duration = Duration::from_millis(100);

/// Serves `ring` until stopped (or, with `end_on_close`, until a producer closes cleanly),
/// then ends the stream.
pub fn run(cfg: &ShmConfig, modules: u32, mut ring: RingConsumer, out: &mut SourceOutput) {
    let path = ring.path().display().to_string();
    let mut last_frame_number = None;
    let mut refused = crate::rate_limit::RateLimit::default();
    while !out.stop_requested() {
        match ring.poll(POLL) {
            Ok(RingEvent::Frame(slot, desc)) => {
                let Some(meta) = frame_meta(cfg, modules, &slot, &desc) else {
                    let n = out.stats().malformed.fetch_add(1, Ordering::Relaxed) + 1;
                    if let Some(held) = refused.allow(std::time::Instant::now()) {
                        tracing::warn!(ring = %path, ?desc, malformed = n, not_logged = held, "frame refused: its description does not fit the stream");
                    }
                    continue;
                };
                if last_frame_number.is_none() {
                    out.start(meta.frame_number);
                }
                // A producer that restarts its numbering sends stale frames (counted by the
                // indexer); the stream's end stays the highest number seen.
                last_frame_number = last_frame_number.max(Some(meta.frame_number));
                let _ = out.send(meta, FrameBuf::Slot(slot)); // a drop is counted by `send`
            }
            Ok(RingEvent::ProducerAttached { pid }) => {
                tracing::info!(ring = %path, pid, "producer attached");
            }
            Ok(RingEvent::ProducerLeft { clean, torn }) => {
                if clean {
                    tracing::info!(ring = %path, "producer closed");
                } else {
                    tracing::warn!(ring = %path, torn, "producer died; a new one may attach");
                }
                out.stats().torn.store(ring.torn(), Ordering::Relaxed);
                if clean && cfg.end_on_close {
                    break;
                }
            }
            Ok(RingEvent::Idle) => {}
            Err(e) => {
                tracing::error!(ring = %path, "ring failed: {e}");
                break;
            }
        }
    }
    out.stats().torn.store(ring.torn(), Ordering::Relaxed);
    // A stream that never got a frame never opened a file; its end is a no-op downstream.
    out.end(last_frame_number);
    // Dropping the ring tells attached producers the daemon is gone.
}

/// The frame's description if it is one this stream takes: of the ring's module, or with a
/// grid of several modules, of any module in it.
fn frame_meta(cfg: &ShmConfig, modules: u32, slot: &RingSlot, d: &Descriptor) -> Option<FrameMeta> {
    let meta = FrameMeta {
        frame_number: d.frame_number,
        module: u16::try_from(d.module).ok()?,
        pixel: pixel_from_code(d.pixel_type)?,
        shape: [d.height, d.width],
        timestamp_ns: d.timestamp_ns,
        detector_timestamp: 0,
        bunch_id: 0,
        missing: detingest_shm::PacketMask::NONE,
    };
    let fits = d.sequence == slot.sequence()
        && meta.pixel == cfg.pixel
        && meta.shape == cfg.shape
        && (if modules > 1 {
            u32::from(meta.module) < modules
        } else {
            meta.module == cfg.module
        })
        && d.byte_length == meta.byte_len() as u64
        && slot.bytes().len() == meta.byte_len();
    fits.then_some(meta)
}
