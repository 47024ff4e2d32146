//! `GET /events`: the live page's updates as server-sent events, two a second, each the run's
//! status (as `GET /run`), the latest preview's index and the modules' missing counts. One
//! thread per client (`control-events`), at most `[control] max_event_clients`; a client
//! that goes away ends its thread at the next write.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tiny_http::Request;

use super::Daemon;
use crate::stream::now_ns;

/// Time between two events.
const EVERY: Duration = Duration::from_millis(500);

/// Clients being served, and how many may be.
pub struct Clients {
    now: AtomicUsize,
    max: usize,
}

impl Clients {
    /// Room for `max` clients.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            now: AtomicUsize::new(0),
            max,
        })
    }
}

/// Takes over `request`'s connection and sends events on a new thread until the client goes
/// or `shutdown` is set; answers `503` when every place is taken.
pub fn serve(
    request: Request,
    daemon: Arc<dyn Daemon>,
    clients: &Arc<Clients>,
    shutdown: &Arc<AtomicBool>,
) {
    if clients.now.fetch_add(1, Ordering::Relaxed) >= clients.max {
        clients.now.fetch_sub(1, Ordering::Relaxed);
        return super::answer(request, Err((503, "too many live page clients".into())));
    }
    let (clients, shutdown) = (Arc::clone(clients), Arc::clone(shutdown));
    let spawned = std::thread::Builder::new()
        .name("control-events".into())
        .spawn(move || {
            let mut out = request.into_writer();
            let _ = send(&mut *out, &*daemon, &shutdown);
            clients.now.fetch_sub(1, Ordering::Relaxed);
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start an event thread");
    }
}

fn send(out: &mut dyn Write, daemon: &dyn Daemon, shutdown: &AtomicBool) -> std::io::Result<()> {
    out.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n\
          X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\nretry: 2000\n\n",
    )?;
    out.flush()?;
    while !shutdown.load(Ordering::Relaxed) {
        let view = daemon.live_view();
        let event = json!({
            "status": daemon.run_status(),
            "preview_index": view.as_ref().map_or(0, |v| v.latest_index()),
            "modules_missing": view.as_ref().map(|v| v.modules_missing()).unwrap_or_default(),
            "now_ms": now_ns() / 1_000_000,
        });
        write!(out, "data: {event}\n\n")?;
        out.flush()?;
        std::thread::sleep(EVERY);
    }
    Ok(())
}
