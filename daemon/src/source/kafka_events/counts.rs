//! What an event run took and refused, by kind: kept by the writer thread and published to
//! the run's status every flush (no lock per message).

use crate::contract::{Counters, KindCounts};

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
    /// Alarm changes written (f142 values whose alarm differs from the last).
    pub alarms: u64,
    /// pu00 messages written into the pulse log.
    pub pulse_metadata: u64,
    /// Errors the Kafka consumer reported (a broker down, a partition gone).
    pub consumer_errors: u64,
}

/// Bins of each histogram.
pub const BINS: usize = 100;

/// The live page's view of an event run: histograms of the events' times of flight and pixel
/// ids over the run (`GET /run` `sources[].event_histograms`). While more than
/// [`EventHistograms::BUDGET`] events arrive between two flushes, the rest of them are not
/// binned (`binned` says how many were).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct EventHistograms {
    /// The time-of-flight range, 0 to this, ns; later events count in the last bin.
    pub tof_max_ns: u64,
    /// Events per time-of-flight bin.
    pub tof: Vec<u64>,
    /// The pixel-id range (the configured banks' pixels), first and last.
    pub pixel_range: Option<(i64, i64)>,
    /// Events per pixel-id bin (empty without a range).
    pub pixels: Vec<u64>,
    /// Events binned.
    pub binned: u64,
}

impl EventHistograms {
    /// Most events binned between two flushes.
    pub const BUDGET: u64 = 1 << 20;

    /// Empty histograms over `0..tof_max_ns` and `pixel_range`.
    pub fn new(tof_max_ns: u64, pixel_range: Option<(i64, i64)>) -> Self {
        Self {
            tof_max_ns: tof_max_ns.max(1),
            tof: vec![0; BINS],
            pixel_range,
            pixels: if pixel_range.is_some() {
                vec![0; BINS]
            } else {
                Vec::new()
            },
            binned: 0,
        }
    }

    /// Bins events given as little-endian i32 times of flight and pixel ids (`ids` empty: no
    /// pixel ids).
    pub fn add(&mut self, tof: &[u8], ids: &[u8]) {
        let bins = BINS as u64;
        for v in tof.chunks_exact(4) {
            let v = i32::from_le_bytes([v[0], v[1], v[2], v[3]]).max(0) as u64;
            self.tof[((v * bins) / self.tof_max_ns).min(bins - 1) as usize] += 1;
        }
        if let Some((first, last)) = self.pixel_range {
            let span = (last - first + 1).max(1) as u64;
            for v in ids.chunks_exact(4) {
                let v = i64::from(i32::from_le_bytes([v[0], v[1], v[2], v[3]]));
                if (first..=last).contains(&v) {
                    self.pixels[(((v - first) as u64 * bins) / span) as usize] += 1;
                }
            }
        }
        self.binned += (tof.len() / 4) as u64;
    }
}

/// What an event run publishes to its source's status: its counts and the page's histograms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventReport {
    /// The counts.
    pub counts: EventCounts,
    /// The histograms.
    pub histograms: EventHistograms,
}

impl KindCounts for EventReport {
    fn key(&self) -> &'static str {
        "events"
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn metric(&self) -> (&'static str, &'static str) {
        ("detingest_neutron_", "Kafka event source")
    }

    fn counters(&self) -> Counters {
        Counters::new()
            .total("messages", "Messages taken from the topics", self.counts.messages)
            .total("events", "Events written", self.counts.events)
            .total("pulses", "Pulse entries written, over every bank and monitor", self.counts.pulses)
            .total("messages_lost", "Messages that never arrived (gaps in a source's message ids)", self.counts.messages_lost)
            .total("id_restarts", "Message ids lower than the last with later pulses (a producer that restarted its count): written on", self.counts.id_restarts)
            .total("duplicates", "Messages delivered again (an id not above the last, its pulses not after the last message's): skipped", self.counts.duplicates)
            .total("malformed", "Messages refused: not a flatbuffer we read, cut short, inconsistent", self.counts.malformed)
            .total("other_schema", "Messages of a schema an event run does not read", self.counts.other_schema)
            .total("unknown_source", "Messages from a `source_name` the configuration does not map", self.counts.unknown_source)
            .total("log_values", "Log values written", self.counts.log_values)
            .total("log_unsupported", "Log values of a type not logged (arrays, strings)", self.counts.log_unsupported)
            .total("alarms", "Alarm changes written (f142 values whose alarm differs from the last)", self.counts.alarms)
            .total("pulse_metadata", "pu00 messages written into the pulse log", self.counts.pulse_metadata)
            .total("consumer_errors", "Errors the Kafka consumer reported (a broker down, a partition gone)", self.counts.consumer_errors)
    }

    fn summary_line(&self) -> String {
        let c = &self.counts;
        format!(
            "  events         {} events in {} pulses from {} messages ({} lost, {} duplicates, {} id restarts); \
             refused {} malformed, {} of another schema, {} of an unknown source; {} log values, {} alarms",
            c.events, c.pulses, c.messages, c.messages_lost, c.duplicates, c.id_restarts,
            c.malformed, c.other_schema, c.unknown_source, c.log_values, c.alarms
        )
    }

    fn refused(&self) -> u64 {
        self.counts.malformed + self.counts.other_schema + self.counts.unknown_source
    }

    fn view(&self) -> Option<(&'static str, serde_json::Value)> {
        let h = serde_json::to_value(&self.histograms).ok()?;
        Some(("event_histograms", h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_land_in_their_bins_and_out_of_range_ones_at_the_ends() {
        let mut h = EventHistograms::new(1000, Some((10, 109)));
        let le = |v: &[i32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>();
        h.add(&le(&[0, 15, 999, 5000, -3]), &le(&[10, 11, 109, 200, 9]));
        assert_eq!((h.tof[0], h.tof[1], h.tof[99]), (2, 1, 2));
        assert_eq!((h.pixels[0], h.pixels[1], h.pixels[99]), (1, 1, 1));
        assert_eq!(
            h.pixels.iter().sum::<u64>(),
            3,
            "ids outside the range are not binned"
        );
        assert_eq!(h.binned, 5);
    }
}
