//! Named, optionally pinned threads for the stages that move data, and real-time priority for
//! the few that must wake at once.

use std::io;
use std::thread::{Builder, JoinHandle};

/// Spawns `f` on a thread called `name`, pinned to `core` when one is given. A failed pin is
/// logged, not fatal: the thread still runs, only unpinned.
pub fn spawn<F, T>(name: String, core: Option<usize>, f: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    Builder::new().name(name.clone()).spawn(move || {
        if let Some(id) = core {
            if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
                tracing::warn!(thread = %name, core = id, "could not pin thread to core");
            }
        }
        f()
    })
}

/// Malloc arenas the process uses at most. glibc gives each thread that allocates its own
/// arena (up to 8 per core) and keeps what a burst allocated in it after it is freed: with
/// every sink on, a sink thread's backlog during a broker's slow moment left steps of 12-17 MB
/// that never went back (`detingest-bench soak`, docs/BENCHMARKS.md); with two arenas memory
/// stayed flat. The frame path allocates nothing per frame, so nothing waits on an arena.
pub const MALLOC_ARENAS: i32 = 2;

/// Limits glibc's malloc arenas to [`MALLOC_ARENAS`] (`MALLOC_ARENA_MAX` in the environment
/// still wins); call before the first thread starts.
pub fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    // SAFETY: mallopt only sets a parameter of the allocator; M_ARENA_MAX takes any positive
    // count, and no other thread allocates yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
    }
}

/// Gives thread `tid` (0: the calling thread) the real-time policy SCHED_FIFO at `priority`
/// (1..=99): it then runs as soon as it wakes instead of waiting for a busy core's time slice.
/// For threads that block between short bursts (the notification thread, ZeroMQ's I/O
/// thread); never for one that spins. Needs CAP_SYS_NICE (root); a refusal is returned.
pub fn set_realtime(tid: libc::pid_t, priority: i32) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: `param` is a valid sched_param for the call; the kernel only reads it.
    let rc = unsafe { libc::sched_setscheduler(tid, libc::SCHED_FIFO, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Pins thread `tid` of this process to `core`.
pub fn pin(tid: libc::pid_t, core: usize) -> io::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(core)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(tid), &set)?;
    Ok(())
}

/// Names thread `tid` of this process, as `top -H` and `ps -L` show it (15 bytes at most).
pub fn rename(tid: libc::pid_t, name: &str) -> io::Result<()> {
    std::fs::write(format!("/proc/self/task/{tid}/comm"), name)
}

/// Names the threads a library started here since `before` (a ZeroMQ context's I/O
/// threads) `name`, and pins them to `core`: a sink's socket threads stay beside the thread
/// that feeds them. Failures are logged; the threads keep running as they were. Returns them.
pub fn adopt_started_since(
    before: &[libc::pid_t],
    name: &str,
    core: Option<usize>,
) -> Vec<libc::pid_t> {
    let tids = started_here_since(before);
    for &tid in &tids {
        if let Err(e) = rename(tid, name) {
            tracing::debug!(error = %e, tid, name, "thread keeps its inherited name");
        }
        if let Some(core) = core {
            if let Err(e) = pin(tid, core) {
                tracing::warn!(error = %e, core, name, "could not pin a library thread");
            }
        }
    }
    tids
}

/// The threads started since `before` that a library started from this thread without
/// naming them (they carry the calling thread's name), or named `ZMQbg/...` as some libzmq
/// builds name theirs. Threads other code started meanwhile under other names are left out.
pub fn started_here_since(before: &[libc::pid_t]) -> Vec<libc::pid_t> {
    let comm = |path: &str| std::fs::read_to_string(path).ok();
    let mine = comm("/proc/thread-self/comm");
    thread_ids()
        .into_iter()
        .filter(|t| !before.contains(t))
        .filter(|t| {
            comm(&format!("/proc/self/task/{t}/comm"))
                .is_some_and(|c| Some(&c) == mine.as_ref() || c.starts_with("ZMQbg"))
        })
        .collect()
}

/// Ids of this process's threads (from /proc/self/task).
pub fn thread_ids() -> Vec<libc::pid_t> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| t.file_name().to_str()?.parse().ok())
        .collect()
}
