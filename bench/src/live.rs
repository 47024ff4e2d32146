//! `detingest-bench live`: what live viewers cost ingest and how fast they hear of a frame.
//!
//! In one process, on the same synthetic frames:
//! 1. the pipeline with the ZeroMQ publisher and no subscriber, as fast as it goes;
//! 2. the same with four subscribers on loopback, one of which never reads;
//! 3. at half the rate of (1), one subscriber measuring commit-to-receive latency: the time
//!    from the writer finishing a frame (`written_ns`) to the `frame` message arriving, and
//!    its first hop, writer to publisher (`published_ns`: the notification thread woke, took
//!    it off the queue and encoded it); the rest is ZeroMQ and the subscriber.

use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use detingest_daemon::config::Config;
use detingest_daemon::live::Live;
use detingest_daemon::notify::{now_ns, NotificationSink};
use detingest_daemon::pipeline;
use detingest_daemon::threads;

use crate::common;
use serde::Serialize;

/// Options of `detingest-bench live`.
#[derive(Parser, Debug)]
pub struct Args {
    /// Frames per run.
    #[arg(long, default_value_t = 2000)]
    frames: u64,
    /// Codec: bslz4, lz4 or none.
    #[arg(long, default_value = "bslz4")]
    codec: String,
    /// `writer.flush_every_frames` of every run.
    #[arg(long, default_value_t = 1000)]
    flush_every: u64,
    /// Rate of the latency run in frames/s (default: half the no-subscriber rate).
    #[arg(long)]
    latency_rate: Option<f64>,
    /// Repeat the throughput runs and keep the fastest of each.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// `live.realtime_priority` of every run (0: normal scheduling).
    #[arg(long, default_value_t = 0)]
    realtime_priority: i32,
    /// SCHED_FIFO priority of the latency subscriber's thread and its ZeroMQ threads, as a
    /// latency-sensitive viewer on the same machine would run (0: normal scheduling).
    #[arg(long, default_value_t = 0)]
    viewer_realtime_priority: i32,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize, Debug)]
struct Report {
    frames: u64,
    codec: String,
    no_subscriber_fps: f64,
    four_subscribers_one_stalled_fps: f64,
    ratio: f64,
    latency_rate_hz: f64,
    latency_p50_us: f64,
    latency_p99_us: f64,
    latency_max_us: f64,
    /// Writer to publisher, p50 / p99.
    to_publisher_p50_us: f64,
    to_publisher_p99_us: f64,
    latency_frames: usize,
}

/// One frame message's latency and its first hop, in microseconds.
struct Hops {
    total_us: f64,
    to_publisher_us: f64,
}

/// Runs the benchmark and prints the report.
pub fn run(args: &Args) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut best = [f64::MAX; 2];
    for rep in 0..args.repeat.max(1) {
        for (slot, subs) in [(0, 0), (1, 4)] {
            let port = free_port()?;
            let cfg = config(args, dir.path(), &format!("r{rep}s{subs}"), port, 0.0, subs)?;
            best[slot] = best[slot].min(run_with_subscribers(&cfg, port, subs, 0)?.0);
        }
    }
    let fps = |secs: f64| args.frames as f64 / secs;
    let rate = args.latency_rate.unwrap_or(fps(best[0]) / 2.0);
    let port = free_port()?;
    let cfg = config(args, dir.path(), "latency", port, rate, 1)?;
    let (_, hops) = run_with_subscribers(&cfg, port, 1, args.viewer_realtime_priority)?;
    let mut total: Vec<f64> = hops.iter().map(|h| h.total_us).collect();
    let mut first: Vec<f64> = hops.iter().map(|h| h.to_publisher_us).collect();
    total.sort_by(f64::total_cmp);
    first.sort_by(f64::total_cmp);
    let report = Report {
        frames: args.frames,
        codec: args.codec.clone(),
        no_subscriber_fps: fps(best[0]),
        four_subscribers_one_stalled_fps: fps(best[1]),
        ratio: best[0] / best[1],
        latency_rate_hz: rate,
        latency_p50_us: common::quantile(&total, 0.5),
        latency_p99_us: common::quantile(&total, 0.99),
        latency_max_us: common::quantile(&total, 1.0),
        to_publisher_p50_us: common::quantile(&first, 0.5),
        to_publisher_p99_us: common::quantile(&first, 0.99),
        latency_frames: hops.len(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} frames of 512 x 1024 u16, codec {}",
            report.frames, report.codec
        );
        println!(
            "no subscriber                        {:>9.1} frames/s",
            report.no_subscriber_fps
        );
        println!(
            "4 subscribers, one stalled           {:>9.1} frames/s   ({:.3} of none)",
            report.four_subscribers_one_stalled_fps, report.ratio
        );
        println!(
            "commit -> received at {:.0} Hz: p50 {:.0} us, p99 {:.0} us, max {:.0} us ({} frames)",
            report.latency_rate_hz,
            report.latency_p50_us,
            report.latency_p99_us,
            report.latency_max_us,
            report.latency_frames
        );
        println!(
            "  of which writer -> publisher: p50 {:.0} us, p99 {:.0} us",
            report.to_publisher_p50_us, report.to_publisher_p99_us
        );
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn config(
    args: &Args,
    dir: &std::path::Path,
    tag: &str,
    port: u16,
    rate: f64,
    subs: usize,
) -> Result<Config> {
    let text = format!(
        "data_dir = {dir:?}\n[writer]\ncodec = {codec:?}\nflush_every_frames = {flush}\n\
         [live]\npublish = \"tcp://127.0.0.1:{port}\"\nquery = \"\"\nwait_for_subscribers = {subs}\n\
         realtime_priority = {rt}\n\
         [[source]]\nname = \"bench\"\nstream = {{ beamtime = \"bench\", source = \"live\", stream = \"{tag}\" }}\n\
         [source.synthetic]\nframes = {frames}\nrate_hz = {rate:?}\n",
        dir = dir.display().to_string(),
        codec = args.codec,
        flush = args.flush_every,
        frames = args.frames,
        rt = args.realtime_priority,
    );
    Ok(Config::parse(&text)?)
}

/// Runs one pipeline with `subs` subscribers (the last one stalled when there are several);
/// returns the seconds from start to the last file closed, and the first subscriber's
/// commit-to-receive latencies in microseconds.
fn run_with_subscribers(
    cfg: &Config,
    port: u16,
    subs: usize,
    viewer_priority: i32,
) -> Result<(f64, Vec<Hops>)> {
    let threads_before = threads::thread_ids();
    let ctx = zmq::Context::new();
    let endpoint = format!("tcp://127.0.0.1:{port}");
    let mut readers = Vec::new();
    let mut stalled = None;
    for i in 0..subs {
        let sub = ctx.socket(zmq::SUB)?;
        sub.set_subscribe(b"")?;
        sub.set_rcvhwm(1000)?;
        sub.connect(&endpoint)?;
        if subs > 1 && i == subs - 1 {
            stalled = Some(sub); // connected and subscribed, never read
        } else {
            let measure = i == 0 && subs == 1;
            readers.push(std::thread::spawn(move || {
                if measure && viewer_priority > 0 {
                    threads::set_realtime(0, viewer_priority)?;
                }
                read_until_end(&sub, measure)
            }));
        }
    }
    if viewer_priority > 0 {
        // The subscribers' ZeroMQ threads: those started with their sockets.
        for tid in threads::thread_ids() {
            if !threads_before.contains(&tid) {
                threads::set_realtime(tid, viewer_priority)?;
            }
        }
    }
    let (live, publisher) = Live::start(&cfg.live, None).map_err(anyhow::Error::msg)?;
    let sinks: Vec<Box<dyn NotificationSink>> =
        vec![Box::new(publisher.context("publisher configured")?)];
    let running = pipeline::start(cfg, sinks)?;
    let t = Instant::now();
    let summary = running.wait();
    let secs = t.elapsed().as_secs_f64();
    live.stop();
    let mut latencies = Vec::new();
    for (i, r) in readers.into_iter().enumerate() {
        let l = r
            .join()
            .map_err(|_| anyhow::anyhow!("subscriber panicked"))??;
        if i == 0 {
            latencies = l;
        }
    }
    drop(stalled);
    common::remove_run_files(&summary);
    Ok((secs, latencies))
}

/// Reads until the run's end; with `measure`, the latency of every `frame` message in
/// microseconds (otherwise only the `run` messages are parsed, as a cheap viewer would).
fn read_until_end(sub: &zmq::Socket, measure: bool) -> Result<Vec<Hops>> {
    sub.set_rcvtimeo(30_000)?;
    let mut latencies = Vec::new();
    loop {
        let parts = sub.recv_multipart(0)?;
        let received = now_ns();
        match parts.first().map(Vec::as_slice) {
            Some(b"frame") if measure => {
                let v: serde_json::Value = serde_json::from_slice(&parts[1])?;
                let written = v["written_ns"].as_u64().context("written_ns")?;
                let published = v["published_ns"].as_u64().context("published_ns")?;
                latencies.push(Hops {
                    total_us: received.saturating_sub(written) as f64 / 1e3,
                    to_publisher_us: published.saturating_sub(written) as f64 / 1e3,
                });
            }
            Some(b"run") => {
                let v: serde_json::Value = serde_json::from_slice(&parts[1])?;
                if v["event"] == "end" {
                    return Ok(latencies);
                }
            }
            _ => {}
        }
    }
}
