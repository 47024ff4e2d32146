//! `detingest-bench quality`: what data quality costs ingest. The same zero-copy synthetic
//! run (module chunking) three ways, alternating, repeated: per-frame statistics off (the
//! baseline), statistics on (`[quality] statistics`, the default), and statistics with the
//! sampled spot finding and radial profile at `--analysis-hz` (their sink taking previews).
//! Prints each one's throughput and its ratio to the baseline (medians). First, on one
//! thread (CPU time, so a busy machine moves it less), the codec alone against the
//! statistics and then the codec, as a worker does, and the statistics alone.

use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use detingest_daemon::quality::stats::{frame_stats, limits, StatsPass};
use detingest_daemon::sink::quality::QualitySink;
use detingest_daemon::sink::{RunSinks, Sink, SinkCores, SinkNeeds, TableAt};
use detingest_daemon::source::synthetic::FrameBank;
use detingest_shm::PixelType;

use crate::pipeline::{config, time_pipeline, Args as PipelineArgs};

/// Options of `detingest-bench quality`.
#[derive(Parser, Debug)]
pub struct Args {
    /// The run's settings (frames, shape, grid, workers, codec, background).
    #[command(flatten)]
    pub(crate) run: PipelineArgs,
    /// Analyses a second per stream in the third configuration (the default's 1).
    #[arg(long, default_value_t = 1.0)]
    pub(crate) analysis_hz: f64,
}

/// Runs the benchmark and prints the figures.
pub fn run(args: &Args) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = args
        .run
        .dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_owned());
    std::fs::create_dir_all(&dir)?;
    kernel(args)?;
    let mut secs: [Vec<f64>; 3] = Default::default();
    let mut bytes = 0.0;
    for rep in 0..args.run.repeat.max(1) {
        for (k, times) in secs.iter_mut().enumerate() {
            let mut c = config(&args.run, &dir, &format!("q{rep}k{k}"), false, "module")?;
            c.sink.quality.statistics = k > 0;
            c.sink.quality.analysis_hz = if k == 2 { args.analysis_hz } else { 0.0 };
            let sink = QualitySink::start(
                &c.sink.quality,
                SinkCores::default(),
                &TableAt::sink("quality"),
            )?;
            let sinks = match &sink {
                Some(s) => RunSinks {
                    sinks: s.for_run().into_iter().collect(),
                    needs: SinkNeeds::of(&c.sink.quality),
                },
                None => RunSinks::none(),
            };
            let (t, stats) = time_pipeline(&c, sinks)?;
            if let Some(s) = sink {
                if k == 2 {
                    eprintln!("analyses: {:?}", s.counters());
                }
                let mut s = s;
                s.stop();
            }
            bytes = stats.bytes_raw as f64;
            times.push(t);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let m: Vec<f64> = secs.iter_mut().map(median).collect();
    let gbs = |t: f64| bytes / t / 1e9;
    println!(
        "quality cost, {} frames of {} modules {}, {} workers, medians of {}:",
        args.run.frames, args.run.grid, args.run.shape, args.run.workers, args.run.repeat
    );
    println!(
        "  statistics off                 {:6.2} GB/s  (baseline)",
        gbs(m[0])
    );
    println!(
        "  statistics on                  {:6.2} GB/s  {:.3} of the baseline",
        gbs(m[1]),
        m[0] / m[1]
    );
    println!(
        "  statistics + analyses {:4} Hz {:6.2} GB/s  {:.3} of the baseline",
        args.analysis_hz,
        gbs(m[2]),
        m[0] / m[2]
    );
    Ok(())
}

/// CPU seconds of one thread running `f`.
fn cpu(f: impl FnOnce()) -> f64 {
    let clock = nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID;
    let t = crate::common::cpu_seconds(clock);
    f();
    crate::common::cpu_seconds(clock) - t
}

/// The codec alone, the statistics as a pass and then the codec, the statistics block by
/// block as the codec reads (what a worker does), and the statistics alone, on one thread.
/// Interleaved frame by frame, the order rotating, each call timed in CPU time and summed:
/// this shared machine's drift between runs (often 10 % or more) then moves every variant
/// alike, and each is first on a frame as often as the others.
fn kernel(args: &Args) -> Result<()> {
    let c = config(
        &args.run,
        std::path::Path::new("/tmp"),
        "kernel",
        false,
        "module",
    )?;
    let Some(syn) = c.sources[0].synthetic.as_ref() else {
        anyhow::bail!("the benchmark config has a synthetic source")
    };
    let bank = FrameBank::generate(syn);
    let codec = c.writer.codec;
    let n = bank.frame_bytes();
    let l = limits(PixelType::U16, None, 0.0);
    let mut out = vec![0u8; codec.max_compressed_len(n, 2)];
    let frames = args.run.frames * args.run.repeat.max(1) as u64;
    let mut secs = [0.0f64; 4];
    let start = Instant::now();
    for i in 0..frames {
        let frame = bank.frame(i);
        for k in 0..4 {
            let variant = (k + i as usize) % 4;
            secs[variant] += cpu(|| match variant {
                0 => {
                    std::hint::black_box(codec.compress_into(frame, 2, &mut out).ok());
                }
                1 => {
                    let s = frame_stats(frame, PixelType::U16, &l);
                    let r = codec.compress_into(frame, 2, &mut out);
                    std::hint::black_box((r.ok(), s));
                }
                2 => {
                    let mut pass = StatsPass::new(PixelType::U16, &l);
                    let r = codec.compress_seeing(frame, 2, &mut out, &mut |b, noted| {
                        pass.add_noted(b, noted)
                    });
                    std::hint::black_box((r.ok(), pass.finish()));
                }
                _ => {
                    std::hint::black_box(frame_stats(frame, PixelType::U16, &l));
                }
            });
        }
    }
    let gbs = |t: f64| n as f64 * frames as f64 / t / 1e9;
    println!(
        "one thread, {frames} frames of {} ({codec:?}), interleaved ({:.0} s):",
        args.run.shape,
        start.elapsed().as_secs_f64()
    );
    println!("  codec alone                    {:6.2} GB/s", gbs(secs[0]));
    println!(
        "  statistics, then the codec     {:6.2} GB/s  {:.3} of the codec alone (a pass first)",
        gbs(secs[1]),
        secs[0] / secs[1]
    );
    println!(
        "  statistics block by block      {:6.2} GB/s  {:.3} of the codec alone (as a worker does)",
        gbs(secs[2]),
        secs[0] / secs[2]
    );
    println!("  statistics alone               {:6.2} GB/s", gbs(secs[3]));
    Ok(())
}
