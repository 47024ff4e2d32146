//! What the Kafka component counts, and the faults told apart: a broker outage (librdkafka
//! says every broker is down; logged once per episode, over when a message produced after it
//! began is delivered), a topic the brokers do not have (logged once per topic), a message
//! too large for a topic, a record refused for another reason (each logged at most every
//! 10 s per topic, with the count), and each file hand-off (logged when the broker took it,
//! warned at once when it did not).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::rate_limit::RateLimit;

/// What went wrong with a message or a client, as the operator must tell it apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// No broker answers: messages wait, then time out.
    Outage,
    /// The topic does not exist on the brokers (or may not be written).
    TopicMissing,
    /// The message exceeds what the topic or broker takes.
    TooLarge,
    /// Our queue is full: dropped here, before librdkafka.
    QueueFull,
    /// The message waited past its timeout (during an outage, or behind a slow broker).
    TimedOut,
    /// Refused for another reason.
    Refused,
}

impl Fault {
    /// The fault an error stands for.
    pub fn of(e: &KafkaError) -> Self {
        use RDKafkaErrorCode as C;
        match e.rdkafka_error_code() {
            Some(C::AllBrokersDown) => Self::Outage,
            Some(
                C::UnknownTopicOrPartition
                | C::UnknownTopic
                | C::UnknownPartition
                | C::TopicAuthorizationFailed,
            ) => Self::TopicMissing,
            Some(C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge) => {
                Self::TooLarge
            }
            Some(C::QueueFull) => Self::QueueFull,
            Some(C::MessageTimedOut | C::RequestTimedOut) => Self::TimedOut,
            _ => Self::Refused,
        }
    }
}

/// What the Kafka component counts (`GET /run` under `sinks.kafka`).
#[derive(Debug, Default)]
pub struct KafkaStats {
    /// Messages the brokers acknowledged.
    pub delivered: AtomicU64,
    /// Messages librdkafka gave up on (any fault after they were queued).
    pub undelivered: AtomicU64,
    /// Records not handed to librdkafka: our queue or its queue was full.
    pub dropped: AtomicU64,
    /// Per-frame records handed to librdkafka.
    pub frames: AtomicU64,
    /// Previews handed to librdkafka.
    pub previews: AtomicU64,
    /// Previews whose chunk did not decode.
    pub previews_undecodable: AtomicU64,
    /// File-written hand-offs the brokers took.
    pub handoffs: AtomicU64,
    /// File-written hand-offs that never reached the brokers.
    pub handoffs_undelivered: AtomicU64,
    /// Heartbeats sent.
    pub heartbeats: AtomicU64,
    /// Commands obeyed.
    pub commands_accepted: AtomicU64,
    /// Commands refused (answered with the reason).
    pub commands_refused: AtomicU64,
    /// Commands for another service, ignored.
    pub commands_ignored: AtomicU64,
    /// Commands older than `max_command_age_ms` (history), skipped unanswered.
    pub commands_stale: AtomicU64,
    /// Messages on the command topic that are not a well-formed command.
    pub commands_malformed: AtomicU64,
    /// Messages refused because their topic does not exist.
    pub topic_missing: AtomicU64,
    /// Messages refused as too large.
    pub too_large: AtomicU64,
    /// Messages refused for another reason.
    pub refused: AtomicU64,
    /// Errors librdkafka reported (a broker away counts once per retry).
    pub errors: AtomicU64,
    /// Outage episodes.
    pub outages: AtomicU64,
    /// The command consumer has its partitions.
    pub commands_ready: AtomicBool,
    /// In an outage now.
    pub down: AtomicBool,
    /// When the outage began, ms since the Unix epoch (a message's creation time is compared).
    down_since_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Per topic, what was logged of its refusals (looked up by `&str`: no allocation per
    /// refused message once the topic is known).
    logged: Mutex<HashMap<String, TopicLog>>,
    /// Hand-offs queued and not yet reported on: id -> what to log.
    pending: Mutex<HashMap<usize, String>>,
    next_handoff: AtomicUsize,
}

/// What was logged of one topic's refusals.
#[derive(Debug, Default)]
struct TopicLog {
    /// Said missing (once).
    missing: bool,
    too_large: RateLimit,
    refused: RateLimit,
}

impl KafkaStats {
    /// The last error librdkafka reported.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|l| l.clone())
    }

    fn note(&self, what: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut l) = self.last_error.lock() {
            *l = Some(what.to_owned());
        }
    }

    /// An error of a client (not of one message): an outage begins when every broker is
    /// down; anything else is counted (one broker's connection closing is routine).
    pub fn client_error(&self, e: &KafkaError, reason: &str) {
        let what = format!("{e}: {reason}");
        if Fault::of(e) == Fault::Outage {
            self.outage(&what);
        } else {
            self.note(&what);
            tracing::debug!(error = %what, "kafka: client error");
        }
    }

    /// No broker answers: the first time in an episode, logged and counted.
    pub fn outage(&self, what: &str) {
        self.note(what);
        if !self.down.swap(true, Ordering::Relaxed) {
            self.down_since_ms
                .store(crate::stream::now_ns() / 1_000_000, Ordering::Relaxed);
            self.outages.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %what, "kafka: brokers unreachable; messages queue up to kafka.message_timeout_ms, then are dropped and counted; retrying");
        }
    }

    /// A message created at `created_ms` (ms since the Unix epoch) was delivered: an outage
    /// that began before it was created is over (a late report of an older one says nothing).
    pub fn delivered(&self, created_ms: Option<i64>) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        let since = self.down_since_ms.load(Ordering::Relaxed) as i64;
        if self.down.load(Ordering::Relaxed)
            && created_ms.is_none_or(|t| t >= since)
            && self.down.swap(false, Ordering::Relaxed)
        {
            tracing::info!("kafka: brokers reachable again");
        }
    }

    /// A message for `topic` was refused (`queued`: by librdkafka after it took it, else when
    /// it was handed over): counted by its fault, logged by kind and topic.
    pub fn refused(&self, topic: &str, e: &KafkaError, queued: bool) {
        let mut fault = Fault::of(e);
        // librdkafka holds a message for a topic it has no metadata of until its time-out:
        // for a topic known to be missing, that is the topic missing.
        if fault == Fault::TimedOut && self.known_missing(topic) {
            fault = Fault::TopicMissing;
        }
        if queued {
            self.undelivered.fetch_add(1, Ordering::Relaxed);
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        match fault {
            Fault::QueueFull => return,
            Fault::Outage => return self.outage(&e.to_string()),
            // In an outage the outage says it; otherwise a slow or stuck broker.
            Fault::TimedOut if self.down.load(Ordering::Relaxed) => return,
            Fault::TopicMissing => &self.topic_missing,
            Fault::TooLarge => &self.too_large,
            Fault::TimedOut | Fault::Refused => &self.refused,
        }
        .fetch_add(1, Ordering::Relaxed);
        self.errors.fetch_add(1, Ordering::Relaxed);
        let Some(count) = self.due(fault, topic) else {
            return;
        };
        // The text of the last error is kept when the refusal is logged (not per message).
        if let Ok(mut l) = self.last_error.lock() {
            *l = Some(format!("{topic}: {e}"));
        }
        match fault {
            Fault::TopicMissing => {
                tracing::error!(%topic, error = %e, count, "kafka: the brokers have no topic {topic:?} (or it may not be written): its messages are refused and counted (topic_missing) until it exists; create it, or set kafka.create_topics")
            }
            Fault::TooLarge => {
                tracing::warn!(%topic, error = %e, count, "kafka: a message is too large for the topic or broker (raise the topic's max.message.bytes and kafka.message_max_bytes): refused and counted (too_large)")
            }
            _ => {
                tracing::warn!(%topic, error = %e, count, "kafka: a message was refused: counted (refused)")
            }
        }
    }

    /// Whether (fault, topic) is to be logged now: a missing topic once, the others at most
    /// every [`crate::rate_limit::EVERY`]; the refusals since the last line, this one included.
    fn due(&self, fault: Fault, topic: &str) -> Option<u64> {
        let mut logged = self.logged.lock().ok()?;
        if !logged.contains_key(topic) {
            logged.insert(topic.to_owned(), TopicLog::default());
        }
        let log = logged.get_mut(topic)?;
        let held = match fault {
            Fault::TopicMissing => (!std::mem::replace(&mut log.missing, true)).then_some(0),
            Fault::TooLarge => log.too_large.allow(Instant::now()),
            _ => log.refused.allow(Instant::now()),
        };
        held.map(|n| n + 1)
    }

    /// `topic` was found missing at start (and said so): its refusals are counted, not
    /// logged again.
    pub fn missing_at_start(&self, topic: &str) {
        if let Ok(mut logged) = self.logged.lock() {
            logged.entry(topic.to_owned()).or_default().missing = true;
        }
    }

    fn known_missing(&self, topic: &str) -> bool {
        (self.logged.lock().ok()).is_some_and(|l| l.get(topic).is_some_and(|t| t.missing))
    }

    /// A hand-off about to be queued, described by `what` for the log: its id (the message's
    /// delivery opaque, never 0).
    pub fn handoff_queued(&self, what: String) -> usize {
        let id = self.next_handoff.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut p) = self.pending.lock() {
            p.insert(id, what);
        }
        id
    }

    /// Hand-off `id` was delivered (`None`) or not (the error): logged now.
    pub fn handoff_reported(&self, id: usize, error: Option<&str>) {
        let what = (self.pending.lock().ok()).and_then(|mut p| p.remove(&id));
        let what = what.unwrap_or_default();
        match error {
            None => {
                self.handoffs.fetch_add(1, Ordering::Relaxed);
                tracing::info!(handoff = %what, "kafka: file set handed off (wrdn delivered)");
            }
            Some(e) => {
                self.handoffs_undelivered.fetch_add(1, Ordering::Relaxed);
                tracing::error!(handoff = %what, error = %e, "kafka: file set NOT handed off: the wrdn never reached the brokers; the catalogue does not know these files (their list is in the run's _files.json)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(code: RDKafkaErrorCode) -> KafkaError {
        KafkaError::MessageProduction(code)
    }

    #[test]
    fn faults_are_told_apart_and_counted_by_kind() {
        let s = KafkaStats::default();
        s.refused(
            "frames",
            &err(RDKafkaErrorCode::UnknownTopicOrPartition),
            true,
        );
        s.refused("frames", &err(RDKafkaErrorCode::UnknownTopic), false);
        s.refused("status", &err(RDKafkaErrorCode::MessageSizeTooLarge), true);
        s.refused("status", &err(RDKafkaErrorCode::QueueFull), false);
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        assert_eq!(
            (n(&s.topic_missing), n(&s.too_large), n(&s.outages)),
            (2, 1, 0)
        );
        assert_eq!((n(&s.undelivered), n(&s.dropped)), (2, 2));
        assert_eq!(
            s.due(Fault::TopicMissing, "frames"),
            None,
            "a missing topic: once"
        );
        s.client_error(&err(RDKafkaErrorCode::BrokerTransportFailure), "one broker");
        assert_eq!(n(&s.outages), 0, "one connection closing is no outage");
        s.client_error(&err(RDKafkaErrorCode::AllBrokersDown), "all");
        s.client_error(&err(RDKafkaErrorCode::AllBrokersDown), "all, again");
        assert_eq!(n(&s.outages), 1);
    }

    #[test]
    fn only_a_message_made_after_an_outage_began_ends_it() {
        let s = KafkaStats::default();
        s.outage("all brokers down");
        let began = s.down_since_ms.load(Ordering::Relaxed) as i64;
        s.delivered(Some(began - 500)); // a late report of an older message
        assert!(s.down.load(Ordering::Relaxed));
        s.delivered(Some(began + 1));
        assert!(!s.down.load(Ordering::Relaxed));
        s.outage("again");
        assert_eq!(s.outages.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_handoff_is_counted_when_reported() {
        let s = KafkaStats::default();
        let a = s.handoff_queued("a".into());
        let b = s.handoff_queued("b".into());
        assert!(a != 0 && a != b);
        s.handoff_reported(a, None);
        s.handoff_reported(b, Some("too large"));
        let n = |x: &AtomicU64| x.load(Ordering::Relaxed);
        assert_eq!((n(&s.handoffs), n(&s.handoffs_undelivered)), (1, 1));
    }
}
