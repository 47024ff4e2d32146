//! `[sink.*]`: every sink's configuration table, one line each in [`sink_tables!`]'s list
//! below, mounted as `[sink.<name>]`. Three tables were first read under other names:
//! `[live]` (now `[sink.zmq]`), `[kafka]` (`[sink.kafka]`) and `[quality]`
//! (`[sink.quality]`); a file that uses them is still read, and its errors name the keys as it
//! wrote them. A file may not set both names of one table.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::table::{SinkTable, TableAt};
use super::{kafka, log, redis, stream2, web, zmq};
use crate::check::ConfigError;

/// Declares [`SinkConfig`], one field per sink, and the list the sink set builds from.
macro_rules! sink_tables {
    ($($(#[$doc:meta])* $name:ident: $table:ty,)*) => {
        /// `[sink.*]`: every sink's table.
        #[derive(Debug, Clone, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct SinkConfig {
            $($(#[$doc])* #[serde(default)] pub $name: $table,)*
            /// The tables a file set under their older names: name -> that name.
            #[serde(skip)]
            pub(crate) older: BTreeMap<&'static str, &'static str>,
        }

        impl SinkConfig {
            /// Every table and its name, in the order the sinks are built and notified.
            pub fn tables(&self) -> Vec<(&'static str, &dyn SinkTable)> {
                vec![$((stringify!($name), &self.$name as &dyn SinkTable),)*]
            }
        }
    };
}

sink_tables! {
    /// `[sink.log]`: a line of rates in the log.
    log: log::LogConfig,
    /// `[sink.zmq]` (formerly `[live]`): live viewers and late joiners over ZeroMQ.
    zmq: zmq::LiveConfig,
    /// `[sink.web]`: the live page's feed (served by `detingestd serve` and `demo`).
    web: web::PageConfig,
    /// `[sink.redis]`: Blissdata scans on a Redis server.
    redis: redis::RedisConfig,
    /// `[sink.kafka]` (formerly `[kafka]`): ESS streaming and run control.
    kafka: kafka::KafkaConfig,
    /// `[sink.stream2]`: every written stream as a DECTRIS Stream V2 series.
    stream2: stream2::Stream2SinkConfig,
    /// `[sink.quality]` (formerly `[quality]`): per-frame statistics, spots, radial profile.
    quality: crate::quality::QualityConfig,
}

/// Tables first read under another name: the sink's name, the older top-level name.
const OLDER_NAMES: [(&str, &str); 3] =
    [("zmq", "live"), ("kafka", "kafka"), ("quality", "quality")];

impl SinkConfig {
    /// Where table `name` is mounted: `sink.<name>`, or the older name the file used.
    pub fn at(&self, name: &str) -> TableAt {
        match self.older.get(name) {
            Some(older) => TableAt((*older).to_owned()),
            None => TableAt(format!("sink.{name}")),
        }
    }

    /// Checks every table, naming keys where the file wrote them.
    pub fn check(&self) -> Result<(), ConfigError> {
        for (name, table) in self.tables() {
            let at = self.at(name);
            if let Some(p) = table.preview() {
                p.check(&at)?;
            }
            table.check(&at)?;
        }
        Ok(())
    }

    /// Moves the tables `file` sets under their older names to `[sink.<name>]`, and returns
    /// which it moved; refuses a file that sets both names of one table.
    pub fn move_older(
        file: &mut toml::Table,
    ) -> Result<BTreeMap<&'static str, &'static str>, ConfigError> {
        let mut moved = BTreeMap::new();
        for (name, older) in OLDER_NAMES {
            let Some(table) = file.remove(older) else {
                continue;
            };
            let sinks = file
                .entry("sink")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let Some(sinks) = sinks.as_table_mut() else {
                return Err(ConfigError::new("sink", "must be a table"));
            };
            if sinks.contains_key(name) {
                return Err(ConfigError::new(
                    older,
                    format!("set either [{older}] (its older name) or [sink.{name}], not both"),
                ));
            }
            sinks.insert(name.to_owned(), table);
            moved.insert(name, older);
        }
        Ok(moved)
    }

    /// `key` (a path in the file after [`Self::move_older`]) as the file wrote it.
    pub fn key_as_written(older: &BTreeMap<&'static str, &'static str>, key: &str) -> String {
        for (name, old) in older {
            let now = format!("sink.{name}");
            if let Some(rest) = key.strip_prefix(&now) {
                if rest.is_empty() || rest.starts_with('.') {
                    return format!("{old}{rest}");
                }
            }
        }
        key.to_owned()
    }
}
