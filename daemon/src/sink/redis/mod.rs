//! The `redis` sink: every stream a Blissdata scan on a Redis server, so that PyPI
//! `blissdata` readers (and any Redis client) follow the detector's runs live or late.
//! Built from `[sink.redis]`; docs/REDIS.md has the keys and what readers get.
//!
//! The notification thread's `feed::Feed` gathers values into batches and hands them to
//! the `redis` thread (`publisher::Publisher`) over a bounded channel without waiting; that
//! thread alone talks to the server, one pipelined round trip per batch. A slow, absent or
//! refusing server costs dropped (and counted) entries, never a frame in the files.

pub mod config;
mod connection;
mod feed;
mod late;
mod publisher;
mod scan;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam::channel::{Receiver, Sender};

pub use config::{OnStartError, RedisConfig};
use connection::Link;
use feed::{Batch, Feed, Msg};
pub use late::{entry_span, RedisHistory};
use publisher::Publisher;

use crate::check::ConfigError;
use crate::contract::Counters;
use crate::sink::{LateHistory, NotificationSink, Sink, SinkCores, TableAt};
use crate::threads;

/// The sink's counters, shared by the feed and the Redis thread.
#[derive(Debug, Default)]
pub struct RedisStats {
    /// Scans written.
    pub scans: AtomicU64,
    /// Streams whose scan could not be written (server away at their start).
    pub scans_unpublished: AtomicU64,
    /// Scans the server lost (restarted without persistence) while their run went on.
    pub scans_lost: AtomicU64,
    /// Scans closed with indices missing.
    pub scans_incomplete: AtomicU64,
    /// Indices published.
    pub indices: AtomicU64,
    /// Batches published.
    pub batches: AtomicU64,
    /// Images whose pixels went to Redis.
    pub images: AtomicU64,
    /// Picked images whose chunk did not decode (not published).
    pub images_undecodable: AtomicU64,
    /// Indices not published (queue full, server away or refusing).
    pub indices_dropped: AtomicU64,
    /// Batches not published.
    pub batches_dropped: AtomicU64,
    /// Commands the server refused or that timed out.
    pub errors: AtomicU64,
    /// Reconnections after an outage.
    pub reconnects: AtomicU64,
    /// Connected now.
    pub connected: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl RedisStats {
    fn set_last_error(&self, e: &dyn std::fmt::Display) {
        if let Ok(mut l) = self.last_error.lock() {
            *l = Some(e.to_string());
        }
    }
}

/// The Redis sink: the channel to its thread and the thread.
pub struct RedisSink {
    tx: Option<Sender<Msg>>,
    returned: Receiver<Batch>,
    stats: Arc<RedisStats>,
    thread: Option<JoinHandle<()>>,
    url: String,
    history: Option<Arc<dyn LateHistory>>,
    image_max_hz: f64,
}

impl RedisSink {
    /// Connects to `cfg.url` and starts the `redis` thread (pinned beside the notification
    /// thread). A server that cannot be used names the table's `url` (or, with
    /// `on_start_error = "continue"`, is logged and retried). `None` when no URL is set.
    pub fn start(
        cfg: &RedisConfig,
        cores: SinkCores,
        at: &TableAt,
    ) -> Result<Option<Self>, ConfigError> {
        if !cfg.enabled() {
            return Ok(None);
        }
        let fail = |message: String| ConfigError::new(at.key("url"), message);
        let url = config::redact(&cfg.url);
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let mut link = Link::new(&cfg.url, timeout, Duration::from_millis(cfg.max_backoff_ms))
            .map_err(|e| fail(format!("{url}: {e}")))?;
        let stats = Arc::new(RedisStats::default());
        match link.connect() {
            Ok(()) => {
                tracing::info!(url = %url, "redis: publishing scans");
                stats.connected.store(true, Ordering::Relaxed);
            }
            // A database BLISS has not initialised yet is waited for, not refused: the
            // daemon may well start first.
            Err(e) if cfg.on_start_error == OnStartError::Fail && !e.waiting() => {
                return Err(fail(format!("cannot use {url}: {e}")))
            }
            Err(e) => {
                stats.set_last_error(&e);
                link.failed(&e, 0);
            }
        }
        let (tx, rx) = crossbeam::channel::bounded(cfg.queue);
        let (returns, returned) = crossbeam::channel::bounded(8);
        let publisher = Publisher::new(cfg.clone(), link, Arc::clone(&stats));
        let priority = cfg.realtime_priority;
        let thread = threads::spawn("redis".into(), cores.notify, move || {
            if priority > 0 {
                if let Err(e) = threads::set_realtime(0, priority) {
                    tracing::warn!(error = %e, "redis thread keeps normal scheduling");
                }
            }
            publisher.run(rx, returns)
        })
        .map_err(|e| fail(format!("cannot start the redis thread: {e}")))?;
        let history = match RedisHistory::new(cfg) {
            Ok(h) => Some(Arc::new(h) as Arc<dyn LateHistory>),
            Err(e) => return Err(fail(format!("{url}: {e}"))),
        };
        Ok(Some(Self {
            history,
            image_max_hz: cfg.image_max_hz,
            tx: Some(tx),
            returned,
            stats,
            thread: Some(thread),
            url,
        }))
    }
}

impl RedisSink {
    /// Late-join answers from this server, for the query endpoint.
    pub fn history(&self) -> Option<Arc<dyn LateHistory>> {
        self.history.clone()
    }
}

impl Sink for RedisSink {
    fn for_run(&self) -> Option<Box<dyn NotificationSink>> {
        let tx = self.tx.clone()?;
        Some(Box::new(Feed::new(
            tx,
            self.thread.as_ref().map(|t| t.thread().clone()),
            self.image_max_hz,
            self.returned.clone(),
            Arc::clone(&self.stats),
        )))
    }

    fn counters(&self) -> Counters {
        let s = &self.stats;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counters::new()
            .flag(
                "connected",
                "Whether the Redis server answers",
                s.connected.load(Ordering::Relaxed),
            )
            .total("scans", "Scans published", n(&s.scans))
            .total(
                "scans_unpublished",
                "Scans not published: the database was not set up by BLISS",
                n(&s.scans_unpublished),
            )
            .total(
                "scans_lost",
                "Scans whose keys the server lost (a restart): written no further",
                n(&s.scans_lost),
            )
            .total(
                "scans_incomplete",
                "Scans that ended with indices not published",
                n(&s.scans_incomplete),
            )
            .total("indices", "Indices published", n(&s.indices))
            .total("batches", "Batches of indices sent", n(&s.batches))
            .total("images", "Images published", n(&s.images))
            .total(
                "images_undecodable",
                "Previews whose chunks did not decode",
                n(&s.images_undecodable),
            )
            .total(
                "indices_dropped",
                "Indices not published (queue full, server away)",
                n(&s.indices_dropped),
            )
            .total("batches_dropped", "Batches not sent", n(&s.batches_dropped))
            .total(
                "errors",
                "Errors the server answered or the link had",
                n(&s.errors),
            )
            .total("reconnects", "Reconnections", n(&s.reconnects))
            .text("url", Some(self.url.clone()))
            .text(
                "last_error",
                s.last_error.lock().ok().and_then(|l| l.clone()),
            )
    }

    fn summary_line(&self) -> Option<String> {
        let s = &self.stats;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Some(format!(
            "redis            {} scans, {} indices and {} images published on {}; {} indices not published, {} errors",
            n(&s.scans),
            n(&s.indices),
            n(&s.images),
            self.url,
            n(&s.indices_dropped),
            n(&s.errors)
        ))
    }

    fn stop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}
