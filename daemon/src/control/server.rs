//! The control API's connections, on a tokio runtime (thread `control`: the accept loop and
//! two workers `control-io`; the daemon's calls run on its blocking threads): no thread per
//! connection, so idle or slow clients cost a few hundred bytes each, and nothing a client
//! does can end the accept loop.
//!
//! - One request per connection (no keep-alive: the page and tools make a few requests a
//!   second); its head must arrive within `header_timeout` of the connect, its body within
//!   `body_timeout` ([`super::body`]).
//! - At most `limit` connections at once ([`limit`]: `[control] max_connections`, and half
//!   the process's file descriptors). A connection that arrives when all are taken pushes
//!   out the one that has waited longest without sending a request head; when every one is
//!   busy with a request it is answered `503` at once and closed.
//! - Accept errors (EMFILE when the process is out of descriptors, ECONNABORTED, ...) are
//!   logged at most every 10 s, a waiting connection is pushed out to free a descriptor, and
//!   the loop goes on.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use super::{Api, Body};

/// The connections' bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections at once.
    pub connections: usize,
    /// From connect to a complete request head.
    pub header_timeout: Duration,
}

/// The connection limit: `configured`, but at most half the descriptors the process may open
/// (the rest are for files, sockets and the sinks).
pub fn limit(configured: usize) -> usize {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0;
    let fds = if ok { r.rlim_cur as usize } else { 1024 };
    configured.min(fds / 2).max(8)
}

/// Connections open, and those still waiting to send a request head (oldest first).
#[derive(Default)]
struct Open {
    count: AtomicUsize,
    waiting: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    next: u64,
    queue: VecDeque<(u64, oneshot::Sender<()>)>,
}

impl Open {
    /// Registers a new connection; its id and what tells it to close.
    fn enter(&self) -> (u64, oneshot::Receiver<()>) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let id = w.next;
        w.next += 1;
        w.queue.push_back((id, tx));
        (id, rx)
    }

    /// Connection `id` sent its request head: it is no longer pushed out.
    fn started(&self, id: u64) {
        let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        w.queue.retain(|(i, _)| *i != id);
    }

    /// Tells the connection that has waited longest for its request head to close; false
    /// when none waits.
    fn push_out_oldest(&self) -> bool {
        let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((_, tx)) = w.queue.pop_front() {
            if tx.send(()).is_ok() {
                return true;
            }
        }
        false
    }
}

/// Leaves the count when a connection ends, however it ends.
struct Leave<'a>(&'a Open, u64);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.started(self.1);
        self.0.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts connections on `listener` until `shutdown` is set.
pub async fn serve(listener: TcpListener, limits: Limits, api: Arc<Api>, shutdown: &AtomicBool) {
    let open = Arc::new(Open::default());
    let mut accept_errors = crate::rate_limit::RateLimit::default();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = tick.tick() => {
                if shutdown.load(Ordering::Relaxed) {
                    return;
                }
                continue;
            }
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                if let Some(held) = accept_errors.allow(Instant::now()) {
                    let open = open.count.load(Ordering::Relaxed);
                    tracing::warn!(error = %e, open, since_last_line = held, "control API cannot accept a connection; goes on");
                }
                // Out of descriptors: free one the idle clients hold.
                open.push_out_oldest();
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if open.count.load(Ordering::Relaxed) >= limits.connections && !open.push_out_oldest() {
            refuse(&stream);
            continue;
        }
        // Counted here, before the task runs: a burst of connects cannot overshoot the cap.
        let entered = open.enter();
        let (open, api) = (Arc::clone(&open), Arc::clone(&api));
        tokio::spawn(async move { connection(stream, limits, &api, &open, entered).await });
    }
}

/// Serves one connection's request, unless it is pushed out before sending it.
async fn connection(
    stream: TcpStream,
    limits: Limits,
    api: &Arc<Api>,
    open: &Arc<Open>,
    (id, pushed_out): (u64, oneshot::Receiver<()>),
) {
    let _leave = Leave(open, id);
    let service = {
        let (api, open) = (Arc::clone(api), Arc::clone(open));
        service_fn(move |request: Request<Incoming>| {
            open.started(id);
            let api = Arc::clone(&api);
            async move { Ok::<Response<Body>, Infallible>(super::handle(&api, request).await) }
        })
    };
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(false)
        .title_case_headers(true) // Content-Type, as naive clients look it up
        .serve_connection(TokioIo::new(stream), service);
    // A sender dropped (the request started) is no reason to stop: wait for the answer.
    let told = async {
        if pushed_out.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = served => if let Err(e) = r {
            tracing::debug!(error = %e, "control API connection ended");
        },
        () = told => tracing::debug!("control API connection pushed out before its request"),
    }
}

/// Answers `503` without waiting (one non-blocking write) and closes.
fn refuse(stream: &TcpStream) {
    const BODY: &str = r#"{"error":"too many connections to the control API; try again"}"#;
    let text = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = stream.try_write(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_waiting_connection_is_pushed_out_first() {
        let open = Open::default();
        let (a, mut ra) = open.enter();
        let (b, mut rb) = open.enter();
        let (_c, mut rc) = open.enter();
        open.started(a);
        assert!(open.push_out_oldest());
        assert!(ra.try_recv().is_err(), "a sent its request: not pushed out");
        assert!(rb.try_recv().is_ok(), "b waited longest");
        drop(Leave(&open, b));
        assert!(open.push_out_oldest());
        assert!(rc.try_recv().is_ok());
        assert!(!open.push_out_oldest(), "none waits");
        assert_eq!(open.count.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn at_most_half_the_descriptors() {
        assert!(limit(usize::MAX) < usize::MAX);
        assert_eq!(limit(10), 10.min(limit(usize::MAX)));
    }
}
