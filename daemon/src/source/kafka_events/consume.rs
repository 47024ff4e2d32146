//! The consumer thread of an event run (`kafka-events`): reads every partition of the event
//! and log topics from the run's start time on, and hands each message's bytes to the writer
//! thread in a buffer that comes back for reuse (no allocation once the buffers have grown to
//! the largest message). Asked to stop, it waits `stop_leeway_ms` (what producers sent before
//! the stop reaches the brokers' logs meanwhile), takes each partition's end then, and reads
//! on until it has reached them all (or `STOP_DRAIN` passed). A full queue to the writer makes
//! it wait: the broker keeps the messages meanwhile, nothing is lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Sender};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::ClientContext;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::config::KafkaEventsConfig;

/// How long a stop may take to read what the topics held when it came.
const STOP_DRAIN: Duration = Duration::from_secs(10);
/// How long after the brokers came back partitions are checked for a log they lost.
const RECHECK: Duration = Duration::from_secs(10);
/// How long start may take to find the topics and their offsets.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A message's bytes, on their way to the writer.
pub struct Taken {
    /// The payload (its capacity kept for reuse).
    pub buf: Vec<u8>,
    /// From a log topic.
    pub log: bool,
}

/// What the consumer thread reports, besides messages.
#[derive(Debug, Default)]
pub struct ConsumerReport {
    /// Errors the client reported.
    pub errors: std::sync::atomic::AtomicU64,
    /// Messages over `max_message_bytes`, not handed on.
    pub too_large: std::sync::atomic::AtomicU64,
    /// When an error was last logged.
    logged: std::sync::Mutex<crate::rate_limit::RateLimit>,
    /// Every broker connection went down: the consumer is made again (see [`run`]).
    brokers_down: std::sync::atomic::AtomicBool,
}

impl ConsumerReport {
    /// Counts an error of the client, logged at most once per 10 s.
    fn error(&self, error: &dyn std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let allowed = self
            .logged
            .lock()
            .ok()
            .and_then(|mut r| r.allow(Instant::now()));
        if let Some(held) = allowed {
            tracing::warn!(error = %error, held_back = held, "event consumer error (counted as consumer_errors)");
        }
    }
}

/// The consumer's context: librdkafka's log lines at debug level, its errors counted.
#[derive(Clone)]
pub struct EventsContext(pub std::sync::Arc<ConsumerReport>);

impl ClientContext for EventsContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        tracing::debug!(target: "librdkafka", ?level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown) {
            self.0.brokers_down.store(true, Ordering::Relaxed);
        }
        self.0.error(&format_args!("{error}: {reason}"));
    }
}

impl ConsumerContext for EventsContext {}

/// The run's consumer.
pub type EventsConsumer = BaseConsumer<EventsContext>;

/// Where the consumer is in each partition: `(topic, partition, next offset)`.
pub type Positions = Vec<(String, i32, i64)>;

/// Why the run's consumer could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// The client could not be made (its settings).
    #[error("cannot make a Kafka consumer for {brokers}: {error}")]
    Client {
        /// The brokers.
        brokers: String,
        /// Why.
        error: KafkaError,
    },
    /// The brokers did not answer in time.
    #[error("brokers {brokers} did not answer: {error}")]
    Unanswered {
        /// The brokers.
        brokers: String,
        /// Why.
        error: KafkaError,
    },
    /// A topic of the run does not exist (yet).
    #[error("topic {topic:?} does not exist on {brokers}")]
    NoTopic {
        /// The topic.
        topic: String,
        /// The brokers.
        brokers: String,
    },
    /// The offsets of the run's start could not be found.
    #[error("cannot find the offsets for the run's start: {0}")]
    Offsets(KafkaError),
    /// A partition's end could not be read.
    #[error("cannot read the end of {topic}: {error}")]
    End {
        /// The partition's topic.
        topic: String,
        /// Why.
        error: KafkaError,
    },
    /// The partitions could not be assigned.
    #[error("cannot assign the partitions: {0}")]
    Assign(KafkaError),
}

/// A consumer assigned to every partition of the run's topics at their offsets for
/// `from_ms` (ms since the epoch), and those offsets. Refused naming the topic when one does
/// not exist.
pub fn assigned(
    cfg: &KafkaEventsConfig,
    from_ms: i64,
    report: &std::sync::Arc<ConsumerReport>,
) -> Result<(EventsConsumer, Positions), ConsumeError> {
    let consumer = client(cfg, report)?;
    let mut wanted = TopicPartitionList::new();
    for topic in cfg.topics.iter().chain(&cfg.log_topics) {
        let meta = (consumer.fetch_metadata(Some(topic), START_TIMEOUT)).map_err(|error| {
            ConsumeError::Unanswered {
                brokers: cfg.brokers.clone(),
                error,
            }
        })?;
        let t = meta.topics().first().filter(|t| t.error().is_none());
        let Some(t) = t.filter(|t| !t.partitions().is_empty()) else {
            return Err(ConsumeError::NoTopic {
                topic: topic.clone(),
                brokers: cfg.brokers.clone(),
            });
        };
        for p in t.partitions() {
            wanted
                .add_partition_offset(topic, p.id(), Offset::Offset(from_ms))
                .map_err(ConsumeError::Offsets)?;
        }
    }
    let at = consumer
        .offsets_for_times(wanted, START_TIMEOUT)
        .map_err(ConsumeError::Offsets)?;
    let mut positions = Vec::new();
    for e in at.elements() {
        // A partition with nothing at or after the time gives no offset: read from its end.
        let offset = match e.offset() {
            Offset::Offset(o) if o >= 0 => o,
            _ => {
                consumer
                    .fetch_watermarks(e.topic(), e.partition(), START_TIMEOUT)
                    .map_err(|error| ConsumeError::End {
                        topic: e.topic().to_owned(),
                        error,
                    })?
                    .1
            }
        };
        positions.push((e.topic().to_owned(), e.partition(), offset));
    }
    assign_at(&consumer, &positions)?;
    Ok((consumer, positions))
}

/// A consumer of the brokers (the group id only lets it be assigned partitions: nothing is
/// committed).
fn client(
    cfg: &KafkaEventsConfig,
    report: &std::sync::Arc<ConsumerReport>,
) -> Result<EventsConsumer, ConsumeError> {
    ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .set("group.id", "detingest-events")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.message.max.bytes", cfg.max_message_bytes.to_string())
        .set("reconnect.backoff.max.ms", "2000")
        .create_with_context(EventsContext(std::sync::Arc::clone(report)))
        .map_err(|error| ConsumeError::Client {
            brokers: cfg.brokers.clone(),
            error,
        })
}

/// Assigns every partition of `positions` at its next offset.
fn assign_at(consumer: &EventsConsumer, positions: &Positions) -> Result<(), ConsumeError> {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, next) in positions {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))
            .map_err(ConsumeError::Assign)?;
    }
    consumer.assign(&tpl).map_err(ConsumeError::Assign)
}

/// A consumer made again at `positions` once a broker answers (`None` while none does).
fn reconnected(
    cfg: &KafkaEventsConfig,
    report: &std::sync::Arc<ConsumerReport>,
    positions: &Positions,
) -> Option<EventsConsumer> {
    let c = client(cfg, report).ok()?;
    c.fetch_metadata(None, Duration::from_secs(1)).ok()?;
    assign_at(&c, positions).ok()?;
    tracing::info!("event consumer made again: the brokers answer; reading on where it was");
    Some(c)
}

/// Runs the consumer until `stop` and the drain after it, sending each message to `tx` in a
/// buffer from `free` (or a new one while fewer than the queue's worth exist).
pub fn run(
    (consumer, mut positions): (EventsConsumer, Positions),
    cfg: &KafkaEventsConfig,
    tx: Sender<Taken>,
    free: Receiver<Vec<u8>>,
    stop: &AtomicBool,
    report: &std::sync::Arc<ConsumerReport>,
) {
    let mut consumer = Some(consumer);
    // After a reconnection, until when (and when last) partitions are checked for a lost log.
    let (mut recheck_until, mut last_check) = (None::<Instant>, Instant::now());
    let mut short_seen = Vec::new();
    let mut drain: Option<(Instant, Positions)> = None;
    let mut stopped: Option<Instant> = None;
    let mut made = 0;
    loop {
        // The stop's marks are taken `stop_leeway_ms` after it: what producers sent up to the
        // stop reaches the brokers' logs (and their high watermarks) meanwhile.
        if stopped.is_none() && stop.load(Ordering::Relaxed) {
            stopped = Some(Instant::now());
        }
        let leeway = Duration::from_millis(cfg.stop_leeway_ms);
        if drain.is_none() && stopped.is_some_and(|t| t.elapsed() >= leeway) {
            if let Some(c) = consumer.as_ref() {
                drain = Some((Instant::now(), high_watermarks(c, &positions)));
            }
        }
        if let Some((since, marks)) = &drain {
            if since.elapsed() > STOP_DRAIN || reached(&positions, marks) {
                if since.elapsed() > STOP_DRAIN {
                    tracing::warn!(
                        "the run's stop did not read every message sent before it within 10 s"
                    );
                }
                tracing::debug!(?marks, ?positions, "event topics read up to the stop");
                return;
            }
        }
        // All brokers down: the client is dropped and made again once one answers (a client
        // that lived through a broker losing its topics has crashed in librdkafka's metadata
        // cache; a new one starts clean), reading on from the positions kept here.
        if report.brokers_down.swap(false, Ordering::Relaxed) && consumer.take().is_some() {
            tracing::warn!("all brokers down: the event consumer is made again once they answer");
        }
        let Some(c) = consumer.as_ref() else {
            if stop.load(Ordering::Relaxed) {
                tracing::warn!("stopped while the brokers are down: messages they still hold for the run are not read");
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
            consumer = reconnected(cfg, report, &positions);
            if consumer.is_some() {
                recheck_until = Some(Instant::now() + RECHECK);
            }
            continue;
        };
        let Some(polled) = c.poll(Duration::from_millis(100)) else {
            if recheck_until.is_some_and(|t| Instant::now() < t)
                && last_check.elapsed() > Duration::from_millis(500)
            {
                last_check = Instant::now();
                restart_truncated(c, &mut positions, &mut short_seen);
            }
            continue;
        };
        let m = match polled {
            Ok(m) => m,
            Err(e) => {
                report.error(&e);
                continue;
            }
        };
        if let Some(p) = (positions.iter_mut()).find(|p| p.1 == m.partition() && p.0 == m.topic()) {
            p.2 = m.offset() + 1;
        }
        let payload = m.payload().unwrap_or_default();
        if payload.len() > cfg.max_message_bytes {
            report.too_large.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let mut buf = match free.try_recv() {
            Ok(b) => b,
            Err(_) if made < cfg.queue + 2 => {
                made += 1;
                Vec::new()
            }
            // Every buffer is with the writer: wait for one (the broker keeps the messages).
            Err(_) => match free.recv() {
                Ok(b) => b,
                Err(_) => return,
            },
        };
        buf.clear();
        buf.extend_from_slice(payload);
        let log = cfg.log_topics.iter().any(|t| t == m.topic());
        if tx.send(Taken { buf, log }).is_err() {
            return;
        }
    }
}

/// After the brokers came back: assigns again, from their start, the partitions whose log
/// ends before the consumer's position (seen twice in a row), which the broker lost (what
/// was in them and had not been read shows as message ids that never arrive: recorded lost).
/// A broker that kept its log never ends before what it let the consumer read.
fn restart_truncated(consumer: &EventsConsumer, positions: &mut Positions, seen: &mut Vec<bool>) {
    let mut changed = false;
    seen.resize(positions.len(), false);
    for ((topic, partition, next), seen) in positions.iter_mut().zip(seen.iter_mut()) {
        let Ok((low, high)) =
            consumer.fetch_watermarks(topic, *partition, Duration::from_millis(500))
        else {
            continue;
        };
        // Twice in a row, a second apart: a broker's end may lag what it acknowledged.
        let short = high < *next;
        let again = std::mem::replace(seen, short);
        if short && again {
            *seen = false;
            tracing::warn!(topic = %topic, partition = *partition, position = *next, end = high, "a partition's log ends before what was read (the broker lost it): reading it again from its start");
            *next = low;
            changed = true;
        }
    }
    if changed {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, next) in positions.iter() {
            let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next));
        }
        if let Err(e) = consumer.assign(&tpl) {
            tracing::warn!(error = %e, "cannot assign the event partitions again");
        }
    }
}

/// Every assigned partition's high watermark now (messages below it were sent before).
fn high_watermarks(consumer: &EventsConsumer, positions: &Positions) -> Positions {
    (positions.iter())
        .filter_map(|(topic, partition, _)| {
            let (_, high) = consumer
                .fetch_watermarks(topic, *partition, Duration::from_secs(2))
                .ok()?;
            Some((topic.clone(), *partition, high))
        })
        .collect()
}

/// True when every partition's next offset is at or past its mark.
fn reached(positions: &Positions, marks: &Positions) -> bool {
    marks.iter().all(|(topic, partition, high)| {
        (positions.iter())
            .find(|p| p.1 == *partition && &p.0 == topic)
            .is_none_or(|p| p.2 >= *high)
    })
}
