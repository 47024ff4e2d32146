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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use detingest_daemon::config::Config;
use detingest_daemon::pipeline;
use detingest_daemon::sink::zmq::Live;
use detingest_daemon::sink::{Notification, NotificationSink, RunSinks};
use detingest_daemon::stream::now_ns;
use detingest_daemon::threads;

use crate::common;
use nix::time::ClockId;
use serde::Serialize;

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

/// What the throughput run measured.
#[derive(Serialize, Debug)]
struct Throughput {
    frames: u64,
    runs: usize,
    control: bool,
    phase_ms: u64,
    /// Frames per second over all "off" phases, and over all "on" phases.
    off_fps: f64,
    on_fps: f64,
    /// Each "on" phase's rate over the mean of its two neighbours'.
    ratios: Vec<f64>,
    /// Quartiles of `ratios`.
    ratio_q1: f64,
    ratio_median: f64,
    ratio_q3: f64,
    /// CPU time of the whole process per frame written in "off" and in "on" phases, us.
    off_cpu_us_per_frame: f64,
    on_cpu_us_per_frame: f64,
    /// Of the CPU time, per frame written in "on" phases, us: the publisher's ZeroMQ threads,
    /// the subscribers' ZeroMQ threads and the three reading subscribers.
    publisher_zmq_cpu_us_per_frame: f64,
    subscribers_zmq_cpu_us_per_frame: f64,
    readers_cpu_us_per_frame: f64,
}

/// What the latency run measured, microseconds.
#[derive(Serialize, Debug)]
struct Latency {
    rate_hz: f64,
    frames: usize,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    /// Writer to publisher.
    to_publisher_p50_us: f64,
    to_publisher_p99_us: f64,
}

/// One frame message's latency and its first hop, in microseconds.
struct Hops {
    total_us: f64,
    to_publisher_us: f64,
}

/// A stretch of the throughput run with the subscriptions on or off.
struct Phase {
    on: bool,
    start_ns: u64,
    end_ns: u64,
    /// The process's CPU seconds at the start and the end.
    cpu_start: f64,
    cpu_end: f64,
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
        .unwrap_or(detingest_daemon::config::LiveConfig::default().batch_interval_us);
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

/// The throughput run: four subscribers, switched on and off by phases.
fn throughput(args: &Args, dir: &std::path::Path) -> Result<Throughput> {
    let runs = (0..args.runs.max(1))
        .map(|run| throughput_run(args, dir, run))
        .collect::<Result<Vec<_>>>()?;
    Ok(summarise(args, &runs))
}

/// What one throughput run recorded.
struct RunRecord {
    phases: Vec<Phase>,
    /// Every frame's `written_ns`.
    written: Vec<u64>,
    /// CPU seconds of the publisher's ZeroMQ threads, the subscribers' and the readers.
    cpu: [f64; 3],
}

/// One run of the pipeline with four subscribers, switched on and off by phases.
fn throughput_run(args: &Args, dir: &std::path::Path, run: usize) -> Result<RunRecord> {
    let tag = format!("throughput{run}");
    let endpoint = endpoint(args, dir, &tag)?;
    let cfg = config(args, dir, &tag, &endpoint, args.frames, 0.0, 4)?;
    // Threads inherit their creator's cores: the viewers' threads are made on a thread pinned
    // to the viewer core, the daemon's ZeroMQ threads on one pinned to an ingest core (the
    // pipeline's threads are pinned by the config).
    let (viewer_core, ingest_core) = Placement::cores(args)?;
    let threads_before = threads::thread_ids();
    let ctx = zmq::Context::new();
    let done = Arc::new(AtomicBool::new(false));
    let (go, started) = std::sync::mpsc::channel::<()>();
    let (readers, switcher) = made_on(viewer_core, || -> Result<_> {
        // The readers hear "on", "off" and "done" on an inproc PAIR each, so an "off" phase
        // costs them no wake-ups.
        let mut controls = Vec::new();
        let mut readers = Vec::new();
        for i in 0..3 {
            let control = ctx.socket(zmq::PAIR)?;
            control.bind(&format!("inproc://phases-{i}"))?;
            controls.push(control);
            let reader_control = ctx.socket(zmq::PAIR)?;
            reader_control.connect(&format!("inproc://phases-{i}"))?;
            let sub = subscriber(&ctx, &endpoint)?;
            let reader = std::thread::Builder::new().name(format!("subscriber-{i}"));
            readers.push(reader.spawn(move || -> Result<f64> {
                read_switched(&sub, &reader_control)?;
                Ok(common::cpu_seconds(ClockId::CLOCK_THREAD_CPUTIME_ID))
            })?);
        }
        // The stalled subscriber, which never reads, and the switcher, which starts when the
        // pipeline has.
        let stalled = subscriber(&ctx, &endpoint)?;
        let done = Arc::clone(&done);
        let (phase, control) = (Duration::from_millis(args.phase_ms), args.control);
        let switcher = std::thread::Builder::new()
            .name("phases".into())
            .spawn(move || {
                started.recv()?;
                switch_phases(&stalled, &controls, &done, phase, control)
            })?;
        Ok((readers, switcher))
    })?;
    // The subscribers' ZeroMQ threads carry the name of the thread that made their sockets
    // (ours); the readers and the switcher have their own.
    let subscribers_zmq = threads::started_here_since(&threads_before);
    let (live, publisher) = made_on(ingest_core, || Live::start(&cfg.live, cfg.sink_cores()))
        .map_err(anyhow::Error::msg)?;
    let written = Arc::new(Mutex::new(WrittenTimes(Vec::with_capacity(
        args.frames as usize,
    ))));
    let sinks: Vec<Box<dyn NotificationSink>> = vec![
        Box::new(publisher.context("publisher configured")?),
        Box::new(Arc::clone(&written)),
    ];
    let running = pipeline::start(
        &cfg,
        RunSinks {
            sinks,
            needs: cfg.live.needs(),
        },
    )?;
    go.send(())?;
    let summary = running.wait();
    done.store(true, Ordering::Relaxed);
    let phases = switcher
        .join()
        .map_err(|_| anyhow::anyhow!("phase switcher panicked"))??;
    let publisher_zmq_cpu = common::threads_cpu_seconds(&live.zmq_threads);
    let subscribers_zmq_cpu = common::threads_cpu_seconds(&subscribers_zmq);
    live.stop();
    let mut readers_cpu = 0.0;
    for r in readers {
        readers_cpu += r
            .join()
            .map_err(|_| anyhow::anyhow!("subscriber panicked"))??;
    }
    common::remove_run_files(&summary);
    anyhow::ensure!(
        summary.ok(),
        "the throughput run failed: {:?}",
        summary.streams
    );
    let written = std::mem::take(&mut written.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.0);
    Ok(RunRecord {
        phases,
        written,
        cpu: [publisher_zmq_cpu, subscribers_zmq_cpu, readers_cpu],
    })
}

/// Rates, ratios and CPU per frame of the runs' phases, from every frame's `written_ns`.
fn summarise(args: &Args, runs: &[RunRecord]) -> Throughput {
    let settle = args.settle_ms * 1_000_000;
    /// A phase's frames and seconds after settling, its frames in all, its CPU seconds.
    struct Counted {
        on: bool,
        frames: usize,
        secs: f64,
        all_frames: usize,
        cpu: f64,
    }
    let mut ratios = Vec::new();
    let mut counted = Vec::new();
    for run in runs {
        let frames_in =
            |from: u64, to: u64| run.written.iter().filter(|&&t| t >= from && t < to).count();
        // The first phase holds the start; the last is cut short by the end: neither counts.
        let inner = run
            .phases
            .get(1..run.phases.len().saturating_sub(1))
            .unwrap_or(&[]);
        let these: Vec<Counted> = inner
            .iter()
            .map(|p| Counted {
                on: p.on,
                frames: frames_in(p.start_ns + settle, p.end_ns),
                secs: p.end_ns.saturating_sub(p.start_ns + settle) as f64 / 1e9,
                all_frames: frames_in(p.start_ns, p.end_ns),
                cpu: p.cpu_end - p.cpu_start,
            })
            .collect();
        let rate = |c: &Counted| c.frames as f64 / c.secs;
        // (With --control the "on" phases are "on" in name only.)
        for w in these.windows(3) {
            if w[1].on && !w[0].on && !w[2].on {
                ratios.push(rate(&w[1]) / ((rate(&w[0]) + rate(&w[2])) / 2.0));
            }
        }
        counted.extend(these);
    }
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    let totals = |on: bool| {
        let phases = || counted.iter().filter(move |c| c.on == on);
        let frames: usize = phases().map(|c| c.frames).sum();
        let secs: f64 = phases().map(|c| c.secs).sum();
        let all_frames: usize = phases().map(|c| c.all_frames).sum();
        let cpu: f64 = phases().map(|c| c.cpu).sum();
        (
            frames as f64 / secs,
            cpu / all_frames as f64 * 1e6,
            all_frames,
        )
    };
    let (off_fps, off_cpu, _) = totals(false);
    let (on_fps, on_cpu, on_frames) = totals(true);
    let per_on_frame =
        |i: usize| runs.iter().map(|r| r.cpu[i]).sum::<f64>() / on_frames as f64 * 1e6;
    Throughput {
        frames: args.frames,
        runs: runs.len(),
        control: args.control,
        phase_ms: args.phase_ms,
        off_fps,
        on_fps,
        ratio_q1: common::quantile(&sorted, 0.25),
        ratio_median: common::quantile(&sorted, 0.5),
        ratio_q3: common::quantile(&sorted, 0.75),
        ratios,
        off_cpu_us_per_frame: off_cpu,
        on_cpu_us_per_frame: on_cpu,
        publisher_zmq_cpu_us_per_frame: per_on_frame(0),
        subscribers_zmq_cpu_us_per_frame: per_on_frame(1),
        readers_cpu_us_per_frame: per_on_frame(2),
    }
}

/// Switches the subscriptions off and on every `phase` until `done` (with `control`, leaves
/// them off): the stalled subscriber's itself, the readers' by a word on their `controls`.
/// Returns the phases.
fn switch_phases(
    stalled: &zmq::Socket,
    controls: &[zmq::Socket],
    done: &AtomicBool,
    phase: Duration,
    control: bool,
) -> Result<Vec<Phase>> {
    let cpu = || common::cpu_seconds(ClockId::CLOCK_PROCESS_CPUTIME_ID);
    let mut phases = Vec::new();
    let mut state = true;
    let (mut start_ns, mut cpu_start) = (now_ns(), cpu());
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(phase);
        let (end_ns, cpu_end) = (now_ns(), cpu());
        phases.push(Phase {
            on: state,
            start_ns,
            end_ns,
            cpu_start,
            cpu_end,
        });
        (start_ns, cpu_start) = (end_ns, cpu_end);
        state = !state;
        let subscribed = state && !control;
        let word: &[u8] = if subscribed { b"on" } else { b"off" };
        for c in controls {
            c.send(word, 0)?;
        }
        if subscribed {
            stalled.set_subscribe(b"")?;
        } else {
            stalled.set_unsubscribe(b"")?;
        }
    }
    for c in controls {
        c.send(&b"done"[..], 0)?;
    }
    Ok(phases)
}

/// Drains whatever comes whenever it comes, (un)subscribing when `control` says "on" or
/// "off", until it says "done".
fn read_switched(sub: &zmq::Socket, control: &zmq::Socket) -> Result<()> {
    let mut message = zmq::Message::new();
    loop {
        let mut items = [
            sub.as_poll_item(zmq::POLLIN),
            control.as_poll_item(zmq::POLLIN),
        ];
        zmq::poll(&mut items, -1)?;
        if items[1].is_readable() {
            match &*control.recv_bytes(0)? {
                b"on" => sub.set_subscribe(b"")?,
                b"off" => sub.set_unsubscribe(b"")?,
                _ => return Ok(()),
            }
        }
        while sub.recv(&mut message, zmq::DONTWAIT).is_ok() {}
    }
}

/// The latency run: one subscriber at `rate`, timing every `frame` message.
fn latency(args: &Args, dir: &std::path::Path, rate: f64) -> Result<Latency> {
    let endpoint = endpoint(args, dir, "latency")?;
    let cfg = config(
        args,
        dir,
        "latency",
        &endpoint,
        args.latency_frames,
        rate,
        1,
    )?;
    let (viewer_core, ingest_core) = Placement::cores(args)?;
    let threads_before = threads::thread_ids();
    let ctx = zmq::Context::new();
    let sub = made_on(viewer_core, || subscriber(&ctx, &endpoint))?;
    let priority = args.viewer_realtime_priority;
    if priority > 0 {
        // The subscriber's ZeroMQ threads: those started with its socket.
        for tid in threads::started_here_since(&threads_before) {
            threads::set_realtime(tid, priority)?;
        }
    }
    let reader = std::thread::Builder::new()
        .name("subscriber".into())
        .spawn(move || {
            if let Some(core) = viewer_core {
                common::pin(core);
            }
            if priority > 0 {
                threads::set_realtime(0, priority)?;
            }
            read_until_end(&sub)
        })?;
    let (live, publisher) = made_on(ingest_core, || Live::start(&cfg.live, cfg.sink_cores()))
        .map_err(anyhow::Error::msg)?;
    let sinks: Vec<Box<dyn NotificationSink>> =
        vec![Box::new(publisher.context("publisher configured")?)];
    let summary = pipeline::start(
        &cfg,
        RunSinks {
            sinks,
            needs: cfg.live.needs(),
        },
    )?
    .wait();
    live.stop();
    let hops = reader
        .join()
        .map_err(|_| anyhow::anyhow!("subscriber panicked"))??;
    common::remove_run_files(&summary);
    let mut total: Vec<f64> = hops.iter().map(|h| h.total_us).collect();
    let mut first: Vec<f64> = hops.iter().map(|h| h.to_publisher_us).collect();
    total.sort_by(f64::total_cmp);
    first.sort_by(f64::total_cmp);
    Ok(Latency {
        rate_hz: rate,
        frames: hops.len(),
        p50_us: common::quantile(&total, 0.5),
        p99_us: common::quantile(&total, 0.99),
        max_us: common::quantile(&total, 1.0),
        to_publisher_p50_us: common::quantile(&first, 0.5),
        to_publisher_p99_us: common::quantile(&first, 0.99),
    })
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

/// Every frame's `written_ns`, in the order written.
struct WrittenTimes(Vec<u64>);

impl NotificationSink for WrittenTimes {
    fn notify(&mut self, n: &Notification) {
        if let Notification::Frame(f) = n {
            self.0.push(f.record.written_ns);
        }
    }
}

/// Reads until the run's end; the latency of every `frame` message in microseconds.
fn read_until_end(sub: &zmq::Socket) -> Result<Vec<Hops>> {
    sub.set_rcvtimeo(30_000)?;
    let mut latencies = Vec::new();
    loop {
        let parts = sub.recv_multipart(0)?;
        let received = now_ns();
        let Some(json) = parts.get(1) else { continue };
        match parts[0].as_slice() {
            b"frame" => {
                let v: serde_json::Value = serde_json::from_slice(json)?;
                let written = v["written_ns"].as_u64().context("written_ns")?;
                let published = v["published_ns"].as_u64().context("published_ns")?;
                latencies.push(Hops {
                    total_us: received.saturating_sub(written) as f64 / 1e3,
                    to_publisher_us: published.saturating_sub(written) as f64 / 1e3,
                });
            }
            b"run" => {
                let v: serde_json::Value = serde_json::from_slice(json)?;
                if v["event"] == "end" {
                    return Ok(latencies);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run of `phases` 100 ms phases, alternating from "on", whose frames come evenly at
    /// `on_hz` or `off_hz`, with 0.2 CPU seconds per phase.
    fn run(phases: u64, on_hz: u64, off_hz: u64) -> RunRecord {
        let ms = 1_000_000;
        let mut record = RunRecord {
            phases: Vec::new(),
            written: Vec::new(),
            cpu: [0.1, 0.2, 0.3],
        };
        for i in 0..phases {
            let on = i % 2 == 0;
            let (start_ns, end_ns) = (i * 100 * ms, (i + 1) * 100 * ms);
            let frames = if on { on_hz } else { off_hz } / 10;
            let step = 100 * ms / frames;
            record
                .written
                .extend((0..frames).map(|f| start_ns + f * step));
            record.phases.push(Phase {
                on,
                start_ns,
                end_ns,
                cpu_start: i as f64 * 0.2,
                cpu_end: (i + 1) as f64 * 0.2,
            });
        }
        record
    }

    #[test]
    fn phases_give_rates_ratios_and_cpu_per_frame() {
        let args = Args::parse_from(["live", "--settle-ms", "0"]);
        let t = summarise(&args, &[run(12, 900, 1000), run(8, 1800, 2000)]);
        // Inner phases: 1..=10 of the first run, 1..=6 of the second; the "on" ones with an inner
        // "off" one on each side: 2, 4, 6, 8 of the first, 2, 4 of the second.
        assert_eq!(t.ratios.len(), 6);
        for r in &t.ratios {
            assert!((r - 0.9).abs() < 1e-9, "{r}");
        }
        assert!((t.ratio_median - 0.9).abs() < 1e-9);
        // Off: phases 1, 3, 5, 7, 9 at 1000 Hz and 1, 3, 5 at 2000 Hz: 1100 frames in 0.8 s.
        assert!((t.off_fps - 1100.0 / 0.8).abs() < 1e-6, "{}", t.off_fps);
        // On: phases 2, 4, 6, 8, 10 at 900 Hz and 2, 4, 6 at 1800 Hz: 990 frames in 0.8 s.
        assert!((t.on_fps - 990.0 / 0.8).abs() < 1e-6, "{}", t.on_fps);
        // 0.2 CPU seconds per phase; the threads' CPU is spread over the "on" frames.
        assert!((t.on_cpu_us_per_frame - 0.2 * 8.0 / 990.0 * 1e6).abs() < 1e-6);
        assert!((t.readers_cpu_us_per_frame - 0.6 / 990.0 * 1e6).abs() < 1e-6);
    }
}
