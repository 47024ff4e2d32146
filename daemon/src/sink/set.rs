//! The set of configured sinks: built once from the components' tables in one place
//! ([`SinkSet::start`]), asked for each run's notification sinks and what they need of the
//! pipeline, and for their counters, without the caller knowing which sinks there are.

use std::sync::Weak;
use std::time::Duration;

use super::{kafka, log, quality, redis, stream2, web, zmq, NotificationSink};
use crate::check::ConfigError;

/// A configured sink: built once from its table (sockets bound, threads started), it gives
/// each run its notification sink and reports its own counters.
pub trait Sink: Send + Sync {
    /// Its name in the summary and `GET /run` (`log`, `zmq`, `redis`).
    fn name(&self) -> &'static str;
    /// What it asks of the pipeline.
    fn needs(&self) -> SinkNeeds {
        SinkNeeds::default()
    }
    /// The notification sink of one run, if it wants notifications.
    fn for_run(&self) -> Option<Box<dyn NotificationSink>>;
    /// Its counters now.
    fn counters(&self) -> serde_json::Value;
    /// One line for the printed summary, if it has something to say.
    fn summary_line(&self) -> Option<String> {
        None
    }
    /// Given the run manager once it exists, for a sink that also takes commands (Kafka).
    fn attach(&self, _runs: Weak<dyn RunControl>) {}
    /// Stops what it started (sockets, threads).
    fn stop(&mut self) {}
}

/// Starting, stopping and watching runs, as a sink that takes commands sees the run manager
/// (the HTTP API's JSON: requests, statuses and refusals with an HTTP status code).
pub trait RunControl: Send + Sync {
    /// Starts the run `request` describes (the body of `POST /run/start`).
    fn start_run(&self, request: &serde_json::Value) -> Result<serde_json::Value, (u16, String)>;
    /// Checks that the run `request` describes could start now, starting nothing (the body of
    /// `POST /run/check`); answers this daemon's part of the detector.
    fn check_run(&self, _request: &serde_json::Value) -> Result<serde_json::Value, (u16, String)> {
        Err((501, "this daemon does not check runs".into()))
    }
    /// Stops the current run and waits until its files are closed.
    fn stop_run(&self) -> Result<serde_json::Value, (u16, String)>;
    /// The status `GET /run` gives.
    fn run_status(&self) -> serde_json::Value;
}

/// Previews a sink wants: the encoded chunks of one written index in `every`, at most
/// `max_hz` a second per stream, copied into a pool of `buffers`. Every sink's request keeps
/// its own pace: an index is picked when one of them wants it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreviewRequest {
    /// One frame in this many.
    pub every: u64,
    /// At most this many per second per stream (0: no limit).
    pub max_hz: f64,
    /// Buffers previews are copied into.
    pub buffers: usize,
}

/// What the sinks ask of the pipeline's notification path.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SinkNeeds {
    /// Previews of written frames, one request per sink that wants them.
    pub previews: Vec<PreviewRequest>,
    /// Hand notifications over in batches starting at least this far apart.
    pub batch_interval: Duration,
    /// Run the notification thread under SCHED_FIFO at this priority (0: normal).
    pub realtime_priority: i32,
}

impl SinkNeeds {
    /// What both ask: every preview request, and the larger of each other setting.
    fn merge(mut self, other: Self) -> Self {
        self.previews.extend(other.previews);
        Self {
            previews: self.previews,
            batch_interval: self.batch_interval.max(other.batch_interval),
            realtime_priority: self.realtime_priority.max(other.realtime_priority),
        }
    }

    /// The buffers previews are copied into: every request's, at most `MAX_PREVIEW_BUFFERS`.
    pub fn preview_buffers(&self) -> usize {
        (self.previews.iter().map(|r| r.buffers).sum::<usize>()).min(MAX_PREVIEW_BUFFERS)
    }
}

/// Preview buffers of one run at most, whatever the sinks ask.
const MAX_PREVIEW_BUFFERS: usize = 64;

/// The sinks of one run, and what they need.
pub struct RunSinks {
    /// Handed every notification on the notification thread, in this order.
    pub sinks: Vec<Box<dyn NotificationSink>>,
    /// What they ask of the pipeline.
    pub needs: SinkNeeds,
}

impl RunSinks {
    /// `sinks` with no needs (tests, benchmarks).
    pub fn new(sinks: Vec<Box<dyn NotificationSink>>) -> Self {
        Self {
            sinks,
            needs: SinkNeeds::default(),
        }
    }

    /// No sinks at all.
    pub fn none() -> Self {
        Self::new(Vec::new())
    }
}

/// Every sink's configuration table, as the configuration file assembles them.
#[derive(Debug, Clone, Copy)]
pub struct SinkTables<'a> {
    /// `[live]`: the ZeroMQ sink.
    pub zmq: &'a zmq::LiveConfig,
    /// `[sink.redis]`: the Redis sink.
    pub redis: &'a redis::RedisConfig,
    /// `[sink.stream2]`: the Stream V2 output.
    pub stream2: &'a stream2::Stream2SinkConfig,
    /// `[kafka]`: the Kafka sink (and run control), with the source its commands start.
    pub kafka: (&'a kafka::KafkaConfig, &'a str),
    /// Feed the live page (`detingestd serve` and `demo`, which serve it).
    pub page: bool,
    /// `[quality]`: the sampled analyses.
    pub quality: &'a crate::quality::QualityConfig,
}

/// The cores the sinks' threads are pinned to (`[threads]`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SinkCores {
    /// The notification thread's core, also for threads that send what it hands them.
    pub notify: Option<usize>,
    /// The core of a thread answering queries.
    pub query: Option<usize>,
}

/// A sink that could not start, named.
#[derive(Debug, thiserror::Error)]
#[error("sink {sink}: {error}")]
pub struct SinkError {
    /// The sink's name.
    pub sink: &'static str,
    /// Why, naming the configuration key (in the message, not as a source: it is said once).
    pub error: ConfigError,
}

/// The daemon's sinks.
pub struct SinkSet {
    sinks: Vec<Box<dyn Sink>>,
    view: Option<std::sync::Arc<web::LiveView>>,
}

impl SinkSet {
    /// Starts every configured sink: the one place the sinks are listed.
    pub fn start(tables: SinkTables<'_>, cores: SinkCores) -> Result<Self, SinkError> {
        let redis = redis::RedisSink::start(tables.redis, cores)?;
        // The query endpoint answers from Redis what its history no longer holds.
        let late = redis.as_ref().and_then(|r| r.history());
        let mut sinks: Vec<Box<dyn Sink>> = vec![
            Box::new(log::LogSink::new(Duration::from_secs(5))),
            Box::new(zmq::ZmqSink::start(tables.zmq, cores, late)?),
        ];
        let mut view = None;
        if tables.page {
            let page = web::WebSink::new();
            view = Some(page.view());
            sinks.push(Box::new(page));
        }
        if let Some(r) = redis {
            sinks.push(Box::new(r));
        }
        if let Some(k) = kafka::KafkaSink::start(tables.kafka.0, tables.kafka.1, cores)? {
            sinks.push(Box::new(k));
        }
        if let Some(s) = stream2::Stream2Sink::start(tables.stream2, cores)? {
            sinks.push(Box::new(s));
        }
        if let Some(q) = quality::QualitySink::start(tables.quality, cores)? {
            sinks.push(Box::new(q));
        }
        Ok(Self { sinks, view })
    }

    /// What the live page reads, when the page is served.
    pub fn live_view(&self) -> Option<std::sync::Arc<web::LiveView>> {
        self.view.clone()
    }

    /// Gives every sink the run manager (a sink taking commands starts listening now).
    pub fn attach(&self, runs: &Weak<dyn RunControl>) {
        for s in &self.sinks {
            s.attach(runs.clone());
        }
    }

    /// The notification sinks of one run and what they need.
    pub fn for_run(&self) -> RunSinks {
        RunSinks {
            sinks: self.sinks.iter().filter_map(|s| s.for_run()).collect(),
            needs: self
                .sinks
                .iter()
                .map(|s| s.needs())
                .fold(SinkNeeds::default(), SinkNeeds::merge),
        }
    }

    /// Every sink's counters, by name.
    pub fn counters(&self) -> serde_json::Map<String, serde_json::Value> {
        self.sinks
            .iter()
            .map(|s| (s.name().to_owned(), s.counters()))
            .collect()
    }

    /// The sinks' lines for the printed summary.
    pub fn summary_lines(&self) -> Vec<String> {
        self.sinks.iter().filter_map(|s| s.summary_line()).collect()
    }

    /// Stops every sink.
    pub fn stop(mut self) {
        for s in &mut self.sinks {
            s.stop();
        }
    }
}
