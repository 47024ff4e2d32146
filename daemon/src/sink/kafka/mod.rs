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
use crate::contract::Counters;
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

    fn counters(&self) -> Counters {
        let s = &self.stats;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counters::new()
            .flag(
                "connected",
                "Whether the brokers answer",
                !s.down.load(Ordering::Relaxed),
            )
            .flag(
                "commands_ready",
                "Whether commands are read (the command topic exists)",
                s.commands_ready.load(Ordering::Relaxed),
            )
            .total("delivered", "Messages the brokers took", n(&s.delivered))
            .total(
                "undelivered",
                "Messages that could not be delivered",
                n(&s.undelivered),
            )
            .total("dropped", "Messages dropped at a full queue", n(&s.dropped))
            .total("frames", "Frame records queued", n(&s.frames))
            .total("previews", "ad00 previews queued", n(&s.previews))
            .total(
                "previews_undecodable",
                "Previews whose chunks did not decode",
                n(&s.previews_undecodable),
            )
            .total("handoffs", "wrdn file hand-offs queued", n(&s.handoffs))
            .total(
                "handoffs_undelivered",
                "wrdn file hand-offs not delivered",
                n(&s.handoffs_undelivered),
            )
            .total(
                "topic_missing",
                "Messages to a topic the brokers do not have",
                n(&s.topic_missing),
            )
            .total(
                "too_large",
                "Messages over message_max_bytes",
                n(&s.too_large),
            )
            .total("refused", "Messages the brokers refused", n(&s.refused))
            .total("heartbeats", "x5f2 heartbeats sent", n(&s.heartbeats))
            .total(
                "commands_accepted",
                "Commands acted on",
                n(&s.commands_accepted),
            )
            .total(
                "commands_refused",
                "Commands refused",
                n(&s.commands_refused),
            )
            .total(
                "commands_ignored",
                "Commands for another service",
                n(&s.commands_ignored),
            )
            .total(
                "commands_malformed",
                "Commands that did not decode",
                n(&s.commands_malformed),
            )
            .total(
                "commands_stale",
                "Commands older than the daemon's start",
                n(&s.commands_stale),
            )
            .total("errors", "Client errors", n(&s.errors))
            .total(
                "outages",
                "Times every broker was unreachable",
                n(&s.outages),
            )
            .level(
                "in_flight",
                "Messages queued in the client",
                (self.producer.in_flight_count() + self.reports.in_flight_count()).max(0) as u64,
            )
            .text("brokers", Some(self.cfg.brokers.clone()))
            .text("service_id", Some(self.cfg.service_id()))
            .text("last_error", s.last_error())
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
