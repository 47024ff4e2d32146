//! The set of configured sinks: built once from their tables ([`SinkSet::start`] walks
//! [`SinkConfig::tables`]), asked for each run's notification sinks and what they need of
//! the pipeline, and for their counters, without the caller knowing which sinks there are.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::table::{SinkContext, SinkTable};
use super::tables::SinkConfig;
use super::{web, NotificationSink};
use crate::check::ConfigError;
use crate::contract::{ApiError, ByName, Counters, RunCheck, RunHeadline, RunRequest, RunStatus};

/// A configured sink: built once from its table (sockets bound, threads started), it gives
/// each run its notification sink and reports its own counters.
pub trait Sink: Send + Sync {
    /// The notification sink of one run, if it wants notifications.
    fn for_run(&self) -> Option<Box<dyn NotificationSink>>;
    /// Its counters now.
    fn counters(&self) -> Counters;
    /// One line for the printed summary, if it has something to say.
    fn summary_line(&self) -> Option<String> {
        None
    }
    /// What the live page reads, for the sink that feeds it.
    fn live_view(&self) -> Option<Arc<web::LiveView>> {
        None
    }
    /// Stops what it started (sockets, threads).
    fn stop(&mut self) {}
}

/// Starting, stopping and watching runs, as the HTTP API, Kafka's run control and a Stream V2
/// listener see the run manager.
pub trait RunControl: Send + Sync {
    /// Starts the run `request` describes (the body of `POST /run/start`).
    fn start_run(&self, request: &RunRequest) -> Result<RunStatus, ApiError>;
    /// Checks that the run `request` describes could start now, starting nothing (the body of
    /// `POST /run/check`); answers this daemon's part of the detector.
    fn check_run(&self, _request: &RunRequest) -> Result<RunCheck, ApiError> {
        Err(ApiError::new(501, "this daemon does not check runs"))
    }
    /// Stops the current run and waits until its files are closed.
    fn stop_run(&self) -> Result<RunStatus, ApiError>;
    /// The status `GET /run` gives.
    fn run_status(&self) -> RunStatus;
    /// Where the run is and which stream, without the counters (what a loop waiting for a
    /// run's end asks).
    fn run_headline(&self) -> RunHeadline {
        let s = self.run_status();
        RunHeadline {
            state: s.state,
            stream: s.stream,
        }
    }
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
    /// What the sink `table` builds asks of the pipeline: its scheduling and its previews.
    pub fn of(table: &dyn SinkTable) -> Self {
        let mut needs = table.needs();
        needs
            .previews
            .extend(table.preview().and_then(|p| p.request()));
        needs
    }

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

/// The daemon's sinks, by name.
pub struct SinkSet {
    sinks: Vec<(&'static str, Box<dyn Sink>)>,
    needs: SinkNeeds,
    runs: super::RunsSlot,
}

impl SinkSet {
    /// Checks every table of `config` and builds the sinks they turn on, in their order.
    pub fn start(config: &SinkConfig, ctx: SinkContext<'_>) -> Result<Self, SinkError> {
        config.check().map_err(|error| SinkError {
            sink: "sink",
            error,
        })?;
        let mut sinks = Vec::new();
        let mut needs = SinkNeeds::default();
        for (name, table) in config.tables() {
            let at = config.at(name);
            let built = table.build(&ctx, &at);
            let Some(sink) = built.map_err(|error| SinkError { sink: name, error })? else {
                continue;
            };
            needs = needs.merge(SinkNeeds::of(table));
            sinks.push((name, sink));
        }
        Ok(Self {
            sinks,
            needs,
            runs: ctx.runs,
        })
    }

    /// What the live page reads, when the page is served.
    pub fn live_view(&self) -> Option<Arc<web::LiveView>> {
        self.sinks.iter().find_map(|(_, s)| s.live_view())
    }

    /// Gives the sinks the run manager (a sink taking commands starts listening now).
    pub fn attach(&self, runs: Weak<dyn RunControl>) {
        let _ = self.runs.set(runs);
    }

    /// The notification sinks of one run and what they need.
    pub fn for_run(&self) -> RunSinks {
        RunSinks {
            sinks: self.sinks.iter().filter_map(|(_, s)| s.for_run()).collect(),
            needs: self.needs.clone(),
        }
    }

    /// Every sink's counters, by name.
    pub fn counters(&self) -> ByName {
        ByName(
            self.sinks
                .iter()
                .map(|(name, s)| (*name, s.counters()))
                .collect(),
        )
    }

    /// The sinks' lines for the printed summary.
    pub fn summary_lines(&self) -> Vec<String> {
        self.sinks
            .iter()
            .filter_map(|(_, s)| s.summary_line())
            .collect()
    }

    /// Stops every sink.
    pub fn stop(mut self) {
        for (_, s) in &mut self.sinks {
            s.stop();
        }
    }
}
