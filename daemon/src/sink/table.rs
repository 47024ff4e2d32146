//! What a sink's configuration table is to the sink set: one trait, [`SinkTable`], that checks
//! the table, says what the sink asks of the pipeline, and builds the sink with a
//! [`SinkContext`] (cores, the run manager once it exists, the late history). Every table is
//! mounted at `[sink.<name>]` ([`TableAt`] names its keys there, or under the older name the
//! file used); the previews a sink asks for are one [`PreviewSetting`] with one check.

use std::sync::{Arc, OnceLock, Weak};

use super::{LateHistory, PreviewRequest, RunControl, Sink, SinkCores, SinkNeeds};
use crate::check::{check_range, key_in, ConfigError};

/// A sink's configuration table.
pub trait SinkTable {
    /// Checks what the types alone cannot; errors name keys under `at`.
    fn check(&self, at: &TableAt) -> Result<(), ConfigError>;
    /// The previews the sink asks for, when its table has such settings (checked by the set,
    /// asked of the pipeline when the sink is built and `every` is not 0).
    fn preview(&self) -> Option<PreviewSetting> {
        None
    }
    /// The notification thread's scheduling the sink asks for (batches, priority).
    fn needs(&self) -> SinkNeeds {
        SinkNeeds::default()
    }
    /// Builds the sink (binds its sockets, starts its threads); `None` when the table leaves
    /// it off. Errors name keys under `at`.
    fn build(
        &self,
        ctx: &SinkContext<'_>,
        at: &TableAt,
    ) -> Result<Option<Box<dyn Sink>>, ConfigError>;
}

/// Where a table is mounted: `sink.<name>`, or the older name it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableAt(pub(crate) String);

impl TableAt {
    /// The table of sink `name` at its mount, `[sink.<name>]`.
    pub fn sink(name: &str) -> Self {
        Self(format!("sink.{name}"))
    }

    /// The dotted name of `field` in this table.
    pub fn key(&self, field: &str) -> String {
        key_in(&self.0, field)
    }

    /// The table's own name (`sink.redis`), for errors about the whole table.
    pub fn table(&self) -> &str {
        &self.0
    }
}

/// What building a sink may use beside its table.
pub struct SinkContext<'a> {
    /// The cores of the sinks' threads (`[threads]`).
    pub cores: SinkCores,
    /// Feed the live page (`detingestd serve` and `demo`, which serve it).
    pub page: bool,
    /// The source a run started by a command uses when the command's table names none (the
    /// first `[[source]]`).
    pub default_source: &'a str,
    /// The run manager, set once it exists (a sink taking commands waits for it).
    pub runs: RunsSlot,
    /// Where the query endpoint looks for streams its history no longer holds, set by the
    /// sink that keeps them (Redis).
    pub late: LateSlot,
}

/// The run manager as sinks hold it: empty until the manager exists.
pub type RunsSlot = Arc<OnceLock<Weak<dyn RunControl>>>;

/// A late history as sinks hold it: empty unless a sink provides one.
pub type LateSlot = Arc<OnceLock<Arc<dyn LateHistory>>>;

/// Previews as a table configures them, with the names of the keys that set them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreviewSetting {
    /// One frame in this many (0: no previews).
    pub every: u64,
    /// At most this many per second per stream (0: no limit).
    pub max_hz: f64,
    /// Buffers previews are copied into.
    pub buffers: usize,
    /// The table's keys of `every`, `max_hz` and `buffers` (`None`: not a key of the table).
    pub keys: [Option<&'static str>; 3],
}

/// Preview buffers one sink may ask for.
const MAX_BUFFERS: usize = 64;

impl PreviewSetting {
    /// Refuses a rate that is not a number >= 0 and buffers outside 1..=64, naming the key.
    pub fn check(&self, at: &TableAt) -> Result<(), ConfigError> {
        let [_, max_hz, buffers] = self.keys;
        if !(self.max_hz.is_finite() && self.max_hz >= 0.0) {
            return Err(ConfigError::new(
                at.key(max_hz.unwrap_or("preview_max_hz")),
                "must be a number >= 0",
            ));
        }
        if let Some(key) = buffers {
            check_range(at.key(key), self.buffers, 1..=MAX_BUFFERS)?;
        }
        Ok(())
    }

    /// What the pipeline is asked for, unless previews are off.
    pub fn request(&self) -> Option<PreviewRequest> {
        (self.every > 0).then_some(PreviewRequest {
            every: self.every,
            max_hz: self.max_hz,
            buffers: self.buffers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preview_errors_name_the_tables_key() {
        let at = TableAt("sink.redis".into());
        let mut p = PreviewSetting {
            every: 1,
            max_hz: f64::NAN,
            buffers: 2,
            keys: [None, Some("image_max_hz"), None],
        };
        assert_eq!(p.check(&at).unwrap_err().key, "sink.redis.image_max_hz");
        p.max_hz = 2.0;
        assert!(p.check(&at).is_ok());
        p.keys[2] = Some("preview_buffers");
        p.buffers = 0;
        assert_eq!(p.check(&at).unwrap_err().key, "sink.redis.preview_buffers");
        p.every = 0;
        assert_eq!(p.request(), None, "every = 0: no previews");
    }
}
