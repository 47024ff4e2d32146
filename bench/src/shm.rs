//! `detingest-bench shm`: the shared-memory ring between two processes, next to memcpy.
//!
//! A producer process (this binary re-executed as `shm-producer`) copies 1 MiB frames from a
//! bank of synthetic detector frames into ring slots and commits them; in this process:
//! 1. memcpy baseline: the same bank copied into as many 1 MiB buffers as the ring has slots;
//! 2. ring transport: the daemon's consumer releases each slot as it arrives (null sink);
//! 3. latency: the producer paced at half the rate of (2), commit-to-consume latency
//!    (monotonic clock, shared by both processes) per frame;
//! 4. the daemon pipeline with its real writer (bitshuffle-LZ4 by default) behind the ring.
//!
//! Each repetition runs (1), (2) and (4) back to back and the best of each is kept.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use detingest_daemon::config::Config;
use detingest_daemon::pipeline;
use detingest_daemon::sink::RunSinks;
use detingest_daemon::source::synthetic::config::SyntheticConfig;
use detingest_daemon::source::synthetic::FrameBank;
use detingest_shm::ring::{
    monotonic_ns, pixel_code, Descriptor, Producer, RingConsumer, RingEvent, RingSpec, DEFAULT_SPIN,
};
use detingest_shm::PixelType;
use serde::Serialize;

use crate::common;

const SHAPE: [u32; 2] = [512, 1024]; // u16: 1 MiB frames

/// Options of `detingest-bench shm`.
#[derive(Parser, Debug)]
pub struct Args {
    /// Frames per run.
    #[arg(long, default_value_t = 4000)]
    frames: u64,
    /// Ring slots.
    #[arg(long, default_value_t = 16)]
    slots: u32,
    /// Codec of the full-pipeline run: bslz4, lz4 or none.
    #[arg(long, default_value = "bslz4")]
    codec: String,
    /// Rate of the latency run in frames/s (default: half the transport rate).
    #[arg(long)]
    latency_rate: Option<f64>,
    /// How long the consumer spins before sleeping, in microseconds.
    #[arg(long, default_value_t = DEFAULT_SPIN.as_micros() as u64)]
    spin_us: u64,
    /// Core of the producer process and of the memcpy baseline (same core: same caches).
    #[arg(long, default_value_t = 1)]
    producer_core: usize,
    /// Core of the consumer (this process's main thread) in the ring runs.
    #[arg(long, default_value_t = 0)]
    consumer_core: usize,
    /// Repetitions; the best of each run is kept.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Options of the hidden `shm-producer` child.
#[derive(Parser, Debug)]
pub struct ProducerArgs {
    /// Ring file.
    #[arg(long)]
    ring: PathBuf,
    /// Frames to commit.
    #[arg(long)]
    frames: u64,
    /// Frames per second (0: as fast as the ring takes them).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Core to pin to.
    #[arg(long)]
    core: Option<usize>,
}

#[derive(Serialize, Debug)]
struct Report {
    frames: u64,
    frame_bytes: usize,
    slots: u32,
    memcpy_gbps: f64,
    ring_gbps: f64,
    ring_fps: f64,
    ring_vs_memcpy: f64,
    latency_rate_hz: f64,
    latency_p50_us: f64,
    latency_p99_us: f64,
    latency_max_us: f64,
    pipeline_codec: String,
    pipeline_gbps: f64,
    pipeline_fps: f64,
}

fn bank() -> FrameBank {
    FrameBank::generate(&SyntheticConfig {
        shape: SHAPE,
        bank_frames: 8,
        ..SyntheticConfig::default()
    })
}

/// Runs the benchmark and prints the report.
pub fn run(args: &Args) -> Result<()> {
    // Rings on tmpfs, as in production: a ring file on a disk would be written back.
    let dir = tempfile::tempdir_in("/dev/shm")?;
    let data = tempfile::tempdir()?; // files where the other benchmarks write them
    let bank = bank();
    let bytes = bank.frame_bytes();
    let total = (args.frames * bytes as u64) as f64;
    let (mut memcpy, mut ring, mut full) = (f64::MAX, f64::MAX, f64::MAX);
    for rep in 0..args.repeat.max(1) {
        let copy = common::on_core(args.producer_core, || {
            memcpy_run(&bank, args.frames, args.slots as usize)
        });
        memcpy = memcpy.min(copy);
        let ring_dir = dir.path().join(format!("t{rep}"));
        let (secs, _) =
            common::on_core(args.consumer_core, || transport_run(args, &ring_dir, 0.0))?;
        ring = ring.min(secs);
        full = full.min(pipeline_run(args, dir.path(), data.path(), rep)?);
    }
    let rate = args.latency_rate.unwrap_or(args.frames as f64 / ring / 2.0);
    let lat_dir = dir.path().join("latency");
    let (_, mut lat) = common::on_core(args.consumer_core, || transport_run(args, &lat_dir, rate))?;
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| common::quantile(&lat, p);
    let report = Report {
        frames: args.frames,
        frame_bytes: bytes,
        slots: args.slots,
        memcpy_gbps: total / memcpy / 1e9,
        ring_gbps: total / ring / 1e9,
        ring_fps: args.frames as f64 / ring,
        ring_vs_memcpy: memcpy / ring,
        latency_rate_hz: rate,
        latency_p50_us: pct(0.5),
        latency_p99_us: pct(0.99),
        latency_max_us: pct(1.0),
        pipeline_codec: args.codec.clone(),
        pipeline_gbps: total / full / 1e9,
        pipeline_fps: args.frames as f64 / full,
    };
    if args.json {
        return common::print_json(&report);
    }
    let r = &report;
    println!(
        "{} frames of {} bytes, {} slots",
        r.frames, r.frame_bytes, r.slots
    );
    println!(
        "memcpy (same bytes, one thread)   {:>6.2} GB/s",
        r.memcpy_gbps
    );
    println!(
        "ring, producer process -> null   {:>6.2} GB/s  {:>7.0} frames/s  ({:.3} of memcpy)",
        r.ring_gbps, r.ring_fps, r.ring_vs_memcpy
    );
    println!(
        "commit -> consume at {:.0} Hz: p50 {:.1} us, p99 {:.1} us, max {:.1} us",
        r.latency_rate_hz, r.latency_p50_us, r.latency_p99_us, r.latency_max_us
    );
    println!(
        "ring -> pipeline -> HDF5 ({})   {:>6.2} GB/s  {:>7.0} frames/s",
        r.pipeline_codec, r.pipeline_gbps, r.pipeline_fps
    );
    Ok(())
}

/// Seconds to copy `frames` bank frames into `slots` rotating buffers.
fn memcpy_run(bank: &FrameBank, frames: u64, slots: usize) -> f64 {
    let mut dst = vec![vec![0u8; bank.frame_bytes()]; slots];
    let t = Instant::now();
    for n in 0..frames {
        let d = &mut dst[n as usize % slots];
        d.copy_from_slice(bank.frame(n));
        std::hint::black_box(d.as_mut_ptr());
    }
    t.elapsed().as_secs_f64()
}

/// A ring served by this process with a null sink; returns (seconds from the first frame's
/// commit to the last frame's consumption, per-frame latencies in us).
fn transport_run(args: &Args, dir: &Path, rate: f64) -> Result<(f64, Vec<f64>)> {
    let path = dir.join("ring");
    let spec = RingSpec {
        slots: args.slots,
        slot_bytes: PixelType::U16.frame_bytes(SHAPE) as u64,
        mode: 0o600,
        gid: None,
        frame: Some((PixelType::U16, SHAPE)),
        module: 0,
    };
    let mut ring = RingConsumer::create(&path, &spec)?;
    ring.set_spin(Duration::from_micros(args.spin_us));
    let mut child = spawn_producer(&path, args.frames, rate, args.producer_core)?;
    let mut lat = Vec::with_capacity(args.frames as usize);
    let mut first_commit = None;
    let mut last = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    while (lat.len() as u64) < args.frames {
        if Instant::now() > deadline {
            bail!("ring run timed out after {} frames", lat.len());
        }
        if let RingEvent::Frame(slot, desc) = ring.poll(Duration::from_millis(100))? {
            last = monotonic_ns();
            first_commit.get_or_insert(desc.timestamp_ns);
            lat.push(last.saturating_sub(desc.timestamp_ns) as f64 / 1e3);
            drop(slot);
        }
    }
    if !child.wait()?.success() {
        bail!("producer process failed");
    }
    let secs = (last - first_commit.unwrap_or(last)) as f64 / 1e9;
    Ok((secs, lat))
}

/// The daemon's pipeline behind the ring; seconds from start to the file closed.
fn pipeline_run(args: &Args, dir: &Path, data: &Path, rep: usize) -> Result<f64> {
    let rings = dir.join(format!("p{rep}"));
    let text = format!(
        "data_dir = {:?}\n[writer]\ncodec = {:?}\n[live]\npublish = \"\"\nquery = \"\"\n\
         [[source]]\nname = \"mod0\"\n\
         stream = {{ beamtime = \"bench\", source = \"shm\", stream = \"r{rep}\" }}\n\
         [source.shm]\ndir = {:?}\nshape = {SHAPE:?}\npixel = \"u16\"\nslots = {}\n\
         end_on_close = true\nspin_us = {}\n",
        data.display().to_string(),
        args.codec,
        rings.display().to_string(),
        args.slots,
        args.spin_us,
    );
    let config = Config::parse(&text).context("benchmark config")?;
    let running = pipeline::start(&config, RunSinks::none())?;
    let t = Instant::now();
    let mut child = spawn_producer(&rings.join("mod0"), args.frames, 0.0, args.producer_core)?;
    let summary = running.wait();
    let secs = t.elapsed().as_secs_f64();
    if !child.wait()?.success() || summary.streams[0].frames != args.frames {
        bail!("pipeline run incomplete: {:?}", summary.streams);
    }
    Ok(secs)
}

fn spawn_producer(ring: &Path, frames: u64, rate: f64, core: usize) -> Result<std::process::Child> {
    Ok(Command::new(std::env::current_exe()?)
        .arg("shm-producer")
        .arg("--ring")
        .arg(ring)
        .args(["--frames", &frames.to_string(), "--rate", &rate.to_string()])
        .args(["--core", &core.to_string()])
        .stdin(Stdio::null())
        .spawn()?)
}

/// The producer process: copies bank frames into slots, timestamps each commit with the
/// monotonic clock, paced at `rate` if given.
pub fn produce(args: &ProducerArgs) -> Result<()> {
    if let Some(core) = args.core {
        common::pin(core);
    }
    let bank = bank();
    let mut p = Producer::attach(&args.ring)?;
    let bytes = bank.frame_bytes() as u64;
    let period = (args.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / args.rate));
    let start = Instant::now();
    for n in 0..args.frames {
        if let Some(period) = period {
            let due = start + period.mul_f64(n as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        p.acquire(bytes, Duration::from_secs(60))?
            .copy_from_slice(bank.frame(n));
        p.commit(&Descriptor {
            frame_number: n + 1,
            timestamp_ns: monotonic_ns(),
            byte_length: bytes,
            pixel_type: pixel_code(PixelType::U16),
            width: SHAPE[1],
            height: SHAPE[0],
            ..Descriptor::default()
        })?;
    }
    p.close();
    Ok(())
}
