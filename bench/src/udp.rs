//! `detingest-bench udp`: the UDP receive path's lossless packet rate next to a bare
//! recvmmsg drain loop on the same port, measured in the same run.
//!
//! A detector simulator (this process, pinned to one core) sends JUNGFRAU-sized sls v2
//! packets (48 + 8192 bytes, 128 per frame) on loopback at a given frame rate; the receiver
//! (pinned to the other core) is either the bare drain loop (recvmmsg, count, nothing else)
//! or the daemon's full receive path (io_uring or recvmmsg, parse, assemble into pooled
//! frame buffers, frames then dropped: a null sink). For each, a bisection over the send
//! rate finds the highest rate with zero loss; then the full path runs at 0.8x of the
//! drain loop's lossless rate, where it must lose nothing.
//!
//! `--modules 4 --interfaces 2` is a 4-module JUNGFRAU with two 10 GbE interfaces per module:
//! eight ports of 64 packets per frame each, every receiver on the one receiver core, the
//! modules carrying real-looking ids and their halves told apart by the header's row.
//!
//! On loopback the sender's core also does the kernel's delivery work, so a sender can be
//! slower than either receiver and both lossless rates are then the sender's ceiling. The
//! receivers' own capacity is measured too: bursts that fill the socket buffer while the
//! receiver waits, then timed as the receiver drains them.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use detingest_daemon::config::Config;
use detingest_daemon::source::udp::assembler::{Assembler, FrameOut};
use detingest_daemon::source::udp::config::UdpConfig;
use detingest_daemon::source::udp::header::Sls2;
use detingest_daemon::source::udp::recvmmsg::MmsgReceiver;
use detingest_daemon::source::udp::simulator::{self, Simulation};
use detingest_daemon::source::udp::{self as udp, socket};
use detingest_daemon::threads;
use detingest_shm::{BufferPool, FrameBuf, FrameMeta, PoolBuf};
use serde::Serialize;

use crate::common;

/// Packets of a whole JUNGFRAU module's frame (split evenly over its interfaces).
const PPF: u32 = 128;
const PAYLOAD: usize = 8192;
const DGRAM: f64 = (48 + PAYLOAD) as f64;

/// Options of `detingest-bench udp`.
#[derive(Parser, Debug)]
pub struct Args {
    /// Frames per trial (128 packets each).
    #[arg(long, default_value_t = 2000)]
    frames: u64,
    /// Detector modules.
    #[arg(long, default_value_t = 1)]
    modules: u16,
    /// Interfaces (ports) per module, 1 or 2: one port, receiver thread and sender thread
    /// each, 128 / interfaces packets per frame.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=2))]
    interfaces: u16,
    /// Bisection steps per receiver.
    #[arg(long, default_value_t = 7)]
    steps: u32,
    /// Receive path of the full receiver: auto, io_uring or recvmmsg.
    #[arg(long, default_value = "auto")]
    receive: String,
    /// Socket receive buffer in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    rcvbuf: usize,
    /// Core of the sender.
    #[arg(long, default_value_t = 1)]
    sender_core: usize,
    /// Core of the receiver.
    #[arg(long, default_value_t = 0)]
    receiver_core: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize, Debug)]
struct Report {
    modules: u16,
    ports: u16,
    packets_per_port_frame: u32,
    frames_per_trial: u64,
    receive_path: String,
    sender_max_pps: f64,
    drain_lossless_pps: f64,
    full_lossless_pps: f64,
    /// Every receiver shares one core: the full path's lossless packets/s on that core
    /// (bounded by the sender on loopback).
    full_lossless_pps_per_receiver_core: f64,
    ratio: f64,
    full_at_08_pps: f64,
    full_at_08_lost: u64,
    drain_burst_pps: f64,
    full_burst_pps: f64,
    burst_ratio: f64,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Drain,
    Full,
}

/// Runs the benchmark and prints the report.
pub fn run(args: &Args) -> Result<()> {
    let cfg = udp_config(args)?;
    // The sender's own ceiling: unpaced, into the drain loop.
    let (max_fps, _) = trial(args, &cfg, Kind::Drain, 0.0)?;
    let drain = bisect(args, &cfg, Kind::Drain, max_fps)?;
    let full = bisect(args, &cfg, Kind::Full, max_fps)?;
    let (fps08, lost08) = trial(args, &cfg, Kind::Full, 0.8 * drain)?;
    let pps = |fps: f64| fps * f64::from(port_ppf(args));
    let path = udp::open(&cfg)?.0.name().to_string();
    // Capacity: best of 3 interleaved burst runs each.
    let (mut drain_burst, mut full_burst) = (0.0f64, 0.0f64);
    for _ in 0..3 {
        drain_burst = drain_burst.max(bursts(args, &cfg, Kind::Drain)?);
        full_burst = full_burst.max(bursts(args, &cfg, Kind::Full)?);
    }
    let report = Report {
        modules: args.modules,
        ports: ports(args),
        packets_per_port_frame: port_ppf(args),
        frames_per_trial: args.frames,
        receive_path: path,
        sender_max_pps: pps(max_fps),
        drain_lossless_pps: pps(drain),
        full_lossless_pps: pps(full),
        full_lossless_pps_per_receiver_core: pps(full),
        ratio: full / drain,
        full_at_08_pps: pps(fps08),
        full_at_08_lost: lost08,
        drain_burst_pps: drain_burst,
        full_burst_pps: full_burst,
        burst_ratio: full_burst / drain_burst,
    };
    if args.json {
        return common::print_json(&report);
    }
    let gbps = |p: f64| p * DGRAM * 8.0 / 1e9;
    let r = &report;
    println!(
        "{} module(s), {} port(s) on one receiver core, {} frames x {} packets of 48 + {PAYLOAD} bytes per port and trial; full path: {}",
        r.modules, r.ports, r.frames_per_trial, r.packets_per_port_frame, r.receive_path
    );
    println!(
        "sender ceiling (unpaced)           {:>9.0} packets/s  {:>5.2} Gb/s",
        r.sender_max_pps,
        gbps(r.sender_max_pps)
    );
    println!(
        "bare recvmmsg drain, lossless      {:>9.0} packets/s  {:>5.2} Gb/s",
        r.drain_lossless_pps,
        gbps(r.drain_lossless_pps)
    );
    println!(
        "full receive path, lossless        {:>9.0} packets/s  {:>5.2} Gb/s  ({:.3} of drain)",
        r.full_lossless_pps,
        gbps(r.full_lossless_pps),
        r.ratio
    );
    println!(
        "full path at 0.8 x drain rate      {:>9.0} packets/s  lost {}",
        r.full_at_08_pps, r.full_at_08_lost
    );
    println!(
        "capacity from a full socket buffer: drain {:.0} packets/s ({:.2} Gb/s), full path {:.0} packets/s ({:.2} Gb/s): {:.3} of drain",
        r.drain_burst_pps,
        gbps(r.drain_burst_pps),
        r.full_burst_pps,
        gbps(r.full_burst_pps),
        r.burst_ratio
    );
    Ok(())
}

/// Ports: modules x interfaces.
fn ports(args: &Args) -> u16 {
    args.modules * args.interfaces
}

/// Packets per frame on one port.
fn port_ppf(args: &Args) -> u32 {
    PPF / u32::from(args.interfaces)
}

/// The module id port `p` carries (a real module's id, not its place).
fn mod_id(args: &Args, p: u16) -> u16 {
    1200 + p / args.interfaces
}

fn udp_config(args: &Args) -> Result<UdpConfig> {
    let text = format!(
        "[[source]]\nname = \"bench\"\nstream = {{ beamtime = \"b\", source = \"u\", stream = \"s\" }}\n\
         [source.udp]\nbind = \"127.0.0.1\"\nport = 0\npackets_per_frame = {}\n\
         payload_bytes = {PAYLOAD}\nshape = [{}, 1024]\npixel = \"u16\"\nreceive = {:?}\n\
         rcvbuf_bytes = {}\n",
        port_ppf(args),
        512 / args.interfaces,
        args.receive,
        args.rcvbuf
    );
    let config = Config::parse(&text)?;
    match config.sources[0].udp.clone() {
        Some(u) => Ok(u),
        None => anyhow::bail!("benchmark config has no udp source"),
    }
}

/// Highest lossless frame rate in `(0, hi]` after `steps` halvings.
fn bisect(args: &Args, cfg: &UdpConfig, kind: Kind, hi: f64) -> Result<f64> {
    if trial(args, cfg, kind, hi)?.1 == 0 {
        return Ok(hi);
    }
    let (mut lo, mut hi) = (0.0, hi);
    for _ in 0..args.steps {
        let mid = (lo + hi) / 2.0;
        if trial(args, cfg, kind, mid)?.1 == 0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

/// One trial at `rate_hz` port frames/s in total, shared evenly by the ports (0: unpaced):
/// (achieved port frames/s summed over ports, packets lost). Each port has its own receiver
/// thread and sender thread; receivers share the receiver core, senders the sender core.
fn trial(args: &Args, cfg: &UdpConfig, kind: Kind, rate_hz: f64) -> Result<(f64, u64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut receivers = Vec::new();
    let mut targets = Vec::new();
    let mut counters = Vec::new();
    for p in 0..ports(args) {
        let sock = socket::bind(cfg.address(), cfg.rcvbuf_bytes)?;
        targets.push(sock.local_addr()?);
        let received = Arc::new(AtomicU64::new(0));
        counters.push(Arc::clone(&received));
        let stop = Arc::clone(&stop);
        let cfg = UdpConfig {
            mod_id: Some(mod_id(args, p)),
            place: Some([u32::from(p), 0]),
            ..cfg.clone()
        };
        receivers.push(spawn_receiver(args, kind, sock, cfg, received, stop, None)?);
    }
    let senders: Vec<_> = targets
        .into_iter()
        .zip(0..)
        .map(|(target, p)| {
            let (frames, core) = (args.frames, args.sender_core);
            let rate_hz = rate_hz / f64::from(ports(args));
            let sim = Simulation {
                mod_id: mod_id(args, p),
                place: [p, 0],
                ..clean(target, port_ppf(args), 1, frames, rate_hz)
            };
            threads::spawn("bench-tx".into(), Some(core), move || simulator::send(&sim))
        })
        .collect::<std::io::Result<_>>()?;
    let mut sent_total = 0;
    let mut slowest: f64 = 0.0;
    for s in senders {
        let sent = s.join().map_err(|_| anyhow::anyhow!("sender panicked"))??;
        sent_total += sent.datagrams;
        slowest = slowest.max(sent.seconds);
    }
    // Let the receivers drain what is queued: stop once nothing new arrived for 100 ms.
    let total = || {
        counters
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let mut last = u64::MAX;
    while total() != last && total() < sent_total {
        last = total();
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for r in receivers {
        r.join()
            .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    }
    let fps = (args.frames * u64::from(ports(args))) as f64 / slowest;
    Ok((fps, sent_total.saturating_sub(total())))
}

/// Bursts of frames sent to every port while the receivers are paused, each timed from the
/// receivers' release to their last packet: the receiver core's packets/s with nothing else
/// running (every port's receiver thread shares that core).
fn bursts(args: &Args, cfg: &UdpConfig, kind: Kind) -> Result<f64> {
    const BURSTS: u64 = 20;
    const BURST_FRAMES: u64 = 16; // 2048 packets of one module, 17 MB: within the socket buffer
    let stop = Arc::new(AtomicBool::new(false));
    let paused = Arc::new(AtomicBool::new(true));
    let (mut targets, mut counters, mut receivers) = (Vec::new(), Vec::new(), Vec::new());
    for p in 0..ports(args) {
        let sock = socket::bind(cfg.address(), cfg.rcvbuf_bytes)?;
        targets.push((p, sock.local_addr()?));
        let received = Arc::new(AtomicU64::new(0));
        counters.push(Arc::clone(&received));
        let cfg = UdpConfig {
            mod_id: Some(mod_id(args, p)),
            place: Some([u32::from(p), 0]),
            ..cfg.clone()
        };
        receivers.push(spawn_receiver(
            args,
            kind,
            sock,
            cfg,
            received,
            Arc::clone(&stop),
            Some(Arc::clone(&paused)),
        )?);
    }
    let total = || {
        counters
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let busy = common::on_core(args.sender_core, || -> Result<(Duration, u64)> {
        let mut busy = Duration::ZERO;
        let mut expected = 0;
        for b in 0..BURSTS {
            paused.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20)); // the receivers leave their receive call
            let first = 1 + b * BURST_FRAMES;
            for &(p, target) in &targets {
                let sim = Simulation {
                    mod_id: mod_id(args, p),
                    place: [p, 0],
                    ..clean(target, port_ppf(args), first, BURST_FRAMES, 0.0)
                };
                expected += simulator::send(&sim)?.datagrams;
            }
            let t = Instant::now();
            paused.store(false, Ordering::SeqCst);
            let deadline = t + Duration::from_secs(10);
            while total() < expected {
                if Instant::now() > deadline {
                    anyhow::bail!(
                        "burst {b}: packets lost from the socket buffer (raise --rcvbuf)"
                    );
                }
                std::hint::spin_loop();
            }
            busy += t.elapsed();
        }
        Ok((busy, expected))
    });
    stop.store(true, Ordering::Relaxed);
    paused.store(false, Ordering::SeqCst);
    for r in receivers {
        r.join()
            .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    }
    let (busy, expected) = busy?;
    Ok(expected as f64 / busy.as_secs_f64())
}

/// A receiver of `kind` on `sock`, on its own thread pinned to the receiver core.
fn spawn_receiver(
    args: &Args,
    kind: Kind,
    sock: UdpSocket,
    cfg: UdpConfig,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    paused: Option<Arc<AtomicBool>>,
) -> std::io::Result<std::thread::JoinHandle<Result<()>>> {
    threads::spawn("bench-rx".into(), Some(args.receiver_core), move || {
        let paused = paused.as_deref();
        match kind {
            Kind::Drain => drain_loop(sock, &received, &stop, paused),
            Kind::Full => full_loop(sock, &cfg, &received, &stop, paused),
        }
    })
}

/// `frames` clean frames (no loss, duplicates, reordering or garbage) of `ppf` packets, of
/// module id 0 at row and column 0.
fn clean(target: SocketAddr, ppf: u32, first_frame: u64, frames: u64, rate_hz: f64) -> Simulation {
    Simulation {
        target,
        mod_id: 0,
        place: [0, 0],
        packets_per_frame: ppf,
        readout: None,
        payload_bytes: PAYLOAD,
        first_frame,
        frames,
        rate_hz,
        loss: 0.0,
        duplicate: 0.0,
        reorder: false,
        garbage_every: 0,
        seed: 1,
    }
}
/// The baseline: recvmmsg into a batch, count, nothing else; idles while `paused`.
fn drain_loop(
    sock: UdpSocket,
    received: &AtomicU64,
    stop: &AtomicBool,
    paused: Option<&AtomicBool>,
) -> Result<()> {
    let mut receiver = MmsgReceiver::new(sock, 9000);
    while !stop.load(Ordering::Relaxed) {
        if paused.is_some_and(|p| p.load(Ordering::SeqCst)) {
            std::hint::spin_loop();
            continue;
        }
        let mut n = 0;
        receiver.receive(|_| n += 1)?;
        received.fetch_add(n, Ordering::Relaxed);
    }
    Ok(())
}

/// Frames to nowhere: the buffer goes straight back to its pool.
struct NullSink(BufferPool);

impl FrameOut for NullSink {
    fn buffer(&mut self, _: u64, _: u16) -> Option<PoolBuf> {
        self.0.try_acquire()
    }
    fn start(&mut self, _: u64) {}
    fn send(&mut self, _: FrameMeta, _: FrameBuf) -> bool {
        true
    }
    fn restart(&mut self, _: u16, _: u64, _: Option<u64>) {}
}

/// The daemon's receive path with assembly on; idles while `paused`.
fn full_loop(
    sock: UdpSocket,
    cfg: &UdpConfig,
    received: &AtomicU64,
    stop: &AtomicBool,
    paused: Option<&AtomicBool>,
) -> Result<()> {
    let mut receiver = udp::Receiver::new(sock, cfg)?;
    let mut asm = Assembler::new(udp::assembler_config(cfg, [1, 1]), Sls2);
    let mut out = NullSink(BufferPool::new(
        16,
        cfg.packets_per_frame as usize * PAYLOAD,
    ));
    while !stop.load(Ordering::Relaxed) {
        if paused.is_some_and(|p| p.load(Ordering::SeqCst)) {
            std::hint::spin_loop();
            continue;
        }
        receiver.receive(&mut asm, &mut out)?;
        asm.tick(Instant::now(), &mut out);
        received.store(asm.counts().accepted, Ordering::Relaxed);
    }
    Ok(())
}
