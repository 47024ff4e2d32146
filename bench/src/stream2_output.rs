//! `detingest-bench stream2-output`: what the Stream V2 output (`[sink.stream2]`) costs the
//! pipeline. Pipeline runs (synthetic detector, the pipeline's options) with the output on,
//! a PULL client draining it in this process, and off, alternating; each "on" run's rate
//! over the "off" run before it; the `stream2-out` thread's CPU per frame; what the client
//! received and what was dropped or skipped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use detingest_daemon::sink::stream2::{Stream2Sink, Stream2SinkConfig};
use detingest_daemon::sink::{RunSinks, Sink, SinkCores, SinkNeeds, TableAt};
use serde::Serialize;

use crate::common::{quantile, threads_cpu_seconds, threads_named};
use crate::pipeline::{config, time_pipeline, Args as PipelineArgs};

/// Options of `detingest-bench stream2-output`.
#[derive(Parser, Debug)]
pub struct Args {
    /// The pipeline's options (frames, shape, codec, workers, repeat...).
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// `[sink.stream2] buffers`.
    #[arg(long, default_value_t = 64)]
    buffers: usize,
    /// No client: every image is encoded and dropped at the socket (the output's own cost,
    /// without the TCP transfer and the client sharing the machine).
    #[arg(long)]
    no_client: bool,
}

#[derive(Serialize, Debug)]
struct Report {
    frames: u64,
    shape: String,
    off_fps: Vec<f64>,
    on_fps: Vec<f64>,
    ratios: Vec<f64>,
    ratio_median: f64,
    /// CPU of the `stream2-out` thread per frame (µs).
    output_thread_us_per_frame: f64,
    /// CPU of the output socket's ZeroMQ I/O thread (`stream2-zmq`: the TCP send) per
    /// frame (µs).
    output_io_us_per_frame: f64,
    images_sent: u64,
    images_received: u64,
    images_dropped: u64,
    images_skipped: u64,
}

/// Runs the benchmark.
pub fn run(args: &Args) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = args
        .pipeline
        .dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let cfg = Stream2SinkConfig {
        endpoint: "tcp://127.0.0.1:*".into(),
        buffers: args.buffers,
        ..Default::default()
    };
    let mut sink = Stream2Sink::start(&cfg, SinkCores::default(), &TableAt::sink("stream2"))?
        .ok_or_else(|| anyhow::anyhow!("no output"))?;
    let endpoint = sink.endpoint().to_owned();
    let (stop, received) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let client = {
        let (stop, received) = (Arc::clone(&stop), Arc::clone(&received));
        let no_client = args.no_client;
        std::thread::Builder::new()
            .name("bench-pull".into())
            .spawn(move || -> Result<()> {
                let ctx = zmq::Context::new();
                let pull = ctx.socket(zmq::PULL)?;
                if no_client {
                    return Ok(());
                }
                pull.connect(&endpoint)?;
                let mut msg = zmq::Message::new();
                while !stop.load(Ordering::Relaxed) {
                    if pull.poll(zmq::POLLIN, 50)? > 0 && pull.recv(&mut msg, zmq::DONTWAIT).is_ok()
                    {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(())
            })?
    };
    std::thread::sleep(Duration::from_millis(300)); // the client connects
    let threads = threads_named(|n| n == "stream2-out");
    let io_threads = threads_named(|n| n == "stream2-zmq");
    let (mut off_fps, mut on_fps, mut ratios, mut thread_s) = (vec![], vec![], vec![], 0.0);
    let mut io_s = 0.0;
    for rep in 0..args.pipeline.repeat.max(1) {
        let off = config(&args.pipeline, &dir, &format!("off{rep}"), false, "module")?;
        let (secs, stats) = time_pipeline(&off, RunSinks::none())?;
        off_fps.push(stats.written as f64 / secs);
        let on = config(&args.pipeline, &dir, &format!("on{rep}"), false, "module")?;
        let (before, io_before) = (
            threads_cpu_seconds(&threads),
            threads_cpu_seconds(&io_threads),
        );
        let sinks = RunSinks {
            sinks: sink.for_run().into_iter().collect(),
            needs: SinkNeeds::of(&cfg),
        };
        let (secs, stats) = time_pipeline(&on, sinks)?;
        thread_s += threads_cpu_seconds(&threads) - before;
        io_s += threads_cpu_seconds(&io_threads) - io_before;
        on_fps.push(stats.written as f64 / secs);
        ratios.push(on_fps[rep] / off_fps[rep]);
        eprintln!(
            "round {rep}: off {:.0} frames/s, on {:.0} ({:.3})",
            off_fps[rep], on_fps[rep], ratios[rep]
        );
    }
    std::thread::sleep(Duration::from_millis(500)); // the last images reach the client
    stop.store(true, Ordering::Relaxed);
    client
        .join()
        .map_err(|_| anyhow::anyhow!("client panicked"))??;
    let counters = sink.counters();
    sink.stop();
    let n = |k: &str| counters.get(k).unwrap_or(0);
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    let frames = args.pipeline.frames * args.pipeline.repeat.max(1) as u64;
    let report = Report {
        frames: args.pipeline.frames,
        shape: args.pipeline.shape.clone(),
        off_fps,
        on_fps,
        ratio_median: quantile(&sorted, 0.5),
        ratios,
        output_thread_us_per_frame: thread_s / frames as f64 * 1e6,
        output_io_us_per_frame: io_s / frames as f64 * 1e6,
        images_sent: n("images_sent"),
        images_received: received.load(Ordering::Relaxed),
        images_dropped: n("images_dropped"),
        images_skipped: n("images_skipped"),
    };
    if args.pipeline.json {
        crate::common::print_json(&report)
    } else {
        println!("{report:#?}");
        Ok(())
    }
}
