//! The throughput part of `detingest-bench live`: subscriptions switched on and off by
//! phases, each "on" phase's rate over its "off" neighbours', and CPU per frame.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use detingest_daemon::pipeline;
use detingest_daemon::sink::zmq::Live;
use detingest_daemon::sink::{Notification, NotificationSink, RunSinks, SinkNeeds, TableAt};
use detingest_daemon::stream::now_ns;
use detingest_daemon::threads;

use crate::common;
use nix::time::ClockId;
use serde::Serialize;

use super::*;

/// What the throughput run measured.
#[derive(Serialize, Debug)]
pub(super) struct Throughput {
    pub(super) frames: u64,
    pub(super) runs: usize,
    pub(super) control: bool,
    pub(super) phase_ms: u64,
    /// Frames per second over all "off" phases, and over all "on" phases.
    pub(super) off_fps: f64,
    pub(super) on_fps: f64,
    /// Each "on" phase's rate over the mean of its two neighbours'.
    pub(super) ratios: Vec<f64>,
    /// Quartiles of `ratios`.
    pub(super) ratio_q1: f64,
    pub(super) ratio_median: f64,
    pub(super) ratio_q3: f64,
    /// CPU time of the whole process per frame written in "off" and in "on" phases, us.
    pub(super) off_cpu_us_per_frame: f64,
    pub(super) on_cpu_us_per_frame: f64,
    /// Of the CPU time, per frame written in "on" phases, us: the publisher's ZeroMQ threads,
    /// the subscribers' ZeroMQ threads and the three reading subscribers.
    pub(super) publisher_zmq_cpu_us_per_frame: f64,
    pub(super) subscribers_zmq_cpu_us_per_frame: f64,
    pub(super) readers_cpu_us_per_frame: f64,
}

/// A stretch of the throughput run with the subscriptions on or off.
struct Phase {
    on: bool,
    start_ns: u64,
    end_ns: u64,
    /// The process's CPU seconds at the start and the end.
    cpu_start: f64,
    cpu_end: f64,
}

/// The throughput run: four subscribers, switched on and off by phases.
pub(super) fn throughput(args: &Args, dir: &std::path::Path) -> Result<Throughput> {
    let runs = (0..args.runs.max(1))
        .map(|run| throughput_run(args, dir, run))
        .collect::<Result<Vec<_>>>()?;
    Ok(summarise(args, &runs))
}

/// What one throughput run recorded.
struct RunRecord {
    phases: Vec<Phase>,
    /// Every frame's `written_ns`.
    written: Vec<u64>,
    /// CPU seconds of the publisher's ZeroMQ threads, the subscribers' and the readers.
    cpu: [f64; 3],
}

/// One run of the pipeline with four subscribers, switched on and off by phases.
fn throughput_run(args: &Args, dir: &std::path::Path, run: usize) -> Result<RunRecord> {
    let tag = format!("throughput{run}");
    let endpoint = endpoint(args, dir, &tag)?;
    let cfg = config(args, dir, &tag, &endpoint, args.frames, 0.0, 4)?;
    // Threads inherit their creator's cores: the viewers' threads are made on a thread pinned
    // to the viewer core, the daemon's ZeroMQ threads on one pinned to an ingest core (the
    // pipeline's threads are pinned by the config).
    let (viewer_core, ingest_core) = Placement::cores(args)?;
    let threads_before = threads::thread_ids();
    let ctx = zmq::Context::new();
    let done = Arc::new(AtomicBool::new(false));
    let (go, started) = std::sync::mpsc::channel::<()>();
    let (readers, switcher) = made_on(viewer_core, || -> Result<_> {
        // The readers hear "on", "off" and "done" on an inproc PAIR each, so an "off" phase
        // costs them no wake-ups.
        let mut controls = Vec::new();
        let mut readers = Vec::new();
        for i in 0..3 {
            let control = ctx.socket(zmq::PAIR)?;
            control.bind(&format!("inproc://phases-{i}"))?;
            controls.push(control);
            let reader_control = ctx.socket(zmq::PAIR)?;
            reader_control.connect(&format!("inproc://phases-{i}"))?;
            let sub = subscriber(&ctx, &endpoint)?;
            let reader = std::thread::Builder::new().name(format!("subscriber-{i}"));
            readers.push(reader.spawn(move || -> Result<f64> {
                read_switched(&sub, &reader_control)?;
                Ok(common::cpu_seconds(ClockId::CLOCK_THREAD_CPUTIME_ID))
            })?);
        }
        // The stalled subscriber, which never reads, and the switcher, which starts when the
        // pipeline has.
        let stalled = subscriber(&ctx, &endpoint)?;
        let done = Arc::clone(&done);
        let (phase, control) = (Duration::from_millis(args.phase_ms), args.control);
        let switcher = std::thread::Builder::new()
            .name("phases".into())
            .spawn(move || {
                started.recv()?;
                switch_phases(&stalled, &controls, &done, phase, control)
            })?;
        Ok((readers, switcher))
    })?;
    // The subscribers' ZeroMQ threads carry the name of the thread that made their sockets
    // (ours); the readers and the switcher have their own.
    let subscribers_zmq = threads::started_here_since(&threads_before);
    let (live, publisher) = made_on(ingest_core, || {
        Live::start(
            &cfg.sink.zmq,
            cfg.sink_cores(),
            Default::default(),
            &TableAt::sink("zmq"),
        )
    })
    .map_err(anyhow::Error::msg)?;
    let written = Arc::new(Mutex::new(WrittenTimes(Vec::with_capacity(
        args.frames as usize,
    ))));
    let sinks: Vec<Box<dyn NotificationSink>> = vec![
        Box::new(publisher.context("publisher configured")?),
        Box::new(Arc::clone(&written)),
    ];
    let running = pipeline::start(
        &cfg,
        RunSinks {
            sinks,
            needs: SinkNeeds::of(&cfg.sink.zmq),
        },
    )?;
    go.send(())?;
    let summary = running.wait();
    done.store(true, Ordering::Relaxed);
    let phases = switcher
        .join()
        .map_err(|_| anyhow::anyhow!("phase switcher panicked"))??;
    let publisher_zmq_cpu = common::threads_cpu_seconds(&live.zmq_threads);
    let subscribers_zmq_cpu = common::threads_cpu_seconds(&subscribers_zmq);
    live.stop();
    let mut readers_cpu = 0.0;
    for r in readers {
        readers_cpu += r
            .join()
            .map_err(|_| anyhow::anyhow!("subscriber panicked"))??;
    }
    common::remove_run_files(&summary);
    anyhow::ensure!(
        summary.ok(),
        "the throughput run failed: {:?}",
        summary.streams
    );
    let written = std::mem::take(&mut written.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.0);
    Ok(RunRecord {
        phases,
        written,
        cpu: [publisher_zmq_cpu, subscribers_zmq_cpu, readers_cpu],
    })
}

/// Rates, ratios and CPU per frame of the runs' phases, from every frame's `written_ns`.
fn summarise(args: &Args, runs: &[RunRecord]) -> Throughput {
    let settle = args.settle_ms * 1_000_000;
    /// A phase's frames and seconds after settling, its frames in all, its CPU seconds.
    struct Counted {
        on: bool,
        frames: usize,
        secs: f64,
        all_frames: usize,
        cpu: f64,
    }
    let mut ratios = Vec::new();
    let mut counted = Vec::new();
    for run in runs {
        let frames_in =
            |from: u64, to: u64| run.written.iter().filter(|&&t| t >= from && t < to).count();
        // The first phase holds the start; the last is cut short by the end: neither counts.
        let inner = run
            .phases
            .get(1..run.phases.len().saturating_sub(1))
            .unwrap_or(&[]);
        let these: Vec<Counted> = inner
            .iter()
            .map(|p| Counted {
                on: p.on,
                frames: frames_in(p.start_ns + settle, p.end_ns),
                secs: p.end_ns.saturating_sub(p.start_ns + settle) as f64 / 1e9,
                all_frames: frames_in(p.start_ns, p.end_ns),
                cpu: p.cpu_end - p.cpu_start,
            })
            .collect();
        let rate = |c: &Counted| c.frames as f64 / c.secs;
        // (With --control the "on" phases are "on" in name only.)
        for w in these.windows(3) {
            if w[1].on && !w[0].on && !w[2].on {
                ratios.push(rate(&w[1]) / ((rate(&w[0]) + rate(&w[2])) / 2.0));
            }
        }
        counted.extend(these);
    }
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    let totals = |on: bool| {
        let phases = || counted.iter().filter(move |c| c.on == on);
        let frames: usize = phases().map(|c| c.frames).sum();
        let secs: f64 = phases().map(|c| c.secs).sum();
        let all_frames: usize = phases().map(|c| c.all_frames).sum();
        let cpu: f64 = phases().map(|c| c.cpu).sum();
        (
            frames as f64 / secs,
            cpu / all_frames as f64 * 1e6,
            all_frames,
        )
    };
    let (off_fps, off_cpu, _) = totals(false);
    let (on_fps, on_cpu, on_frames) = totals(true);
    let per_on_frame =
        |i: usize| runs.iter().map(|r| r.cpu[i]).sum::<f64>() / on_frames as f64 * 1e6;
    Throughput {
        frames: args.frames,
        runs: runs.len(),
        control: args.control,
        phase_ms: args.phase_ms,
        off_fps,
        on_fps,
        ratio_q1: common::quantile(&sorted, 0.25),
        ratio_median: common::quantile(&sorted, 0.5),
        ratio_q3: common::quantile(&sorted, 0.75),
        ratios,
        off_cpu_us_per_frame: off_cpu,
        on_cpu_us_per_frame: on_cpu,
        publisher_zmq_cpu_us_per_frame: per_on_frame(0),
        subscribers_zmq_cpu_us_per_frame: per_on_frame(1),
        readers_cpu_us_per_frame: per_on_frame(2),
    }
}

/// Switches the subscriptions off and on every `phase` until `done` (with `control`, leaves
/// them off): the stalled subscriber's itself, the readers' by a word on their `controls`.
/// Returns the phases.
fn switch_phases(
    stalled: &zmq::Socket,
    controls: &[zmq::Socket],
    done: &AtomicBool,
    phase: Duration,
    control: bool,
) -> Result<Vec<Phase>> {
    let cpu = || common::cpu_seconds(ClockId::CLOCK_PROCESS_CPUTIME_ID);
    let mut phases = Vec::new();
    let mut state = true;
    let (mut start_ns, mut cpu_start) = (now_ns(), cpu());
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(phase);
        let (end_ns, cpu_end) = (now_ns(), cpu());
        phases.push(Phase {
            on: state,
            start_ns,
            end_ns,
            cpu_start,
            cpu_end,
        });
        (start_ns, cpu_start) = (end_ns, cpu_end);
        state = !state;
        let subscribed = state && !control;
        let word: &[u8] = if subscribed { b"on" } else { b"off" };
        for c in controls {
            c.send(word, 0)?;
        }
        if subscribed {
            stalled.set_subscribe(b"")?;
        } else {
            stalled.set_unsubscribe(b"")?;
        }
    }
    for c in controls {
        c.send(&b"done"[..], 0)?;
    }
    Ok(phases)
}

/// Drains whatever comes whenever it comes, (un)subscribing when `control` says "on" or
/// "off", until it says "done".
fn read_switched(sub: &zmq::Socket, control: &zmq::Socket) -> Result<()> {
    let mut message = zmq::Message::new();
    loop {
        let mut items = [
            sub.as_poll_item(zmq::POLLIN),
            control.as_poll_item(zmq::POLLIN),
        ];
        zmq::poll(&mut items, -1)?;
        if items[1].is_readable() {
            match &*control.recv_bytes(0)? {
                b"on" => sub.set_subscribe(b"")?,
                b"off" => sub.set_unsubscribe(b"")?,
                _ => return Ok(()),
            }
        }
        while sub.recv(&mut message, zmq::DONTWAIT).is_ok() {}
    }
}

/// Every frame's `written_ns`, in the order written.
struct WrittenTimes(Vec<u64>);

impl NotificationSink for WrittenTimes {
    fn notify(&mut self, n: &Notification) {
        if let Notification::Frame(f) = n {
            self.0.push(f.record.written_ns);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run of `phases` 100 ms phases, alternating from "on", whose frames come evenly at
    /// `on_hz` or `off_hz`, with 0.2 CPU seconds per phase.
    fn run(phases: u64, on_hz: u64, off_hz: u64) -> RunRecord {
        let ms = 1_000_000;
        let mut record = RunRecord {
            phases: Vec::new(),
            written: Vec::new(),
            cpu: [0.1, 0.2, 0.3],
        };
        for i in 0..phases {
            let on = i % 2 == 0;
            let (start_ns, end_ns) = (i * 100 * ms, (i + 1) * 100 * ms);
            let frames = if on { on_hz } else { off_hz } / 10;
            let step = 100 * ms / frames;
            record
                .written
                .extend((0..frames).map(|f| start_ns + f * step));
            record.phases.push(Phase {
                on,
                start_ns,
                end_ns,
                cpu_start: i as f64 * 0.2,
                cpu_end: (i + 1) as f64 * 0.2,
            });
        }
        record
    }

    #[test]
    fn phases_give_rates_ratios_and_cpu_per_frame() {
        let args = Args::parse_from(["live", "--settle-ms", "0"]);
        let t = summarise(&args, &[run(12, 900, 1000), run(8, 1800, 2000)]);
        // Inner phases: 1..=10 of the first run, 1..=6 of the second; the "on" ones with an inner
        // "off" one on each side: 2, 4, 6, 8 of the first, 2, 4 of the second.
        assert_eq!(t.ratios.len(), 6);
        for r in &t.ratios {
            assert!((r - 0.9).abs() < 1e-9, "{r}");
        }
        assert!((t.ratio_median - 0.9).abs() < 1e-9);
        // Off: phases 1, 3, 5, 7, 9 at 1000 Hz and 1, 3, 5 at 2000 Hz: 1100 frames in 0.8 s.
        assert!((t.off_fps - 1100.0 / 0.8).abs() < 1e-6, "{}", t.off_fps);
        // On: phases 2, 4, 6, 8, 10 at 900 Hz and 2, 4, 6 at 1800 Hz: 990 frames in 0.8 s.
        assert!((t.on_fps - 990.0 / 0.8).abs() < 1e-6, "{}", t.on_fps);
        // 0.2 CPU seconds per phase; the threads' CPU is spread over the "on" frames.
        assert!((t.on_cpu_us_per_frame - 0.2 * 8.0 / 990.0 * 1e6).abs() < 1e-6);
        assert!((t.readers_cpu_us_per_frame - 0.6 / 990.0 * 1e6).abs() < 1e-6);
    }
}
