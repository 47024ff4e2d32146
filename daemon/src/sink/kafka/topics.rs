//! Every configured topic checked at start: the command, status, frame and preview topics are
//! asked for by name (brokers that create topics on demand do so then); those the brokers do
//! not have are created (`kafka.create_topics`), or refuse the start naming their key, or,
//! with `on_start_error = "continue"`, are logged once each: their messages are then refused
//! and counted (`topic_missing`), never taken for a broker outage.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::Producer as _;

use super::client::{KafkaStats, Producer};
use super::config::{KafkaConfig, OnStartError};
use crate::sink::TableAt;

/// The configured topics and their keys, each once (a topic two keys name: the first key).
pub fn configured(cfg: &KafkaConfig) -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = Vec::new();
    for (key, topic) in [
        ("command_topic", cfg.command_topic.as_str()),
        ("status_topic", cfg.status_topic()),
        ("frame_topic", cfg.frame_topic.as_str()),
        ("preview_topic", cfg.preview_topic.as_str()),
    ] {
        if !topic.is_empty() && !out.iter().any(|(_, t)| t == topic) {
            out.push((key, topic.to_owned()));
        }
    }
    out
}

/// Checks (and creates, if configured) every topic; an error names the first missing
/// topic's key when the start is to be refused.
pub fn check(
    cfg: &KafkaConfig,
    at: &TableAt,
    producer: &Producer,
    stats: &KafkaStats,
    timeout: Duration,
) -> Result<(), (String, String)> {
    let mut missing = Vec::new();
    for (field, topic) in configured(cfg) {
        let key = at.key(field);
        let why = match producer.client().fetch_metadata(Some(&topic), timeout) {
            Ok(m) => (m.topics().iter()).find_map(|t| t.error().map(|e| format!("{e:?}"))),
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = why {
            missing.push((key, topic, why));
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    if cfg.create_topics {
        let names: Vec<&str> = missing.iter().map(|(_, t, _)| t.as_str()).collect();
        match create(cfg, &names, timeout) {
            Ok(()) => {
                tracing::info!(topics = ?names, "kafka: created the missing topics");
                return Ok(());
            }
            Err(e) => {
                let (key, topic, _) = &missing[0];
                return Err((key.clone(), format!("cannot create topic {topic:?}: {e}")));
            }
        }
    }
    let (key, topic, why) = &missing[0];
    let message = format!(
        "the brokers have no topic {topic:?} ({why}); create it, or set {} = true",
        at.key("create_topics")
    );
    if cfg.on_start_error == OnStartError::Fail {
        return Err((key.clone(), message));
    }
    for (key, topic, why) in &missing {
        tracing::error!(%key, %topic, error = %why, "kafka: the brokers have no such topic: its messages are refused and counted (topic_missing) until it exists (commands are read once it does)");
        stats.missing_at_start(topic);
    }
    Ok(())
}

/// Creates `topics` with one partition each and the brokers' default replication.
fn create(cfg: &KafkaConfig, topics: &[&str], timeout: Duration) -> Result<(), String> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    let admin: AdminClient<DefaultClientContext> = c.create().map_err(|e| e.to_string())?;
    let new: Vec<NewTopic<'_>> = (topics.iter())
        .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(-1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(timeout));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let results = runtime
        .block_on(admin.create_topics(&new, &options))
        .map_err(|e| e.to_string())?;
    for r in results {
        if let Err((topic, code)) = r {
            if code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                return Err(format!("{topic}: {code}"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_topic_is_checked_once_under_its_first_key() {
        let cfg = KafkaConfig {
            brokers: "h:1".into(),
            command_topic: "cmd".into(),
            frame_topic: "frames".into(),
            preview_topic: "frames".into(),
            ..KafkaConfig::default()
        };
        let keys: Vec<(&str, String)> = configured(&cfg);
        assert_eq!(
            keys,
            [
                ("command_topic", "cmd".to_owned()),
                ("frame_topic", "frames".to_owned())
            ],
            "the status topic is the command topic"
        );
    }
}
