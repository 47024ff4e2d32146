//! The `zmq` sink, for live viewers: the ZeroMQ PUB socket every written frame is announced
//! on, the query endpoint late joiners ask, and the history behind it. Built from `[sink.zmq]`;
//! it outlives runs, so viewers stay subscribed from one run to the next.

mod bluesky;
pub mod config;
mod history;
mod publisher;
mod query;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

pub use config::LiveConfig;
pub use history::{History, Span};
pub use publisher::{LiveStats, Publisher};
pub use query::{answer, MAX_RANGE};

use crate::check::ConfigError;
use crate::contract::Counters;
use crate::sink::{LateSlot, NotificationSink, Sink, SinkCores, TableAt, Thinning};
use crate::threads;

/// The ZeroMQ sink: the sockets and query thread of [`Live`], and its publisher, shared by
/// every run's notification thread in turn.
pub struct ZmqSink {
    live: Option<Live>,
    publisher: Option<Arc<Mutex<Publisher>>>,
}

impl ZmqSink {
    /// Binds the sockets of `cfg` (errors name keys under `at`). `late` answers queries for
    /// streams the history does not hold, once a sink provides it.
    pub fn start(
        cfg: &LiveConfig,
        cores: SinkCores,
        late: LateSlot,
        at: &TableAt,
    ) -> Result<Self, ConfigError> {
        let (live, publisher) = Live::start(cfg, cores, late, at)?;
        Ok(Self {
            live: Some(live),
            publisher: publisher.map(|p| Arc::new(Mutex::new(p))),
        })
    }
}

impl Sink for ZmqSink {
    fn for_run(&self) -> Option<Box<dyn NotificationSink>> {
        self.publisher
            .as_ref()
            .map(|p| Box::new(Arc::clone(p)) as Box<dyn NotificationSink>)
    }

    fn counters(&self) -> Counters {
        let live = self.live.as_ref();
        let count = |f: fn(&LiveStats) -> &std::sync::atomic::AtomicU64| {
            live.map_or(0, |l| f(&l.stats).load(Ordering::Relaxed))
        };
        Counters::new()
            .total(
                "published",
                "Messages published to live viewers",
                count(|s| &s.published),
            )
            .total(
                "refused",
                "Messages ZeroMQ refused (a viewer's queue full)",
                count(|s| &s.refused),
            )
            .total("previews", "Previews published", count(|s| &s.previews))
            .text(
                "publish_endpoint",
                live.and_then(|l| l.publish_endpoint.clone()),
            )
            .text(
                "query_endpoint",
                live.and_then(|l| l.query_endpoint.clone()),
            )
    }

    fn summary_line(&self) -> Option<String> {
        let live = self.live.as_ref()?;
        let endpoint = live.publish_endpoint.as_ref()?;
        let s = &live.stats;
        Some(format!(
            "live             {} messages published on {endpoint} ({} previews), {} refused",
            s.published.load(Ordering::Relaxed),
            s.previews.load(Ordering::Relaxed),
            s.refused.load(Ordering::Relaxed)
        ))
    }

    fn stop(&mut self) {
        if let Some(live) = self.live.take() {
            live.stop();
        }
    }
}

/// The live side of a running daemon.
pub struct Live {
    /// Publisher counters.
    pub stats: Arc<LiveStats>,
    /// The bound PUB endpoint, if publishing.
    pub publish_endpoint: Option<String>,
    /// The bound query endpoint, if any.
    pub query_endpoint: Option<String>,
    /// ZeroMQ's own threads (`live-zmq`), by thread id.
    pub zmq_threads: Vec<libc::pid_t>,
    stop: Arc<AtomicBool>,
    query: Option<JoinHandle<()>>,
    _context: zmq::Context,
}

impl Live {
    /// Binds the sockets of `cfg` and starts the query thread (pinned to `cores.query`);
    /// ZeroMQ's own threads are named `live-zmq` and pinned to `cores.notify`, beside the
    /// notification thread that feeds them. Returns the publisher sink to hand to the
    /// pipeline, if publishing. A bind error names the configuration key.
    pub fn start(
        cfg: &LiveConfig,
        cores: SinkCores,
        late: LateSlot,
        at: &TableAt,
    ) -> Result<(Self, Option<Publisher>), ConfigError> {
        // libzmq starts a context's I/O and reaper threads with its first socket: the threads
        // that appear while ours are made are this context's.
        let threads_before = threads::thread_ids();
        let context = zmq::Context::new();
        let history = Arc::new(Mutex::new(History::new(cfg.history)));
        let stats = Arc::new(LiveStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let bind =
            |kind, key: &str, endpoint: &str| -> Result<(zmq::Socket, String), ConfigError> {
                let fail = |e: zmq::Error| ConfigError {
                    key: at.key(key),
                    message: format!("cannot bind {endpoint:?}: {e}"),
                };
                let socket = context.socket(kind).map_err(fail)?;
                if kind == zmq::XPUB {
                    socket.set_sndhwm(cfg.high_water_mark).map_err(fail)?;
                    // Let the last messages (the run's end) leave at shutdown, for up to a second.
                    socket.set_linger(1000).map_err(fail)?;
                } else {
                    socket.set_linger(0).map_err(fail)?;
                }
                socket.bind(endpoint).map_err(fail)?;
                let bound = socket
                    .get_last_endpoint()
                    .map_err(fail)?
                    .unwrap_or_else(|_| endpoint.to_owned());
                Ok((socket, bound))
            };
        let mut publisher = None;
        let mut publish_endpoint = None;
        if !cfg.publish.is_empty() {
            // XPUB: a PUB socket that also reports subscriptions, so we can wait for viewers.
            let (socket, bound) = bind(zmq::XPUB, "publish", &cfg.publish)?;
            tracing::info!(endpoint = %bound, "publishing notifications");
            wait_for_subscribers(&socket, cfg.wait_for_subscribers, cfg.wait_timeout_ms);
            publisher = Some(Publisher::new(
                socket,
                Arc::clone(&history),
                Arc::clone(&stats),
                cfg.bluesky,
                Thinning::at_most(cfg.preview_every.max(1), cfg.preview_max_hz),
            ));
            publish_endpoint = Some(bound);
        }
        let zmq_threads = threads::adopt_started_since(&threads_before, "live-zmq", cores.notify);
        for &tid in &zmq_threads {
            if cfg.realtime_priority > 0 && publisher.is_some() {
                if let Err(e) = threads::set_realtime(tid, cfg.realtime_priority) {
                    tracing::warn!(error = %e, "ZeroMQ I/O thread keeps normal scheduling");
                }
            }
        }
        let mut query = None;
        let mut query_endpoint = None;
        if !cfg.query.is_empty() {
            let (socket, bound) = bind(zmq::REP, "query", &cfg.query)?;
            tracing::info!(endpoint = %bound, "answering queries");
            let (h, s) = (Arc::clone(&history), Arc::clone(&stop));
            query = Some(
                threads::spawn("query".into(), cores.query, move || {
                    query::serve(socket, h, late, s)
                })
                .map_err(|e| ConfigError {
                    key: at.key("query"),
                    message: format!("cannot start the query thread: {e}"),
                })?,
            );
            query_endpoint = Some(bound);
        }
        Ok((
            Self {
                stats,
                publish_endpoint,
                query_endpoint,
                zmq_threads,
                stop,
                query,
                _context: context,
            },
            publisher,
        ))
    }

    /// Stops answering queries (and lets the publisher's last messages leave).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.query.take() {
            let _ = t.join();
        }
    }
}

/// Waits until `n` subscriptions have arrived on the XPUB `socket`, or `timeout_ms` passed.
fn wait_for_subscribers(socket: &zmq::Socket, n: usize, timeout_ms: u64) {
    if n == 0 {
        return;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(timeout_ms);
    let mut seen = 0;
    while seen < n {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            tracing::warn!(
                subscribers = seen,
                wanted = n,
                "starting without all subscribers"
            );
            return;
        }
        if socket
            .poll(zmq::POLLIN, left.as_millis() as i64)
            .unwrap_or(0)
            > 0
        {
            // A subscription message starts with 1, an unsubscription with 0.
            if let Ok(msg) = socket.recv_bytes(0) {
                if msg.first() == Some(&1) {
                    seen += 1;
                }
            }
        }
    }
    tracing::info!(subscribers = seen, "subscribers connected");
}
