//! The Kafka component: a detingest daemon as a citizen of an ESS/ISIS-style Kafka
//! facility. Built from `[sink.kafka]`; docs/KAFKA.md has the topics and every message.
//!
//! - As a sink, the notification thread's `feed::Feed` hands records to the `kafka` thread
//!   (`publisher::Publisher`) without waiting: a `json` record per written index, `ad00`
//!   previews, and at each stream's end a `wrdn` file hand-off ([`handoff`]).
//! - Once the run manager exists, the `kafka-control` thread (`control::Control`) obeys
//!   `pl72`/`6s4t` commands through the run manager the HTTP API uses, answers with `answ`
//!   and sends `x5f2` heartbeats.
//!
//! librdkafka queues and sends from its own threads; a full queue or a broker that is away
//! costs dropped (and counted) messages, never a frame in the files.

pub mod client;
pub mod config;
mod control;
mod feed;
pub mod handoff;
mod manifest;
mod publisher;
pub mod request;
pub mod schema;
mod stats;
mod topics;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam::channel::Sender;
use rdkafka::producer::Producer as _;

pub use client::KafkaStats;
use client::{Carries, Producer};
pub use config::{KafkaConfig, OnStartError};
use feed::{Feed, Msg};
use publisher::{Publisher, Topics};

use crate::check::ConfigError;
use crate::sink::{NotificationSink, RunsSlot, Sink, SinkCores, TableAt, Thinning};
use crate::threads;

/// The Kafka sink: the producer, the `kafka` thread, and (once attached) `kafka-control`.
pub struct KafkaSink {
    cfg: KafkaConfig,
    producer: Arc<Producer>,
    reports: Arc<Producer>,
    stats: Arc<KafkaStats>,
    tx: Option<Sender<Msg>>,
    thread: Option<JoinHandle<()>>,
    control: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl KafkaSink {
    /// Makes the producer, checks the brokers answer (unreachable: an error naming the
    /// table's `brokers`, or with `on_start_error = "continue"` a warning), starts the
    /// `kafka` thread, and `kafka-control`, which takes commands once `runs` holds the run
    /// manager. `None` when no brokers are set. `source` is what commands start.
    pub fn start(
        cfg: &KafkaConfig,
        source: &str,
        cores: SinkCores,
        at: &TableAt,
        runs: RunsSlot,
    ) -> Result<Option<Self>, ConfigError> {
        if !cfg.enabled() {
            return Ok(None);
        }
        let fail = |key: &str, message: String| ConfigError::new(key, message);
        let stats = Arc::new(KafkaStats::default());
        let make =
            |carries| client::producer(cfg, &stats, carries).map_err(|(k, e)| fail(&at.key(&k), e));
        let producer = Arc::new(make(Carries::Records)?);
        let reports = Arc::new(make(Carries::Reports)?);
        let timeout = Duration::from_millis(cfg.connect_timeout_ms);
        match producer.client().fetch_metadata(None, timeout) {
            Ok(m) => {
                tracing::info!(brokers = %cfg.brokers, count = m.brokers().len(), "kafka: connected")
            }
            Err(e) if cfg.on_start_error == OnStartError::Fail => {
                return Err(fail(
                    &at.key("brokers"),
                    format!("cannot reach {} within {timeout:?}: {e}", cfg.brokers),
                ))
            }
            Err(e) => stats.outage(&format!("cannot reach {} at start: {e}", cfg.brokers)),
        }
        if !stats.down.load(Ordering::Relaxed) {
            topics::check(cfg, at, &producer, &stats, timeout).map_err(|(k, e)| fail(&k, e))?;
        }
        let (tx, rx) = crossbeam::channel::bounded(cfg.queue);
        let publisher = Publisher::new(
            Arc::clone(&producer),
            Arc::clone(&reports),
            Arc::clone(&stats),
            Topics {
                frames: cfg.frame_topic.clone(),
                previews: cfg.preview_topic.clone(),
                status: cfg.status_topic().to_owned(),
            },
            cfg.service_id(),
            cfg.message_max_bytes as usize,
            handoff::HandoffSettings {
                checksum: cfg.checksum,
                host: cfg.folder_host(),
            },
        );
        let thread = threads::spawn("kafka".into(), cores.notify, move || publisher.run(rx))
            .map_err(|e| fail(at.table(), format!("cannot start the kafka thread: {e}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let control = control::Control::new(
            cfg.clone(),
            source.to_owned(),
            Arc::clone(&reports),
            Arc::clone(&stats),
            runs,
        );
        let flag = Arc::clone(&stop);
        let control = threads::spawn("kafka-control".into(), cores.query, move || {
            control.run(&flag)
        })
        .map_err(|e| {
            fail(
                at.table(),
                format!("cannot start the kafka-control thread: {e}"),
            )
        })?;
        Ok(Some(Self {
            cfg: cfg.clone(),
            producer,
            reports,
            stats,
            tx: Some(tx),
            thread: Some(thread),
            control: Some((stop, control)),
        }))
    }
}

impl Sink for KafkaSink {
    fn for_run(&self) -> Option<Box<dyn NotificationSink>> {
        let previews = (!self.cfg.preview_topic.is_empty())
            .then(|| Thinning::at_most(self.cfg.preview_every, self.cfg.preview_max_hz));
        Some(Box::new(Feed::new(
            self.tx.clone()?,
            Arc::clone(&self.stats),
            !self.cfg.frame_topic.is_empty(),
            previews,
        )))
    }

    fn counters(&self) -> serde_json::Value {
        let s = &self.stats;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "brokers": self.cfg.brokers,
            "service_id": self.cfg.service_id(),
            "connected": !s.down.load(Ordering::Relaxed),
            "commands_ready": s.commands_ready.load(Ordering::Relaxed),
            "delivered": n(&s.delivered),
            "undelivered": n(&s.undelivered),
            "dropped": n(&s.dropped),
            "frames": n(&s.frames),
            "previews": n(&s.previews),
            "previews_undecodable": n(&s.previews_undecodable),
            "handoffs": n(&s.handoffs),
            "handoffs_undelivered": n(&s.handoffs_undelivered),
            "topic_missing": n(&s.topic_missing),
            "too_large": n(&s.too_large),
            "refused": n(&s.refused),
            "heartbeats": n(&s.heartbeats),
            "commands_accepted": n(&s.commands_accepted),
            "commands_refused": n(&s.commands_refused),
            "commands_ignored": n(&s.commands_ignored),
            "commands_malformed": n(&s.commands_malformed),
            "commands_stale": n(&s.commands_stale),
            "errors": n(&s.errors),
            "outages": n(&s.outages),
            "in_flight": self.producer.in_flight_count() + self.reports.in_flight_count(),
            "last_error": s.last_error(),
        })
    }

    fn summary_line(&self) -> Option<String> {
        let s = &self.stats;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Some(format!(
            "kafka            {} frame records, {} previews, {} hand-offs on {}; {} delivered, {} dropped, {} undelivered",
            n(&s.frames),
            n(&s.previews),
            n(&s.handoffs),
            self.cfg.brokers,
            n(&s.delivered),
            n(&s.dropped),
            n(&s.undelivered)
        ))
    }

    fn stop(&mut self) {
        if let Some((stop, t)) = self.control.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = t.join();
        }
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // What is queued (a last hand-off among it) gets a bounded chance to leave.
        let wait = Duration::from_millis(u64::from(self.cfg.message_timeout_ms).min(10_000));
        for p in [&self.reports, &self.producer] {
            if let Err(e) = p.flush(wait) {
                tracing::warn!(error = %e, in_flight = p.in_flight_count(), "kafka: messages still queued at shutdown are lost");
            }
        }
    }
}
