//! Our librdkafka clients: the two producers (records; reports, shared with `kafka-control`)
//! and the command consumer, configured from `[kafka]` (our settings first, then
//! `[kafka.properties]`, which may change any but those `config.rs` keeps), with a context
//! that hands what librdkafka reports to [`KafkaStats`].

use std::sync::atomic::Ordering;
use std::sync::Arc;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, DeliveryResult, ProducerContext};

use super::config::{is_secret, KafkaConfig};
pub use super::stats::KafkaStats;

/// The context of both clients: librdkafka's log lines at debug level, its errors counted.
#[derive(Clone)]
pub struct Context(pub Arc<KafkaStats>);

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        tracing::debug!(target: "librdkafka", ?level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.client_error(&error, reason);
    }
}

impl ProducerContext for Context {
    /// 0 for a record; a hand-off's id (`KafkaStats::handoff_queued`) for its `wrdn`.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, handoff: usize) {
        match result {
            Ok(m) => {
                self.0.delivered(m.timestamp().to_millis());
                if handoff != 0 {
                    self.0.handoff_reported(handoff, None);
                }
            }
            Err((e, m)) => {
                self.0.refused(m.topic(), e, true);
                if handoff != 0 {
                    self.0.handoff_reported(handoff, Some(&e.to_string()));
                }
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

/// A client's settings: brokers and client id, then `ours` (what this client needs, and our
/// defaults), then `[kafka.properties]` as given: a property may change any default, and
/// those it may not change are refused by `check-config` (`config.rs`, `OWN_PROPERTIES`).
fn settings(cfg: &KafkaConfig, ours: &[(&str, String)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("client.id", &cfg.client_id)
        .set("reconnect.backoff.max.ms", "2000")
        .set_log_level(RDKafkaLogLevel::Warning);
    for (k, v) in ours {
        c.set(*k, v);
    }
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
        .map_or_else(|| "properties".to_owned(), |k| format!("properties.{k}"));
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
    let c = settings(
        cfg,
        &[
            (
                "queue.buffering.max.messages",
                cfg.producer_queue_messages.to_string(),
            ),
            (
                "queue.buffering.max.kbytes",
                cfg.producer_queue_kbytes.to_string(),
            ),
            ("linger.ms", linger.to_string()),
            ("message.max.bytes", cfg.message_max_bytes.to_string()),
            ("message.timeout.ms", timeout.to_string()),
            // Every in-sync replica has a message before it counts as delivered, and a retry
            // after a broker failed mid-send neither duplicates nor reorders (librdkafka's
            // idempotent producer): the order KAFKA.md promises holds through failures.
            ("acks", "all".into()),
            ("enable.idempotence", "true".into()),
        ],
    );
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
    let c = settings(
        cfg,
        &[
            ("group.id", format!("detingestd.{service_id}")),
            ("enable.auto.commit", "false".into()),
            ("auto.offset.reset", "earliest".into()),
            ("enable.partition.eof", "false".into()),
            // Defaults `[kafka.properties]` may change:
            ("session.timeout.ms", "6000".into()),
            // A command is acted on within this long of its arrival at the broker (the
            // broker answers an empty fetch after it): a start is not kept waiting.
            ("fetch.wait.max.ms", "20".into()),
            // A command topic created after we subscribed is noticed within this long.
            ("topic.metadata.refresh.interval.ms", "10000".into()),
        ],
    );
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
    fn properties_change_our_defaults_and_producers_are_idempotent() {
        let ours = [
            ("session.timeout.ms", "6000".to_owned()),
            ("acks", "all".to_owned()),
        ];
        let c = settings(&with(&[]), &ours);
        assert_eq!(c.get("acks"), Some("all"));
        let c = settings(&with(&[("session.timeout.ms", "30000")]), &ours);
        assert_eq!(
            c.get("session.timeout.ms"),
            Some("30000"),
            "honoured, not replaced"
        );
        let refused = KafkaConfig {
            properties: [("auto.offset.reset".into(), "latest".into())].into(),
            ..with(&[])
        };
        let at = crate::sink::TableAt::sink("kafka");
        let e = crate::sink::SinkTable::check(&refused, &at).unwrap_err();
        assert_eq!(e.key, "sink.kafka.properties.auto.offset.reset");
    }

    #[test]
    fn a_bad_passed_through_setting_names_its_key_and_hides_secrets() {
        let stats = Arc::new(KafkaStats::default());
        let cfg = with(&[("no.such.setting", "1")]);
        let (key, _) = producer(&cfg, &stats, Carries::Records).err().unwrap();
        assert_eq!(key, "properties.no.such.setting");
        let cfg = with(&[
            ("security.protocol", "sasl_plaintext"),
            ("sasl.mechanism", "hunter2-mechanism"),
            ("sasl.password", "hunter2-mechanism"),
        ]);
        let (key, text) = consumer(&cfg, "svc", &stats).err().unwrap();
        assert!(key.starts_with("properties"), "{key}");
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
