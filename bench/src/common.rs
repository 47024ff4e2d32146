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

/// Removes the files a finished run wrote: its master and every data file, named as the
/// writer names them.
pub fn remove_run_files(summary: &detingest_daemon::pipeline::RunSummary) {
    for s in &summary.streams {
        let _ = std::fs::remove_file(&s.stream.file);
        let Some(dir) = s.stream.file.parent() else {
            continue;
        };
        let stream = s.stream.id.stream.as_str();
        for number in 1.. {
            let data = dir.join(detingest_writer::data_file_name(stream, number));
            if std::fs::remove_file(data).is_err() {
                break;
            }
        }
    }
}

/// The `p` quantile (0..=1) of `sorted` (ascending); NaN when empty.
pub fn quantile(sorted: &[f64], p: f64) -> f64 {
    let last = sorted.len().saturating_sub(1);
    sorted
        .get((last as f64 * p) as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

/// CPU seconds of `clock` (`CLOCK_PROCESS_CPUTIME_ID`: every thread of this process, those
/// that have ended included; `CLOCK_THREAD_CPUTIME_ID`: the calling thread).
pub fn cpu_seconds(clock: nix::time::ClockId) -> f64 {
    nix::time::clock_gettime(clock)
        .map(|t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
        .unwrap_or(f64::NAN)
}

/// CPU seconds the threads `tids` of this process have run so far (from
/// `/proc/self/task/<tid>/schedstat`, nanosecond resolution); threads gone count nothing.
pub fn threads_cpu_seconds(tids: &[libc::pid_t]) -> f64 {
    tids.iter()
        .filter_map(|tid| std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map(|ns| ns as f64 / 1e9)
        .sum()
}

/// This process's threads whose name (`comm`) `wanted` accepts.
pub fn threads_named(wanted: impl Fn(&str) -> bool) -> Vec<libc::pid_t> {
    detingest_daemon::threads::thread_ids()
        .into_iter()
        .filter(|t| {
            std::fs::read_to_string(format!("/proc/self/task/{t}/comm"))
                .is_ok_and(|c| wanted(c.trim()))
        })
        .collect()
}

/// CPU seconds (user + system) process `pid` has used so far, from `/proc/<pid>/stat`; NaN
/// when it cannot be read.
pub fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command's closing parenthesis come fields 3, 4, ...: utime and stime
    // (fields 14 and 15, in clock ticks) are the 12th and 13th.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let ticks: Vec<f64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(f64::NAN))
        .collect();
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    match (ticks.get(11), ticks.get(12)) {
        (Some(u), Some(s)) => (u + s) / hz,
        _ => f64::NAN,
    }
}

/// Prints `report` as pretty JSON (the `--json` output of every benchmark).
pub fn print_json(report: &impl Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(report)?);
    Ok(())
}

/// The Python that runs a baseline's library (PyPI bitshuffle, h5py): `--python` (`none`: no
/// such baseline), else `./.venv/bin/python` if present.
pub(crate) fn baseline_python(arg: Option<&str>) -> Option<String> {
    match arg {
        Some("none") => None,
        Some(p) => Some(p.to_owned()),
        None if std::path::Path::new(".venv/bin/python").exists() => {
            Some(".venv/bin/python".into())
        }
        None => None,
    }
}

/// Runs `script` with `python` and `args` (and `env`), for a baseline: the JSON it prints, or
/// `None` when it printed `null` (its library is missing). A failing script is an error
/// naming `what`.
pub(crate) fn python_baseline(
    python: &str,
    script: &str,
    args: &[String],
    env: &[(&str, &str)],
    what: &str,
) -> Result<Option<serde_json::Value>> {
    use anyhow::Context;
    let out = std::process::Command::new(python)
        .envs(env.iter().copied())
        .args(["-c", script])
        .args(args)
        .output()
        .with_context(|| format!("cannot run {python}"))?;
    if !out.status.success() {
        anyhow::bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok((!v.is_null()).then_some(v))
}
