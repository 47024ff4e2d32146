//! The UDP source: detector modules stream each frame as a burst of packets to one port per
//! module; a pinned receiver thread per port assembles them into frames.
//!
//! - [`header`]: packet formats (sls v2) behind a trait;
//! - [`assembler`]: packets into frame buffers, every odd packet counted by kind;
//! - [`uring`]: io_uring multishot receive with provided buffers (the default);
//! - [`recvmmsg`]: the fallback when io_uring is unavailable, or chosen by configuration;
//! - [`socket`]: binding and the receive buffer;
//! - [`simulator`]: the detector side, for tests and the benchmark;
//! - `warnings.rs`: rate-limited warnings for packets that do not belong and frames dropped.

pub mod assembler;
pub mod config;
pub mod header;
mod mmsg;
pub mod recvmmsg;
pub mod simulator;
pub mod socket;
mod stream_copy;
pub mod uring;
mod warnings;

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, Instant};

use detingest_shm::{FrameBuf, FrameMeta, PoolBuf};

use self::assembler::{Assembler, AssemblerConfig, FrameOut, Place};
use self::header::{Sls2, SLS2_HEADER_BYTES};
use self::recvmmsg::MmsgReceiver;
use self::uring::UringReceiver;
use self::warnings::OddPacketWarnings;
use detingest_shm::PixelType;

use self::config::{ReceivePath, UdpConfig};
use super::{PreparedSource, SourceConfig, SourceError, SourceKind, SourceOutput, SourceStats};
use crate::check::ConfigError;

impl SourceKind for UdpConfig {
    fn table(&self) -> &'static str {
        "udp"
    }
    fn validate(&self, i: usize) -> Result<(), ConfigError> {
        self.check(i)
    }
    fn frame_format(&self) -> (PixelType, [u32; 2]) {
        (self.pixel, self.shape)
    }
    fn grid_place(&self) -> Option<[u32; 2]> {
        self.place
    }
    /// Binds the port and picks the receive path.
    fn prepare(
        &self,
        src: &SourceConfig,
        _i: usize,
        _modules: u32,
    ) -> Result<Box<dyn PreparedSource>, SourceError> {
        let (receiver, bound) = open(self).map_err(|error| SourceError::Resource {
            what: format!("receive on {}", self.address()),
            error: Box::new(error),
        })?;
        tracing::info!(source = %src.name, addr = %bound, path = receiver.name(), "port ready");
        Ok(Box::new(Prepared {
            cfg: self.clone(),
            grid: src.grid,
            receiver,
            bound,
        }))
    }
}

/// A UDP source with its port bound.
struct Prepared {
    cfg: UdpConfig,
    grid: [u32; 2],
    receiver: Receiver,
    /// The address bound (`port = 0`: the port the kernel gave).
    bound: std::net::SocketAddr,
}

impl PreparedSource for Prepared {
    fn buffers(&self, input_buffers: usize) -> (usize, usize) {
        (input_buffers, self.cfg.pixel.frame_bytes(self.cfg.shape))
    }
    fn bound(&self) -> Option<String> {
        Some(self.bound.to_string())
    }
    fn run(self: Box<Self>, out: &mut SourceOutput) {
        let Prepared {
            cfg,
            grid,
            receiver,
            ..
        } = *self;
        run(&assembler_config(&cfg, grid), receiver, out);
    }
}

/// How often the shared counters are refreshed from the receiver's own.
const PUBLISH: Duration = Duration::from_millis(100);

impl FrameOut for SourceOutput {
    fn buffer(&mut self, frame_number: u64, module: u16) -> Option<PoolBuf> {
        SourceOutput::buffer(self, frame_number, module)
    }
    fn start(&mut self, first_frame_number: u64) {
        SourceOutput::start(self, first_frame_number);
    }
    fn send(&mut self, meta: FrameMeta, data: FrameBuf) -> bool {
        SourceOutput::send(self, meta, data)
    }
    fn restart(&mut self, module: u16, first_frame_number: u64, last_frame_number: Option<u64>) {
        SourceOutput::restart(self, module, first_frame_number, last_frame_number);
    }
}

/// A port's receive path.
pub enum Receiver {
    /// io_uring multishot receive with provided buffers (boxed: the ring's state is large).
    Uring(Box<UringReceiver>),
    /// recvmmsg batches.
    Mmsg(MmsgReceiver),
}

impl Receiver {
    /// The configured path; `auto` takes io_uring when the kernel offers it.
    pub fn new(socket: UdpSocket, cfg: &UdpConfig) -> std::io::Result<Self> {
        // One byte more than a packet: a longer datagram shows up as a wrong length.
        let buf_bytes = (SLS2_HEADER_BYTES + cfg.payload_bytes + 1).next_multiple_of(64);
        match cfg.receive {
            ReceivePath::Recvmmsg => Ok(Self::Mmsg(MmsgReceiver::new(socket, buf_bytes))),
            ReceivePath::IoUring => Ok(Self::Uring(Box::new(UringReceiver::new(
                socket,
                buf_bytes,
                uring::BUFFERS,
            )?))),
            ReceivePath::Auto => {
                let fallback = socket.try_clone()?;
                match UringReceiver::new(socket, buf_bytes, uring::BUFFERS) {
                    Ok(r) => Ok(Self::Uring(Box::new(r))),
                    Err(e) => {
                        tracing::warn!("io_uring unavailable ({e}); receiving with recvmmsg");
                        Ok(Self::Mmsg(MmsgReceiver::new(fallback, buf_bytes)))
                    }
                }
            }
        }
    }

    /// "io_uring" or "recvmmsg".
    pub fn name(&self) -> &'static str {
        match self {
            Self::Uring(_) => "io_uring",
            Self::Mmsg(_) => "recvmmsg",
        }
    }

    /// Receives what is there (waiting up to [`socket::POLL`]) into `asm`.
    pub fn receive(
        &mut self,
        asm: &mut Assembler<Sls2>,
        out: &mut impl FrameOut,
    ) -> std::io::Result<()> {
        match self {
            Self::Uring(r) => r.receive(asm, out),
            Self::Mmsg(r) => r.receive(|datagram| asm.on_datagram(datagram, out)),
        }
    }
}

/// What the assembler of `cfg`'s port needs, in a source grid of `grid` tiles.
pub fn assembler_config(cfg: &UdpConfig, grid: [u32; 2]) -> AssemblerConfig {
    AssemblerConfig {
        mod_id: cfg.mod_id,
        place: Place::new(cfg.place, grid),
        packets_per_frame: cfg.packets_per_frame,
        readout: cfg.readout(),
        payload_bytes: cfg.payload_bytes,
        pixel: cfg.pixel,
        shape: cfg.shape,
        window: cfg.window,
        timeout: Duration::from_millis(cfg.timeout_ms),
        fill: cfg.fill,
        flip_rows: cfg.flip_rows,
        restart_gap: cfg.restart_gap,
        restart_confirm: cfg.restart_confirm,
    }
}

/// Receives until stopped, then lets open frames leave and ends the stream.
pub fn run(cfg: &AssemblerConfig, mut receiver: Receiver, out: &mut SourceOutput) {
    let mut asm = Assembler::new(cfg.clone(), Sls2);
    let name = out.stats().name.clone();
    let mut warnings = OddPacketWarnings::default();
    let mut published = Instant::now();
    while !out.stop_requested() {
        if let Err(e) = receiver.receive(&mut asm, out) {
            tracing::error!(path = receiver.name(), "receive failed: {e}");
            break;
        }
        let now = Instant::now();
        asm.tick(now, out);
        if now.duration_since(published) >= PUBLISH {
            publish(out.stats(), &asm);
            warnings.check(
                name.as_str(),
                cfg,
                (asm.counts(), asm.refused()),
                now,
                false,
            );
            published = now;
        }
    }
    let last = asm.finish(out);
    publish(out.stats(), &asm);
    warnings.check(
        name.as_str(),
        cfg,
        (asm.counts(), asm.refused()),
        Instant::now(),
        true,
    );
    out.end(last);
}

fn publish(stats: &SourceStats, asm: &Assembler<Sls2>) {
    stats.set_kind(Arc::new(*asm.counts()));
}

/// Binds the port of `cfg` and picks its receive path; the address bound.
pub fn open(cfg: &UdpConfig) -> std::io::Result<(Receiver, std::net::SocketAddr)> {
    let socket = socket::bind(cfg.address(), cfg.rcvbuf_bytes)?;
    let bound = socket.local_addr()?;
    Ok((Receiver::new(socket, cfg)?, bound))
}
