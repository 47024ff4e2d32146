//! The writer thread of an event run (`event-writer`): decodes each message the consumer
//! hands it, appends events, logs and pulse metadata to the run's event file, numbers the
//! run's pulses 1..N, records lost messages, flushes on the writer's cadence and announces
//! every pulse. It is the only thread of the run that calls HDF5.
//!
//! The run's indices are the pulses of one source: the `pulse_source`'s pu00 messages (one
//! per pulse: a gap in their ids is exactly the pulses lost) or else the first bank's pulses
//! (each reference time; a missing message is one lost index, though it may have held more).
//! A pulse is announced when the next one begins, or at the run's end.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, RecvTimeoutError, Sender};
use detingest_writer::{EventFile, EventRunEnd};

use crate::pipeline::{PipelineStats, StreamReport};
use crate::rate_limit::RateLimit;
use crate::sink::kafka::schema::DecodeError;
use crate::sink::{FrameNotice, Notification, NotifyQueue, ReadableNotice, StreamEndNotice};
use crate::source::kafka_events::consume::{ConsumerReport, Taken};
use crate::source::kafka_events::counts::{EventCounts, EventHistograms, EventReport};
use crate::source::kafka_events::messages::{decode, EventMessage, Events, LogValue, Pulse};
use crate::source::SourceStats;
use crate::stream::{now_ns, FrameRecord, StreamInfo};

/// A gap in message ids larger than this is taken for the producer's count restarting, not
/// for that many lost messages.
const MAX_GAP: i64 = 1 << 20;
/// Unknown source names warned about by name; more are only counted.
const MAX_WARNED: usize = 64;

/// Where a source name's messages go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Bank or monitor `k` of the file.
    Bank(usize),
    /// Log `k` of the file.
    Log(usize),
    /// The pulse source (pu00).
    Pulses,
}

/// The pulse being filled, announced when the next begins.
struct OpenPulse {
    index: u64,
    time: i64,
    frame_number: u64,
    events: u64,
}

/// The event run's writer.
pub struct EventWriter {
    pub(super) file: Option<EventFile>,
    pub(super) info: Arc<StreamInfo>,
    pub(super) notify: Arc<NotifyQueue>,
    pub(super) stats: Arc<PipelineStats>,
    pub(super) source: Arc<SourceStats>,
    pub(super) consumer: Arc<ConsumerReport>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) routes: HashMap<String, Route>,
    /// Which route numbers the run's indices.
    pub(super) index_route: Route,
    pub(super) flush_every: Duration,
    counts: EventCounts,
    hist: EventHistograms,
    /// Events binned since the last flush.
    hist_budget: u64,
    /// Last message id per bank (by bank number) and of the pulse source (last entry).
    last_id: Vec<Option<i64>>,
    /// The first pulse time of that message.
    last_time: Vec<Option<i64>>,
    /// The last alarm `(status, severity)` written per log.
    last_alarm: Vec<Option<(u16, u16)>>,
    warned: HashSet<String>,
    malformed_log: RateLimit,
    /// Gaps and restarts of message ids (a producer that loses much must not flood the log).
    id_log: RateLimit,
    open: Option<OpenPulse>,
    indices: u64,
    lost: u64,
    readable: u64,
    error: Option<String>,
}

impl EventWriter {
    /// A writer of `file` with `banks` banks and monitors.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        file: EventFile,
        (banks, logs): (usize, usize),
        info: Arc<StreamInfo>,
        notify: Arc<NotifyQueue>,
        (stats, source, consumer): (Arc<PipelineStats>, Arc<SourceStats>, Arc<ConsumerReport>),
        stop: Arc<AtomicBool>,
        routes: HashMap<String, Route>,
        index_route: Route,
        flush_every: Duration,
        hist: EventHistograms,
    ) -> Self {
        Self {
            file: Some(file),
            info,
            notify,
            stats,
            source,
            consumer,
            stop,
            routes,
            index_route,
            flush_every,
            counts: EventCounts::default(),
            hist,
            hist_budget: 0,
            last_id: vec![None; banks + 1],
            last_time: vec![None; banks + 1],
            last_alarm: vec![None; logs],
            warned: HashSet::new(),
            malformed_log: RateLimit::default(),
            id_log: RateLimit::default(),
            open: None,
            indices: 0,
            lost: 0,
            readable: 0,
            error: None,
        }
    }

    /// Writes what `rx` brings until the consumer ends, giving each buffer back on `free`;
    /// then closes the file and reports the stream.
    pub fn run(mut self, rx: Receiver<Taken>, free: Sender<Vec<u8>>) -> Vec<StreamReport> {
        let mut last_flush = Instant::now();
        loop {
            match rx.recv_timeout(self.flush_every) {
                Ok(taken) => {
                    self.take(&taken.buf, taken.log);
                    let _ = free.try_send(taken.buf);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if last_flush.elapsed() >= self.flush_every {
                self.flush();
                last_flush = Instant::now();
            }
        }
        self.close()
    }

    fn take(&mut self, buf: &[u8], from_log_topic: bool) {
        self.counts.messages += 1;
        self.source.sent.fetch_add(1, Ordering::Relaxed);
        let msg = match decode(buf) {
            Ok(m) => m,
            Err(DecodeError::UnknownSchema(s)) => {
                self.counts.other_schema += 1;
                if let Some(held) = self.malformed_log.allow(Instant::now()) {
                    tracing::warn!(schema = %s, log_topic = from_log_topic, held_back = held, "message of a schema an event run does not read; skipped");
                }
                return;
            }
            Err(e) => {
                self.counts.malformed += 1;
                self.source.malformed.fetch_add(1, Ordering::Relaxed);
                if let Some(held) = self.malformed_log.allow(Instant::now()) {
                    tracing::warn!(error = %e, held_back = held, "malformed event message refused");
                }
                return;
            }
        };
        if self.error.is_some() {
            return; // writing failed: the run is ending, messages are only counted
        }
        let name = match &msg {
            EventMessage::Events(e) => e.source_name,
            EventMessage::Pulse(p) => p.source_name,
            EventMessage::Log(l) => l.source_name,
        };
        let Some(&route) = self.routes.get(name) else {
            self.counts.unknown_source += 1;
            if self.warned.len() < MAX_WARNED && !self.warned.contains(name) {
                self.warned.insert(name.to_owned());
                tracing::warn!(source_name = name, "messages from a source the configuration does not map are skipped (counted unknown_source)");
            }
            return;
        };
        let result = match (msg, route) {
            (EventMessage::Events(e), Route::Bank(k)) => self.events(k, &e),
            (EventMessage::Pulse(p), Route::Pulses) => {
                let n = self.last_id.len() - 1;
                match self.check_id(n, p.message_id, p.reference_time) {
                    Some(lost) => self.pulse_metadata(&p, lost),
                    None => Ok(()),
                }
            }
            (EventMessage::Log(l), Route::Log(k)) => self.log_value(k, &l),
            _ => {
                self.counts.other_schema += 1;
                Ok(())
            }
        };
        if let Err(e) = result {
            self.fail(e.to_string());
        }
    }

    /// Appends a logged value of log `k`, and its alarm when it changed.
    fn log_value(
        &mut self,
        k: usize,
        l: &LogValue<'_>,
    ) -> Result<(), detingest_writer::WriteError> {
        if let Some(alarm) = l
            .alarm
            .filter(|&a| self.last_alarm.get(k) != Some(&Some(a)))
        {
            if let Some(last) = self.last_alarm.get_mut(k) {
                *last = Some(alarm);
            }
            self.counts.alarms += 1;
            self.file_mut()?
                .append_alarm(k, l.timestamp, alarm.0, alarm.1)?;
        }
        match l.value {
            Some(v) => {
                self.counts.log_values += 1;
                self.file_mut()?.append_log(k, l.timestamp, v)
            }
            None => {
                self.counts.log_unsupported += 1;
                Ok(())
            }
        }
    }

    fn file_mut(&mut self) -> Result<&mut EventFile, detingest_writer::WriteError> {
        (self.file.as_mut()).ok_or_else(|| {
            detingest_writer::WriteError::Metadata("the event file is closed".into())
        })
    }

    /// Appends an ev44 message of bank `k`.
    fn events(&mut self, k: usize, e: &Events<'_>) -> Result<(), detingest_writer::WriteError> {
        let first = if e.pulses() > 0 {
            e.pulse(0).0
        } else {
            i64::MIN
        };
        let Some(lost) = self.check_id(k, e.message_id, first) else {
            return Ok(()); // delivered twice: written already
        };
        let numbers = self.index_route == Route::Bank(k);
        if numbers && lost > 0 {
            self.announce_lost(lost);
        }
        if lost > 0 {
            let first = e.message_id - lost as i64;
            self.file_mut()?.record_gap(k, first, lost as i64)?;
        }
        for p in 0..e.pulses() {
            let (time, range) = e.pulse(p);
            let ids = if e.pixel_id.is_empty() {
                &[][..]
            } else {
                &e.pixel_id[range.clone()]
            };
            let n = (range.len() / 4) as u64;
            if self.hist_budget < EventHistograms::BUDGET {
                self.hist_budget += n;
                self.hist.add(&e.time_of_flight[range.clone()], ids);
            }
            let new = (self.file_mut()?).append_events(k, time, &e.time_of_flight[range], ids)?;
            self.counts.pulses += u64::from(new);
            if numbers && new {
                self.begin_pulse(time, e.message_id as u64);
            }
            if let Some(open) = &mut self.open {
                open.events += n;
            }
        }
        let n = e.events() as u64;
        self.counts.events += n;
        self.stats.bytes_raw.fetch_add(n * 8, Ordering::Relaxed);
        Ok(())
    }

    fn pulse_metadata(
        &mut self,
        p: &Pulse<'_>,
        lost: u64,
    ) -> Result<(), detingest_writer::WriteError> {
        if lost > 0 {
            self.announce_lost(lost);
        }
        self.counts.pulse_metadata += 1;
        self.file_mut()?.append_pulse_meta(
            p.reference_time,
            f64::from(p.proton_charge),
            p.period_number,
            p.vetos,
        )?;
        self.begin_pulse(p.reference_time, p.message_id as u64);
        Ok(())
    }

    /// Checks source `k`'s message (id `id`, first pulse at `time`) against its last: `None`
    /// for a message seen already (an id not above the last with a pulse not after the last:
    /// delivered twice), else the messages missing in between (0 when none, or when the
    /// producer restarted its count: a lower id with later pulses).
    fn check_id(&mut self, k: usize, id: i64, time: i64) -> Option<u64> {
        let (last, last_time) = (self.last_id[k], self.last_time[k]);
        if let (Some(last), Some(last_time)) = (last, last_time) {
            if id <= last && time <= last_time {
                self.counts.duplicates += 1;
                return None;
            }
        }
        self.last_id[k] = Some(id);
        self.last_time[k] = Some(time);
        let Some(last) = last else {
            return Some(0);
        };
        let gap = id.wrapping_sub(last).wrapping_sub(1);
        if gap == 0 {
            Some(0)
        } else if (1..=MAX_GAP).contains(&gap) {
            self.counts.messages_lost += gap as u64;
            if let Some(held) = self.id_log.allow(Instant::now()) {
                tracing::warn!(
                    source = k,
                    first_missing = last + 1,
                    count = gap,
                    held_back = held,
                    "event messages lost (a gap in message ids; every gap is in the file)"
                );
            }
            Some(gap as u64)
        } else {
            self.counts.id_restarts += 1;
            if let Some(held) = self.id_log.allow(Instant::now()) {
                tracing::warn!(
                    source = k,
                    last,
                    id,
                    held_back = held,
                    "message ids restarted; writing on"
                );
            }
            Some(0)
        }
    }

    /// Closes the open pulse (announcing it) and opens the next index.
    fn begin_pulse(&mut self, time: i64, frame_number: u64) {
        self.announce_open();
        self.indices += 1;
        self.open = Some(OpenPulse {
            index: self.indices,
            time,
            frame_number,
            events: 0,
        });
    }

    fn announce_open(&mut self) {
        let Some(p) = self.open.take() else {
            return;
        };
        self.stats.indexed.fetch_add(1, Ordering::Relaxed);
        self.stats.recorded.fetch_add(1, Ordering::Relaxed);
        self.stats.written.fetch_add(1, Ordering::Relaxed);
        let record = FrameRecord {
            index: p.index,
            frame_number: p.frame_number,
            raw_bytes: p.events * 8,
            timestamp_ns: u64::try_from(p.time).unwrap_or(0),
            modules: 1,
            ..self.record(p.index)
        };
        self.push_frame(record);
    }

    /// `n` indices whose messages never arrived, recorded lost after the open pulse.
    fn announce_lost(&mut self, n: u64) {
        self.announce_open();
        for _ in 0..n {
            self.indices += 1;
            self.lost += 1;
            self.stats.indexed.fetch_add(1, Ordering::Relaxed);
            self.stats.recorded.fetch_add(1, Ordering::Relaxed);
            self.stats.lost.fetch_add(1, Ordering::Relaxed);
            let record = self.record(self.indices);
            self.push_frame(record);
        }
    }

    /// A lost record of `index` (fields a written pulse sets are filled by the caller).
    fn record(&self, index: u64) -> FrameRecord {
        FrameRecord {
            index,
            frame_number: 0,
            sequence: 0,
            raw_bytes: 0,
            compressed_bytes: 0,
            timestamp_ns: 0,
            detector_timestamp: 0,
            bunch_id: 0,
            written_ns: now_ns(),
            readable_up_to: self.readable,
            modules: 0,
            dropped: 0,
            packets_lost: 0,
            missing: Default::default(),
            stats: None,
        }
    }

    fn push_frame(&self, record: FrameRecord) {
        self.notify.push(Notification::Frame(FrameNotice {
            stream: Arc::clone(&self.info),
            record,
            preview: None,
        }));
    }

    /// Flushes the file; every announced index is then readable.
    fn flush(&mut self) {
        self.publish_counts();
        if self.error.is_some() {
            return;
        }
        if let Err(e) = self.file_mut().and_then(EventFile::flush) {
            return self.fail(e.to_string());
        }
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        let announced = self.indices - u64::from(self.open.is_some());
        if announced > self.readable {
            self.readable = announced;
            self.notify.push(Notification::Readable(ReadableNotice {
                stream: Arc::clone(&self.info),
                up_to: announced,
            }));
        }
    }

    fn publish_counts(&mut self) {
        self.counts.consumer_errors = self.consumer.errors.load(Ordering::Relaxed);
        self.counts.malformed += self.consumer.too_large.swap(0, Ordering::Relaxed);
        self.source.set_kind(Arc::new(EventReport {
            counts: self.counts,
            histograms: self.hist.clone(),
        }));
        self.hist_budget = 0;
    }

    fn fail(&mut self, error: String) {
        tracing::error!(error = %error, file = %self.info.file.display(), "writing the event file failed; ending the run");
        self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
        self.error = Some(error);
        self.stop.store(true, Ordering::Relaxed);
    }

    fn close(mut self) -> Vec<StreamReport> {
        self.announce_open();
        self.flush();
        let c = self.counts;
        let end = EventRunEnd {
            ended: Some(std::time::SystemTime::now()),
            error: self.error.clone(),
            counters: [
                ("messages", c.messages),
                ("events", c.events),
                ("pulses", c.pulses),
                ("messages_lost", c.messages_lost),
                ("malformed", c.malformed),
                ("unknown_source", c.unknown_source),
                ("log_values", c.log_values),
            ]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect(),
        };
        if let Some(file) = self.file.take() {
            if let Err(e) = file.close(&end) {
                self.error.get_or_insert(e.to_string());
            }
        }
        self.source.finished.store(true, Ordering::Relaxed);
        self.notify.push(Notification::StreamEnd(StreamEndNotice {
            stream: Arc::clone(&self.info),
            frames: self.indices,
            lost: self.lost,
            late: 0,
            ended_ns: now_ns(),
            error: self.error.clone(),
        }));
        self.notify.close();
        vec![StreamReport {
            stream: Arc::clone(&self.info),
            opened: true,
            frames: self.indices,
            lost: self.lost,
            dropped: 0,
            late: 0,
            error: self.error.take(),
        }]
    }
}
