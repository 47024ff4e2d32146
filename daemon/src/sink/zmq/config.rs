//! `[sink.zmq]` (formerly `[live]`): the ZeroMQ sink's table (the socket live viewers subscribe to, the query
//! endpoint late joiners ask, previews and the notification thread's scheduling), its defaults
//! and its validation.

use serde::Deserialize;

use crate::check::{check_range, check_zmq_endpoint, ConfigError};
use crate::sink::{PreviewSetting, Sink, SinkContext, SinkNeeds, SinkTable, TableAt, ZmqSink};

/// `[sink.zmq]`: the ZeroMQ notification socket live viewers subscribe to, and the query endpoint
/// late joiners ask.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LiveConfig {
    /// PUB endpoint (`""`: no publishing).
    pub publish: String,
    /// REP endpoint answering `last` and `range` (`""`: none).
    pub query: String,
    /// Messages queued per subscriber before ZeroMQ drops for that subscriber.
    pub high_water_mark: i32,
    /// Recent frame notifications kept per stream for `range`.
    pub history: usize,
    /// Publish a preview of one frame in this many (0: no previews).
    pub preview_every: u64,
    /// And at most this many previews per second per stream (0: no limit).
    pub preview_max_hz: f64,
    /// Buffers previews are copied into; when viewers hold them all, previews are skipped.
    pub preview_buffers: usize,
    /// Also publish Bluesky event-model documents on the `bluesky` topic.
    pub bluesky: bool,
    /// Before the sources start, wait for this many subscribers (0: don't wait).
    pub wait_for_subscribers: usize,
    /// Give up waiting for subscribers after this many milliseconds, and start anyway.
    pub wait_timeout_ms: u64,
    /// Run the notification thread and the publisher's ZeroMQ I/O thread under SCHED_FIFO at
    /// this priority (1..=99), so a notification leaves as soon as its frame is written even
    /// when the compression workers keep every core busy (0: normal scheduling). Needs root
    /// or CAP_SYS_NICE; refused, it is logged and the threads run normally.
    pub realtime_priority: i32,
    /// The notification thread hands what has queued to the sinks at most once per this many
    /// microseconds: a frame written sooner than that after the previous batch waits (at most
    /// this long) and leaves with the frames behind it, so ZeroMQ's threads and every viewer
    /// wake once per batch instead of once per frame. Frames further apart than this leave at
    /// once (0, the default: every frame at once).
    pub batch_interval_us: u64,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            publish: "tcp://127.0.0.1:5556".into(),
            query: "tcp://127.0.0.1:5557".into(),
            high_water_mark: 1000,
            history: 10_000,
            preview_every: 10,
            preview_max_hz: 5.0,
            preview_buffers: 4,
            bluesky: false,
            wait_for_subscribers: 0,
            wait_timeout_ms: 5000,
            realtime_priority: 0,
            batch_interval_us: 0,
        }
    }
}

impl SinkTable for LiveConfig {
    /// Previews when publishing and `preview_every` > 0.
    fn preview(&self) -> Option<PreviewSetting> {
        Some(PreviewSetting {
            every: if self.publish.is_empty() {
                0
            } else {
                self.preview_every
            },
            max_hz: self.preview_max_hz,
            buffers: self.preview_buffers,
            keys: [
                Some("preview_every"),
                Some("preview_max_hz"),
                Some("preview_buffers"),
            ],
        })
    }

    /// The notification thread's batching and priority.
    fn needs(&self) -> SinkNeeds {
        SinkNeeds {
            batch_interval: std::time::Duration::from_micros(self.batch_interval_us),
            realtime_priority: self.realtime_priority,
            ..SinkNeeds::default()
        }
    }

    fn check(&self, at: &TableAt) -> Result<(), ConfigError> {
        for (key, endpoint) in [("publish", &self.publish), ("query", &self.query)] {
            if !endpoint.is_empty() {
                check_zmq_endpoint(&at.key(key), endpoint)?; // "" turns it off
            }
        }
        if !self.publish.is_empty() && self.publish == self.query {
            return Err(ConfigError::new(
                at.key("query"),
                format!("must differ from {}", at.key("publish")),
            ));
        }
        check_range(
            at.key("high_water_mark"),
            self.high_water_mark,
            1..=i32::MAX,
        )?;
        check_range(at.key("realtime_priority"), self.realtime_priority, 0..=99)?;
        check_range(
            at.key("batch_interval_us"),
            self.batch_interval_us,
            0..=1_000_000,
        )?;
        check_range(at.key("history"), self.history, 1..=10_000_000)
    }

    fn build(
        &self,
        ctx: &SinkContext<'_>,
        at: &TableAt,
    ) -> Result<Option<Box<dyn Sink>>, ConfigError> {
        let sink = ZmqSink::start(self, ctx.cores, ctx.late.clone(), at)?;
        Ok(Some(Box::new(sink)))
    }
}
