//! `[sink.kafka]` (formerly `[kafka]`): the brokers, the topics (commands in; status, answers and file hand-offs out;
//! per-frame records and previews, if wanted), who we are (client and service ids), how
//! commands map to runs, librdkafka settings passed through (SASL, TLS), and the checks.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::check::{check_range, ConfigError};
use crate::sink::{KafkaSink, PreviewSetting, Sink, SinkContext, SinkTable, TableAt};

/// `[sink.kafka]`: take run control from Kafka and tell Kafka what was written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port[,host:port...]` (`""`: no Kafka).
    pub brokers: String,
    /// The Kafka client id of our producer and consumer.
    pub client_id: String,
    /// Our service id: commands naming another are ignored; answers, heartbeats and
    /// file hand-offs carry it (`""`: `detingestd-<host name>`).
    pub service_id: String,
    /// Where `pl72`/`6s4t` commands arrive (`""`: no run control from Kafka).
    pub command_topic: String,
    /// Where `x5f2` heartbeats, `answ` answers and `wrdn` hand-offs go (`""`: the command
    /// topic).
    pub status_topic: String,
    /// Where a `json` record of every written index goes (`""`: none).
    pub frame_topic: String,
    /// Where `ad00` previews go (`""`: none).
    pub preview_topic: String,
    /// A preview of one written frame in this many (0: no previews).
    pub preview_every: u64,
    /// At most this many previews a second per stream (0: no limit).
    pub preview_max_hz: f64,
    /// Heartbeat period, ms.
    pub status_interval_ms: u64,
    /// Records waiting for the `kafka` thread; when full, they are dropped and counted.
    pub queue: usize,
    /// librdkafka's own queue (`queue.buffering.max.messages`); full: dropped and counted.
    pub producer_queue_messages: u32,
    /// librdkafka's own queue, in KiB (`queue.buffering.max.kbytes`).
    pub producer_queue_kbytes: u32,
    /// The largest message (`message.max.bytes`; match the brokers' setting): previews
    /// that would not fit are binned down until they do.
    pub message_max_bytes: u32,
    /// Per-frame records and previews wait this long to be sent in batches (`linger.ms`;
    /// answers, heartbeats and hand-offs leave at once). Larger batches cost the sink and
    /// the brokers less per record (docs/BENCHMARKS.md).
    pub linger_ms: u32,
    /// A message not delivered within this long is dropped and counted
    /// (`message.timeout.ms`): a broker that is down costs messages, never memory.
    pub message_timeout_ms: u32,
    /// An answer, heartbeat or file hand-off not delivered within this long is dropped and
    /// counted (they have their own producer: a hand-off outlives a broker restart that
    /// costs frame records).
    pub report_timeout_ms: u32,
    /// The configured source a `pl72` starts (`""`: the first `[[source]]`).
    pub source: String,
    /// The beamtime of a run whose `pl72` metadata names none.
    pub beamtime: String,
    /// A command older than this (by its Kafka timestamp) is history: skipped, counted, not
    /// answered (a first start reads the command topic from its beginning).
    pub max_command_age_ms: u64,
    /// When the brokers cannot be reached at start: `"fail"` refuses to start, naming
    /// `kafka.brokers`; `"continue"` starts, logs a warning and keeps trying.
    pub on_start_error: OnStartError,
    /// How long `on_start_error` waits for the brokers, ms.
    pub connect_timeout_ms: u64,
    /// Create the topics that do not exist at start (one partition each: one order; the
    /// brokers' default replication). Without it a missing topic refuses the start (or with
    /// `on_start_error = "continue"` is logged once, its messages refused and counted).
    pub create_topics: bool,
    /// The checksum of every handed-off file: `"sha256"` (default), `"blake2b"` (ESS's
    /// ingestor) or `"md5"` (HEPS).
    pub checksum: super::manifest::Checksum,
    /// The host a catalogue names as holding `sourceFolder` (`""`: this host's name).
    pub source_folder_host: String,
    /// Further librdkafka settings, passed through as given (`security.protocol`,
    /// `sasl.mechanism`, `sasl.username`, `sasl.password`, `ssl.ca.location`, ...).
    pub properties: BTreeMap<String, String>,
}

/// What unreachable brokers at start do to the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStartError {
    /// Refuse to start.
    Fail,
    /// Start, and keep trying.
    Continue,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            client_id: "detingestd".into(),
            service_id: String::new(),
            command_topic: String::new(),
            status_topic: String::new(),
            frame_topic: String::new(),
            preview_topic: String::new(),
            preview_every: 10,
            preview_max_hz: 2.0,
            status_interval_ms: 2000,
            queue: 4096,
            producer_queue_messages: 100_000,
            producer_queue_kbytes: 262_144,
            linger_ms: 50,
            message_max_bytes: 1_000_000,
            message_timeout_ms: 30_000,
            report_timeout_ms: 300_000,
            source: String::new(),
            beamtime: "kafka".into(),
            max_command_age_ms: 60_000,
            on_start_error: OnStartError::Fail,
            connect_timeout_ms: 5000,
            create_topics: false,
            checksum: super::manifest::Checksum::Sha256,
            source_folder_host: String::new(),
            properties: BTreeMap::new(),
        }
    }
}

/// Settings we make ourselves; `properties` may not set them (every other setting a property
/// names is passed to librdkafka as given, over our defaults: `acks`, `enable.idempotence`,
/// `session.timeout.ms`, ...).
const OWN_PROPERTIES: [&str; 12] = [
    "enable.partition.eof",
    "auto.offset.reset",
    "message.max.bytes",
    "bootstrap.servers",
    "metadata.broker.list",
    "client.id",
    "group.id",
    "enable.auto.commit",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "linger.ms",
    "message.timeout.ms",
];

/// Property names whose values are never printed.
pub fn is_secret(key: &str) -> bool {
    key.contains("password") || key.contains("secret") || key.ends_with(".key.pem")
}

impl KafkaConfig {
    /// True when brokers are configured.
    pub fn enabled(&self) -> bool {
        !self.brokers.is_empty()
    }

    /// The topic of heartbeats, answers and hand-offs.
    pub fn status_topic(&self) -> &str {
        if self.status_topic.is_empty() {
            &self.command_topic
        } else {
            &self.status_topic
        }
    }

    /// The host named as holding the files (`source_folder_host`, else this host's name).
    pub fn folder_host(&self) -> String {
        if self.source_folder_host.is_empty() {
            host_name()
        } else {
            self.source_folder_host.clone()
        }
    }

    /// Our service id: configured, or `detingestd-<host name>`.
    pub fn service_id(&self) -> String {
        if self.service_id.is_empty() {
            format!("detingestd-{}", host_name())
        } else {
            self.service_id.clone()
        }
    }
}

impl SinkTable for KafkaConfig {
    /// Previews when a preview topic is set.
    fn preview(&self) -> Option<PreviewSetting> {
        Some(PreviewSetting {
            every: if self.enabled() && !self.preview_topic.is_empty() {
                self.preview_every
            } else {
                0
            },
            max_hz: self.preview_max_hz,
            buffers: 2,
            keys: [Some("preview_every"), Some("preview_max_hz"), None],
        })
    }

    /// The producer; run control once the run manager exists. Runs started by commands use
    /// `source`, else the first `[[source]]`.
    fn build(
        &self,
        ctx: &SinkContext<'_>,
        at: &TableAt,
    ) -> Result<Option<Box<dyn Sink>>, ConfigError> {
        let source = if self.source.is_empty() {
            ctx.default_source
        } else {
            &self.source
        };
        let sink = KafkaSink::start(self, source, ctx.cores, at, ctx.runs.clone())?;
        Ok(sink.map(|s| Box::new(s) as Box<dyn Sink>))
    }

    fn check(&self, at: &TableAt) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        for broker in self.brokers.split(',') {
            let ok = broker
                .trim()
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return Err(ConfigError::new(
                    at.key("brokers"),
                    format!("{broker:?} is not host:port"),
                ));
            }
        }
        if self.status_topic().is_empty() {
            return Err(ConfigError::new(
                at.key("status_topic"),
                format!(
                    "required when {} is empty: heartbeats and hand-offs need a topic",
                    at.key("command_topic")
                ),
            ));
        }
        for (key, topic) in [
            (at.key("command_topic"), &self.command_topic),
            (at.key("status_topic"), &self.status_topic),
            (at.key("frame_topic"), &self.frame_topic),
            (at.key("preview_topic"), &self.preview_topic),
        ] {
            check_topic(&key, topic)?;
        }
        check_range(
            at.key("status_interval_ms"),
            self.status_interval_ms,
            100..=3_600_000,
        )?;
        check_range(at.key("queue"), self.queue, 1..=1_000_000)?;
        check_range(
            at.key("producer_queue_messages"),
            self.producer_queue_messages,
            1..=10_000_000,
        )?;
        check_range(
            at.key("producer_queue_kbytes"),
            self.producer_queue_kbytes,
            1..=2_097_151,
        )?;
        check_range(at.key("linger_ms"), self.linger_ms, 0..=900_000)?;
        check_range(
            at.key("message_max_bytes"),
            self.message_max_bytes,
            65_536..=1_000_000_000,
        )?;
        check_range(
            at.key("report_timeout_ms"),
            self.report_timeout_ms,
            1..=3_600_000,
        )?;
        check_range(
            at.key("message_timeout_ms"),
            self.message_timeout_ms,
            1..=3_600_000,
        )?;
        check_range(
            at.key("connect_timeout_ms"),
            self.connect_timeout_ms,
            1..=600_000,
        )?;
        if detingest_shm::Name::new(&self.beamtime).is_err() {
            return Err(ConfigError::new(
                at.key("beamtime"),
                format!("{:?} is not a valid name", self.beamtime),
            ));
        }
        for key in self.properties.keys() {
            if OWN_PROPERTIES.contains(&key.as_str()) {
                return Err(ConfigError::new(
                    at.key(&format!("properties.{key}")),
                    format!(
                        "set by detingestd itself (use {}, {}, ...)",
                        at.key("brokers"),
                        at.key("client_id")
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Kafka's rule for topic names: 1..=249 of letters, digits, `.`, `_`, `-` (empty: unset).
fn check_topic(key: &str, topic: &str) -> Result<(), ConfigError> {
    let ok = topic.len() <= 249
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            key,
            format!("{topic:?} is not a Kafka topic name (letters, digits, '.', '_', '-')"),
        ))
    }
}

/// This machine's host name (`"localhost"` if it has none).
pub fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(c: &KafkaConfig) -> Result<(), ConfigError> {
        let at = TableAt("kafka".into());
        c.preview().map_or(Ok(()), |p| p.check(&at))?;
        c.check(&at)
    }

    fn with(brokers: &str, commands: &str) -> KafkaConfig {
        KafkaConfig {
            brokers: brokers.into(),
            command_topic: commands.into(),
            ..KafkaConfig::default()
        }
    }

    #[test]
    fn bad_values_name_their_key() {
        assert!(check(&KafkaConfig::default()).is_ok(), "off by default");
        assert!(check(&with("127.0.0.1:9092", "det_commands")).is_ok());
        assert!(check(&with("a:1, b:2", "c")).is_ok());
        let cases = [
            (with("nohostport", "c"), "kafka.brokers"),
            (with("h:1", ""), "kafka.status_topic"),
            (with("h:1", "bad topic"), "kafka.command_topic"),
            (
                KafkaConfig {
                    preview_max_hz: -1.0,
                    ..with("h:1", "c")
                },
                "kafka.preview_max_hz",
            ),
            (
                KafkaConfig {
                    beamtime: "../x".into(),
                    ..with("h:1", "c")
                },
                "kafka.beamtime",
            ),
            (
                KafkaConfig {
                    properties: [("bootstrap.servers".into(), "x:1".into())].into(),
                    ..with("h:1", "c")
                },
                "kafka.properties.bootstrap.servers",
            ),
        ];
        for (c, key) in cases {
            assert_eq!(check(&c).unwrap_err().key, key);
        }
    }

    #[test]
    fn the_status_topic_defaults_to_the_command_topic() {
        let c = with("h:1", "cmds");
        assert_eq!(c.status_topic(), "cmds");
        assert!(c.service_id().starts_with("detingestd-"));
        let request = |c: &KafkaConfig| c.preview().and_then(|p| p.request());
        assert_eq!(request(&c), None);
        let p = KafkaConfig {
            preview_topic: "previews".into(),
            ..c
        };
        assert_eq!(request(&p).map(|r| r.every), Some(10));
    }
}
