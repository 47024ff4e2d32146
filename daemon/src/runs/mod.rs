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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use detingest_shm::{Name, StreamId};
use serde_json::{json, Value};

use status::Ended;
pub use status::RunStatus;
pub use supervise::{supervise, EndReason};

use crate::check::{deserialize_keyed, key_in};
use crate::config::{Config, ConfigError, RunSettings};
use crate::control::Daemon;
use crate::metrics::Reading;
use crate::pipeline::{self, RunSummary, Running, StartError};
use crate::sink::web::LiveView;
use crate::sink::{RunControl, SinkSet};
use crate::source::stream2::listener::{self, Listener};
use crate::source::SourceError;

/// Suffixes `_2` .. tried for a request with `rename_if_exists`.
const MAX_RENAME: u32 = 99;

/// An API error: HTTP status and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status code.
    pub status: u16,
    /// What went wrong (names the offending key for bad requests).
    pub message: String,
}

impl ApiError {
    fn new(status: u16, message: impl ToString) -> Self {
        Self {
            status,
            message: message.to_string(),
        }
    }
}

impl From<ConfigError> for ApiError {
    fn from(e: ConfigError) -> Self {
        Self::new(400, e)
    }
}

/// Builds the configuration of the run `request` asks for, from the daemon's `base`.
///
/// The request: `beamtime`, `source` (a configured `[[source]]` name), `stream` (required);
/// `rename_if_exists` (see [`RunManager::start`]);
/// `detector` (NXmx fields over `[detector]`); any `[run]` field (`frames`, `chunking`,
/// `frames_per_file`, `master_data`, `vds`, `idle_timeout_ms`, `first_frame_number`, `dataset_timeout_ms`,
/// `dataset_ahead`, `user`, `next_stream`); `coordinator` (sent by a daemon starting its
/// peers: start this daemon's part only). A `[cluster]` member writes the stream
/// `<stream>_<name>` and needs a `first_frame_number`.
pub fn run_config(base: &Config, request: &Value) -> Result<Config, ConfigError> {
    let Value::Object(fields) = request else {
        return Err(ConfigError::new(".", "the request must be a JSON object"));
    };
    let name = |key: &str| -> Result<Name, ConfigError> {
        let text = fields
            .get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| ConfigError::new(key, "required (a string)"))?;
        Name::new(text).map_err(|e| ConfigError::new(key, e))
    };
    let id = StreamId {
        beamtime: name("beamtime")?,
        source: name("source")?,
        stream: name("stream")?,
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
    for (key, value) in fields {
        match key.as_str() {
            "beamtime" | "source" | "stream" | "rename_if_exists" | "coordinator" => {}
            "detector" => overlay(&mut detector, value, "detector")?,
            _ => overlay(&mut run, &json!({ key: value }), "")?,
        }
    }
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
    /// A manager for runs of `base`'s sources; starts the configured sinks.
    pub fn new(base: Config) -> Result<Self, StartError> {
        let sinks = SinkSet::start(&base.sink, base.sink_context(true))?;
        // Runs a crash left behind are finished (and announced) beside the new ones.
        let recovering = recover::spawn_finish_left_behind(
            base.data_dir.clone(),
            sinks.for_run(),
            &base.cluster.name,
        );
        if let Err(e) = recovering {
            tracing::error!(error = %e, "cannot start the thread that finishes crashed runs");
        }
        let peer_token = base.control.token().ok().flatten();
        Ok(Self {
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
        })
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
    pub fn start(&self, request: &Value) -> Result<RunStatus, ApiError> {
        let mut current = self
            .current
            .lock()
            .map_err(|_| ApiError::new(500, "poisoned"))?;
        if let Some(c) = current.as_ref() {
            if !c.supervisor.is_finished() {
                return Err(ApiError::new(409, "a run is in progress; stop it first"));
            }
        }
        if let Some(c) = current.take() {
            let _ = c.supervisor.join();
        }
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
        let merge_stopping = merger.as_ref().map(|(m, _)| m.stopping());
        let src = &config.sources[0];
        let status = RunStatus {
            state: "running",
            stream: Some(src.stream.to_string()),
            master: Some(pipeline::stream_file_path(&config, src)),
            frames_expected: config.run.frames,
            detector: merger.as_ref().map(|(_, d)| d.clone()),
            started_ns: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            ..RunStatus::idle()
        };
        tracing::info!(stream = %src.stream, frames = config.run.frames, chunking = config.run.chunking.name(), "run started");
        let shared = Arc::new(Mutex::new(status.clone()));
        let stop = running.stop_handle();
        let stop_requested = Arc::new(AtomicBool::new(false));
        let (limit, idle) = (
            config.run.frames,
            (config.run.idle_timeout_ms > 0)
                .then(|| Duration::from_millis(config.run.idle_timeout_ms)),
        );
        let (st, req, last) = (
            Arc::clone(&shared),
            Arc::clone(&stop_requested),
            Arc::clone(&self.ended),
        );
        let supervisor = std::thread::Builder::new()
            .name("run".into())
            .spawn(move || {
                let started = Instant::now();
                let (summary, reason) = supervise(running, limit, idle, &req, |r| {
                    if let Ok(mut s) = st.lock() {
                        s.elapsed_s = started.elapsed().as_secs_f64();
                        s.gauges = Some(r.gauges());
                        s.counters = r.stats();
                        // The run's indices so far (its one stream's; the files' at the end).
                        s.frames_recorded = s.counters.recorded;
                        s.frames_lost = s.counters.lost;
                        s.frames_dropped = s.counters.dropped;
                        s.sources = r.sources().iter().map(|s| s.summary()).collect();
                        coordinate::show_merged(&mut s, merger.as_ref());
                    }
                });
                // A detector several daemons take: its run ends with its whole master.
                if let Some((m, _)) = &merger {
                    while !m.own_part_ended() {
                        std::thread::sleep(Duration::from_millis(50));
                        if let Ok(mut s) = st.lock() {
                            s.elapsed_s = started.elapsed().as_secs_f64();
                            coordinate::show_merged(&mut s, merger.as_ref());
                        }
                    }
                }
                let merged = merger.map(|(m, d)| coordinate::merge_status(d, &m.join()));
                let Ok(mut ended) = last.lock() else {
                    return;
                };
                let Ok(mut s) = st.lock() else {
                    return;
                };
                s.elapsed_s = summary.elapsed.as_secs_f64();
                s.counters = summary.stats;
                s.sources = summary.sources.clone();
                s.end_reason = Some(reason);
                if merged.is_some() {
                    s.detector = merged;
                }
                if let Some(report) = summary.streams.first() {
                    s.frames_recorded = report.frames;
                    s.frames_lost = report.lost;
                    s.frames_dropped = report.dropped;
                    s.error.clone_from(&report.error);
                    if !report.opened {
                        s.master = None; // nothing was received: no file was written
                    }
                }
                s.state = if reason == EndReason::Error {
                    "failed"
                } else {
                    "finished"
                };
                tracing::info!(stream = ?s.stream, reason = ?reason, frames = s.frames_recorded, lost = s.frames_lost, error = ?s.error, "run ended");
                ended.record(&mut s, summary);
            })
            .map_err(|e| ApiError::new(500, e))?;
        *current = Some(Current {
            status: shared,
            stop,
            stop_requested,
            supervisor,
            coordinated: merge_stopping,
        });
        Ok(status)
    }

    /// The run's configuration and its started pipeline. With `"rename_if_exists": true` in
    /// the request, a stream whose files exist is started as `<stream>_2`, `_3`, ... (up to
    /// `_99`) instead of refused: for a detector whose series numbers restart with it.
    fn start_pipeline(&self, request: &Value) -> Result<(Config, Running), ApiError> {
        let rename = request.get("rename_if_exists") == Some(&Value::Bool(true));
        let name = request
            .get("stream")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let mut attempt = request.clone();
        for n in 1..=MAX_RENAME {
            if n > 1 {
                attempt["stream"] = format!("{name}_{n}").into();
            }
            let config = run_config(&self.base, &attempt)?;
            let sinks = match self.sinks.lock().ok().as_deref() {
                Some(Some(set)) => set.for_run(),
                _ => return Err(ApiError::new(503, "the daemon is shutting down")),
            };
            match pipeline::start(&config, sinks) {
                Ok(running) => {
                    if n > 1 {
                        tracing::warn!(taken = name, stream = %attempt["stream"], "stream name taken; written under another");
                    }
                    return Ok((config, running));
                }
                Err(StartError::Exists(_)) if rename => continue,
                Err(e @ StartError::Exists(_)) => return Err(ApiError::new(409, e)),
                Err(
                    StartError::Config(c)
                    | StartError::Source {
                        error: SourceError::Config(c),
                        ..
                    },
                ) => return Err(ApiError::from(c)),
                Err(e) => return Err(ApiError::new(500, e)),
            }
        }
        Err(ApiError::new(
            409,
            format!("{name} and {name}_2 .. {name}_{MAX_RENAME} exist already"),
        ))
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
        let mut status = self.run_status();
        if let Some(Some(sinks)) = self.sinks.lock().ok().as_deref() {
            status.sinks = sinks.counters();
        }
        status
    }

    fn run_status(&self) -> RunStatus {
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
            gauges: match serde_json::to_value(status.gauges) {
                Ok(Value::Object(g)) => g,
                _ => Default::default(),
            },
            files_open: status.counters.files_open,
            sinks: match self.sinks.lock().ok().as_deref() {
                Some(Some(sinks)) => sinks.counters(),
                _ => Default::default(),
            },
            started_s: self.started_s,
            detector_merged: (status.detector.as_ref())
                .and_then(|d| d.get("merged"))
                .and_then(Value::as_u64),
            detector_parts: coordinate::part_states(status.detector.as_ref()),
        }
    }
}

impl RunControl for RunManager {
    fn start_run(&self, request: &Value) -> Result<Value, (u16, String)> {
        self.start(request)
            .map(|s| serde_json::to_value(s).unwrap_or_default())
            .map_err(|e| (e.status, e.message))
    }

    fn check_run(&self, request: &Value) -> Result<Value, (u16, String)> {
        // try_lock: a start in progress here holds the lock while it calls its peers; two
        // daemons starting at once must refuse each other's check, not wait for it.
        let Ok(current) = self.current.try_lock() else {
            return Err((409, "a start is in progress on this daemon".into()));
        };
        if current
            .as_ref()
            .is_some_and(|c| !c.supervisor.is_finished())
        {
            return Err((409, "a run is in progress; stop it first".into()));
        }
        drop(current);
        self.check_request(request)
            .map_err(|e| (e.status, e.message))
    }

    fn stop_run(&self) -> Result<Value, (u16, String)> {
        self.stop()
            .map(|s| serde_json::to_value(s).unwrap_or_default())
            .map_err(|e| (e.status, e.message))
    }

    fn run_status(&self) -> Value {
        serde_json::to_value(self.status()).unwrap_or_default()
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
