//! The latency part of `detingest-bench live`: at half the throughput run's rate, one
//! subscriber times commit -> receive and the writer -> publisher hop.

use anyhow::{Context, Result};
use detingest_daemon::pipeline;
use detingest_daemon::sink::zmq::Live;
use detingest_daemon::sink::{NotificationSink, RunSinks, SinkNeeds, TableAt};
use detingest_daemon::stream::now_ns;
use detingest_daemon::threads;

use crate::common;
use serde::Serialize;

use super::*;

/// What the latency run measured, microseconds.
#[derive(Serialize, Debug)]
pub(super) struct Latency {
    pub(super) rate_hz: f64,
    pub(super) frames: usize,
    pub(super) p50_us: f64,
    pub(super) p99_us: f64,
    pub(super) max_us: f64,
    /// Writer to publisher.
    pub(super) to_publisher_p50_us: f64,
    pub(super) to_publisher_p99_us: f64,
}

/// One frame message's latency and its first hop, in microseconds.
struct Hops {
    total_us: f64,
    to_publisher_us: f64,
}

/// The latency run: one subscriber at `rate`, timing every `frame` message.
pub(super) fn latency(args: &Args, dir: &std::path::Path, rate: f64) -> Result<Latency> {
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
    let (live, publisher) = made_on(ingest_core, || {
        Live::start(
            &cfg.sink.zmq,
            cfg.sink_cores(),
            Default::default(),
            &TableAt::sink("zmq"),
        )
    })
    .map_err(anyhow::Error::msg)?;
    let sinks: Vec<Box<dyn NotificationSink>> =
        vec![Box::new(publisher.context("publisher configured")?)];
    let summary = pipeline::start(
        &cfg,
        RunSinks {
            sinks,
            needs: SinkNeeds::of(&cfg.sink.zmq),
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
