//! `--ready-file`: once the daemon is ready (its control API answers, or its run started),
//! it writes what it bound there as JSON: the control API's address (the port the kernel
//! gave for `listen = "127.0.0.1:0"`), and each sink's counters with the endpoints it bound
//! (`tcp://127.0.0.1:*` resolved). Written to a temporary name and renamed: a reader sees
//! the whole file or none. A test, or a service wrapper, waits for the file instead of
//! guessing ports and sleeping.

use std::net::SocketAddr;
use std::path::Path;

use detingest_daemon::contract::ByName;

/// Writes the ready file `path`: this process, the control API's `listen` address if it
/// serves one, and every sink's counters and endpoints.
pub fn write(path: &Path, listen: Option<SocketAddr>, sinks: &ByName) -> std::io::Result<()> {
    let doc = serde_json::json!({
        "pid": std::process::id(),
        "listen": listen.map(|a| a.to_string()),
        "url": listen.map(|a| format!("http://{a}")),
        "sinks": sinks,
    });
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{doc}\n"))?;
    std::fs::rename(&tmp, path)
}
