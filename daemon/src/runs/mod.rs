//! Runs: one acquisition into one stream's file set, started with its metadata and ended by
//! stop, by reaching its frame count, by an idle timeout, by its source ending, or by an error.
//!
//! A run is one pipeline: [`RunManager::start`] builds the run's configuration from the
//! daemon's (the source named in the request, the request's stream, `[run]` and `[detector]`
//! overlaid field by field with the request's), starts it, and a supervisor thread watches it
//! until its files are closed. One run at a time. The sinks (the live publisher and query
//! endpoint among them) are started once, when the manager is, so viewers stay connected from
//! run to run.

mod coordinate;
pub mod recover;
pub mod recover_events;
mod status;
mod supervise;
mod watch;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use detingest_shm::{Name, StreamId};
use serde_json::Value;

pub use crate::contract::RunStatus;
use status::Ended;
pub use supervise::{supervise, EndReason};

use crate::check::{deserialize_keyed, key_in};
use crate::cluster::merge::Merger;
use crate::config::{Config, ConfigError, RunSettings};
pub use crate::contract::ApiError;
use crate::contract::{DetectorStatus, RunCheck, RunHeadline, RunRequest, RunState};
use crate::control::Daemon;
use crate::metrics::Reading;
use crate::pipeline::{self, RunSummary, Running, StartError};
use crate::sink::web::LiveView;
use crate::sink::{RunControl, SinkSet};
use crate::source::stream2::listener::{self, Listener};
use crate::source::SourceError;
use watch::Watch;

/// Suffixes `_2` .. tried for a request with `rename_if_exists`.
const MAX_RENAME: u32 = 99;

/// Why a pipeline did not start, as the API answers it.
fn refusal(e: StartError) -> ApiError {
    match e {
        e @ StartError::Exists(_) => ApiError::conflict(e),
        StartError::Config(c)
        | StartError::Source {
            error: SourceError::Config(c),
            ..
        } => ApiError::from(c),
        e => ApiError::internal(e),
    }
}

impl From<ConfigError> for ApiError {
    fn from(e: ConfigError) -> Self {
        Self::new(400, e)
    }
}

/// Builds the configuration of the run `request` asks for, from the daemon's `base`.
///
/// The request's settings are `[run]` fields (`frames`, `chunking`, `frames_per_file`,
/// `master_data`, `vds`, `idle_timeout_ms`, `first_frame_number`, `dataset_timeout_ms`,
/// `dataset_ahead`, `user`, `next_stream`); `detector` holds NXmx fields over `[detector]`;
/// with `coordinator` (sent by a daemon starting its peers) this daemon starts its part only.
/// A `[cluster]` member writes the stream `<stream>_<name>` and needs a `first_frame_number`.
pub fn run_config(base: &Config, request: &RunRequest) -> Result<Config, ConfigError> {
    let name = |key: &str, text: &str| Name::new(text).map_err(|e| ConfigError::new(key, e));
    let id = StreamId {
        beamtime: name("beamtime", &request.beamtime)?,
        source: name("source", &request.source)?,
        stream: name("stream", &request.stream)?,
    };
    // The source named so (or else whose configured stream has that data source), with every
    // source feeding the same configured stream: the modules of one detector run together.
    let named = (base.sources.iter().find(|s| s.name == id.source))
        .or_else(|| base.sources.iter().find(|s| s.stream.source == id.source));
    let Some(named) = named else {
        let known: Vec<&str> = base.sources.iter().map(|s| s.name.as_str()).collect();
        return Err(ConfigError::new(
            "source",
            format!(
                "no source named {:?}; configured: {known:?}",
                id.source.as_str()
            ),
        ));
    };
    let mut config = base.clone();
    let mut run = serde_json::to_value(&base.run).map_err(|e| ConfigError::new("run", e))?;
    let mut detector =
        serde_json::to_value(&base.detector).map_err(|e| ConfigError::new("detector", e))?;
    if let Some(d) = &request.detector {
        overlay(&mut detector, &Value::Object(d.clone()), "detector")?;
    }
    overlay(&mut run, &Value::Object(request.settings.clone()), "")?;
    config.run = deserialize_keyed::<_, RunSettings>(run, "")?;
    config.detector = deserialize_keyed(detector, "detector")?;
    (config.detector.validate())
        .map_err(|(key, e)| ConfigError::new(format!("detector.{key}"), e))?;
    config.run.validate("")?;
    let mut id = id;
    if base.cluster.member() {
        if config.run.first_frame_number.is_none() {
            return Err(ConfigError::new(
                "first_frame_number",
                "required when daemons take a detector together ([cluster] name), so that \
                 index i is the same image on every daemon: set [run] first_frame_number or \
                 the request's",
            ));
        }
        let part = base.cluster.part_stream(id.stream.as_str());
        id.stream = Name::new(&part).map_err(|e| ConfigError::new("stream", e))?;
    }
    config.sources = base
        .sources
        .iter()
        .filter(|s| s.stream == named.stream)
        .cloned()
        .collect();
    for src in &mut config.sources {
        src.stream = id.clone();
        if let Some(syn) = src.synthetic.as_mut() {
            syn.frames = config.run.frames;
        }
    }
    // A source that feeds several streams (a Stream V2 detector's channels) becomes one
    // source per stream.
    config.sources = (config.sources.iter())
        .flat_map(|s| s.kind().map_or_else(|| vec![s.clone()], |k| k.expand(s)))
        .collect();
    config.validate()?;
    Ok(config)
}

/// Sets the fields of `over` (an object) in `base`, refusing fields `base` does not have.
fn overlay(base: &mut Value, over: &Value, prefix: &str) -> Result<(), ConfigError> {
    let (Value::Object(b), Value::Object(o)) = (base, over) else {
        return Err(ConfigError::new(prefix, "must be a JSON object"));
    };
    for (k, v) in o {
        let Some(slot) = b.get_mut(k) else {
            return Err(ConfigError::new(key_in(prefix, k), "unknown field"));
        };
        *slot = v.clone();
    }
    Ok(())
}

/// The current run, as the supervisor sees it.
struct Current {
    status: Arc<Mutex<RunStatus>>,
    stop: Arc<AtomicBool>,
    stop_requested: Arc<AtomicBool>,
    supervisor: std::thread::JoinHandle<()>,
    /// Started here on every daemon of the detector: a stop stops them all, after telling
    /// the merger (the whole detector then ends with its last whole index).
    coordinated: Option<Arc<AtomicBool>>,
}

/// Starts, stops and reports runs, one at a time.
pub struct RunManager {
    base: Config,
    current: Mutex<Option<Current>>,
    /// Locked before a run's status, never while holding `current` (the supervisor takes
    /// both at a run's end while `stop` holds `current` waiting for it).
    ended: Arc<Mutex<Ended>>,
    sinks: Mutex<Option<SinkSet>>,
    listeners: Mutex<Vec<Listener>>,
    started_s: f64,
    /// The control token, for the peers of `[cluster]` (the daemons of a detector share it).
    peer_token: Option<String>,
}

impl RunManager {
    /// A manager for runs of `base`'s sources, as `detingestd serve` keeps one: starts the
    /// configured sinks with the live page's, and finishes (and announces) the runs a crash
    /// left behind beside the new ones.
    pub fn new(base: Config) -> Result<Self, StartError> {
        let sinks = SinkSet::start(&base.sink, base.sink_context(true))?;
        let recovering = recover::spawn_finish_left_behind(
            base.data_dir.clone(),
            sinks.for_run(),
            &base.cluster.name,
        );
        if let Err(e) = recovering {
            tracing::error!(error = %e, "cannot start the thread that finishes crashed runs");
        }
        Ok(Self::with_sinks(base, sinks))
    }

    /// A manager for the one run of `detingestd run` ([`Self::start_configured`]): the
    /// configured sinks, no live page, nothing else in the data directory touched.
    pub fn for_one_run(base: Config) -> Result<Self, StartError> {
        let sinks = SinkSet::start(&base.sink, base.sink_context(false))?;
        Ok(Self::with_sinks(base, sinks))
    }

    fn with_sinks(base: Config, sinks: SinkSet) -> Self {
        let peer_token = base.control.token().ok().flatten();
        Self {
            base,
            current: Mutex::new(None),
            ended: Arc::new(Mutex::new(Ended {
                status: RunStatus::idle(),
                summary: None,
                totals: Default::default(),
            })),
            sinks: Mutex::new(Some(sinks)),
            listeners: Mutex::new(Vec::new()),
            peer_token,
            started_s: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        }
    }

    /// Hands this manager to what opens runs besides the HTTP API: the sinks that take
    /// commands (Kafka), and a listener per Stream V2 source (its detector's start opens a
    /// run). Fails if a listener's socket cannot be made (its endpoint).
    pub fn attach(self: &Arc<Self>) -> Result<(), StartError> {
        let weak = Arc::downgrade(self);
        let runs: std::sync::Weak<dyn RunControl> = weak;
        if let Some(Some(sinks)) = self.sinks.lock().ok().as_deref() {
            sinks.attach(runs.clone());
        }
        for src in self.base.sources.iter().filter(|s| s.stream2.is_some()) {
            let listener =
                listener::spawn(src, runs.clone()).map_err(|error| StartError::Source {
                    name: src.name.clone(),
                    error: SourceError::Resource {
                        what: "connect to the detector's stream".into(),
                        error: Box::new(error),
                    },
                })?;
            if let Ok(mut l) = self.listeners.lock() {
                l.push(listener);
            }
        }
        Ok(())
    }

    /// Stops the run in progress (if any), the Stream V2 listeners and the sinks.
    pub fn shutdown(&self) {
        let listeners = self.listeners.lock().map(|mut l| std::mem::take(&mut *l));
        let listeners = listeners.unwrap_or_default();
        for listener in &listeners {
            listener.signal();
        }
        let running = (self.current.lock().ok())
            .is_some_and(|c| c.as_ref().is_some_and(|c| !c.supervisor.is_finished()));
        if self.stop().is_ok() && running {
            tracing::info!("run in progress stopped at shutdown");
        }
        for listener in listeners {
            listener.join();
        }
        if let Some(sinks) = self.sinks.lock().ok().and_then(|mut l| l.take()) {
            sinks.stop();
        }
    }

    /// Starts the run `request` describes; refused while another runs or if its files exist
    /// (unless it asks `"rename_if_exists": true`: then under the first free `<stream>_<n>`).
    pub fn start(&self, request: &RunRequest) -> Result<RunStatus, ApiError> {
        let mut current = self.claim()?;
        let coordinated = self.coordinates(request);
        let peers = coordinated.then(|| self.start_peers(request)).transpose()?;
        let (config, running) = match self.start_pipeline(request) {
            Ok(started) => started,
            Err(e) => {
                if coordinated {
                    coordinate::stop_peers(&self.peers());
                }
                return Err(e);
            }
        };
        let merger = match peers {
            Some(p) => match self.spawn_merger(&config, request, p, running.streams().len()) {
                Ok(m) => Some(m),
                Err(e) => {
                    running.stop();
                    coordinate::stop_peers(&self.peers());
                    let _ = running.wait();
                    return Err(e);
                }
            },
            None => None,
        };
        let (run, status) = self.launch(&config, running, merger)?;
        *current = Some(run);
        Ok(status)
    }

    /// Starts the configured sources as they are (every stream they feed), as one run: what
    /// `detingestd run` does. Refused while another runs or if a stream's files exist.
    pub fn start_configured(&self) -> Result<RunStatus, ApiError> {
        let mut current = self.claim()?;
        let running = pipeline::start(&self.base, self.run_sinks()?).map_err(refusal)?;
        let (run, status) = self.launch(&self.base, running, None)?;
        *current = Some(run);
        Ok(status)
    }

    /// The slot of the current run, once no run is in progress (the last one's supervisor
    /// joined).
    fn claim(&self) -> Result<std::sync::MutexGuard<'_, Option<Current>>, ApiError> {
        let mut current = (self.current.lock()).map_err(|_| ApiError::internal("poisoned"))?;
        if let Some(c) = current.as_ref() {
            if !c.supervisor.is_finished() {
                return Err(ApiError::conflict("a run is in progress; stop it first"));
            }
        }
        if let Some(c) = current.take() {
            let _ = c.supervisor.join();
        }
        Ok(current)
    }

    /// The notification sinks of one run.
    fn run_sinks(&self) -> Result<crate::sink::RunSinks, ApiError> {
        match self.sinks.lock().ok().as_deref() {
            Some(Some(set)) => Ok(set.for_run()),
            _ => Err(ApiError::unavailable("the daemon is shutting down")),
        }
    }

    /// Watches the started pipeline of `config` on the `run` thread; its first status.
    fn launch(
        &self,
        config: &Config,
        running: Running,
        merger: Option<(Merger, DetectorStatus)>,
    ) -> Result<(Current, RunStatus), ApiError> {
        let src = &config.sources[0];
        let status = RunStatus {
            state: RunState::Running,
            stream: Some(src.stream.to_string()),
            master: Some(pipeline::stream_file_path(config, src)),
            frames_expected: config.run.frames,
            detector: merger.as_ref().map(|(_, d)| d.clone()),
            sources: running.sources().iter().map(|s| s.summary()).collect(),
            started_ns: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            ..RunStatus::idle()
        };
        tracing::info!(stream = %src.stream, frames = config.run.frames, chunking = config.run.chunking.name(), "run started");
        let coordinated = merger.as_ref().map(|(m, _)| m.stopping());
        let watch = Watch {
            status: Arc::new(Mutex::new(status.clone())),
            stop_requested: Arc::new(AtomicBool::new(false)),
            ended: Arc::clone(&self.ended),
            limit: config.run.frames,
            idle: (config.run.idle_timeout_ms > 0)
                .then(|| Duration::from_millis(config.run.idle_timeout_ms)),
            merger,
        };
        let run = Current {
            status: Arc::clone(&watch.status),
            stop: running.stop_handle(),
            stop_requested: Arc::clone(&watch.stop_requested),
            supervisor: (std::thread::Builder::new().name("run".into()))
                .spawn(move || watch.run(running))
                .map_err(ApiError::internal)?,
            coordinated,
        };
        Ok((run, status))
    }

    /// The run's configuration and its started pipeline. With `"rename_if_exists": true` in
    /// the request, a stream whose files exist is started as `<stream>_2`, `_3`, ... (up to
    /// `_99`) instead of refused: for a detector whose series numbers restart with it.
    fn start_pipeline(&self, request: &RunRequest) -> Result<(Config, Running), ApiError> {
        let (rename, name) = (request.rename_if_exists, request.stream.as_str());
        let mut attempt = request.clone();
        for n in 1..=MAX_RENAME {
            if n > 1 {
                attempt.stream = format!("{name}_{n}");
            }
            let config = run_config(&self.base, &attempt)?;
            match pipeline::start(&config, self.run_sinks()?) {
                Ok(running) => {
                    if n > 1 {
                        tracing::warn!(taken = name, stream = %attempt.stream, "stream name taken; written under another");
                    }
                    return Ok((config, running));
                }
                Err(StartError::Exists(_)) if rename => continue,
                Err(e) => return Err(refusal(e)),
            }
        }
        Err(ApiError::new(
            409,
            format!("{name} and {name}_2 .. {name}_{MAX_RENAME} exist already"),
        ))
    }

    /// Asks the current run to stop, without waiting (a signal handler's stop).
    pub fn request_stop(&self) {
        if let Some(c) = self.current.lock().ok().as_deref().and_then(Option::as_ref) {
            c.stop_requested.store(true, Ordering::Relaxed);
            c.stop.store(true, Ordering::Relaxed);
        }
    }

    /// Waits until the current run has ended by itself (its count, its source, an idle
    /// timeout, a requested stop) and its files are closed.
    pub fn wait(&self) {
        let ended = || {
            let current = self.current.lock();
            (current.ok()).is_none_or(|c| c.as_ref().is_none_or(|c| c.supervisor.is_finished()))
        };
        while !ended() {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(c) = self.current.lock().ok().and_then(|mut c| c.take()) {
            let _ = c.supervisor.join();
        }
    }

    /// Asks the current run to stop and waits until its files are closed.
    pub fn stop(&self) -> Result<RunStatus, ApiError> {
        let mut current = self
            .current
            .lock()
            .map_err(|_| ApiError::new(500, "poisoned"))?;
        let Some(c) = current.take() else {
            return Err(ApiError::new(409, "no run in progress"));
        };
        if let Some(stopping) = c
            .coordinated
            .as_ref()
            .filter(|_| !c.supervisor.is_finished())
        {
            stopping.store(true, Ordering::Release);
            coordinate::stop_peers(&self.peers());
        }
        c.stop_requested.store(true, Ordering::Relaxed);
        c.stop.store(true, Ordering::Relaxed);
        let _ = c.supervisor.join();
        let status = c.status.lock().map(|s| s.clone());
        status.map_err(|_| ApiError::new(500, "poisoned"))
    }

    /// The current run's status, or the last run's.
    pub fn status(&self) -> RunStatus {
        let mut status = self.current_status();
        if let Some(Some(sinks)) = self.sinks.lock().ok().as_deref() {
            status.sinks = sinks.counters();
        }
        status
    }

    /// The current or last run's status, without the sinks' counters.
    fn current_status(&self) -> RunStatus {
        let current = self.current.lock().ok();
        if let Some(Some(c)) = current.as_deref() {
            if let Ok(s) = c.status.lock() {
                return s.clone();
            }
        }
        self.ended
            .lock()
            .map_or_else(|_| RunStatus::idle(), |e| e.status.clone())
    }

    /// The sinks' lines for the printed summary.
    pub fn summary_lines(&self) -> Vec<String> {
        match self.sinks.lock().ok().as_deref() {
            Some(Some(sinks)) => sinks.summary_lines(),
            _ => Vec::new(),
        }
    }

    /// The summary of the run that ended last, once (`detingestd demo` prints it).
    pub fn take_summary(&self) -> Option<RunSummary> {
        self.ended.lock().ok().and_then(|mut e| e.summary.take())
    }

    /// What `GET /metrics` reports: the counters over the daemon's life, the current run's
    /// state and gauges, the sinks' counters.
    pub fn reading(&self) -> Reading {
        let current =
            (self.current.lock().ok()).and_then(|c| c.as_ref().map(|c| Arc::clone(&c.status)));
        let Ok(ended) = self.ended.lock() else {
            return Reading::default();
        };
        let (status, totals) = match current.as_ref().and_then(|c| c.lock().ok()) {
            Some(s) if !s.counted => {
                let totals = ended.totals.with(&s.counters, &s.sources);
                (s.clone(), totals)
            }
            _ => (ended.status.clone(), ended.totals.clone()),
        };
        drop(ended);
        Reading {
            totals,
            state: status.state,
            stream: status.stream,
            gauges: status.gauges,
            files_open: status.counters.files_open,
            sinks: match self.sinks.lock().ok().as_deref() {
                Some(Some(sinks)) => sinks.counters(),
                _ => Default::default(),
            },
            started_s: self.started_s,
            detector_merged: status.detector.as_ref().and_then(|d| d.merged),
            detector_parts: coordinate::part_states(status.detector.as_ref()),
        }
    }
}

impl RunControl for RunManager {
    fn start_run(&self, request: &RunRequest) -> Result<RunStatus, ApiError> {
        self.start(request)
    }

    fn check_run(&self, request: &RunRequest) -> Result<RunCheck, ApiError> {
        // try_lock: a start in progress here holds the lock while it calls its peers; two
        // daemons starting at once must refuse each other's check, not wait for it.
        let Ok(current) = self.current.try_lock() else {
            return Err(ApiError::conflict("a start is in progress on this daemon"));
        };
        if current
            .as_ref()
            .is_some_and(|c| !c.supervisor.is_finished())
        {
            return Err(ApiError::conflict("a run is in progress; stop it first"));
        }
        drop(current);
        self.check_request(request)
    }

    fn stop_run(&self) -> Result<RunStatus, ApiError> {
        self.stop()
    }

    fn run_status(&self) -> RunStatus {
        self.status()
    }

    fn run_headline(&self) -> RunHeadline {
        let s = self.current_status();
        RunHeadline {
            state: s.state,
            stream: s.stream,
        }
    }
}

impl Daemon for RunManager {
    fn reading(&self) -> Reading {
        RunManager::reading(self)
    }

    fn live_view(&self) -> Option<Arc<LiveView>> {
        match self.sinks.lock().ok().as_deref() {
            Some(Some(sinks)) => sinks.live_view(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
