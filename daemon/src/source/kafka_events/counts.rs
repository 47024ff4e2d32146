//! What an event run took and refused, by kind: kept by the writer thread and published to
//! the run's status every flush (no lock per message).

/// An event run's counts (`GET /run` `sources[].events`, `detingest_neutron_<kind>_total`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct EventCounts {
    /// Messages taken from the topics.
    pub messages: u64,
    /// Events written.
    pub events: u64,
    /// Pulse entries written, over every bank and monitor.
    pub pulses: u64,
    /// Messages that never arrived (gaps in a source's message ids).
    pub messages_lost: u64,
    /// Message ids lower than the last with later pulses (a producer that restarted its
    /// count): written on.
    pub id_restarts: u64,
    /// Messages delivered again (an id not above the last, its pulses not after the last
    /// message's): skipped.
    pub duplicates: u64,
    /// Messages refused: not a flatbuffer we read, cut short, inconsistent.
    pub malformed: u64,
    /// Messages of a schema an event run does not read.
    pub other_schema: u64,
    /// Messages from a `source_name` the configuration does not map.
    pub unknown_source: u64,
    /// Log values written.
    pub log_values: u64,
    /// Log values of a type not logged (arrays, strings).
    pub log_unsupported: u64,
    /// pu00 messages written into the pulse log.
    pub pulse_metadata: u64,
    /// Errors the Kafka consumer reported (a broker down, a partition gone).
    pub consumer_errors: u64,
}
