//! The `kafka-control` thread of `detingestd serve`: obeys `pl72`/`6s4t` from the command
//! topic through the same run manager as the HTTP API, answers every command with an `answ`,
//! stops a job at its stop time, and sends an `x5f2` heartbeat every `status_interval_ms`.
//!
//! Commands naming another service are ignored (not answered: they are another daemon's);
//! anything else that cannot be obeyed is refused with the reason. Commands are rare: this
//! thread allocates freely.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flatbuffers::FlatBufferBuilder;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::Message;
use serde_json::{json, Value};

use super::client::{Context, KafkaStats, Producer};
use super::config::{host_name, KafkaConfig};
use super::publisher::send;
use super::request::run_request;
use super::schema::commands::{self, Command, RunStart, RunStop};
use super::schema::reports::{self, Action, Answer};
use crate::contract::{ApiError, RunState, RunStatus};
use crate::sink::{RunControl, RunsSlot};

/// The job this thread started and is watching.
struct Job {
    id: String,
    stream: String,
    topic: String,
    start_ms: u64,
    stop_ms: u64,
}

/// The thread's state.
pub struct Control {
    cfg: KafkaConfig,
    service_id: String,
    source: String,
    host: String,
    producer: Arc<Producer>,
    stats: Arc<KafkaStats>,
    runs: RunsSlot,
    builder: FlatBufferBuilder<'static>,
    job: Option<Job>,
    last_beat: Option<(Instant, u64, u64, u64)>,
    last_refusal_log: Option<Instant>,
    topic_missing_logged: bool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Control {
    /// A control for `runs`, sending through `producer`; `source` is what a `pl72` starts.
    pub fn new(
        cfg: KafkaConfig,
        source: String,
        producer: Arc<Producer>,
        stats: Arc<KafkaStats>,
        runs: RunsSlot,
    ) -> Self {
        Self {
            service_id: cfg.service_id(),
            cfg,
            source,
            host: host_name(),
            producer,
            stats,
            runs,
            builder: FlatBufferBuilder::with_capacity(1024),
            job: None,
            last_beat: None,
            last_refusal_log: None,
            topic_missing_logged: false,
        }
    }

    /// Runs until `stop` is set: once the run manager exists, commands (if a command topic
    /// is set), stop times, heartbeats.
    pub fn run(mut self, stop: &AtomicBool) {
        while self.runs.get().is_none() {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let consumer = self.subscribe();
        let interval = Duration::from_millis(self.cfg.status_interval_ms);
        let mut payload = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let wait = Duration::from_millis(100);
            let received = match &consumer {
                Some(c) => match c.poll(wait) {
                    Some(Ok(m)) => {
                        payload.clear();
                        payload.extend_from_slice(m.payload().unwrap_or_default());
                        let at = (m.topic().to_owned(), m.partition(), m.offset());
                        Some((m.timestamp().to_millis().map_or(0, |t| t as u64), at))
                    }
                    Some(Err(e)) => {
                        self.consumer_error(&e);
                        None
                    }
                    None => None,
                },
                None => {
                    std::thread::sleep(wait);
                    None
                }
            };
            if let (Some((sent_ms, at)), Some(c)) = (received, &consumer) {
                self.command(&payload, sent_ms);
                committed(c, &at);
            }
            self.stop_when_due();
            if self
                .last_beat
                .is_none_or(|(at, _, _, _)| at.elapsed() >= interval)
            {
                self.heartbeat();
            }
        }
    }

    /// A missing command topic is waited for (logged once); anything else is an outage.
    /// (See also [`committed`]: a command's offset is committed once it was acted on.)
    fn consumer_error(&mut self, e: &KafkaError) {
        let missing = matches!(
            e.rdkafka_error_code(),
            Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic)
        );
        if !missing {
            self.stats.client_error(e, "command consumer");
        } else if !self.topic_missing_logged {
            self.topic_missing_logged = true;
            tracing::warn!(topic = %self.cfg.command_topic, "kafka: the command topic does not exist (yet); commands are read once it does");
        }
    }

    fn subscribe(&self) -> Option<BaseConsumer<Context>> {
        if self.cfg.command_topic.is_empty() {
            return None;
        }
        let consumer = match super::client::consumer(&self.cfg, &self.service_id, &self.stats) {
            Ok(c) => c,
            Err((key, e)) => {
                tracing::error!(key = %key, error = %e, "kafka: no command consumer; run control from Kafka is off");
                return None;
            }
        };
        if let Err(e) = consumer.subscribe(&[&self.cfg.command_topic]) {
            tracing::error!(topic = %self.cfg.command_topic, error = %e, "kafka: cannot subscribe; run control from Kafka is off");
            return None;
        }
        tracing::info!(topic = %self.cfg.command_topic, service_id = %self.service_id, "kafka: subscribing to commands");
        Some(consumer)
    }

    /// Handles one message of the command topic, sent at `sent_ms`.
    fn command(&mut self, payload: &[u8], sent_ms: u64) {
        let cmd = match commands::decode(payload) {
            Ok(c) => c,
            Err(e) => {
                self.stats
                    .commands_malformed
                    .fetch_add(1, Ordering::Relaxed);
                let action = if payload.get(4..8) == Some(b"6s4t") {
                    Action::SetStopTime
                } else {
                    Action::StartJob
                };
                let topic = self.cfg.status_topic().to_owned();
                self.answer(
                    &topic,
                    action,
                    "",
                    "",
                    Err(ApiError::new(400, e.to_string())),
                );
                return;
            }
        };
        if !cmd.service_id().is_empty() && cmd.service_id() != self.service_id {
            self.stats.commands_ignored.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let age = now_ms().saturating_sub(sent_ms);
        if sent_ms > 0 && age > self.cfg.max_command_age_ms {
            // History (a first start reads the topic from its beginning): not answered.
            if self.stats.commands_stale.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::info!(age_ms = age, "kafka: skipping commands older than kafka.max_command_age_ms (counted in commands_stale)");
            }
            return;
        }
        match cmd {
            Command::Start(s) => {
                let topic = self.topic_of(s.control_topic);
                let result = self.start(&s);
                self.answer(&topic, Action::StartJob, s.job_id, s.job_id, result);
            }
            Command::Stop(s) => {
                let topic = self
                    .job
                    .as_ref()
                    .filter(|j| j.id == s.job_id)
                    .map_or_else(|| self.cfg.status_topic().to_owned(), |j| j.topic.clone());
                let result = self.stop(&s);
                self.answer(&topic, Action::SetStopTime, s.job_id, s.command_id, result);
                self.stop_when_due();
            }
        }
    }

    fn topic_of(&self, control_topic: &str) -> String {
        if control_topic.is_empty() {
            self.cfg.status_topic().to_owned()
        } else {
            control_topic.to_owned()
        }
    }

    /// The run manager, while it exists.
    fn manager(&self) -> Option<Arc<dyn RunControl>> {
        self.runs.get().and_then(Weak::upgrade)
    }

    /// Starts the job's run; the stop time in force, or why not.
    fn start(&mut self, s: &RunStart<'_>) -> Result<(u64, String), ApiError> {
        let runs = self
            .manager()
            .ok_or_else(|| ApiError::unavailable("the daemon is shutting down"))?;
        let request = run_request(s, &self.source, &self.cfg.beamtime, now_ms())?;
        let status = runs.start_run(&request)?;
        let stream = status.stream.unwrap_or_default();
        tracing::info!(job = %s.job_id, stream = %stream, "kafka: job started");
        self.job = Some(Job {
            id: s.job_id.to_owned(),
            stream: stream.clone(),
            topic: self.topic_of(s.control_topic),
            start_ms: now_ms(),
            stop_ms: s.stop_time,
        });
        Ok((s.stop_time, format!("started {stream}")))
    }

    /// Sets the stop time of the job `s` names (now: stopped once this answer is sent).
    fn stop(&mut self, s: &RunStop<'_>) -> Result<(u64, String), ApiError> {
        let running = self.running_job();
        let Some(job) = self.job.as_mut().filter(|j| running && j.id == s.job_id) else {
            return Err(ApiError::new(
                404,
                format!("no job {:?} is running here", s.job_id),
            ));
        };
        let at = if s.stop_time == 0 {
            now_ms()
        } else {
            s.stop_time
        };
        job.stop_ms = at;
        Ok((at, format!("{} stops at {at}", job.stream)))
    }

    /// Whether the run of our job is still the one running.
    fn running_job(&self) -> bool {
        let (Some(job), Some(runs)) = (&self.job, self.manager()) else {
            return false;
        };
        let now = runs.run_headline();
        now.state == RunState::Running && now.stream.as_deref() == Some(job.stream.as_str())
    }

    /// Stops the job's run once its stop time has come.
    fn stop_when_due(&mut self) {
        let due = self
            .job
            .as_ref()
            .is_some_and(|j| j.stop_ms != 0 && j.stop_ms <= now_ms());
        if !due {
            return;
        }
        if self.running_job() {
            if let Some(runs) = self.manager() {
                let _ = runs.stop_run();
            }
        }
        if let Some(j) = self.job.as_mut() {
            tracing::info!(job = %j.id, stream = %j.stream, "kafka: job stopped at its stop time");
            j.stop_ms = 0;
        }
    }

    fn answer(
        &mut self,
        topic: &str,
        action: Action,
        job_id: &str,
        command_id: &str,
        result: Result<(u64, String), ApiError>,
    ) {
        let (accepted, status_code, stop_time, message) = match result {
            Ok((stop, m)) => {
                self.stats.commands_accepted.fetch_add(1, Ordering::Relaxed);
                (
                    true,
                    if action == Action::StartJob { 201 } else { 200 },
                    stop,
                    m,
                )
            }
            Err(ApiError {
                status: code,
                message: m,
            }) => {
                self.stats.commands_refused.fetch_add(1, Ordering::Relaxed);
                // A producer sending garbage or repeating a refused command cannot flood the log.
                if self
                    .last_refusal_log
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
                {
                    self.last_refusal_log = Some(Instant::now());
                    tracing::warn!(job = %job_id, code, reason = %m, "kafka: command refused (logged at most every 10 s; every refusal is answered and counted)");
                }
                (false, i32::from(code), 0, m)
            }
        };
        let payload = reports::answer(
            &mut self.builder,
            action,
            &Answer {
                service_id: &self.service_id,
                job_id,
                command_id,
                accepted,
                status_code,
                stop_time,
                message: &message,
            },
        );
        send(
            &self.producer,
            &self.stats,
            topic,
            &self.service_id,
            payload,
        );
    }

    /// Sends the `x5f2`: state, job, file being written, rates since the last one.
    fn heartbeat(&mut self) {
        let Some(runs) = self.manager() else {
            return;
        };
        let status: RunStatus = runs.run_status();
        let counters = &status.counters;
        let (written, bytes) = (counters.written, counters.bytes_compressed);
        // An event run's events (its indices are pulses).
        let events = status.kind_counters().and_then(|c| c.get("events"));
        let now = Instant::now();
        let (rate, byte_rate, event_rate) = match self.last_beat {
            Some((at, w, b, e)) if written >= w => {
                let dt = now.duration_since(at).as_secs_f64().max(1e-3);
                (
                    (written - w) as f64 / dt,
                    bytes.saturating_sub(b) as f64 / dt,
                    events.unwrap_or(0).saturating_sub(e) as f64 / dt,
                )
            }
            _ => (0.0, 0.0, 0.0),
        };
        self.last_beat = Some((now, written, bytes, events.unwrap_or(0)));
        let writing = status.state == RunState::Running;
        let stream = status.stream.as_deref().unwrap_or_default();
        let job = (self.job.as_ref()).filter(|j| writing && stream == j.stream);
        let mut doc = json!({
            "state": if writing { "writing" } else { "idle" },
            "job_id": job.map_or("", |j| j.id.as_str()),
            "file_being_written": if writing { json!(status.master) } else { Value::from("") },
            "start_time": job.map_or(0, |j| j.start_ms),
            "stop_time": job.map_or(0, |j| j.stop_ms),
            "stream": status.stream,
            "run_state": status.state,
            "frames_written": written,
            "frames_lost": counters.lost,
            "frames_dropped": counters.dropped,
            "frame_rate_hz": rate,
            "write_bytes_per_s": byte_rate,
            "commands_ready": self.stats.commands_ready.load(Ordering::Relaxed),
        });
        if let (Some(n), Value::Object(doc)) = (events, &mut doc) {
            doc.insert("events_written".into(), n.into());
            doc.insert("event_rate_hz".into(), event_rate.into());
        }
        let payload = reports::status(
            &mut self.builder,
            &reports::Status {
                software_name: "detingestd",
                software_version: env!("CARGO_PKG_VERSION"),
                service_id: &self.service_id,
                host_name: &self.host,
                process_id: std::process::id(),
                update_interval: self.cfg.status_interval_ms as u32,
                status_json: &doc.to_string(),
            },
        );
        let topic = self.cfg.status_topic().to_owned();
        if send(
            &self.producer,
            &self.stats,
            &topic,
            &self.service_id,
            payload,
        ) {
            self.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Commits the offset after the command at `(topic, partition, offset)`, which has been acted
/// on and answered, and waits for the broker to take it: a daemon killed after acting on a
/// command does not read it again when it restarts (the group's auto-commit, every 5 s, left
/// a window in which a restarted daemon started the same job again and refused it with 409).
/// A failed commit is logged; the command may then be read again after a crash.
fn committed(consumer: &BaseConsumer<Context>, (topic, partition, offset): &(String, i32, i64)) {
    let mut list = rdkafka::TopicPartitionList::new();
    let next = rdkafka::Offset::Offset(offset + 1);
    let result = list
        .add_partition_offset(topic, *partition, next)
        .and_then(|()| consumer.commit(&list, rdkafka::consumer::CommitMode::Sync));
    if let Err(e) = result {
        tracing::warn!(topic = %topic, partition, offset, error = %e, "kafka: a command's offset was not committed; after a crash it may be read again");
    }
}
