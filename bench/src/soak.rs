//! `detingest-bench soak`: a long run at a given rate and frame size that samples what a
//! day-long stream must keep flat (resident and anonymous memory, threads, file descriptors,
//! open HDF5 objects), fits a line to each after the warm-up, prints the slope per frame
//! written and fails when memory grows faster than `--max-bytes-per-frame`.
//!
//! The run is the daemon's own pipeline in this process (synthetic source, workers, writer,
//! the sinks a `--sinks` TOML file configures), so the process's memory is the pipeline's.
//! `--prune` deletes data files once the writer has moved two files on, so a million large
//! frames need no terabyte of disk (closed files only: the writer has let go of them).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use detingest_daemon::config::Config;
use detingest_daemon::pipeline::{self, RunSummary};
use detingest_daemon::sink::SinkSet;
use serde::Serialize;

/// Options of `detingest-bench soak`.
#[derive(Parser, Debug)]
pub struct Args {
    /// Frames to write.
    #[arg(long, default_value_t = 100_000)]
    frames: u64,
    /// Frames per second the source sends (0: as fast as the pipeline takes them).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Frame shape `NYxNX` (u16).
    #[arg(long, default_value = "512x1024")]
    shape: String,
    /// Codec: bslz4, lz4 or none.
    #[arg(long, default_value = "bslz4")]
    codec: String,
    /// Indices per data file.
    #[arg(long, default_value_t = 1000)]
    frames_per_file: u64,
    /// Mean background photons per pixel of the synthetic frames.
    #[arg(long, default_value_t = 0.5)]
    background: f64,
    /// Milliseconds between samples.
    #[arg(long, default_value_t = 250)]
    sample_ms: u64,
    /// Fraction of the frames before the fit starts (buffers, caches and pools warm up).
    #[arg(long, default_value_t = 0.2)]
    warmup: f64,
    /// Fail when anonymous memory grows faster than this many bytes per frame after warm-up.
    #[arg(long, default_value_t = 1.0)]
    max_bytes_per_frame: f64,
    /// A TOML file added to the run's configuration: sink tables (`[live]`, `[sink.*]`,
    /// `[kafka]`) or `[pipeline]` settings (`[writer]` and `[run]` are the soak's own).
    #[arg(long)]
    sinks: Option<PathBuf>,
    /// Also feed the live page's sink (the preview a `serve` daemon's page shows).
    #[arg(long)]
    page: bool,
    /// Delete data files two files behind the writer as the run goes.
    #[arg(long)]
    prune: bool,
    /// Write every sample to this CSV file (seconds, frames, rss, anon, threads, fds, ids).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Directory for the files (default: a temporary directory, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// One sample of the process.
#[derive(Serialize, Debug, Clone, Copy)]
struct Sample {
    seconds: f64,
    frames: u64,
    rss_bytes: u64,
    anon_bytes: u64,
    threads: u64,
    fds: u64,
    hdf5_objects: i64,
}

/// The slopes after warm-up, per frame written.
#[derive(Serialize, Debug)]
struct Report {
    frames: u64,
    frame_bytes: u64,
    seconds: f64,
    samples: usize,
    fitted_samples: usize,
    rss_bytes_per_frame: f64,
    anon_bytes_per_frame: f64,
    threads_per_kframe: f64,
    fds_per_kframe: f64,
    hdf5_objects_per_kframe: f64,
    first: Sample,
    after_warmup: Sample,
    last: Sample,
    after_run: Sample,
    max_bytes_per_frame: f64,
    pass: bool,
    /// Each sink's counters at the end (what it sent, dropped, queued).
    sinks: detingest_daemon::contract::ByName,
}

/// Runs the soak and prints the report; an error when memory grew too fast.
pub fn run(args: &Args) -> Result<()> {
    // As detingestd does (threads.rs): the measurement is of the daemon's process.
    detingest_daemon::threads::limit_malloc_arenas();
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_owned());
    std::fs::create_dir_all(&dir)?;
    let config = config(args, &dir)?;
    let frame_bytes = {
        let syn = config.sources[0]
            .synthetic
            .as_ref()
            .context("synthetic source")?;
        u64::from(syn.shape[0]) * u64::from(syn.shape[1]) * 2
    };
    // The sinks outlive the run, as under `detingestd serve`; stopped once it ended.
    let sinks = SinkSet::start(&config.sink, config.sink_context(args.page))?;
    let running = pipeline::start(&config, sinks.for_run())?;
    let t0 = Instant::now();
    let mut samples = Vec::new();
    let mut pruned = 0usize;
    // Samples while frames arrive; the end of the run (the VDS over every data file, the
    // files closed) is not the steady state and is reported apart.
    while !running.sources_finished() {
        samples.push(sample(t0, running.stats().recorded)?);
        if args.prune {
            pruned += prune(&running.streams()[0].file)?;
        }
        std::thread::sleep(Duration::from_millis(args.sample_ms));
    }
    let summary = running.wait();
    let sink_counters = sinks.counters();
    sinks.stop();
    // After the run: what its end gave back (not fitted: no frames are written any more).
    let after = sample(t0, summary.stats.recorded)?;
    let seconds = t0.elapsed().as_secs_f64();
    if args.dir.is_none() || args.prune {
        crate::common::remove_run_files(&summary);
    }
    check_summary(&summary)?;
    if let Some(path) = &args.csv {
        write_csv(path, &samples)?;
    }
    let mut report = report(args, frame_bytes, seconds, &samples, after)?;
    report.sinks = sink_counters;
    if args.json {
        crate::common::print_json(&report)?;
    } else {
        print_table(&report, pruned);
    }
    if !report.pass {
        bail!(
            "anonymous memory grew {:.2} bytes per frame after warm-up (limit {})",
            report.anon_bytes_per_frame,
            args.max_bytes_per_frame
        );
    }
    Ok(())
}

/// The soak's configuration: one synthetic module at `--rate`, plus the `--sinks` file.
fn config(args: &Args, dir: &Path) -> Result<Config> {
    let (ny, nx) = args
        .shape
        .split_once('x')
        .context("--shape must look like 512x1024")?;
    let extra = match &args.sinks {
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("reading {p:?}"))?,
        None => "[live]\npublish = \"\"\nquery = \"\"\n".into(),
    };
    let text = format!(
        "data_dir = {dir:?}\n{extra}\n\
         [writer]\ncodec = {codec:?}\n\
         [run]\nframes_per_file = {fpf}\n\
         [[source]]\nname = \"soak\"\n\
         stream = {{ beamtime = \"soak\", source = \"synthetic\", stream = \"soak_{pid}\" }}\n\
         [source.synthetic]\nframes = {frames}\nrate_hz = {rate:?}\nshape = [{ny}, {nx}]\n\
         background = {bg:?}\n",
        dir = dir.display().to_string(),
        codec = args.codec,
        fpf = args.frames_per_file,
        pid = std::process::id(),
        frames = args.frames,
        rate = args.rate,
        bg = args.background,
    );
    Ok(Config::parse(&text)?)
}

/// The process as it stands.
fn sample(t0: Instant, frames: u64) -> Result<Sample> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup")?;
    Ok(Sample {
        seconds: t0.elapsed().as_secs_f64(),
        frames,
        rss_bytes: kib_field(&status, "VmRSS:")? * 1024,
        anon_bytes: kib_field(&rollup, "Anonymous:")? * 1024,
        threads: std::fs::read_dir("/proc/self/task")?.count() as u64,
        fds: std::fs::read_dir("/proc/self/fd")?.count() as u64,
        hdf5_objects: hdf5_objects(),
    })
}

/// The value in kB of the line starting with `name` in a /proc file.
fn kib_field(text: &str, name: &str) -> Result<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {name} in /proc"))
}

/// HDF5 identifiers open in the process (files, datasets, groups, types, attributes).
fn hdf5_objects() -> i64 {
    let _hdf5 = hdf5_sys::LOCK.lock();
    // SAFETY: H5F_OBJ_ALL as the file id asks about every open file; the library is
    // initialised by the pipeline's first HDF5 call and serialised by the crate's lock.
    unsafe {
        hdf5_sys::h5f::H5Fget_obj_count(
            hdf5_sys::h5f::H5F_OBJ_ALL as hdf5_sys::h5i::hid_t,
            hdf5_sys::h5f::H5F_OBJ_ALL,
        ) as i64
    }
}

/// Deletes the stream's data files two behind the newest; returns how many.
fn prune(master: &Path) -> Result<usize> {
    let Some(dir) = master.parent() else {
        return Ok(0);
    };
    let Some(stem) = master
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix("_master.h5"))
    else {
        return Ok(0);
    };
    let prefix = format!("{stem}_data_");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix))
            })
            .collect(),
        Err(_) => return Ok(0),
    };
    files.sort();
    let old = files.len().saturating_sub(2);
    for f in &files[..old] {
        std::fs::remove_file(f)?;
    }
    Ok(old)
}

fn write_csv(path: &Path, samples: &[Sample]) -> Result<()> {
    let mut text = String::from("seconds,frames,rss_bytes,anon_bytes,threads,fds,hdf5_objects\n");
    for s in samples {
        text += &format!(
            "{:.3},{},{},{},{},{},{}\n",
            s.seconds, s.frames, s.rss_bytes, s.anon_bytes, s.threads, s.fds, s.hdf5_objects
        );
    }
    std::fs::write(path, text).with_context(|| format!("writing {path:?}"))
}

fn check_summary(summary: &RunSummary) -> Result<()> {
    if !summary.ok() {
        bail!("the soak run failed: {:?}", summary.streams);
    }
    Ok(())
}

/// Least-squares slope of `y` over `x`.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| {
        (a + (x - mx) * (y - my), b + (x - mx) * (x - mx))
    });
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

fn report(
    args: &Args,
    frame_bytes: u64,
    seconds: f64,
    samples: &[Sample],
    after: Sample,
) -> Result<Report> {
    let from = (args.frames as f64 * args.warmup) as u64;
    let fitted: Vec<&Sample> = samples.iter().filter(|s| s.frames >= from).collect();
    if fitted.len() < 3 || samples.is_empty() {
        bail!(
            "only {} samples after warm-up: run more frames or sample more often",
            fitted.len()
        );
    }
    let fit = |f: fn(&Sample) -> f64| {
        slope(
            &fitted
                .iter()
                .map(|s| (s.frames as f64, f(s)))
                .collect::<Vec<_>>(),
        )
    };
    let anon = fit(|s| s.anon_bytes as f64);
    Ok(Report {
        frames: after.frames,
        frame_bytes,
        seconds,
        samples: samples.len(),
        fitted_samples: fitted.len(),
        rss_bytes_per_frame: fit(|s| s.rss_bytes as f64),
        anon_bytes_per_frame: anon,
        threads_per_kframe: fit(|s| s.threads as f64) * 1000.0,
        fds_per_kframe: fit(|s| s.fds as f64) * 1000.0,
        hdf5_objects_per_kframe: fit(|s| s.hdf5_objects as f64) * 1000.0,
        first: samples[0],
        after_warmup: *fitted[0],
        last: *samples.last().unwrap_or(&samples[0]),
        after_run: after,
        max_bytes_per_frame: args.max_bytes_per_frame,
        pass: anon <= args.max_bytes_per_frame,
        sinks: Default::default(),
    })
}

fn print_table(r: &Report, pruned: usize) {
    println!(
        "{} frames of {} bytes in {:.1} s, {} samples ({} after warm-up), {} data files pruned",
        r.frames, r.frame_bytes, r.seconds, r.samples, r.fitted_samples, pruned
    );
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "{:<14} {:>10} {:>10} {:>8} {:>6} {:>8}",
        "", "RSS MB", "anon MB", "threads", "fds", "HDF5 ids"
    );
    for (what, s) in [
        ("first", r.first),
        ("after warm-up", r.after_warmup),
        ("last", r.last),
        ("after the run", r.after_run),
    ] {
        println!(
            "{what:<14} {:>10.1} {:>10.1} {:>8} {:>6} {:>8}",
            mb(s.rss_bytes),
            mb(s.anon_bytes),
            s.threads,
            s.fds,
            s.hdf5_objects
        );
    }
    println!(
        "slope after warm-up: RSS {:.3} B/frame, anonymous {:.3} B/frame (limit {}), \
         threads {:.3}, fds {:.3}, HDF5 ids {:.3} per 1000 frames: {}",
        r.rss_bytes_per_frame,
        r.anon_bytes_per_frame,
        r.max_bytes_per_frame,
        r.threads_per_kframe,
        r.fds_per_kframe,
        r.hdf5_objects_per_kframe,
        if r.pass { "pass" } else { "FAIL" }
    );
    for (name, c) in &r.sinks.0 {
        let c = serde_json::to_string(c).unwrap_or_default();
        println!("sink {name}: {c}");
    }
}
