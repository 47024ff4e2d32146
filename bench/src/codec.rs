//! `detingest-bench codec`: one codec on many frames, on a chosen number of threads, reported
//! as GB/s of raw bytes and compression ratio; next to the C bitshuffle library (PyPI
//! `bitshuffle`, `compress_lz4`) on the same frames in the same run when the codec is bslz4
//! and a Python with `bitshuffle` is at hand.
//!
//! Frames are synthetic (Poisson background of `--mean` photons per pixel, no peaks, u16 by
//! default) or read from a raw file (`--input FILE --dtype u16 --shape 512x1024`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use detingest_daemon::source::synthetic::config::SyntheticConfig;
use detingest_daemon::source::synthetic::FrameBank;
use detingest_shm::PixelType;
use detingest_writer::{bitshuffle_lz4_with, Codec, Kernel};
use serde::Serialize;

use crate::common;

/// Options of `detingest-bench codec`.
#[derive(Parser, Debug)]
pub struct Args {
    /// Codec: bslz4, lz4 or none.
    #[arg(long, default_value = "bslz4")]
    codec: String,
    /// Bitshuffle transpose kernel: auto, scalar, sse2 or avx2.
    #[arg(long, default_value = "auto")]
    kernel: String,
    /// Compressing threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Frames compressed per measurement (cycling through the distinct frames).
    #[arg(long, default_value_t = 400)]
    frames: usize,
    /// Synthetic frames: mean photons per pixel (Poisson).
    #[arg(long, default_value_t = 0.5)]
    mean: f64,
    /// Synthetic frames: seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Raw little-endian frames to compress instead of synthetic ones.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Pixel type of the frames: u8, u16, u32, i32, f32.
    #[arg(long, default_value = "u16")]
    dtype: String,
    /// Frame shape `NYxNX`.
    #[arg(long, default_value = "512x1024")]
    shape: String,
    /// Repeat each measurement and keep the fastest.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Python with the `bitshuffle` package for the C reference (default: ./.venv/bin/python
    /// when it exists; `none` to skip).
    #[arg(long)]
    python: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The C library's figures on the same frames.
#[derive(Serialize, Debug)]
struct Reference {
    library: String,
    gbs: f64,
    ratio: f64,
}

#[derive(Serialize, Debug)]
struct Report {
    codec: String,
    kernel: String,
    threads: usize,
    frames: usize,
    frame_bytes: usize,
    dtype: String,
    source: String,
    gbs: f64,
    ratio: f64,
    c_reference: Option<Reference>,
    speedup_over_c: Option<f64>,
    ratio_difference_percent: Option<f64>,
}

/// Runs the benchmark and prints the report.
pub fn run(args: &Args) -> Result<()> {
    let codec = Codec::from_name(&args.codec).context("--codec must be bslz4, lz4 or none")?;
    let kernel = match args.kernel.as_str() {
        "auto" => Kernel::detect(),
        "scalar" => Kernel::Scalar,
        "sse2" => Kernel::Sse2,
        "avx2" => Kernel::Avx2,
        k => bail!("--kernel {k:?}: expected auto, scalar, sse2 or avx2"),
    };
    if !Kernel::available().contains(&kernel) {
        bail!("--kernel {kernel:?} is not supported by this CPU");
    }
    let pixel = PixelType::from_name(&args.dtype).with_context(|| {
        format!(
            "--dtype {:?}: expected u8, u16, u32, i32 or f32",
            args.dtype
        )
    })?;
    let (ny, nx) = args
        .shape
        .split_once('x')
        .context("--shape must look like 512x1024")?;
    let shape: [u32; 2] = [ny.parse()?, nx.parse()?];
    let frame_bytes = pixel.frame_bytes(shape);
    let (frames, source) = match &args.input {
        Some(path) => (read_frames(path, frame_bytes)?, path.display().to_string()),
        None => (
            synthetic(args, pixel, shape),
            format!("synthetic Poisson({})", args.mean),
        ),
    };
    let es = pixel.size();

    // Ours and the C library take turns, so load from other tenants of the machine falls on
    // both alike; each keeps its fastest turn.
    let raw = (frame_bytes * args.frames) as f64;
    let c_python = match codec {
        Codec::BitshuffleLz4 => common::baseline_python(args.python.as_deref()),
        _ => None,
    };
    let dir = tempfile::tempdir()?;
    let frames_file = dir.path().join("frames.raw");
    if c_python.is_some() {
        std::fs::write(&frames_file, frames.concat())?;
    }
    let mut best = f64::MAX;
    let mut compressed = 0usize;
    let mut c_reference: Option<Reference> = None;
    for _ in 0..args.repeat.max(1) {
        let (secs, bytes) = time_codec(codec, kernel, &frames, es, args.frames, args.threads);
        best = best.min(secs);
        compressed = bytes;
        if let Some(python) = &c_python {
            if let Some(c) = c_reference_turn(python, args, &frames_file, frames.len(), raw)? {
                if c_reference.as_ref().is_none_or(|b| c.gbs > b.gbs) {
                    c_reference = Some(c);
                }
            }
        }
    }
    let gbs = raw / best / 1e9;
    let ratio = raw / compressed as f64;
    let report = Report {
        codec: codec.name().into(),
        kernel: format!("{kernel:?}").to_lowercase(),
        threads: args.threads,
        frames: args.frames,
        frame_bytes,
        dtype: pixel.name().into(),
        source,
        gbs,
        ratio,
        speedup_over_c: c_reference.as_ref().map(|c| gbs / c.gbs),
        ratio_difference_percent: c_reference
            .as_ref()
            .map(|c| (ratio / c.ratio - 1.0) * 100.0),
        c_reference,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} frames of {} ({} bytes, {}), codec {} ({} kernel), {} thread(s)",
            report.frames,
            report.dtype,
            report.frame_bytes,
            report.source,
            report.codec,
            report.kernel,
            report.threads
        );
        println!(
            "detingest           {:>8.3} GB/s   ratio {:.3}",
            report.gbs, report.ratio
        );
        match &report.c_reference {
            Some(c) => {
                println!(
                    "{:<19} {:>8.3} GB/s   ratio {:.3}",
                    c.library, c.gbs, c.ratio
                );
                println!(
                    "detingest / C = {:.2}x throughput, ratio differs by {:+.2} %",
                    gbs / c.gbs,
                    (ratio / c.ratio - 1.0) * 100.0
                );
            }
            None if codec == Codec::BitshuffleLz4 => {
                println!("(C reference not run: no Python with `bitshuffle`; see --python)")
            }
            None => {}
        }
    }
    Ok(())
}

fn synthetic(args: &Args, pixel: PixelType, shape: [u32; 2]) -> Vec<Vec<u8>> {
    let bank = FrameBank::generate(&SyntheticConfig {
        shape,
        pixel,
        background: args.mean,
        peaks: 0,
        seed: args.seed,
        bank_frames: 8,
        ..SyntheticConfig::default()
    });
    (0..bank.len() as u64)
        .map(|i| bank.frame(i).to_vec())
        .collect()
}

fn read_frames(path: &PathBuf, frame_bytes: usize) -> Result<Vec<Vec<u8>>> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if data.is_empty() || data.len() % frame_bytes != 0 {
        bail!(
            "{} holds {} bytes, not a whole number of {frame_bytes}-byte frames",
            path.display(),
            data.len()
        );
    }
    Ok(data.chunks(frame_bytes).map(<[u8]>::to_vec).collect())
}

/// Seconds for `threads` threads to compress `count` frames, and the compressed bytes. Each
/// thread times itself from a common start (a barrier), so spawning threads is not counted.
fn time_codec(
    codec: Codec,
    kernel: Kernel,
    frames: &[Vec<u8>],
    es: usize,
    count: usize,
    threads: usize,
) -> (f64, usize) {
    let threads = threads.max(1);
    let start = std::sync::Barrier::new(threads);
    let (secs, bytes) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|w| {
                let start = &start;
                s.spawn(move || {
                    let mut out = vec![0u8; codec.max_compressed_len(frames[0].len(), es)];
                    let mut total = 0;
                    start.wait();
                    let t = Instant::now();
                    for i in (w..count).step_by(threads) {
                        let input = &frames[i % frames.len()];
                        let len = match codec {
                            Codec::BitshuffleLz4 => {
                                bitshuffle_lz4_with(kernel, input, es, &mut out)
                            }
                            _ => codec.compress_into(input, es, &mut out),
                        };
                        total += len.unwrap_or(0);
                    }
                    (t.elapsed().as_secs_f64(), total)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or((f64::MAX, 0)))
            .fold((0.0f64, 0usize), |(s, b), (ws, wb)| (s.max(ws), b + wb))
    });
    (secs, bytes)
}

/// One turn of PyPI `bitshuffle.compress_lz4` on the same frames, one thread
/// (`OMP_NUM_THREADS=1`), counting the 12-byte chunk header the HDF5 filter adds. `None` when
/// that Python has no `bitshuffle`.
fn c_reference_turn(
    python: &str,
    args: &Args,
    frames_file: &std::path::Path,
    distinct: usize,
    raw: f64,
) -> Result<Option<Reference>> {
    let script = r#"
import json, sys, time
import numpy as np
try:
    import bitshuffle
except ImportError:
    print(json.dumps(None)); sys.exit(0)
path, dtype, nframes, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
frames = np.fromfile(path, dtype=np.dtype(dtype)).reshape(nframes, -1)
bitshuffle.compress_lz4(frames[0])  # warm up
t = time.perf_counter(); total = 0
for i in range(count):
    total += bitshuffle.compress_lz4(frames[i % nframes]).nbytes + 12
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "bytes": total, "version": bitshuffle.__version__,
                  "avx2": bool(bitshuffle.using_AVX2())}))
"#;
    let dtype = PixelType::from_name(&args.dtype).map_or("<u2", PixelType::numpy_typestr);
    let args = [
        frames_file.display().to_string(),
        dtype.to_owned(),
        distinct.to_string(),
        args.frames.to_string(),
    ];
    let env = [("OMP_NUM_THREADS", "1")];
    let Some(v) = common::python_baseline(python, script, &args, &env, "C reference")? else {
        return Ok(None);
    };
    let secs = v["seconds"].as_f64().context("seconds")?;
    let bytes = v["bytes"].as_f64().context("bytes")?;
    Ok(Some(Reference {
        library: format!(
            "C bitshuffle {}{}",
            v["version"].as_str().unwrap_or("?"),
            if v["avx2"].as_bool() == Some(true) {
                " (AVX2)"
            } else {
                ""
            }
        ),
        gbs: raw / secs / 1e9,
        ratio: raw / bytes,
    }))
}
