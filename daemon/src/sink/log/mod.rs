//! The `log` sink: counts notifications and logs a rate line, and each stream's end.

use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::check::{check_range, ConfigError};
use crate::contract::Counters;
use crate::sink::{Notification, NotificationSink, Sink, SinkContext, SinkTable, TableAt};

/// `[sink.log]`: how often the rate line is logged.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Seconds between rate lines while frames arrive (0: no rate lines, only each stream's
    /// end).
    pub interval_s: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { interval_s: 5 }
    }
}

impl SinkTable for LogConfig {
    fn check(&self, at: &TableAt) -> Result<(), ConfigError> {
        check_range(at.key("interval_s"), self.interval_s, 0..=86_400)
    }

    fn build(
        &self,
        _: &SinkContext<'_>,
        _: &TableAt,
    ) -> Result<Option<Box<dyn Sink>>, ConfigError> {
        let every = match self.interval_s {
            0 => Duration::MAX,
            s => Duration::from_secs(s),
        };
        Ok(Some(Box::new(LogSink { every })))
    }
}

/// The `log` sink: each run gets a fresh [`RateLogger`].
pub struct LogSink {
    every: Duration,
}

impl Sink for LogSink {
    fn for_run(&self) -> Option<Box<dyn NotificationSink>> {
        Some(Box::new(RateLogger::new(self.every)))
    }
    fn counters(&self) -> Counters {
        Counters::new()
    }
}

/// Counts notifications and logs a rate line every `every`.
pub struct RateLogger {
    every: Duration,
    window_start: Instant,
    window_frames: u64,
    total_frames: u64,
}

impl RateLogger {
    /// A logger that reports every `every`.
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            window_start: Instant::now(),
            window_frames: 0,
            total_frames: 0,
        }
    }
}

impl NotificationSink for RateLogger {
    fn notify(&mut self, n: &Notification) {
        match n {
            Notification::Frame(_) => {
                self.window_frames += 1;
                self.total_frames += 1;
            }
            Notification::StreamStart(_) | Notification::Readable(_) | Notification::Quality(_) => {
            }
            Notification::StreamEnd(e) => tracing::info!(
                stream = %e.stream.id,
                frames = e.frames,
                lost = e.lost,
                file = %e.stream.file.display(),
                "stream closed"
            ),
        }
        let dt = self.window_start.elapsed();
        if dt >= self.every {
            tracing::info!(
                frames = self.total_frames,
                rate_hz = format_args!("{:.1}", self.window_frames as f64 / dt.as_secs_f64()),
                "notifications"
            );
            self.window_start = Instant::now();
            self.window_frames = 0;
        }
    }

    fn finish(&mut self) {
        tracing::info!(frames = self.total_frames, "notifications: total");
    }
}
