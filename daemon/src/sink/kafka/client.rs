//! Our librdkafka clients: the two producers (records; reports, shared with `kafka-control`)
//! and the command consumer, configured from `[kafka]`, with a context that counts what
//! librdkafka reports and logs a broker outage once per episode instead of once per retry.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, DeliveryResult, ProducerContext};

use super::config::{is_secret, KafkaConfig};

/// What the Kafka component counts (`GET /run` under `sinks.kafka`).
#[derive(Debug, Default)]
pub struct KafkaStats {
    /// Messages the brokers acknowledged.
    pub delivered: AtomicU64,
    /// Messages librdkafka gave up on (brokers away past `message_timeout_ms`).
    pub undelivered: AtomicU64,
    /// Records not handed to librdkafka: our queue or its queue was full.
    pub dropped: AtomicU64,
    /// Per-frame records handed to librdkafka.
    pub frames: AtomicU64,
    /// Previews handed to librdkafka.
    pub previews: AtomicU64,
    /// Previews whose chunk did not decode.
    pub previews_undecodable: AtomicU64,
    /// File-written hand-offs sent.
    pub handoffs: AtomicU64,
    /// Heartbeats sent.
    pub heartbeats: AtomicU64,
    /// Commands obeyed.
    pub commands_accepted: AtomicU64,
    /// Commands refused (answered with the reason).
    pub commands_refused: AtomicU64,
    /// Commands for another service, ignored.
    pub commands_ignored: AtomicU64,
    /// Commands older than `max_command_age_ms` (history), skipped unanswered.
    pub commands_stale: AtomicU64,
    /// Messages on the command topic that are not a well-formed command.
    pub commands_malformed: AtomicU64,
    /// Errors librdkafka reported (a broker away counts once per retry).
    pub errors: AtomicU64,
    /// Outage episodes (a first error after deliveries went through).
    pub outages: AtomicU64,
    /// The command consumer has its partitions.
    pub commands_ready: AtomicBool,
    /// In an outage now.
    pub down: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl KafkaStats {
    /// The last error librdkafka reported.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|l| l.clone())
    }

    /// Records an error; the first of an episode is logged.
    pub fn error(&self, what: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut l) = self.last_error.lock() {
            *l = Some(what.to_owned());
        }
        if !self.down.swap(true, Ordering::Relaxed) {
            self.outages.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %what, "kafka: brokers unreachable; messages queue up to kafka.message_timeout_ms, then are dropped and counted; retrying");
        }
    }

    /// Something went through: an outage, if any, is over.
    pub fn succeeded(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            tracing::info!("kafka: brokers reachable again");
        }
    }
}

/// The context of both clients: librdkafka's log lines at debug level, its errors counted.
#[derive(Clone)]
pub struct Context(pub Arc<KafkaStats>);

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        tracing::debug!(target: "librdkafka", ?level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.error(&format!("{error}: {reason}"));
    }
}

impl ProducerContext for Context {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.0.delivered.fetch_add(1, Ordering::Relaxed);
                self.0.succeeded();
            }
            Err((e, _)) => {
                self.0.undelivered.fetch_add(1, Ordering::Relaxed);
                self.0.error(&e.to_string());
            }
        }
    }
}

impl ConsumerContext for Context {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let ready = matches!(rebalance, Rebalance::Assign(_));
        self.0.commands_ready.store(ready, Ordering::Relaxed);
        if ready {
            tracing::info!("kafka: listening for commands");
        }
    }
}

/// A producer. Its delivery reports and errors are served by the `kafka` thread's polls
/// (rdkafka's `ThreadedProducer` would add a thread per producer that wakes every 100 ms
/// and spins its last millisecond).
pub type Producer = BaseProducer<Context>;

/// The settings both clients share: brokers, client id, passed-through properties.
fn common(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("client.id", &cfg.client_id)
        .set("reconnect.backoff.max.ms", "2000")
        .set_log_level(RDKafkaLogLevel::Warning);
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    c
}

/// Why a client could not be made, naming the key (never a secret's value).
fn refused(e: KafkaError, cfg: &KafkaConfig) -> (String, String) {
    let text = e.to_string();
    let key = cfg
        .properties
        .keys()
        .find(|k| text.contains(k.as_str()))
        .map_or_else(
            || "kafka.properties".to_owned(),
            |k| format!("kafka.properties.{k}"),
        );
    let text = cfg
        .properties
        .iter()
        .filter(|(k, _)| is_secret(k))
        .fold(text, |t, (_, v)| {
            if v.is_empty() {
                t
            } else {
                t.replace(v.as_str(), "***")
            }
        });
    (key, text)
}

/// What a producer carries, which decides how long its messages wait for the brokers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carries {
    /// Per-frame records and previews: given up after `message_timeout_ms`.
    Records,
    /// Answers, heartbeats and file hand-offs: given up after `report_timeout_ms`.
    Reports,
}

/// A producer: bounded queue, batching, messages given up after the timeout of what it
/// carries.
pub fn producer(
    cfg: &KafkaConfig,
    stats: &Arc<KafkaStats>,
    carries: Carries,
) -> Result<Producer, (String, String)> {
    // Records leave in batches; a report (an answer, a heartbeat, a hand-off) at once.
    let (timeout, linger) = match carries {
        Carries::Records => (cfg.message_timeout_ms, cfg.linger_ms),
        Carries::Reports => (cfg.report_timeout_ms, 0),
    };
    let mut c = common(cfg);
    c.set(
        "queue.buffering.max.messages",
        cfg.producer_queue_messages.to_string(),
    )
    .set(
        "queue.buffering.max.kbytes",
        cfg.producer_queue_kbytes.to_string(),
    )
    .set("linger.ms", linger.to_string())
    .set("message.max.bytes", cfg.message_max_bytes.to_string())
    .set("message.timeout.ms", timeout.to_string());
    c.create_with_context(Context(Arc::clone(stats)))
        .map_err(|e| refused(e, cfg))
}

/// The command consumer of group `detingestd.<service id>`: a command's offset is committed
/// once it has been acted on and answered (`control.rs`, `committed`; no auto-commit, which
/// would also commit commands read but not yet acted on), so a restarted daemon goes on after
/// the last one it acted on; a first start reads
/// the topic from its beginning, where commands older than `max_command_age_ms` are skipped
/// as history. (Starting at the end instead would lose a command sent while the group's
/// first offsets are being resolved.)
pub fn consumer(
    cfg: &KafkaConfig,
    service_id: &str,
    stats: &Arc<KafkaStats>,
) -> Result<BaseConsumer<Context>, (String, String)> {
    let mut c = common(cfg);
    c.set("group.id", format!("detingestd.{service_id}"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        // A command is acted on within this long of its arrival at the broker (the broker
        // answers an empty fetch after it): a start is not kept waiting by the long poll.
        .set("fetch.wait.max.ms", "20")
        // A command topic created after we subscribed is noticed within this long.
        .set("topic.metadata.refresh.interval.ms", "10000")
        .set("enable.partition.eof", "false");
    c.create_with_context(Context(Arc::clone(stats)))
        .map_err(|e| refused(e, cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(props: &[(&str, &str)]) -> KafkaConfig {
        KafkaConfig {
            brokers: "127.0.0.1:9".into(),
            command_topic: "c".into(),
            properties: props
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..KafkaConfig::default()
        }
    }

    #[test]
    fn a_bad_passed_through_setting_names_its_key_and_hides_secrets() {
        let stats = Arc::new(KafkaStats::default());
        let cfg = with(&[("no.such.setting", "1")]);
        let (key, _) = producer(&cfg, &stats, Carries::Records).err().unwrap();
        assert_eq!(key, "kafka.properties.no.such.setting");
        let cfg = with(&[
            ("security.protocol", "sasl_plaintext"),
            ("sasl.mechanism", "hunter2-mechanism"),
            ("sasl.password", "hunter2-mechanism"),
        ]);
        let (key, text) = consumer(&cfg, "svc", &stats).err().unwrap();
        assert!(key.starts_with("kafka.properties"), "{key}");
        assert!(!text.contains("hunter2"), "{text}");
        let fine = with(&[
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanism", "SCRAM-SHA-256"),
            ("sasl.username", "det"),
            ("sasl.password", "pw"),
        ]);
        let made = producer(&fine, &stats, Carries::Reports);
        assert!(
            made.is_ok(),
            "SASL/SCRAM over TLS is built in: {:?}",
            made.err()
        );
    }
}
