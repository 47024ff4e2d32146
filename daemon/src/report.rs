//! What `detingestd` prints: the live progress line and the final summary.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use std::sync::atomic::Ordering;

use detingest_daemon::live::Live;
use detingest_daemon::pipeline::{RunSummary, Running};

/// What the live side did, read before it stops.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LiveSummary {
    pub publish_endpoint: Option<String>,
    pub query_endpoint: Option<String>,
    pub published: u64,
    pub refused: u64,
    pub previews: u64,
}

impl From<&Live> for LiveSummary {
    fn from(l: &Live) -> Self {
        Self {
            publish_endpoint: l.publish_endpoint.clone(),
            query_endpoint: l.query_endpoint.clone(),
            published: l.stats.published.load(Ordering::Relaxed),
            refused: l.stats.refused.load(Ordering::Relaxed),
            previews: l.stats.previews.load(Ordering::Relaxed),
        }
    }
}

/// Prints a progress line every half second until the sources have finished and the queues
/// are empty.
pub fn progress_until_done(running: &Running, expected: u64) {
    let tty = std::io::stderr().is_terminal();
    let mut last = (Instant::now(), running.stats());
    let mut last_print = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = (Instant::now(), running.stats());
        let dt = now.0.duration_since(last.0).as_secs_f64().max(1e-9);
        let gbs = |a: u64, b: u64| (a - b) as f64 / dt / 1e9;
        let s = &now.1;
        let g = running.gauges();
        let drops: u64 = running.sources().iter().map(|s| s.dropped()).sum();
        let ratio = s.bytes_raw as f64 / s.bytes_compressed.max(1) as f64;
        let line = format!(
            "[{:6.1}s] frames {}/{} | in {:.2} GB/s | out {:.2} GB/s | ratio {:.2} | \
             queues src {}/{} cmp {}/{} wr {}/{} | dropped {} lost {}",
            running.elapsed().as_secs_f64(),
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
        let idle = g.source_queue == 0 && g.compress_queue == 0 && g.write_queue == 0;
        if running.sources_finished() && idle {
            break;
        }
    }
    if tty {
        eprintln!();
    }
    let _ = std::io::stderr().flush();
}

/// Prints the end-of-run summary to stdout.
pub fn print_summary(s: &RunSummary, live: &LiveSummary) {
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
    }
    println!(
        "lost indices     {} | stale frames {} | codec errors {} | write errors {}",
        st.lost, st.stale, st.codec_errors, st.write_errors
    );
    println!(
        "notifications    {} delivered, {} dropped at the queue",
        st.notified, st.notify_dropped
    );
    if let Some(endpoint) = &live.publish_endpoint {
        println!(
            "live             {} messages published on {endpoint} ({} previews), {} refused",
            live.published, live.previews, live.refused
        );
    }
    for r in &s.streams {
        let status = r.error.as_deref().unwrap_or("ok");
        println!(
            "stream {} -> {} : {} frames ({} lost), {}",
            r.stream.id,
            r.stream.file.display(),
            r.frames,
            r.lost,
            status
        );
    }
}

/// The summary as JSON.
pub fn summary_json(s: &RunSummary, live: &LiveSummary) -> serde_json::Value {
    serde_json::json!({
        "elapsed_s": s.elapsed.as_secs_f64(),
        "live": live,
        "stats": s.stats,
        "sources": s.sources,
        "streams": s.streams.iter().map(|r| serde_json::json!({
            "stream": r.stream.id.to_string(),
            "file": r.stream.file,
            "dataset": r.stream.dataset,
            "frames": r.frames,
            "lost": r.lost,
            "error": r.error,
        })).collect::<Vec<_>>(),
    })
}
