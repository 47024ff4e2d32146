//! A Stream V2 source's message counters: what it received, wrote and refused, by kind, and
//! the rule that logs the first refusal of each kind (in a run, or between runs) and counts
//! the rest.

use super::message::DecodeError;
use crate::contract::{Counters, KindCounts};

/// Messages by what became of them. Refusals between runs count in the next run's summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MessageCounts {
    /// Messages received.
    pub received: u64,
    /// `start` messages taken.
    pub starts: u64,
    /// Images handed to the pipeline.
    pub images: u64,
    /// `end` messages taken.
    pub ends: u64,
    /// Images written as they arrived (already in the stream's codec).
    pub passed_through: u64,
    /// Images decoded here to be encoded in the stream's codec (raw pixels count here too).
    pub decoded: u64,
    /// Not CBOR, cut short, or not a map.
    pub malformed: u64,
    /// A `type` other than start, image, end.
    pub unknown_type: u64,
    /// A required field absent.
    pub missing_field: u64,
    /// A field of the wrong type or value.
    pub bad_field: u64,
    /// Images or ends with no series open (before any start, or after the run stopped).
    pub before_start: u64,
    /// Images or ends of another series than the open one.
    pub other_series: u64,
    /// Images whose shape, pixel type or encoding do not match the start (or whose chunk
    /// does not decode).
    pub wrong_format: u64,
    /// Images whose channels beyond the first were not written.
    pub extra_channels: u64,
}

/// Kinds of refusal, for logging each kind once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A [`DecodeError`], by its kind.
    Decode(&'static str),
    /// An image or end with no series open.
    BeforeStart,
    /// An image or end of another series.
    OtherSeries,
    /// An image that does not match its start.
    WrongFormat,
    /// Channels beyond the first.
    ExtraChannels,
}

impl Refusal {
    /// The refusal a decoding error is.
    pub fn of(e: &DecodeError) -> Self {
        Self::Decode(e.kind())
    }

    fn bit(self) -> u32 {
        match self {
            Self::Decode("malformed") => 0,
            Self::Decode("unknown_type") => 1,
            Self::Decode("missing_field") => 2,
            Self::Decode(_) => 3,
            Self::BeforeStart => 4,
            Self::OtherSeries => 5,
            Self::WrongFormat => 6,
            Self::ExtraChannels => 7,
        }
    }
}

impl MessageCounts {
    /// Counts one refusal.
    pub fn refuse(&mut self, r: Refusal) {
        let n = match r {
            Refusal::Decode("malformed") => &mut self.malformed,
            Refusal::Decode("unknown_type") => &mut self.unknown_type,
            Refusal::Decode("missing_field") => &mut self.missing_field,
            Refusal::Decode(_) => &mut self.bad_field,
            Refusal::BeforeStart => &mut self.before_start,
            Refusal::OtherSeries => &mut self.other_series,
            Refusal::WrongFormat => &mut self.wrong_format,
            Refusal::ExtraChannels => &mut self.extra_channels,
        };
        *n += 1;
    }

    /// Refused messages of every kind (extra channels are not refusals: the image was written).
    pub fn refused(&self) -> u64 {
        self.malformed
            + self.unknown_type
            + self.missing_field
            + self.bad_field
            + self.before_start
            + self.other_series
            + self.wrong_format
    }

    /// Adds `other`'s counts.
    pub fn add(&mut self, other: &Self) {
        let fields = [
            (&mut self.received, other.received),
            (&mut self.starts, other.starts),
            (&mut self.images, other.images),
            (&mut self.ends, other.ends),
            (&mut self.passed_through, other.passed_through),
            (&mut self.decoded, other.decoded),
            (&mut self.malformed, other.malformed),
            (&mut self.unknown_type, other.unknown_type),
            (&mut self.missing_field, other.missing_field),
            (&mut self.bad_field, other.bad_field),
            (&mut self.before_start, other.before_start),
            (&mut self.other_series, other.other_series),
            (&mut self.wrong_format, other.wrong_format),
            (&mut self.extra_channels, other.extra_channels),
        ];
        for (a, b) in fields {
            *a += b;
        }
    }
}

/// Logs the first refusal of each kind; the rest are only counted (the summary shows them).
#[derive(Debug, Default)]
pub struct OncePerKind(u32);

impl OncePerKind {
    /// True the first time `r`'s kind is seen.
    pub fn first(&mut self, r: Refusal) -> bool {
        let bit = 1 << r.bit();
        let first = self.0 & bit == 0;
        self.0 |= bit;
        first
    }
}

impl KindCounts for MessageCounts {
    fn key(&self) -> &'static str {
        "messages"
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn metric(&self) -> (&'static str, &'static str) {
        ("detingest_stream2_messages_", "Stream V2 source, messages")
    }

    fn counters(&self) -> Counters {
        Counters::new()
            .total("received", "Messages received", self.received)
            .total("starts", "`start` messages taken", self.starts)
            .total("images", "Images handed to the pipeline", self.images)
            .total("ends", "`end` messages taken", self.ends)
            .total("passed_through", "Images written as they arrived (already in the stream's codec)", self.passed_through)
            .total("decoded", "Images decoded here to be encoded in the stream's codec (raw pixels count here too)", self.decoded)
            .total("malformed", "Not CBOR, cut short, or not a map", self.malformed)
            .total("unknown_type", "A `type` other than start, image, end", self.unknown_type)
            .total("missing_field", "A required field absent", self.missing_field)
            .total("bad_field", "A field of the wrong type or value", self.bad_field)
            .total("before_start", "Images or ends with no series open (before any start, or after the run stopped)", self.before_start)
            .total("other_series", "Images or ends of another series than the open one", self.other_series)
            .total("wrong_format", "Images whose shape, pixel type or encoding do not match the start (or whose chunk does not decode)", self.wrong_format)
            .total("extra_channels", "Images whose channels beyond the first were not written", self.extra_channels)
    }

    fn summary_line(&self) -> String {
        let m = self;
        format!(
            "  messages       {} received: {} starts, {} images ({} as they arrived, {} decoded), {} ends; \
             refused {} (malformed {}, unknown type {}, missing field {}, bad field {}, no run {}, other series {}, wrong format {}); \
             images with channels not written {}",
            m.received, m.starts, m.images, m.passed_through, m.decoded, m.ends, m.refused(),
            m.malformed, m.unknown_type, m.missing_field, m.bad_field, m.before_start,
            m.other_series, m.wrong_format, m.extra_channels
        )
    }

    fn refused(&self) -> u64 {
        MessageCounts::refused(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_is_logged_once_and_every_one_counted() {
        let mut counts = MessageCounts::default();
        let mut log = OncePerKind::default();
        let kinds = [
            Refusal::Decode("malformed"),
            Refusal::Decode("bad_field"),
            Refusal::Decode("malformed"),
            Refusal::BeforeStart,
            Refusal::BeforeStart,
            Refusal::WrongFormat,
        ];
        let logged: Vec<bool> = kinds
            .iter()
            .map(|&k| {
                counts.refuse(k);
                log.first(k)
            })
            .collect();
        assert_eq!(logged, [true, true, false, true, false, true]);
        assert_eq!((counts.malformed, counts.bad_field), (2, 1));
        assert_eq!((counts.before_start, counts.wrong_format), (2, 1));
        assert_eq!(counts.refused(), 6);
        let mut total = MessageCounts::default();
        total.add(&counts);
        total.add(&counts);
        assert_eq!(total.malformed, 4);
    }
}
