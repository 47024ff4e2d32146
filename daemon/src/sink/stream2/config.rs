//! `[sink.stream2]`: the Stream V2 output's table (where it binds, PUSH or PUB, how much it
//! may hold), its defaults and its validation.

use serde::Deserialize;

use crate::check::{check_range, check_zmq_endpoint, ConfigError};
use crate::sink::{PreviewSetting, Sink, SinkContext, SinkTable, Stream2Sink, TableAt};

/// How the output socket hands messages out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// PUSH, as a detector does: each message to one of the connected PULL clients.
    #[default]
    Push,
    /// PUB: every message to every subscriber (fan-out; a slow one loses messages).
    Pub,
}

/// `[sink.stream2]`: every written stream as a DECTRIS Stream V2 series, for the clients of
/// EIGER2/PILATUS4 detectors.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Stream2SinkConfig {
    /// Where to bind, e.g. `tcp://*:31001` (`""`: no Stream V2 output).
    pub endpoint: String,
    /// `"push"` (as a detector) or `"pub"` (fan-out).
    pub mode: Mode,
    /// Messages ZeroMQ queues per client (ZMQ_SNDHWM); beyond, messages are dropped and
    /// counted (`images_dropped`).
    pub high_water_mark: i32,
    /// Chunk copies held for the output (the notification path copies each written chunk
    /// into one; none free: the image is skipped and counted).
    pub buffers: usize,
    /// The channel name images carry (`data {channel: image}`).
    pub channel: String,
}

impl Default for Stream2SinkConfig {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            mode: Mode::Push,
            high_water_mark: 1000,
            buffers: 64,
            channel: "threshold_1".into(),
        }
    }
}

impl Stream2SinkConfig {
    /// True when the output is configured.
    pub fn enabled(&self) -> bool {
        !self.endpoint.is_empty()
    }
}

impl SinkTable for Stream2SinkConfig {
    /// A copy of every written chunk (every frame, no rate limit), when enabled.
    fn preview(&self) -> Option<PreviewSetting> {
        Some(PreviewSetting {
            every: u64::from(self.enabled()),
            max_hz: 0.0,
            buffers: self.buffers,
            keys: [None, None, None],
        })
    }

    fn build(
        &self,
        ctx: &SinkContext<'_>,
        at: &TableAt,
    ) -> Result<Option<Box<dyn Sink>>, ConfigError> {
        let sink = Stream2Sink::start(self, ctx.cores, at)?;
        Ok(sink.map(|s| Box::new(s) as Box<dyn Sink>))
    }

    fn check(&self, at: &TableAt) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        check_zmq_endpoint(&at.key("endpoint"), &self.endpoint)?;
        check_range(
            at.key("high_water_mark"),
            self.high_water_mark,
            1..=1_000_000,
        )?;
        check_range(at.key("buffers"), self.buffers, 1..=4096)?;
        if self.channel.is_empty() || self.channel.len() > 64 {
            return Err(ConfigError::new(
                at.key("channel"),
                "must be 1 to 64 characters",
            ));
        }
        Ok(())
    }
}
