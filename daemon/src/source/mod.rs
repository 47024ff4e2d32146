//! Frame sources and what they share: a [`SourceOutput`] that hands buffers out of the
//! source's pool and frames into the pipeline, applying the source's [`Policy`] when the
//! pipeline is full and counting every frame it drops.
//!
//! One folder per kind (`synthetic/`, `shm/`, `udp/`, `stream2/`), each owning its
//! configuration table; a kind's table implements [`SourceKind`], whose `prepare` makes the
//! source ready (ring, socket, frame bank) and returns a [`PreparedSource`] the pipeline runs
//! on its thread.
//!
//! Each source runs on its own named thread. A source that must copy (a socket receive, the
//! synthetic detector with `copy = true`) fills a pool buffer in place, and that copy is the
//! only one before the codec reads the pixels; one whose memory is already shared (a
//! shared-memory slot, the synthetic bank by default) hands it down by reference.

mod config;
pub mod kafka_events;
pub mod shm;
pub mod stream2;
pub mod synthetic;
pub mod udp;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam::channel::{Sender, TrySendError};
use detingest_shm::{BufferPool, FrameBuf, FrameMeta, Name, PoolBuf};
use detingest_writer::Codec;

pub use config::{validate_sources, Policy, SourceConfig, SourceKind};

use crate::check::ConfigError;
use crate::contract::{KindCounts, SourceSummary};
use crate::stream::{DropLog, SourceMsg, StreamSlot};

/// Why a source could not be made ready to start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// Its configuration could not be resolved (e.g. an unknown group); names the key.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A resource it needs could not be made: `what` names it (a ring file, a UDP address).
    #[error("cannot {what}: {error}")]
    Resource {
        /// What was attempted, e.g. `create ring /dev/shm/detingest/det`.
        what: String,
        /// Why it failed.
        error: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A source made ready by [`SourceKind::prepare`], to be run on its own thread.
pub trait PreparedSource: Send {
    /// Pool buffers the source fills, given the pipeline's `input_buffers`, and their size
    /// in bytes: `(0, 0)` for a source whose memory is already shared.
    fn buffers(&self, input_buffers: usize) -> (usize, usize);
    /// False when those buffers are sized for a worst case rarely filled (encoded images):
    /// they are then not touched in advance, and neither are the compression workers'.
    fn prefault(&self) -> bool {
        true
    }
    /// The address it receives on, when it bound one (a UDP port; `port = 0` resolved).
    fn bound(&self) -> Option<String> {
        None
    }
    /// Runs the source on the current thread until its stream ends.
    fn run(self: Box<Self>, out: &mut SourceOutput);
}

/// Counters of one source. Relaxed atomics: they are read for reporting only.
#[derive(Debug)]
pub struct SourceStats {
    /// The source's name.
    pub name: Name,
    /// Frames handed to the pipeline.
    pub sent: AtomicU64,
    /// Frames dropped because no buffer was free (drop policy).
    pub dropped_no_buffer: AtomicU64,
    /// Frames dropped because the indexer's queue was full (drop policy).
    pub dropped_queue_full: AtomicU64,
    /// Frames a shared-memory producer acquired and died before committing.
    pub torn: AtomicU64,
    /// Frames refused because their description did not fit the stream.
    pub malformed: AtomicU64,
    /// Set when the source has sent its end of stream.
    pub finished: AtomicBool,
    /// The kind's own counters (a UDP source's packets, a Stream V2 source's messages, an
    /// event source's events), refreshed by the source every 100 ms or so.
    pub kind: Mutex<Option<Arc<dyn KindCounts>>>,
    /// The address it receives on, when it bound one.
    pub bound: Option<String>,
}

impl SourceStats {
    pub(crate) fn new(name: Name, bound: Option<String>) -> Self {
        Self {
            name,
            sent: AtomicU64::new(0),
            dropped_no_buffer: AtomicU64::new(0),
            dropped_queue_full: AtomicU64::new(0),
            torn: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            finished: AtomicBool::new(false),
            kind: Mutex::new(None),
            bound,
        }
    }

    /// All frames this source dropped.
    pub fn dropped(&self) -> u64 {
        self.dropped_no_buffer.load(Ordering::Relaxed)
            + self.dropped_queue_full.load(Ordering::Relaxed)
    }

    /// Publishes the kind's counters now.
    pub fn set_kind(&self, counts: Arc<dyn KindCounts>) {
        if let Ok(mut k) = self.kind.lock() {
            *k = Some(counts);
        }
    }

    /// The counters now.
    pub fn summary(&self) -> SourceSummary {
        SourceSummary {
            name: self.name.to_string(),
            sent: self.sent.load(Ordering::Relaxed),
            dropped: self.dropped(),
            torn: self.torn.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            kind: self.kind.lock().ok().and_then(|k| k.clone()),
            bound: self.bound.clone(),
        }
    }
}

/// A source's connection to the pipeline.
pub struct SourceOutput {
    stream: StreamSlot,
    codec: Codec,
    drops: Arc<DropLog>,
    policy: Policy,
    pool: BufferPool,
    tx: Sender<SourceMsg>,
    stop: Arc<AtomicBool>,
    stats: Arc<SourceStats>,
}

impl SourceOutput {
    /// The output into stream `stream` (its slot and codec).
    pub(crate) fn new(
        (stream, codec): (StreamSlot, Codec),
        drops: Arc<DropLog>,
        policy: Policy,
        pool: BufferPool,
        tx: Sender<SourceMsg>,
        stop: Arc<AtomicBool>,
        stats: Arc<SourceStats>,
    ) -> Self {
        Self {
            stream,
            codec,
            drops,
            policy,
            pool,
            tx,
            stop,
            stats,
        }
    }

    /// The stream's codec: a frame already in it may be sent as [`FrameBuf::Encoded`].
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// True once the pipeline has been asked to stop; the source should end its stream.
    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// This source's counters.
    pub fn stats(&self) -> &SourceStats {
        &self.stats
    }

    /// Announces the stream and the detector frame number its index 1 belongs to.
    pub fn start(&mut self, first_frame_number: u64) {
        self.send_control(SourceMsg::Start {
            stream: self.stream,
            first_frame_number,
        });
    }

    /// A free buffer to fill with `frame_number` of tile `module`, or `None` when the drop
    /// policy found the pool empty: the frame is then counted and logged as dropped here, and
    /// the caller skips it.
    pub fn buffer(&mut self, frame_number: u64, module: u16) -> Option<PoolBuf> {
        match self.policy {
            Policy::Block => Some(self.pool.acquire()),
            Policy::Drop => {
                let buf = self.pool.try_acquire();
                if buf.is_none() {
                    self.stats.dropped_no_buffer.fetch_add(1, Ordering::Relaxed);
                    self.drops.push(frame_number, module);
                }
                buf
            }
        }
    }

    /// Hands a filled frame to the pipeline (blocking or dropping by policy); false when it
    /// was dropped (counted and logged as dropped here) or the pipeline is gone.
    pub fn send(&mut self, meta: FrameMeta, data: FrameBuf) -> bool {
        let (frame_number, module) = (meta.frame_number, meta.module);
        let msg = SourceMsg::Frame {
            stream: self.stream,
            meta,
            data,
        };
        let sent = match self.policy {
            Policy::Block => self.tx.send(msg).is_ok(),
            Policy::Drop => match self.tx.try_send(msg) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    self.stats
                        .dropped_queue_full
                        .fetch_add(1, Ordering::Relaxed);
                    self.drops.push(frame_number, module);
                    false
                }
                Err(TrySendError::Disconnected(_)) => false,
            },
        };
        if sent {
            self.stats.sent.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }

    /// The detector restarted (see [`SourceMsg::Restart`]).
    pub fn restart(
        &mut self,
        module: u16,
        first_frame_number: u64,
        last_frame_number: Option<u64>,
    ) {
        self.send_control(SourceMsg::Restart {
            stream: self.stream,
            module,
            first_frame_number,
            last_frame_number,
        });
    }

    /// Ends the stream after `last_frame_number` (`None`: no frame was produced). Frames
    /// dropped at the end are recorded lost up to it.
    pub fn end(&mut self, last_frame_number: Option<u64>) {
        self.send_control(SourceMsg::End {
            stream: self.stream,
            last_frame_number,
        });
        self.stats.finished.store(true, Ordering::Relaxed);
    }

    fn send_control(&mut self, msg: SourceMsg) {
        // Control messages always wait: they are what makes lost frames accountable. A
        // disconnected indexer means the pipeline is gone; nothing is left to tell.
        let _ = self.tx.send(msg);
    }
}
