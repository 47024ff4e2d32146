//! What every benchmark needs: threads on a given core, and the report as JSON.

use anyhow::Result;
use serde::Serialize;

/// Pins the calling thread (best effort: a core that does not exist leaves it unpinned).
pub fn pin(core: usize) {
    core_affinity::set_for_current(core_affinity::CoreId { id: core });
}

/// Runs `f` on a thread pinned to `core`, leaving the caller's own placement alone.
pub fn on_core<T: Send>(core: usize, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            pin(core);
            f()
        })
        .join()
        .expect("benchmark thread panicked")
    })
}

/// Removes the files a finished run wrote: its master and every data file.
pub fn remove_run_files(summary: &detingest_daemon::pipeline::RunSummary) {
    for s in &summary.streams {
        let stream = s.stream.id.stream.as_str();
        let Some(dir) = s.stream.file.parent() else {
            continue;
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name == format!("{stream}_master.h5") || name.starts_with(&format!("{stream}_data_"))
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Prints `report` as pretty JSON (the `--json` output of every benchmark).
pub fn print_json(report: &impl Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(report)?);
    Ok(())
}
