//! `--ready-file`: once the daemon is ready (its control API answers, or its run started),
//! it writes what it bound there as JSON: the control API's address (the port the kernel
//! gave for `listen = "127.0.0.1:0"`), each sink's counters with the endpoints it bound
//! (`tcp://127.0.0.1:*` resolved), and the run's sources with the ports they bound (`port = 0`
//! resolved; `run` only: `serve` binds them at each run's start, `GET /run` says where). Written to a temporary name and renamed: a reader sees
//! the whole file or none. A test, or a service wrapper, waits for the file instead of
//! guessing ports and sleeping.

use std::net::SocketAddr;
use std::path::Path;

use detingest_daemon::contract::RunStatus;

/// Writes the ready file `path`: this process, the control API's `listen` address if it
/// serves one, every sink's counters and endpoints, and the run's sources (`status`).
pub fn write(path: &Path, listen: Option<SocketAddr>, status: &RunStatus) -> std::io::Result<()> {
    let doc = serde_json::json!({
        "pid": std::process::id(),
        "listen": listen.map(|a| a.to_string()),
        "url": listen.map(|a| format!("http://{a}")),
        "sinks": status.sinks,
        "sources": status.sources,
    });
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{doc}\n"))?;
    std::fs::rename(&tmp, path)
}
