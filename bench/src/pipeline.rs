//! `detingest-bench pipeline`: pipeline throughput and its baselines in one run.
//!
//! Baselines, all on the frames the pipeline's synthetic source produces:
//! - `memcpy`: copying each frame once into rotating buffers, one thread (the cost a copying
//!   source such as a socket receive pays);
//! - `codec`: the codec alone on `--workers` threads, reading the frames in place as the
//!   pipeline's workers do;
//! - `write`: the compressed chunks written back to back into a plain file in the same
//!   directory, one thread, no fsync (the pipeline's flushes don't fsync either);
//! - `h5py`: a Python program writing the same frames with h5py through HDF5's filter
//!   (hdf5plugin's, matching the codec), one frame per chunk (`h5py_write.rs`; when the Python
//!   has h5py and hdf5plugin).
//!
//! The pipeline runs twice per repetition: with the synthetic source handing frames down by
//! reference (like a shared-memory slot) and copying each into a pool buffer (like a socket).
//! With `--grid RxC` the detector has R x C modules of `--shape` each, written with module
//! chunking, and a third run per repetition writes them with frame chunking (the images
//! assembled by one copy in the indexer). Every figure is raw (uncompressed) bytes per second,
//! so they compare directly; the codec baseline compresses as many module frames. Beside the
//! zero-copy run's ratio the report prints the bound the codec plus the plain write of its
//! chunks allow on this machine's cores, and beside the copying run's the bound a copy plus
//! the codec allow, computed from the same run's baselines.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use detingest_daemon::config::Config;
use detingest_daemon::pipeline::{self, RunSummary, StatsSnapshot};
use detingest_daemon::sink::RunSinks;
use detingest_daemon::source::synthetic::FrameBank;
use detingest_writer::Codec;
use serde::Serialize;

use crate::h5py_write;

/// Options of `detingest-bench pipeline`.
#[derive(Parser, Debug)]
pub struct Args {
    /// Frames per measurement.
    #[arg(long, default_value_t = 2000)]
    pub(crate) frames: u64,
    /// Compression workers (and codec-baseline threads).
    #[arg(long, default_value_t = 2)]
    pub(crate) workers: usize,
    /// Codec: bslz4, lz4 or none.
    #[arg(long, default_value = "bslz4")]
    pub(crate) codec: String,
    /// Module shape `NYxNX` (u16 pixels: the time of the codec alone is measured on u16).
    #[arg(long, default_value = "512x1024")]
    pub(crate) shape: String,
    /// Module grid `RxC`: frames of R x C modules form one image.
    #[arg(long, default_value = "1x1")]
    pub(crate) grid: String,
    /// Mean background photons per pixel.
    #[arg(long, default_value_t = 0.5)]
    pub(crate) background: f64,
    /// Distinct frames the synthetic source cycles through (the baselines use the same).
    #[arg(long, default_value_t = 16)]
    pub(crate) bank_frames: usize,
    /// Raw frame buffers of the copying source (`pipeline.input_buffers`).
    #[arg(long, default_value_t = 32)]
    pub(crate) input_buffers: usize,
    /// Compressed chunk buffers (`pipeline.output_buffers`).
    #[arg(long, default_value_t = 32)]
    pub(crate) output_buffers: usize,
    /// Directory for the files (default: a temporary directory, removed afterwards).
    #[arg(long)]
    pub(crate) dir: Option<PathBuf>,
    /// Repeat every measurement this many times and keep the best of each.
    #[arg(long, default_value_t = 3)]
    pub(crate) repeat: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Python with h5py and hdf5plugin for the h5py baseline (default: ./.venv/bin/python if
    /// present; `none`: no h5py baseline).
    #[arg(long)]
    pub(crate) python: Option<String>,
}

/// The figures of one run; all rates in GB/s of raw frame bytes.
#[derive(Serialize, Debug)]
struct Report {
    frames: u64,
    modules: u64,
    module_bytes: usize,
    workers: usize,
    codec: String,
    compression_ratio: f64,
    memcpy_gbs: f64,
    codec_gbs: f64,
    write_gbs: f64,
    pipeline_gbs: f64,
    pipeline_copying_source_gbs: f64,
    pipeline_over_codec: f64,
    pipeline_copying_source_over_codec: f64,
    /// The most a copying source allows on these cores: each byte copied once (at the
    /// memcpy rate, one thread) and encoded (at the codec's rate on `workers` threads), all
    /// on `cores` cores: `cores / (workers / codec + 1 / memcpy)` GB/s, as a share of the
    /// codec alone; and the copying pipeline's share of that bound.
    cores: usize,
    /// The same for the zero-copy source with the chunks' plain write (at the write
    /// baseline's rate, one thread) in place of the copy: `cores / (workers / codec + 1 /
    /// write)`, as a share of the codec alone; and the zero-copy pipeline's share of it.
    zero_copy_bound_over_codec: f64,
    pipeline_over_zero_copy_bound: f64,
    copying_bound_over_codec: f64,
    pipeline_copying_source_over_bound: f64,
    /// With several modules: the pipeline with frame chunking, zero-copy source.
    pipeline_frame_chunking_gbs: Option<f64>,
    pipeline_frame_chunking_over_codec: Option<f64>,
    /// h5py + hdf5plugin writing the same module frames, one thread (when run).
    h5py_gbs: Option<f64>,
    pipeline_over_h5py: Option<f64>,
    lost_frames: u64,
}

/// Runs the benchmark and prints the report.
pub fn run(args: &Args) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_owned());
    std::fs::create_dir_all(&dir)?;
    let base = config(args, &dir, "probe", false, "module")?;
    let codec = base.writer.codec;
    let modules = u64::from(base.sources[0].modules());
    let Some(syn) = base.sources[0].synthetic.as_ref() else {
        unreachable!("the benchmark config has a synthetic source")
    };
    let bank = FrameBank::generate(syn);
    let module_bytes = bank.frame_bytes();
    // Module frames moved per measurement.
    let items = args.frames * modules;
    let total = module_bytes as f64 * items as f64;
    let gbs = |secs: f64| total / secs / 1e9;

    let python = crate::common::baseline_python(args.python.as_deref());
    let raw = dir.join(format!("bank_{}.raw", std::process::id()));
    if python.is_some() {
        let bytes: Vec<u8> = (0..bank.len() as u64)
            .flat_map(|i| bank.frame(i).iter().copied())
            .collect();
        std::fs::write(&raw, bytes)?;
    }
    let [ny, nx] = syn.shape;
    let h5py_frames = h5py_write::Frames {
        raw: &raw,
        distinct: bank.len(),
        shape: [ny as usize, nx as usize],
        count: items,
    };
    // Best (shortest) seconds of: memcpy, codec, write, pipeline, copying pipeline, frame
    // chunking, h5py.
    let mut best = [f64::MAX; 7];
    let mut h5py_ran = false;
    let mut ratio = 0.0;
    let mut lost = 0;
    let runs: &[(usize, bool, &str)] = if modules > 1 {
        &[
            (3, false, "module"),
            (4, true, "module"),
            (5, false, "frame"),
        ]
    } else {
        &[(3, false, "module"), (4, true, "module")]
    };
    for rep in 0..args.repeat.max(1) {
        best[0] = best[0].min(time_memcpy(&bank, items, args.input_buffers));
        let (secs, chunks) = time_codec(&bank, codec, items, args.workers);
        best[1] = best[1].min(secs);
        let chunk_bytes: usize = chunks.iter().map(Vec::len).sum();
        ratio = (module_bytes * chunks.len()) as f64 / chunk_bytes as f64;
        best[2] = best[2].min(time_write(&dir, &chunks, items, rep)?);
        for &(slot, copy, chunking) in runs {
            let tag = format!("r{rep}c{}{chunking}", u8::from(copy));
            let c = config(args, &dir, &tag, copy, chunking)?;
            let (secs, stats) = time_pipeline(&c, RunSinks::none())?;
            best[slot] = best[slot].min(secs);
            lost += stats.lost;
        }
        if let Some(python) = &python {
            if let Some(secs) = h5py_write::time_h5py(python, &h5py_frames, codec, &dir)? {
                best[6] = best[6].min(secs);
                h5py_ran = true;
            }
        }
    }
    if python.is_some() {
        std::fs::remove_file(&raw)?;
    }
    let h5py = h5py_ran.then_some(best[6]);
    let framed = (modules > 1).then_some(best[5]);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let (codec_rate, copy_rate) = (gbs(best[1]), gbs(best[0]));
    // What `cores` cores allow when every byte is encoded (`workers` threads' worth of the
    // codec's rate) and also goes through one more one-thread step of rate `other`.
    let bound_with =
        |other: f64| cores as f64 / (args.workers as f64 / codec_rate + 1.0 / other) / codec_rate;
    let bound = bound_with(copy_rate);
    let zero_copy_bound = bound_with(gbs(best[2]));
    let report = Report {
        frames: args.frames,
        modules,
        module_bytes,
        workers: args.workers,
        codec: codec.name().into(),
        compression_ratio: ratio,
        memcpy_gbs: gbs(best[0]),
        codec_gbs: gbs(best[1]),
        write_gbs: gbs(best[2]),
        pipeline_gbs: gbs(best[3]),
        pipeline_copying_source_gbs: gbs(best[4]),
        pipeline_over_codec: best[1] / best[3],
        pipeline_copying_source_over_codec: best[1] / best[4],
        cores,
        zero_copy_bound_over_codec: zero_copy_bound,
        pipeline_over_zero_copy_bound: best[1] / best[3] / zero_copy_bound,
        copying_bound_over_codec: bound,
        pipeline_copying_source_over_bound: best[1] / best[4] / bound,
        pipeline_frame_chunking_gbs: framed.map(gbs),
        pipeline_frame_chunking_over_codec: framed.map(|t| best[1] / t),
        h5py_gbs: h5py.map(gbs),
        pipeline_over_h5py: h5py.map(|t| t / best[3]),
        lost_frames: lost,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

/// The benchmark's configuration: one synthetic source into a stream named `tag`.
pub(crate) fn config(
    args: &Args,
    dir: &Path,
    tag: &str,
    copy: bool,
    chunking: &str,
) -> Result<Config> {
    let (ny, nx) = args
        .shape
        .split_once('x')
        .context("--shape must look like 512x1024")?;
    let (rows, cols) = args
        .grid
        .split_once('x')
        .context("--grid must look like 2x2")?;
    let text = format!(
        "data_dir = {dir:?}\n[writer]\ncodec = {codec:?}\n\
         [pipeline]\ncompress_workers = {workers}\n\
         input_buffers = {inb}\noutput_buffers = {outb}\n\
         [run]\nchunking = {chunking:?}\n\
         [[source]]\nname = \"bench\"\ngrid = [{rows}, {cols}]\n\
         stream = {{ beamtime = \"bench\", source = \"synthetic\", stream = \"{tag}_{pid}\" }}\n\
         [source.synthetic]\nframes = {frames}\nshape = [{ny}, {nx}]\nbackground = {bg:?}\n\
         bank_frames = {bank}\ncopy = {copy}\n",
        dir = dir.display().to_string(),
        codec = args.codec,
        workers = args.workers,
        inb = args.input_buffers,
        outb = args.output_buffers,
        pid = std::process::id(),
        frames = args.frames,
        bg = args.background,
        bank = args.bank_frames,
    );
    Ok(Config::parse(&text)?)
}

fn print_table(r: &Report) {
    println!(
        "{} frames of {} module(s) of {} bytes, codec {}, {} worker(s), compression ratio {:.2}",
        r.frames, r.modules, r.module_bytes, r.codec, r.workers, r.compression_ratio
    );
    let row = |what: &str, gbs: f64| println!("{what:<44} {gbs:>8.2}");
    println!("{:<44} {:>8}", "measurement (raw bytes)", "GB/s");
    row("memcpy into rotating buffers, 1 thread", r.memcpy_gbs);
    row(
        &format!("codec alone, {} thread(s)", r.workers),
        r.codec_gbs,
    );
    row("plain write of the chunks, 1 thread", r.write_gbs);
    row("pipeline, zero-copy source", r.pipeline_gbs);
    row("pipeline, copying source", r.pipeline_copying_source_gbs);
    if let (Some(g), Some(x)) = (
        r.pipeline_frame_chunking_gbs,
        r.pipeline_frame_chunking_over_codec,
    ) {
        row("pipeline, frame chunking, zero-copy source", g);
        println!("frame chunking / codec alone = {x:.3}");
    }
    if let (Some(g), Some(x)) = (r.h5py_gbs, r.pipeline_over_h5py) {
        row("h5py + hdf5plugin, same frames, 1 thread", g);
        println!("pipeline (zero-copy source) / h5py = {x:.2}");
    }
    println!(
        "pipeline / codec alone = {:.3} (zero-copy source), {:.3} (copying source); lost {}",
        r.pipeline_over_codec, r.pipeline_copying_source_over_codec, r.lost_frames
    );
    println!(
        "zero-copy source: bound on {} cores (the codec plus the chunks' write) = {:.3} of the \
         codec alone; the pipeline reaches {:.3} of it",
        r.cores, r.zero_copy_bound_over_codec, r.pipeline_over_zero_copy_bound
    );
    println!(
        "copying source: bound on {} cores (a copy plus the codec) = {:.3} of the codec alone; \
         the pipeline reaches {:.3} of it",
        r.cores, r.copying_bound_over_codec, r.pipeline_copying_source_over_bound
    );
}

/// Seconds from start to the last file closed, and the counters at the end, of one pipeline
/// run handing its notifications to `sinks` (its files removed after).
pub(crate) fn time_pipeline(c: &Config, sinks: RunSinks) -> Result<(f64, StatsSnapshot)> {
    let (secs, summary) = time_pipeline_keeping(c, sinks)?;
    crate::common::remove_run_files(&summary);
    Ok((secs, summary.stats))
}

/// [`time_pipeline`], its files kept (the caller removes them with
/// `common::remove_run_files`), with the whole summary.
pub(crate) fn time_pipeline_keeping(c: &Config, sinks: RunSinks) -> Result<(f64, RunSummary)> {
    let running = pipeline::start(c, sinks)?;
    let t = Instant::now();
    let summary = running.wait();
    let secs = t.elapsed().as_secs_f64();
    if !summary.ok() {
        crate::common::remove_run_files(&summary);
        anyhow::bail!("the pipeline run failed: {:?}", summary.streams);
    }
    Ok((secs, summary))
}

/// Seconds to copy `frames` frames once each into `buffers` rotating buffers, as a copying
/// source fills its pool.
fn time_memcpy(bank: &FrameBank, frames: u64, buffers: usize) -> f64 {
    let buffers = buffers.max(1);
    let mut dst: Vec<Vec<u8>> = (0..buffers)
        .map(|_| vec![1u8; bank.frame_bytes()])
        .collect();
    let t = Instant::now();
    for n in 1..=frames {
        let d = &mut dst[n as usize % buffers];
        d.copy_from_slice(bank.frame(n));
        std::hint::black_box(d);
    }
    t.elapsed().as_secs_f64()
}

/// Seconds for `workers` threads to compress `frames` frames read in place from the bank, as
/// the pipeline's workers read them; also returns the chunks of one bank cycle (for the write
/// baseline and the ratio).
fn time_codec(bank: &FrameBank, codec: Codec, frames: u64, workers: usize) -> (f64, Vec<Vec<u8>>) {
    let n = bank.frame_bytes();
    let t = Instant::now();
    std::thread::scope(|s| {
        for w in 0..workers as u64 {
            s.spawn(move || {
                let mut out = vec![0u8; codec.max_compressed_len(n, 2)];
                let mut i = w;
                while i < frames {
                    let len = codec.compress_into(bank.frame(i), 2, &mut out).unwrap_or(0);
                    std::hint::black_box(len);
                    i += workers as u64;
                }
            });
        }
    });
    let secs = t.elapsed().as_secs_f64();
    let chunks = (0..bank.len() as u64)
        .map(|i| {
            let mut out = vec![0u8; codec.max_compressed_len(n, 2)];
            let len = codec.compress_into(bank.frame(i), 2, &mut out).unwrap_or(0);
            out.truncate(len);
            out
        })
        .collect();
    (secs, chunks)
}

/// Seconds to write `frames` chunks (cycling through `chunks`) into one plain file.
fn time_write(dir: &Path, chunks: &[Vec<u8>], frames: u64, rep: usize) -> Result<f64> {
    let path = dir.join(format!("plain_write_{}_{rep}.bin", std::process::id()));
    let t = Instant::now();
    {
        let mut f = std::fs::File::create(&path)?;
        for i in 0..frames {
            f.write_all(&chunks[(i % chunks.len() as u64) as usize])?;
        }
        f.flush()?;
    }
    let secs = t.elapsed().as_secs_f64();
    std::fs::remove_file(&path)?;
    Ok(secs)
}
