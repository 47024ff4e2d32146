//! `detingest-bench visibility`: what SWMR and each flush cadence cost the pipeline, measured
//! in one invocation, interleaved: the pipeline without SWMR (the baseline), then with SWMR at
//! the default cadence (1000 frames or 1 s), every 100 frames, every 10, and every frame (the
//! readable watermark then follows each index). Same frames, same workers, best of
//! `--repeat` each.

use anyhow::Result;
use clap::Parser;
use detingest_daemon::sink::RunSinks;
use serde::Serialize;

use crate::pipeline::{self, config, time_pipeline};

/// Options of `detingest-bench visibility`.
#[derive(Parser, Debug)]
pub struct Args {
    #[command(flatten)]
    pipeline: pipeline::Args,
}

/// One cadence's figures.
#[derive(Serialize, Debug)]
struct Line {
    name: &'static str,
    swmr: bool,
    flush_every_frames: u64,
    gbs: f64,
    over_no_swmr: f64,
}

/// The cadences: (name, SWMR, flush_every_frames, flush_interval_ms).
const CADENCES: [(&str, bool, u64, u64); 5] = [
    ("no SWMR, default cadence (baseline)", false, 1000, 1000),
    ("SWMR, default cadence", true, 1000, 1000),
    ("SWMR, every 100 frames", true, 100, 1000),
    ("SWMR, every 10 frames", true, 10, 1000),
    ("SWMR, every frame", true, 1, 1000),
];

/// Runs the benchmark and prints the lines.
pub fn run(args: &Args) -> Result<()> {
    let a = &args.pipeline;
    let tmp = tempfile::tempdir()?;
    let dir = a.dir.clone().unwrap_or_else(|| tmp.path().to_owned());
    std::fs::create_dir_all(&dir)?;
    let mut best = [f64::MAX; CADENCES.len()];
    let mut bytes = 0.0;
    for rep in 0..a.repeat.max(1) {
        for (i, &(_, swmr, every, interval)) in CADENCES.iter().enumerate() {
            let mut c = config(a, &dir, &format!("v{rep}_{i}"), false, "module")?;
            c.writer.swmr = swmr;
            c.writer.flush_every_frames = every;
            c.writer.flush_interval_ms = interval;
            let frame = c.sources[0].frame_format();
            bytes = (frame.0.frame_bytes(frame.1) as u64 * u64::from(c.sources[0].modules()))
                as f64
                * a.frames as f64;
            let (secs, stats) = time_pipeline(&c, RunSinks::none())?;
            let lost = stats.lost;
            anyhow::ensure!(lost == 0, "{lost} frames lost");
            best[i] = best[i].min(secs);
        }
    }
    let lines: Vec<Line> = CADENCES
        .iter()
        .zip(best)
        .map(|(&(name, swmr, every, _), secs)| Line {
            name,
            swmr,
            flush_every_frames: every,
            gbs: bytes / secs / 1e9,
            over_no_swmr: best[0] / secs,
        })
        .collect();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&lines)?);
        return Ok(());
    }
    println!(
        "{} frames of {} per run, codec {}, {} workers, best of {}",
        a.frames, a.shape, a.codec, a.workers, a.repeat
    );
    for l in &lines {
        println!(
            "{:<38} {:>6.2} GB/s  {:.3} of no SWMR",
            l.name, l.gbs, l.over_no_swmr
        );
    }
    Ok(())
}
