//! The `log` sink: counts notifications and logs a rate line, and each stream's end.

use std::time::{Duration, Instant};

use crate::sink::{Notification, NotificationSink, Sink};

/// The `log` sink: each run gets a fresh [`RateLogger`].
pub struct LogSink {
    every: Duration,
}

impl LogSink {
    /// Rate lines every `every`.
    pub fn new(every: Duration) -> Self {
        Self { every }
    }
}

impl Sink for LogSink {
    fn name(&self) -> &'static str {
        "log"
    }
    fn for_run(&self) -> Option<Box<dyn NotificationSink>> {
        Some(Box::new(RateLogger::new(self.every)))
    }
    fn counters(&self) -> serde_json::Value {
        serde_json::json!({})
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
