//! Neutron events from Kafka (`[source.kafka_events]`): a run reads an instrument's ev44
//! event topics (with pu00 pulse metadata) and f144/f142 log topics from its start time, and
//! writes one NeXus file per run with an NXevent_data per bank and monitor and an NXlog per
//! logged value (docs/EVENTS.md).
//!
//! This folder holds the source's table ([`config`]), its consumer thread ([`consume`]), the
//! decoders ([`messages`]) and its counts ([`counts`]); the run's writer thread and its start
//! are the pipeline's (`pipeline/events/`), so run control (HTTP, pl72/6s4t), status,
//! metrics, the hand-off (wrdn) and per-pulse notifications apply as for frames.

pub mod config;
pub mod consume;
pub mod counts;
pub mod messages;

use detingest_shm::PixelType;

pub use config::KafkaEventsConfig;
pub use counts::{EventCounts, EventHistograms};

use crate::check::ConfigError;
use crate::source::{PreparedSource, SourceConfig, SourceError, SourceKind};

impl SourceKind for KafkaEventsConfig {
    fn table(&self) -> &'static str {
        "kafka_events"
    }
    fn validate(&self, i: usize) -> Result<(), ConfigError> {
        self.check(i)
    }
    /// Events are written as i32 arrays; there is no image.
    fn frame_format(&self) -> (PixelType, [u32; 2]) {
        (PixelType::I32, [1, 1])
    }
    fn feeds_stream_alone(&self) -> bool {
        true
    }
    fn prepare(
        &self,
        src: &SourceConfig,
        _i: usize,
        _modules: u32,
    ) -> Result<Box<dyn PreparedSource>, SourceError> {
        Err(SourceError::Config(ConfigError::new(
            format!("source.{}", src.name),
            "an event source runs on its own, not in the frame pipeline",
        )))
    }
}
