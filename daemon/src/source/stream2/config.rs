//! `[source.stream2]`: a DECTRIS Stream V2 detector's table (its ZeroMQ endpoint, how a
//! series names its stream, receive limits), defaults and validation.

use std::sync::Arc;

use serde::Deserialize;

use super::link::Link;
use crate::check::{check_range, check_zmq_endpoint, ConfigError};

/// `[source.stream2]`: the detector's Stream V2 endpoint, connected with a ZeroMQ PULL socket.
/// The detector's `start` message opens a run (`detingestd serve`), its images become the
/// run's indices, its `end` closes the run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stream2Config {
    /// The detector's stream endpoint, e.g. `tcp://eiger:31001`.
    pub endpoint: String,
    /// The stream name of a series: `{series_id}` and `{series_unique_id}` are replaced
    /// (default `series_{series_id}`). Must give a valid stream name.
    #[serde(default = "default_stream_name")]
    pub stream_name: String,
    /// Messages ZeroMQ queues before the detector's PUSH waits (ZMQ_RCVHWM).
    #[serde(default = "default_high_water_mark")]
    pub high_water_mark: i32,
    /// Largest message accepted, in bytes (ZMQ_MAXMSGSIZE; a bigger one closes the
    /// connection, which the detector re-opens).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: i64,
    /// Milliseconds a start may wait for its first image when it does not name the pixel type
    /// (`image_dtype`): the first image's array says it.
    #[serde(default = "default_first_image_timeout_ms")]
    pub first_image_timeout_ms: u64,
    /// What the listener and the run's source share (the socket between runs, the series
    /// that opens the next run, refusals not yet in a run's counts).
    #[serde(skip)]
    pub link: Arc<Link>,
    /// In a run, the channel this source writes (0: the first, which receives).
    #[serde(skip)]
    pub channel: usize,
}

fn default_stream_name() -> String {
    "series_{series_id}".into()
}
fn default_high_water_mark() -> i32 {
    1000
}
fn default_max_message_bytes() -> i64 {
    256 << 20
}
fn default_first_image_timeout_ms() -> u64 {
    600_000
}

impl Stream2Config {
    /// The stream name of series `id` (`unique` its unique id, with characters a name may
    /// not hold replaced by `_`, and at most 64 of them).
    pub fn stream_name_of(&self, id: u64, unique: &str) -> String {
        let unique: String = unique
            .chars()
            .take(64)
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.stream_name
            .replace("{series_id}", &id.to_string())
            .replace("{series_unique_id}", &unique)
    }

    /// Checks what the types alone cannot, naming `source[i].stream2.*` keys.
    pub(crate) fn check(&self, i: usize) -> Result<(), ConfigError> {
        let key = |k: &str| format!("source[{i}].stream2.{k}");
        check_zmq_endpoint(&key("endpoint"), &self.endpoint)?;
        let sample = self.stream_name_of(12, "0123abcd");
        detingest_shm::Name::new(&sample)
            .map_err(|e| ConfigError::new(key("stream_name"), format!("gives {sample:?}: {e}")))?;
        check_range(key("high_water_mark"), self.high_water_mark, 1..=1_000_000)?;
        check_range(
            key("max_message_bytes"),
            self.max_message_bytes,
            1024..=(4 << 30),
        )?;
        Ok(())
    }
}
