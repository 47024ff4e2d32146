//! `detingest-bench live`: what live viewers cost ingest and how fast they hear of a frame.
//!
//! In one process, on the same synthetic frames:
//! 1. Throughput, in one run as fast as the pipeline goes, with four subscribers on loopback
//!    (three reading, one never reading) whose subscriptions are switched on and off every
//!    `--phase-ms`. Each "on" phase's rate (frames written per second) is divided by the mean
//!    of the two "off" phases around it: on this shared, noisy machine the rate drifts by tens
//!    of percent between runs seconds apart, and neighbouring phases share the drift. With
//!    `--control` the subscriptions stay off in both kinds of phase, which measures how far
//!    the ratios scatter when nothing differs.
//! 2. Latency, at half the "off" rate of (1), one subscriber measuring commit-to-receive: the
//!    time from the writer finishing a frame (`written_ns`) to the `frame` message arriving,
//!    and its first hop, writer to publisher (`published_ns`: the notification thread woke,
//!    took it off the queue and encoded it); the rest is ZeroMQ and the subscriber.

use anyhow::Result;
use clap::Parser;
use detingest_daemon::config::Config;
use serde::Serialize;

use crate::common;

mod latency;
mod throughput;

use latency::{latency, Latency};
use throughput::{throughput, Throughput};

/// Options of `detingest-bench live`.
#[derive(Parser, Debug)]
pub struct Args {
    /// Frames of each throughput run.
    #[arg(long, default_value_t = 5000)]
    frames: u64,
    /// Throughput runs; their phase pairs are pooled. (Several short runs rather than one
    /// long one: each run's files are removed after it, so the page cache stays small.)
    #[arg(long, default_value_t = 6)]
    runs: usize,
    /// Frames of the latency run.
    #[arg(long, default_value_t = 3000)]
    latency_frames: u64,
    /// Codec: bslz4, lz4 or none.
    #[arg(long, default_value = "bslz4")]
    codec: String,
    /// `writer.flush_every_frames` of every run.
    #[arg(long, default_value_t = 1000)]
    flush_every: u64,
    /// Length of each phase of the throughput run, milliseconds.
    #[arg(long, default_value_t = 100)]
    phase_ms: u64,
    /// Left out of each phase's rate at its start, while subscriptions take effect and the
    /// messages of the phase before drain, milliseconds.
    #[arg(long, default_value_t = 10)]
    settle_ms: u64,
    /// Keep the subscriptions off in every phase (the ratios' scatter when nothing differs).
    #[arg(long)]
    control: bool,
    /// Rate of the latency run in frames/s (default: half the "off" rate).
    #[arg(long)]
    latency_rate: Option<f64>,
    /// Directory for the files (a temporary directory is made in it, by default in the
    /// system's; each run's files are removed after it).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// `live.realtime_priority` of every run (0: normal scheduling).
    #[arg(long, default_value_t = 0)]
    realtime_priority: i32,
    /// `live.batch_interval_us` of every run (default: the daemon's default).
    #[arg(long)]
    batch_interval_us: Option<u64>,
    /// SCHED_FIFO priority of the latency subscriber's thread and its ZeroMQ threads, as a
    /// latency-sensitive viewer on the same machine would run (0: normal scheduling).
    #[arg(long, default_value_t = 0)]
    viewer_realtime_priority: i32,
    /// Transport between the publisher and the subscribers: `tcp` (loopback) or `ipc` (a Unix
    /// socket in the run directory).
    #[arg(long, default_value = "tcp")]
    transport: String,
    /// Run the viewers (the subscribers' ZeroMQ threads and readers) on this core and
    /// everything of the daemon on the others, one compression worker per core, as on a
    /// beamline where viewers do not share the ingest cores (default: no pinning at all).
    #[arg(long)]
    viewer_core: Option<usize>,
    /// `threads.notify` of every run: the core of the notification thread and the
    /// publisher's ZeroMQ threads (default: with --viewer-core, the first ingest core; else
    /// not pinned).
    #[arg(long)]
    notify_core: Option<usize>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Where `--viewer-core` puts things: the viewers' core and the daemon's cores.
struct Placement {
    viewer: usize,
    ingest: Vec<usize>,
}

impl Placement {
    fn of(args: &Args) -> Result<Option<Self>> {
        let Some(viewer) = args.viewer_core else {
            return Ok(None);
        };
        let cores = core_affinity::get_core_ids().unwrap_or_default().len();
        let ingest: Vec<usize> = (0..cores).filter(|&c| c != viewer).collect();
        anyhow::ensure!(
            viewer < cores && !ingest.is_empty(),
            "--viewer-core {viewer}: this machine has cores 0..{cores}, and ingest needs one more"
        );
        Ok(Some(Self { viewer, ingest }))
    }

    /// The core to make the viewers' threads on and the one to make the daemon's on (none
    /// without `--viewer-core`).
    fn cores(args: &Args) -> Result<(Option<usize>, Option<usize>)> {
        let p = Self::of(args)?;
        Ok((p.as_ref().map(|p| p.viewer), p.map(|p| p.ingest[0])))
    }
}

#[derive(Serialize, Debug)]
struct Report {
    codec: String,
    batch_interval_us: u64,
    transport: String,
    realtime_priority: i32,
    viewer_core: Option<usize>,
    notify_core: Option<usize>,
    throughput: Throughput,
    latency: Latency,
}

/// Runs the benchmark and prints the report.
pub fn run(args: &Args) -> Result<()> {
    let tmp = match &args.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let dir = tmp.path();
    let batch_interval_us = args
        .batch_interval_us
        .unwrap_or(detingest_daemon::sink::zmq::LiveConfig::default().batch_interval_us);
    let throughput = throughput(args, dir)?;
    let rate = args.latency_rate.unwrap_or(throughput.off_fps / 2.0);
    let latency = latency(args, dir, rate)?;
    let report = Report {
        codec: args.codec.clone(),
        batch_interval_us,
        transport: args.transport.clone(),
        realtime_priority: args.realtime_priority,
        viewer_core: args.viewer_core,
        notify_core: args.notify_core,
        throughput,
        latency,
    };
    if args.json {
        return common::print_json(&report);
    }
    let (t, l) = (&report.throughput, &report.latency);
    println!(
        "{} runs of {} frames of 512 x 1024 u16, codec {}, batch interval {} us, phases of {} ms{}",
        t.runs,
        t.frames,
        report.codec,
        report.batch_interval_us,
        t.phase_ms,
        if t.control {
            " (control: never on)"
        } else {
            ""
        }
    );
    println!(
        "subscriptions off                 {:>9.1} frames/s   {:>6.0} us CPU/frame",
        t.off_fps, t.off_cpu_us_per_frame
    );
    println!(
        "4 subscribers, one stalled        {:>9.1} frames/s   {:>6.0} us CPU/frame",
        t.on_fps, t.on_cpu_us_per_frame
    );
    println!(
        "  of which ZeroMQ publisher {:.1}, ZeroMQ subscribers {:.1}, readers {:.1} us/frame",
        t.publisher_zmq_cpu_us_per_frame,
        t.subscribers_zmq_cpu_us_per_frame,
        t.readers_cpu_us_per_frame
    );
    println!(
        "on / off, {} phase pairs: median {:.3}, quartiles {:.3} .. {:.3}",
        t.ratios.len(),
        t.ratio_median,
        t.ratio_q1,
        t.ratio_q3
    );
    println!(
        "commit -> received at {:.0} Hz: p50 {:.0} us, p99 {:.0} us, max {:.0} us ({} frames)",
        l.rate_hz, l.p50_us, l.p99_us, l.max_us, l.frames
    );
    println!(
        "  of which writer -> publisher: p50 {:.0} us, p99 {:.0} us",
        l.to_publisher_p50_us, l.to_publisher_p99_us
    );
    Ok(())
}

/// Runs `f` on a thread pinned to `core` if there is one (threads `f` starts inherit that
/// core), else on this thread.
fn made_on<T: Send>(core: Option<usize>, f: impl FnOnce() -> T + Send) -> T {
    match core {
        Some(c) => common::on_core(c, f),
        None => f(),
    }
}

/// A SUB socket subscribed to everything, connected to `endpoint`.
fn subscriber(ctx: &zmq::Context, endpoint: &str) -> Result<zmq::Socket> {
    let sub = ctx.socket(zmq::SUB)?;
    sub.set_subscribe(b"")?;
    sub.set_rcvhwm(1000)?;
    sub.connect(endpoint)?;
    Ok(sub)
}

/// A fresh endpoint of the chosen transport for the run `tag`.
fn endpoint(args: &Args, dir: &std::path::Path, tag: &str) -> Result<String> {
    match args.transport.as_str() {
        "tcp" => {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            Ok(format!("tcp://127.0.0.1:{port}"))
        }
        "ipc" => Ok(format!("ipc://{}/live-{tag}.sock", dir.display())),
        other => anyhow::bail!("--transport {other:?}: expected tcp or ipc"),
    }
}

fn config(
    args: &Args,
    dir: &std::path::Path,
    tag: &str,
    endpoint: &str,
    frames: u64,
    rate: f64,
    subs: usize,
) -> Result<Config> {
    let batch = args
        .batch_interval_us
        .map(|us| format!("batch_interval_us = {us}\n"))
        .unwrap_or_default();
    let placement = Placement::of(args)?;
    let notify = args.notify_core.or(placement.as_ref().map(|p| p.ingest[0]));
    let mut pinning = String::new();
    let mut source_core = String::new();
    if let Some(p) = &placement {
        pinning = format!(
            "[pipeline]\ncompress_workers = {}\n[threads]\nindexer = {first}\nwriter = {first}\n\
             compress = {:?}\n",
            p.ingest.len(),
            p.ingest,
            first = p.ingest[0],
        );
        source_core = format!("core = {}\n", p.ingest[0]);
    }
    if let Some(core) = notify {
        if placement.is_none() {
            pinning.push_str("[threads]\n");
        }
        pinning.push_str(&format!("notify = {core}\n"));
    }
    let text = format!(
        "data_dir = {dir:?}\n[writer]\ncodec = {codec:?}\nflush_every_frames = {flush}\n\
         [live]\npublish = {endpoint:?}\nquery = \"\"\nwait_for_subscribers = {subs}\n\
         realtime_priority = {rt}\n{batch}{pinning}\
         [[source]]\nname = \"bench\"\nstream = {{ beamtime = \"bench\", source = \"live\", stream = \"{tag}\" }}\n\
         {source_core}[source.synthetic]\nframes = {frames}\nrate_hz = {rate:?}\n",
        dir = dir.display().to_string(),
        codec = args.codec,
        flush = args.flush_every,
        rt = args.realtime_priority,
    );
    Ok(Config::parse(&text)?)
}
