//! `GET /events`: the live page's updates as server-sent events, two a second, each the run's
//! status (as `GET /run`), the latest preview's index and the modules' missing counts. One
//! task makes each event once (on a blocking thread, while some page listens) and every page
//! gets it from a watch channel: fifty pages cost one status, not fifty threads. At most
//! `[control] max_event_clients` pages at once (`503` beyond); a page that goes away frees
//! its place when its connection closes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::Response;
use serde_json::json;
use tokio::sync::watch;

use super::{Body, Daemon};
use crate::contract::ApiError;
use crate::stream::now_ns;

/// Time between two events.
const EVERY: Duration = Duration::from_millis(500);

/// The pages being served and the latest event.
pub struct Events {
    clients: AtomicUsize,
    max: usize,
    latest: watch::Sender<Bytes>,
}

impl Events {
    /// Room for `max` pages; [`Self::produce`] makes the events.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            clients: AtomicUsize::new(0),
            max,
            latest: watch::channel(Bytes::new()).0,
        })
    }

    /// Makes an event every [`EVERY`] while some page listens (run on the API's runtime).
    pub async fn produce(self: Arc<Self>, daemon: Arc<dyn Daemon>) {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.latest.receiver_count() == 0 {
                continue;
            }
            let daemon = Arc::clone(&daemon);
            if let Ok(event) = tokio::task::spawn_blocking(move || event(&*daemon)).await {
                self.latest.send_replace(event);
            }
        }
    }

    /// A page's event stream, or `503` when every place is taken.
    pub fn serve(self: &Arc<Self>) -> Response<Body> {
        if self.clients.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.clients.fetch_sub(1, Ordering::Relaxed);
            return super::json_answer(Err(ApiError::new(503, "too many live page clients")));
        }
        let place = Place(Arc::clone(self));
        let mut rx = self.latest.subscribe();
        rx.mark_changed(); // the latest event at once, then each new one
        let first = Some(Bytes::from_static(b"retry: 2000\n\n"));
        let events = stream::unfold((rx, first, place), |(mut rx, first, place)| async move {
            if let Some(f) = first {
                return Some((Ok(Frame::data(f)), (rx, None, place)));
            }
            loop {
                rx.changed().await.ok()?; // the API stopped: the stream ends
                let e = rx.borrow_and_update().clone();
                if !e.is_empty() {
                    return Some((Ok(Frame::data(e)), (rx, None, place)));
                }
            }
        });
        let mut r = Response::new(StreamBody::new(events).boxed());
        let h = r.headers_mut();
        h.insert(
            "Content-Type",
            "text/event-stream".parse().expect("a header"),
        );
        r
    }
}

/// A page's place, given back when its stream is dropped (the connection closed).
struct Place(Arc<Events>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One event: `data: {...}\n\n`.
fn event(daemon: &dyn Daemon) -> Bytes {
    let view = daemon.live_view();
    let event = json!({
        "status": daemon.run_status(),
        "preview_index": view.as_ref().map_or(0, |v| v.latest_index()),
        "modules_missing": view.as_ref().map(|v| v.modules_missing()).unwrap_or_default(),
        "quality": view.as_ref().map(|v| v.quality()),
        "now_ms": now_ns() / 1_000_000,
    });
    Bytes::from(format!("data: {event}\n\n"))
}
