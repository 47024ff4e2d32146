//! `[source.kafka_events]`: a neutron instrument's event topics (ev44 and pu00), its log
//! topics (f144, f142), which `source_name` goes where in the NeXus file, and validation
//! that names the offending key.

use serde::Deserialize;

use crate::check::ConfigError;
use detingest_writer::{EventFileSpec, EventSourceSpec, LogSpec};

/// `[source.kafka_events]`: consumed for the run a `pl72` (or `POST /run/start`) started.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaEventsConfig {
    /// Bootstrap servers (default: `[kafka] brokers`).
    #[serde(default)]
    pub brokers: String,
    /// Topics carrying ev44 events and pu00 pulse metadata (ISIS `<instrument>_events`, ESS
    /// detector topics).
    pub topics: Vec<String>,
    /// Topics carrying f144/f142 values (ISIS `_sampleEnv`, `_runLog`).
    #[serde(default)]
    pub log_topics: Vec<String>,
    /// Detector banks: their `source_name`, their group under `/entry`.
    #[serde(default)]
    pub banks: Vec<BankConfig>,
    /// Monitors (no pixel ids), likewise.
    #[serde(default)]
    pub monitors: Vec<BankConfig>,
    /// Logged values and their NXlog paths.
    #[serde(default)]
    pub logs: Vec<LogConfig>,
    /// The `source_name` of the pu00 messages whose pulses number the run's indices; empty:
    /// the first bank's pulses do.
    #[serde(default)]
    pub pulse_source: String,
    /// Read from this many ms before the run's start time (a pl72's `start_time`, else the
    /// moment the run starts): events sent just before the run began are kept.
    #[serde(default)]
    pub lookback_ms: u64,
    /// After a stop, ms until the topics' ends are taken: messages sent before the stop that
    /// are still on their way to the brokers are kept.
    #[serde(default = "default_stop_leeway_ms")]
    pub stop_leeway_ms: u64,
    /// The live page's time-of-flight histogram spans 0 to this, ns (default: a 14 Hz
    /// source's period).
    #[serde(default = "default_histogram_tof_max_ns")]
    pub histogram_tof_max_ns: u64,
    /// Messages waiting between the consumer and the writer (both threads never wait for
    /// each other below this).
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Largest message accepted, bytes.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
}

/// A bank or monitor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BankConfig {
    /// The `source_name` of its ev44 messages.
    pub source_name: String,
    /// Its group under `/entry` (default `instrument/<source_name>` for a bank,
    /// `<source_name>` for a monitor).
    #[serde(default)]
    pub path: String,
    /// `[first, count]` of its pixel ids: `detector_number` in the file.
    #[serde(default)]
    pub pixels: Option<(i32, u32)>,
}

/// A logged value.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// The `source_name` of its f144/f142 messages.
    pub source_name: String,
    /// Its NXlog under `/entry` (default `selog/<source_name>`).
    #[serde(default)]
    pub path: String,
    /// Units of its values.
    #[serde(default)]
    pub units: String,
    /// Keep the EPICS alarms its f142 messages carry (alarm_time, alarm_status,
    /// alarm_severity in its NXlog, one entry per change).
    #[serde(default)]
    pub alarms: bool,
}

fn default_histogram_tof_max_ns() -> u64 {
    71_428_572
}
fn default_stop_leeway_ms() -> u64 {
    1000
}
fn default_queue() -> usize {
    1024
}
fn default_max_message_bytes() -> usize {
    64 << 20
}

impl KafkaEventsConfig {
    /// Checks the table of source `i`, naming `source[i].kafka_events.<key>`.
    pub fn check(&self, i: usize) -> Result<(), ConfigError> {
        let key = |k: &str| format!("source[{i}].kafka_events.{k}");
        if self.topics.is_empty() || self.topics.iter().any(|t| t.trim().is_empty()) {
            return Err(ConfigError::new(
                key("topics"),
                "name at least one event topic",
            ));
        }
        if self.banks.is_empty() && self.monitors.is_empty() {
            return Err(ConfigError::new(
                key("banks"),
                "name at least one bank or monitor (its source_name)",
            ));
        }
        if !self.logs.is_empty() && self.log_topics.is_empty() {
            return Err(ConfigError::new(
                key("log_topics"),
                "logs need their topics",
            ));
        }
        if self.queue == 0 {
            return Err(ConfigError::new(key("queue"), "must be at least 1"));
        }
        if self.histogram_tof_max_ns == 0 {
            return Err(ConfigError::new(
                key("histogram_tof_max_ns"),
                "must be at least 1",
            ));
        }
        if self.max_message_bytes < 1024 {
            return Err(ConfigError::new(
                key("max_message_bytes"),
                "must be at least 1024",
            ));
        }
        let mut names = std::collections::HashSet::new();
        let mut paths = std::collections::HashSet::new();
        let spec = self.file_spec();
        let entries = (spec.sources.iter().map(|s| (&s.source_name, &s.path)))
            .chain(spec.logs.iter().map(|l| (&l.source_name, &l.path)));
        for (n, (name, path)) in entries.enumerate() {
            let at = self.key_of(n);
            if name.is_empty() || !names.insert(name.clone()) {
                return Err(ConfigError::new(
                    key(&format!("{at}.source_name")),
                    format!("{name:?} is empty or named twice"),
                ));
            }
            if !valid_path(path) || !paths.insert(path.clone()) {
                return Err(ConfigError::new(
                    key(&format!("{at}.path")),
                    format!(
                        "{path:?} must be a new path of names of letters, digits and _ joined by /"
                    ),
                ));
            }
        }
        if let Some((k, _)) = (self.banks.iter().enumerate())
            .find(|(_, b)| b.pixels.is_some_and(|(_, n)| n == 0 || n > 1 << 24))
        {
            return Err(ConfigError::new(
                key(&format!("banks[{k}].pixels")),
                "count must be 1 ..= 16777216",
            ));
        }
        Ok(())
    }

    /// `banks[k]`, `monitors[k]` or `logs[k]` for the `n`-th name (banks, monitors, logs).
    fn key_of(&self, n: usize) -> String {
        let (b, m) = (self.banks.len(), self.monitors.len());
        if n < b {
            format!("banks[{n}]")
        } else if n < b + m {
            format!("monitors[{}]", n - b)
        } else {
            format!("logs[{}]", n - b - m)
        }
    }

    /// The configured banks' pixel ids, first and last (`None` when no bank gives them).
    pub fn pixel_range(&self) -> Option<(i64, i64)> {
        let ranges = (self.banks.iter().filter_map(|b| b.pixels))
            .map(|(first, n)| (i64::from(first), i64::from(first) + i64::from(n) - 1));
        ranges.reduce(|a, b| (a.0.min(b.0), a.1.max(b.1)))
    }

    /// What the run's file holds: banks first, then monitors (the writer's source order).
    pub fn file_spec(&self) -> EventFileSpec {
        let bank = |b: &BankConfig, monitor: bool| EventSourceSpec {
            source_name: b.source_name.clone(),
            path: match (b.path.is_empty(), monitor) {
                (false, _) => b.path.clone(),
                (true, false) => format!("instrument/{}", b.source_name),
                (true, true) => b.source_name.clone(),
            },
            monitor,
            pixels: b.pixels,
        };
        EventFileSpec {
            sources: (self.banks.iter().map(|b| bank(b, false)))
                .chain(self.monitors.iter().map(|b| bank(b, true)))
                .collect(),
            logs: (self.logs.iter())
                .map(|l| LogSpec {
                    source_name: l.source_name.clone(),
                    path: if l.path.is_empty() {
                        format!("selog/{}", l.source_name)
                    } else {
                        l.path.clone()
                    },
                    units: (!l.units.is_empty()).then(|| l.units.clone()),
                    alarms: l.alarms,
                })
                .collect(),
            pulse_log: !self.pulse_source.is_empty(),
            ..EventFileSpec::default()
        }
    }
}

/// A path of `[A-Za-z0-9_]` names joined by `/`, none of them `detingest`'s own group.
fn valid_path(path: &str) -> bool {
    !path.is_empty()
        && path
            .split('/')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        && !matches!(path.split('/').next(), Some("detingest" | "framelog"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> KafkaEventsConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_and_paths() {
        let c = parse(
            r#"topics = ["loki_events"]
               log_topics = ["loki_sample_env"]
               banks = [{ source_name = "bank0", pixels = [1, 100] }]
               monitors = [{ source_name = "monitor_1" }]
               logs = [{ source_name = "temperature", units = "K" }]"#,
        );
        c.check(0).unwrap();
        let s = c.file_spec();
        assert_eq!(s.sources[0].path, "instrument/bank0");
        assert_eq!(s.sources[1].path, "monitor_1");
        assert!(s.sources[1].monitor);
        assert_eq!(s.logs[0].path, "selog/temperature");
    }

    #[test]
    fn errors_name_the_key() {
        let err = |text: &str| parse(text).check(2).unwrap_err().to_string();
        assert!(err(r#"topics = []"#).contains("source[2].kafka_events.topics"));
        assert!(err(r#"topics = ["t"]"#).contains("kafka_events.banks"));
        let twice = r#"topics = ["t"]
            banks = [{ source_name = "a" }, { source_name = "a", path = "x" }]"#;
        assert!(err(twice).contains("kafka_events.banks[1].source_name"));
        let escape = r#"topics = ["t"]
            banks = [{ source_name = "a", path = "../etc" }]"#;
        assert!(err(escape).contains("kafka_events.banks[0].path"));
        let logs = r#"topics = ["t"]
            banks = [{ source_name = "a" }]
            logs = [{ source_name = "T" }]"#;
        assert!(err(logs).contains("kafka_events.log_topics"));
        let mon = r#"topics = ["t"]
            banks = [{ source_name = "a" }]
            monitors = [{ source_name = "m", path = "detingest" }]"#;
        assert!(err(mon).contains("kafka_events.monitors[0].path"));
    }
}
