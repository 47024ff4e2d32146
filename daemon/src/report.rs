//! What `detingestd` prints: the live progress line and the final summary.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, Ordering};

use detingest_daemon::contract::ByName;
use detingest_daemon::pipeline::RunSummary;
use detingest_daemon::runs::RunManager;

/// Prints a progress line every half second until the run `runs` is running has ended (or
/// `shutdown` is set and it has been stopped).
pub fn progress_until_ended(runs: &RunManager, expected: u64, shutdown: &AtomicBool) {
    let tty = std::io::stderr().is_terminal();
    let mut last = (Instant::now(), runs.status().counters);
    let mut last_print = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        if shutdown.load(Ordering::Relaxed) {
            let _ = runs.stop();
        }
        let status = runs.status();
        let now = (Instant::now(), status.counters);
        let dt = now.0.duration_since(last.0).as_secs_f64().max(1e-9);
        let gbs = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt / 1e9;
        let s = &now.1;
        let g = status.gauges.unwrap_or_default();
        let drops: u64 = status.sources.iter().map(|s| s.dropped).sum();
        let ratio = s.bytes_raw as f64 / s.bytes_compressed.max(1) as f64;
        let line = format!(
            "[{:6.1}s] frames {}/{} | in {:.2} GB/s | out {:.2} GB/s | ratio {:.2} | \
             queues src {}/{} cmp {}/{} wr {}/{} | dropped {} lost {}",
            status.elapsed_s,
            s.recorded,
            expected,
            gbs(s.bytes_raw, last.1.bytes_raw),
            gbs(s.bytes_compressed, last.1.bytes_compressed),
            ratio,
            g.source_queue,
            g.queue_capacity,
            g.compress_queue,
            g.queue_capacity,
            g.write_queue,
            g.queue_capacity,
            drops,
            s.lost,
        );
        if tty {
            eprint!("\r{line}\x1b[K");
        } else if last_print.elapsed() >= Duration::from_secs(2) {
            eprintln!("{line}");
            last_print = Instant::now();
        }
        last = now;
        if status.end_reason.is_some() {
            break;
        }
    }
    if tty {
        eprintln!();
    }
    let _ = std::io::stderr().flush();
}

/// Prints the end-of-run summary to stdout.
pub fn print_summary(s: &RunSummary, sink_lines: &[String]) {
    let st = &s.stats;
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    println!("--- detingestd summary ---");
    println!("elapsed          {:.2} s", secs);
    println!(
        "frames recorded  {} ({:.1} frames/s, {} chunks written)",
        st.recorded,
        st.recorded as f64 / secs,
        st.written
    );
    println!(
        "bytes            {:.3} GB raw -> {:.3} GB written (ratio {:.2}), {:.2} GB/s in",
        st.bytes_raw as f64 / 1e9,
        st.bytes_compressed as f64 / 1e9,
        st.bytes_raw as f64 / st.bytes_compressed.max(1) as f64,
        st.bytes_raw as f64 / secs / 1e9
    );
    for src in &s.sources {
        println!(
            "source {:<10} sent {}, dropped {}, torn {}, malformed {}",
            src.name, src.sent, src.dropped, src.torn, src.malformed
        );
        if let Some(k) = &src.kind {
            println!("{}", k.summary_line());
        }
    }
    println!(
        "lost indices     {} never arrived, {} dropped here | late module frames {} | stale frames {} | codec errors {} | write errors {}",
        st.lost, st.dropped, st.late, st.stale, st.codec_errors, st.write_errors
    );
    println!(
        "notifications    {} delivered, {} dropped at the queue",
        st.notified, st.notify_dropped
    );
    for line in sink_lines {
        println!("{line}");
    }
    let refused: u64 = s
        .sources
        .iter()
        .filter_map(|src| src.kind.as_ref().map(|k| k.refused()))
        .sum();
    for r in &s.streams {
        if !r.opened {
            // Packets that came but were all refused are not "nothing received".
            let what = if refused > 0 {
                format!("no frame taken: all {refused} packets received were refused (see the source lines)")
            } else {
                "nothing received".into()
            };
            println!(
                "stream {} : {what}, no file written{}",
                r.stream.id,
                r.error
                    .as_deref()
                    .map_or(String::new(), |e| format!(" ({e})"))
            );
            continue;
        }
        let mut status = match (&r.error, refused) {
            (Some(e), _) => e.clone(),
            (None, 0) => "ok".into(),
            (None, n) => format!("ok, but {n} packets refused (see the source lines)"),
        };
        if r.late > 0 {
            // Data was discarded: never "ok".
            status = format!(
                "{} module frames arrived after their index closed and were discarded \
                 (late_mask; raise run.dataset_timeout_ms){}",
                r.late,
                if r.error.is_some() {
                    format!("; {status}")
                } else {
                    String::new()
                }
            );
        }
        println!(
            "stream {} -> {} : {} frames ({} lost, {} dropped here), {}",
            r.stream.id,
            r.stream.file.display(),
            r.frames,
            r.lost,
            r.dropped,
            status
        );
    }
}

/// The summary as JSON, with each sink's counters under `sinks` (and the ZeroMQ sink's also
/// under `live`, where earlier versions put them).
pub fn summary_json(s: &RunSummary, sinks: &ByName) -> serde_json::Value {
    let zmq = sinks.0.iter().find(|(name, _)| *name == "zmq");
    serde_json::json!({
        "elapsed_s": s.elapsed.as_secs_f64(),
        "live": zmq.map(|(_, c)| c),
        "sinks": sinks,
        "stats": s.stats,
        "sources": s.sources,
        "streams": s.streams.iter().map(|r| serde_json::json!({
            "stream": r.stream.id.to_string(),
            "file": r.opened.then_some(&r.stream.file),
            "written": r.opened,
            "dataset": r.stream.dataset,
            "frames": r.frames,
            "lost": r.lost,
            "dropped": r.dropped,
            "late_module_frames": r.late,
            "error": r.error,
        })).collect::<Vec<_>>(),
    })
}
