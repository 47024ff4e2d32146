//! An event run (`[source.kafka_events]`, docs/EVENTS.md): instead of the frame pipeline's
//! stages, the source's consumer thread (`kafka-events`, source/kafka_events/consume.rs) and
//! a writer thread of its own (`event-writer`, [`write`]), with the notification thread and
//! the sinks of any run; [`start`] returns them as a [`Running`] the supervisor treats as any
//! run's.

mod write;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use detingest_writer::{EventFile, EventFileSpec, FileOptions};

use self::write::{EventWriter, Route};
use super::{PipelineStats, Running, StartError};
use crate::config::{Config, SourceConfig};
use crate::sink::{Notification, NotifyQueue, RunSinks, StreamStartNotice};
use crate::source::kafka_events::consume::{self, ConsumerReport};
use crate::source::kafka_events::{EventHistograms, KafkaEventsConfig};
use crate::source::{SourceError, SourceStats};
use crate::stream::{now_ns, StreamInfo};
use crate::threads;

/// The run's file: `<data_dir>/<beamtime>/<source>/<stream>.nxs`.
pub fn file_path(config: &Config, src: &SourceConfig) -> std::path::PathBuf {
    super::stream_dir(config, src).join(format!("{}.nxs", src.stream.stream.as_str()))
}

/// Starts the event run of `src` (the run's only source), its notifications to `sinks`.
pub fn start(
    config: &Config,
    src: &SourceConfig,
    cfg: &KafkaEventsConfig,
    sinks: RunSinks,
) -> Result<Running, StartError> {
    let path = file_path(config, src);
    if path.exists() {
        return Err(StartError::Exists(path));
    }
    let mut cfg = cfg.clone();
    if cfg.brokers.is_empty() {
        cfg.brokers.clone_from(&config.sink.kafka.brokers);
    }
    let resource =
        |what: String, error: Box<dyn std::error::Error + Send + Sync>| StartError::Source {
            name: src.name.clone(),
            error: SourceError::Resource { what, error },
        };
    let report = Arc::new(ConsumerReport::default());
    let from_ms = read_from_ms(config, &cfg);
    let consumer = consume::assigned(&cfg, from_ms, &report)
        .map_err(|e| resource(format!("read the topics {:?}", cfg.topics), e.into()))?;

    let detector = super::detector_of(config, src, &src.stream);
    let mut spec = cfg.file_spec();
    spec.title = detector.title.clone().unwrap_or_default();
    spec.experiment_identifier = detector.experiment_identifier.clone().unwrap_or_default();
    spec.instrument_name = detector.instrument_name.clone().unwrap_or_default();
    std::fs::create_dir_all(super::stream_dir(config, src))
        .map_err(|e| resource(format!("create {}", path.display()), e.into()))?;
    let codec = src.codec(config.writer.codec);
    let file = EventFile::create(&path, &spec, codec, config.writer.swmr, SystemTime::now())
        .map_err(|e| resource(format!("create {}", path.display()), e.into()))?;

    let (routes, index_route) = routes(&spec, &cfg);
    let info = Arc::new(StreamInfo::events(src.stream.clone(), path, codec));
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(PipelineStats::default());
    let source = Arc::new(SourceStats::new(src.name.clone(), None));
    let notify = Arc::new(NotifyQueue::new(config.pipeline.notify_queue));
    notify.push(Notification::StreamStart(StreamStartNotice {
        stream: Arc::clone(&info),
        started_ns: now_ns(),
        detector: Arc::new(detector),
        user_json: config.run.user.to_string(),
        files: FileOptions {
            frames_per_file: 0,
            swmr: config.writer.swmr,
            ..FileOptions::default()
        },
    }));

    let t = &config.threads;
    let RunSinks { sinks, needs } = sinks;
    let mut spawned = vec![super::spawn_notify(&notify, sinks, &needs, t.notify)?];
    let (tx, rx) = crossbeam::channel::bounded(cfg.queue);
    let (free_tx, free_rx) = crossbeam::channel::bounded(cfg.queue + 2);
    let (st, rp) = (Arc::clone(&stop), Arc::clone(&report));
    let ccfg = cfg.clone();
    spawned.push(threads::spawn(
        "kafka-events".into(),
        src.core,
        move || consume::run(consumer, &ccfg, tx, free_rx, &st, &rp),
    )?);
    let flush_every = Duration::from_millis(match config.writer.flush_interval_ms {
        0 => 1000,
        ms => ms,
    });
    let writer = EventWriter::new(
        file,
        (spec.sources.len(), spec.logs.len()),
        Arc::clone(&info),
        Arc::clone(&notify),
        (Arc::clone(&stats), Arc::clone(&source), report),
        Arc::clone(&stop),
        routes,
        index_route,
        flush_every,
        EventHistograms::new(cfg.histogram_tof_max_ns, cfg.pixel_range()),
    );
    let writer = threads::spawn("event-writer".into(), t.writer, move || {
        writer.run(rx, free_tx)
    })?;
    Ok(Running::without_frames(
        stop,
        stats,
        vec![source],
        vec![info],
        notify,
        spawned,
        writer,
    ))
}

/// Where the run starts reading: the job's start time (a pl72's, in the run's user
/// metadata), else now, less the lookback; not below 0 (Kafka reads -1 and -2 as "latest"
/// and "earliest").
fn read_from_ms(config: &Config, cfg: &KafkaEventsConfig) -> i64 {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let start_ms = (config.run.user.pointer("/kafka/start_time"))
        .and_then(serde_json::Value::as_i64)
        .filter(|&t| t > 0)
        .unwrap_or(now_ms);
    start_ms.saturating_sub(cfg.lookback_ms as i64).max(0)
}

/// Where each configured `source_name` goes (a bank, a log, the pulse log), and which
/// numbers the run's indices (the pulse source, else the first bank).
fn routes(spec: &EventFileSpec, cfg: &KafkaEventsConfig) -> (HashMap<String, Route>, Route) {
    let mut routes = HashMap::new();
    for (k, s) in spec.sources.iter().enumerate() {
        routes.insert(s.source_name.clone(), Route::Bank(k));
    }
    for (k, l) in spec.logs.iter().enumerate() {
        routes.insert(l.source_name.clone(), Route::Log(k));
    }
    let index_route = if cfg.pulse_source.is_empty() {
        Route::Bank(0)
    } else {
        routes.insert(cfg.pulse_source.clone(), Route::Pulses);
        Route::Pulses
    };
    (routes, index_route)
}
