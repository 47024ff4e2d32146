//! `detingestd`: the detector ingest daemon's command line.

mod filter_files;
mod ready;
mod report;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use detingest_daemon::config::Config;
use detingest_daemon::contract::RunRequest;
use detingest_daemon::control::{self, Daemon};
use detingest_daemon::runs::RunManager;
use detingest_daemon::source::synthetic::FrameBank;
use detingest_writer::Codec;

/// Detector ingest daemon: frames from detectors and DAQ software to NXmx HDF5 files.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Log filter (tracing syntax, e.g. `info` or `detingest_daemon=debug`); RUST_LOG wins.
    #[arg(long, global = true, default_value = "info")]
    log: String,
    /// Once ready (`serve`, `demo`: the control API answers; `run`: the run started), write
    /// what was bound to this file as JSON: the API's address, the sinks' endpoints.
    #[arg(long, global = true)]
    ready_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline described by a configuration file until its sources end (or Ctrl-C).
    Run {
        /// The configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Override the file's `data_dir`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Write the final summary as JSON to this file.
        #[arg(long)]
        summary_json: Option<PathBuf>,
    },
    /// Serve the HTTP control API: runs are started and stopped over it (`POST /run/start`,
    /// `POST /run/stop`, `GET /run`), one at a time, until Ctrl-C.
    Serve {
        /// The configuration file (TOML): sources, `[run]` defaults, `[control] listen`.
        #[arg(long, short)]
        config: PathBuf,
        /// Override the file's `data_dir`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Override `[control] listen` (e.g. 127.0.0.1:8450).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Report whether HDF5 files record bitshuffle/LZ4 filter values their readers decode
    /// with (exit 0), or values a filter plugin changed when the file was written (exit 1:
    /// run `repair`). Files of detingest up to 0.1.0 can be affected (docs/FILES.md).
    Check {
        /// HDF5 files (data files; a master holds no filtered datasets).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Rewrite, in place, the affected datasets of files that `check` reports: each chunk is
    /// copied unchanged into a dataset that records the right filter values; the copy is
    /// verified before it replaces the file.
    Repair {
        /// HDF5 files to repair; files that need nothing are left untouched.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Validate a configuration file without running it; errors name the offending key.
    CheckConfig {
        /// The configuration file (TOML).
        config: PathBuf,
    },
    /// Run the built-in synthetic JUNGFRAU-like detector through the full pipeline, with the
    /// live page, a progress line and a final summary.
    Demo {
        /// Where to write files.
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
        /// Frames to produce.
        #[arg(long, default_value_t = 3000)]
        frames: u64,
        /// Frames per second (0: as fast as the pipeline goes).
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Chunk codec: bslz4 (bitshuffle-LZ4), lz4 or none.
        #[arg(long, default_value = "bslz4", value_parser = parse_codec)]
        codec: Codec,
        /// Compression worker threads.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Seed of the synthetic detector.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Where the live page (and control API) listens while the demo runs.
        #[arg(long, default_value = "127.0.0.1:8450")]
        listen: std::net::SocketAddr,
        /// Print the configuration the demo runs and exit.
        #[arg(long)]
        print_config: bool,
    },
    /// Finish the whole detector's master `<stream>_master.h5` in DIR that a coordinating
    /// daemon which died left behind, from its parts' files (docs/SCALING.md).
    Merge {
        /// The folder of the stream's files (`<data_dir>/<beamtime>/<source>`).
        #[arg(long)]
        dir: PathBuf,
        /// The detector's stream (its master is `<stream>_master.h5`).
        #[arg(long)]
        stream: String,
    },
    /// Finish runs a crash (or a full disk) left unfinished, from their files: the records
    /// of the last flush, the VDS over the data files, the reason; every file then opens
    /// without SWMR. `serve` does this at its start for its data directory.
    Finish {
        /// Masters (`<stream>_master.h5`) or folders to look in (4 levels deep).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The reason recorded in each master (`/entry/detingest/error`).
        #[arg(
            long,
            default_value = "crashed: finished from its files by detingestd finish"
        )]
        reason: String,
    },
    /// Write the module frames a synthetic source generates (withheld ones included), raw
    /// little-endian and back to back, frame by frame and module by module within a frame,
    /// for checking files against them.
    SynthDump {
        /// The configuration file holding the source.
        #[arg(long, short)]
        config: PathBuf,
        /// The source's name (default: the first source).
        #[arg(long)]
        source: Option<String>,
        /// Output file.
        #[arg(long, short)]
        out: PathBuf,
        /// Also write the peaks placed in each module frame, one JSON object per line
        /// (`frame_number`, `module`, `y`, `x`, `sigma`, `height`; positions in the module).
        #[arg(long)]
        peaks: Option<PathBuf>,
    },
}

fn parse_codec(s: &str) -> Result<Codec, String> {
    Codec::from_name(s).ok_or_else(|| format!("unknown codec {s:?}; expected bslz4, lz4 or none"))
}

fn main() -> ExitCode {
    detingest_daemon::threads::limit_malloc_arenas();
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours for a terminal only: a log file or journald gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_thread_names(true)
        .init();
    match run(cli.command, cli.ready_file.as_deref()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("detingestd: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(command: Command, ready: Option<&Path>) -> Result<ExitCode> {
    match command {
        Command::Check { files } => filter_files::check(&files),
        Command::Repair { files } => filter_files::repair(&files),
        Command::CheckConfig { config } => {
            let c = Config::load(&config)?;
            // What `serve` reads at start: the token file (present, private, long enough).
            c.control.token()?;
            println!(
                "{}: ok ({} source(s), codec {}, {} compression worker(s))",
                config.display(),
                c.sources.len(),
                c.writer.codec.name(),
                c.pipeline.compress_workers
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            config,
            data_dir,
            summary_json,
        } => {
            let c = load(&config, data_dir)?;
            ingest(&c, summary_json.as_deref(), ready)
        }
        Command::Serve {
            config,
            data_dir,
            listen,
        } => {
            let mut c = load(&config, data_dir)?;
            if let Some(l) = listen {
                c.control.listen = l;
            }
            serve(c, None, ready)
        }
        Command::Demo {
            data_dir,
            frames,
            rate,
            codec,
            workers,
            seed,
            listen,
            print_config,
        } => {
            let text = demo_config(&data_dir, frames, rate, codec, workers, seed, listen);
            if print_config {
                print!("{text}");
                return Ok(ExitCode::SUCCESS);
            }
            let c = Config::parse(&text).context("demo configuration")?;
            let src = &c.sources[0].stream;
            let mut request = RunRequest::new(
                src.beamtime.as_str(),
                src.source.as_str(),
                src.stream.as_str(),
            );
            request.settings.insert("frames".into(), frames.into());
            serve(c, Some(request), ready)
        }
        Command::Merge { dir, stream } => {
            let name = detingest_shm::Name::new(&stream)
                .map_err(|e| anyhow::anyhow!("--stream {stream:?}: {e}"))?;
            let r = detingest_daemon::cluster::finish_merge(&dir, name.as_str())
                .with_context(|| format!("cannot finish {stream}'s master in {}", dir.display()))?;
            for (daemon, end) in &r.parts {
                let state = end.outcome.name();
                println!("{daemon}: {state}, {} indices recorded", end.recorded);
            }
            println!(
                "{stream}_master.h5: {} indices ({} merged now lost everywhere)",
                r.frames, r.lost
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Finish { paths, reason } => finish(&paths, &reason),
        Command::SynthDump {
            config,
            source,
            out,
            peaks,
        } => {
            let c = Config::load(&config)?;
            synth_dump(&c, source.as_deref(), &out, peaks.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The demo's configuration: one synthetic JUNGFRAU module into a new stream named by time.
/// The configuration file at `path`, with `--data-dir` in place of its `data_dir` if given.
fn load(path: &Path, data_dir: Option<PathBuf>) -> Result<Config> {
    let mut c = Config::load(path)?;
    if let Some(d) = data_dir {
        c.data_dir = d;
    }
    Ok(c)
}

fn demo_config(
    data_dir: &Path,
    frames: u64,
    rate: f64,
    codec: Codec,
    workers: usize,
    seed: u64,
    listen: std::net::SocketAddr,
) -> String {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        r#"# detingestd demo: one synthetic JUNGFRAU-like module (512 x 1024 u16)
data_dir = {data_dir:?}

[writer]
codec = "{codec}"
flush_every_frames = 1000
flush_interval_ms = 1000

[pipeline]
compress_workers = {workers}

[[source]]
name = "jungfrau"
stream = {{ beamtime = "demo", source = "jungfrau", stream = "scan_{stamp}" }}

[source.synthetic]
frames = {frames}
rate_hz = {rate:?}
seed = {seed}

[control]
listen = "{listen}"

# The experiment a master file describes (NXmx; docs/NXMX.md): example values for a
# rotation experiment, what a beamline's configuration or run request gives.
[detector]
serial_number = "synthetic-0001"
bit_depth_readout = 16
instrument_name = "detingest demo beamline"
source_name = "detingest demo synchrotron"
source_type = "Synchrotron X-ray Source"
sample_name = "synthetic"
incident_wavelength = 1.0    # angstrom
detector_distance = 0.12     # m
beam_center_x = 512.5        # pixels
beam_center_y = 256.5
{timing}goniometer = {{ images = {frames}, axes = [{{ name = "omega", start = 0.0, increment = 0.1 }}] }}
"#,
        data_dir = data_dir.display().to_string(),
        codec = codec.name(),
        timing = if rate > 0.0 {
            format!(
                "count_time = {:.6}\nframe_time = {:.6}\n",
                0.9 / rate,
                1.0 / rate
            )
        } else {
            String::new()
        },
    )
}

/// Runs the pipeline to the end and prints a summary.
fn ingest(config: &Config, summary_json: Option<&Path>, ready: Option<&Path>) -> Result<ExitCode> {
    if config.cluster.member() {
        anyhow::bail!(
            "config key `cluster.name`: a daemon that takes part of a detector starts its runs \
             with the others, over the control API: run it with `detingestd serve`"
        );
    }
    // One run, as `serve` runs one: the same manager, with no control API.
    let manager = Arc::new(RunManager::for_one_run(config.clone())?);
    manager.start_configured().map_err(|e| match e.status {
        409 => anyhow::anyhow!("{}", e.message),
        _ => anyhow::anyhow!("the run did not start: {}", e.message),
    })?;
    if let Some(path) = ready {
        ready::write(path, None, &manager.status())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let (asked, runs) = (Arc::new(AtomicBool::new(false)), Arc::clone(&manager));
    let _ = ctrlc::set_handler(move || {
        if asked.swap(true, Ordering::Relaxed) {
            std::process::exit(130);
        }
        runs.request_stop();
    });
    manager.wait();
    let (counters, lines) = (manager.status().sinks, manager.summary_lines());
    let summary = manager.take_summary();
    manager.shutdown();
    let summary = summary.context("the run ended without a summary")?;
    report::print_summary(&summary, &lines);
    if let Some(path) = summary_json {
        let mut f = std::fs::File::create(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        serde_json::to_writer_pretty(&mut f, &report::summary_json(&summary, &counters))?;
        writeln!(f)?;
    }
    Ok(if summary.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Serves the control API and live page until Ctrl-C, then stops the run in progress and
/// closes its files. With `first_run` (the demo), starts that run at once, shows its progress
/// and ends with it.
fn serve(config: Config, first_run: Option<RunRequest>, ready: Option<&Path>) -> Result<ExitCode> {
    let shutdown = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&shutdown);
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::Relaxed) {
            std::process::exit(130);
        }
    });
    let control = config.control.clone();
    let manager = Arc::new(RunManager::new(config)?);
    manager.attach()?;
    let daemon: Arc<dyn Daemon> = Arc::clone(&manager) as Arc<dyn Daemon>;
    let api = control::spawn(&control, daemon, Arc::clone(&shutdown)).with_context(|| {
        if first_run.is_some() {
            "the demo's live page (another daemon there? try --listen 127.0.0.1:8451)"
        } else {
            "the control API"
        }
    })?;
    // systemd (Type=notify) hears that the API answers; elsewhere this does nothing.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    if let Some(path) = ready {
        ready::write(path, Some(api.addr), &manager.status())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let mut code = ExitCode::SUCCESS;
    if let Some(request) = first_run {
        println!(
            "Live page: http://{}/  (open it in a browser while the demo runs)",
            api.addr
        );
        let status = manager
            .start(&request)
            .map_err(|e| anyhow::anyhow!("the demo run did not start: {}", e.message))?;
        report::progress_until_ended(&manager, status.frames_expected, &shutdown);
        if let Some(summary) = manager.take_summary() {
            report::print_summary(&summary, &manager.summary_lines());
            if !summary.ok() {
                code = ExitCode::FAILURE;
            }
        }
    } else {
        while !shutdown.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            // The API's thread never ends by itself; if it did, end the daemon (its service
            // manager restarts it) rather than run on without a control API.
            if api.thread.is_finished() && !shutdown.load(Ordering::Relaxed) {
                tracing::error!("the control API ended: stopping the daemon");
                shutdown.store(true, Ordering::Relaxed);
                code = ExitCode::FAILURE;
            }
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    manager.shutdown();
    shutdown.store(true, Ordering::Relaxed);
    let _ = api.thread.join();
    Ok(code)
}

/// Writes what `source` generates, frame after frame, raw.
fn synth_dump(
    config: &Config,
    source: Option<&str>,
    out: &Path,
    peaks: Option<&Path>,
) -> Result<()> {
    let src = match source {
        None => config.sources.first(),
        Some(name) => config.sources.iter().find(|s| s.name.as_str() == name),
    };
    let Some(cfg) = src.and_then(|s| s.synthetic.as_ref()) else {
        bail!(
            "no synthetic source {:?} in the configuration",
            source.unwrap_or("(first)")
        );
    };
    if cfg.frames == 0 {
        bail!("the source is open-ended (frames = 0); nothing to dump");
    }
    let bank = FrameBank::generate(cfg);
    let mut w = std::io::BufWriter::new(
        std::fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?,
    );
    let modules = src.map_or(1, |s| s.modules());
    for n in cfg.first_frame_number..cfg.first_frame_number + cfg.frames {
        for m in 0..modules {
            w.write_all(bank.module_frame(n, m, modules))?;
        }
    }
    w.flush()?;
    if let Some(path) = peaks {
        use detingest_daemon::source::synthetic::{bank_index, placed_peaks};
        let mut w = std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        );
        for n in cfg.first_frame_number..cfg.first_frame_number + cfg.frames {
            for m in 0..modules {
                for p in placed_peaks(cfg, bank_index(cfg, n, m, modules)) {
                    let line = serde_json::json!({"frame_number": n, "module": m, "y": p.y,
                        "x": p.x, "sigma": p.sigma, "height": p.height});
                    writeln!(w, "{line}")?;
                }
            }
        }
        w.flush()?;
    }
    Ok(())
}

/// `detingestd finish`: each unfinished run under `paths`, finished or left with the reason.
fn finish(paths: &[PathBuf], reason: &str) -> anyhow::Result<ExitCode> {
    use detingest_daemon::runs::recover::{self, Outcome};
    let (mut finished, mut left) = (0, 0);
    for path in paths {
        if !path.exists() {
            anyhow::bail!("{}: no such file or folder", path.display());
        }
        for master in recover::unfinished_masters(path) {
            match recover::finish(&master, reason) {
                Outcome::Finished(r) => {
                    finished += 1;
                    println!(
                        "{}: finished, {} indices ({} lost), {} data files",
                        master.display(),
                        r.frames,
                        r.lost,
                        r.data_files.len()
                    );
                }
                Outcome::Left(why) => {
                    left += 1;
                    println!("{}: left as it is: {why}", master.display());
                }
            }
        }
    }
    for path in paths {
        use detingest_daemon::runs::recover_events::{
            finish_events, unfinished_event_files, EventsOutcome,
        };
        for file in unfinished_event_files(path) {
            match finish_events(&file, reason) {
                EventsOutcome::Finished(r) => {
                    finished += 1;
                    println!(
                        "{}: finished, {} pulses, {} events",
                        file.display(),
                        r.pulses,
                        r.events
                    );
                }
                EventsOutcome::NotOurs => {}
                EventsOutcome::Left(why) => {
                    left += 1;
                    println!("{}: left as it is: {why}", file.display());
                }
            }
        }
    }
    println!("{finished} run(s) finished, {left} left unfinished");
    Ok(if left > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
