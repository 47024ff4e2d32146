//! The messages an event run reads, decoded after the flatbuffers verifier checked every field
//! read: `ev44` events (ess-dmsc `ev44_events.fbs`), `pu00` pulse metadata (ISIS), `f144` and
//! the older `f142` logged values. The event arrays stay the message's own bytes (little-endian
//! i32, copied once into the file's columns). Anything malformed is refused with a reason,
//! never read out of bounds.

use crate::sink::kafka::schema::{
    schema_id, slot, verified_root, verified_table, DecodeError, Kind,
};

/// One message of an event run.
#[derive(Debug, Clone, PartialEq)]
pub enum EventMessage<'a> {
    /// Events of one or more pulses.
    Events(Events<'a>),
    /// One pulse's metadata.
    Pulse(Pulse<'a>),
    /// A logged value.
    Log(LogValue<'a>),
}

/// An `ev44` message.
#[derive(Debug, Clone, PartialEq)]
pub struct Events<'a> {
    /// The bank or monitor.
    pub source_name: &'a str,
    /// Consecutive per source: a gap is lost data.
    pub message_id: i64,
    /// Each pulse's time, ns since the epoch (little-endian i64).
    pub reference_time: &'a [u8],
    /// Each pulse's first event (little-endian i32).
    pub reference_time_index: &'a [u8],
    /// ns after the pulse (little-endian i32).
    pub time_of_flight: &'a [u8],
    /// Pixel ids (little-endian i32), or empty when implicit (a monitor).
    pub pixel_id: &'a [u8],
}

impl Events<'_> {
    /// Pulses in the message.
    pub fn pulses(&self) -> usize {
        self.reference_time.len() / 8
    }

    /// Events in the message.
    pub fn events(&self) -> usize {
        self.time_of_flight.len() / 4
    }

    /// Pulse `k`'s time and its events' byte range in `time_of_flight` (and `pixel_id`).
    pub fn pulse(&self, k: usize) -> (i64, std::ops::Range<usize>) {
        let time = read_i64(self.reference_time, k);
        let start = read_i32(self.reference_time_index, k) as usize * 4;
        let end = if k + 1 < self.pulses() {
            read_i32(self.reference_time_index, k + 1) as usize * 4
        } else {
            self.time_of_flight.len()
        };
        (time, start..end)
    }
}

/// A `pu00` message.
#[derive(Debug, Clone, PartialEq)]
pub struct Pulse<'a> {
    /// Who sent it.
    pub source_name: &'a str,
    /// Consecutive per source.
    pub message_id: i64,
    /// The pulse's time, ns since the epoch.
    pub reference_time: i64,
    /// Veto flags.
    pub vetos: u32,
    /// The period it belongs to.
    pub period_number: u32,
    /// Protons on target (ISIS: uAh).
    pub proton_charge: f32,
}

/// An `f144` or `f142` value.
#[derive(Debug, Clone, PartialEq)]
pub struct LogValue<'a> {
    /// The logged quantity.
    pub source_name: &'a str,
    /// ns since the epoch.
    pub timestamp: i64,
    /// The value as f64, or `None` for a type we do not log (arrays, strings).
    pub value: Option<f64>,
    /// An f142's EPICS alarm `(status, severity)`, when it says one (not "no change").
    pub alarm: Option<(u16, u16)>,
}

/// f142's "no change" alarm status and severity (its schema's defaults).
const NO_CHANGE: (u16, u16) = (22, 4);

/// Decodes `buf`, refusing anything malformed or of another schema.
pub fn decode(buf: &[u8]) -> Result<EventMessage<'_>, DecodeError> {
    match schema_id(buf)? {
        b"ev44" => decode_ev44(buf).map(EventMessage::Events),
        b"pu00" => decode_pu00(buf).map(EventMessage::Pulse),
        b"f144" => {
            decode_log(buf, "f144", slot(0), slot(1), slot(2), slot(3)).map(EventMessage::Log)
        }
        b"f142" => {
            decode_log(buf, "f142", slot(0), slot(3), slot(1), slot(2)).map(EventMessage::Log)
        }
        other => Err(DecodeError::UnknownSchema(
            String::from_utf8_lossy(other).into_owned(),
        )),
    }
}

fn malformed(schema: &'static str, reason: impl Into<String>) -> DecodeError {
    DecodeError::Malformed {
        schema,
        reason: reason.into(),
    }
}

fn decode_ev44(buf: &[u8]) -> Result<Events<'_>, DecodeError> {
    let t = verified_root(
        buf,
        "ev44",
        &[
            ("source_name", slot(0), Kind::Str),
            ("message_id", slot(1), Kind::I64),
            ("reference_time", slot(2), Kind::VecI64),
            ("reference_time_index", slot(3), Kind::VecI32),
            ("time_of_flight", slot(4), Kind::VecI32),
            ("pixel_id", slot(5), Kind::VecI32),
        ],
    )?;
    let e = Events {
        source_name: t.string(slot(0)),
        message_id: t.i64(slot(1), 0),
        reference_time: t.i64_bytes(slot(2)),
        reference_time_index: t.i32_bytes(slot(3)),
        time_of_flight: t.i32_bytes(slot(4)),
        pixel_id: t.i32_bytes(slot(5)),
    };
    if e.source_name.is_empty() {
        return Err(malformed("ev44", "no source_name"));
    }
    if e.reference_time.len() / 8 != e.reference_time_index.len() / 4 {
        return Err(malformed(
            "ev44",
            "reference_time and reference_time_index differ in length",
        ));
    }
    if !e.pixel_id.is_empty() && e.pixel_id.len() != e.time_of_flight.len() {
        return Err(malformed(
            "ev44",
            "pixel_id and time_of_flight differ in length",
        ));
    }
    if e.pulses() == 0 && e.events() > 0 {
        return Err(malformed("ev44", "events without a reference_time"));
    }
    let mut last = 0;
    for k in 0..e.pulses() {
        let i = read_i32(e.reference_time_index, k);
        let first_ok = k > 0 || i == 0;
        if !first_ok || i < last || i as usize > e.events() {
            return Err(malformed(
                "ev44",
                format!("reference_time_index[{k}] = {i} is out of order or range"),
            ));
        }
        last = i;
    }
    Ok(e)
}

fn decode_pu00(buf: &[u8]) -> Result<Pulse<'_>, DecodeError> {
    let t = verified_root(
        buf,
        "pu00",
        &[
            ("source_name", slot(0), Kind::Str),
            ("message_id", slot(1), Kind::I64),
            ("reference_time", slot(2), Kind::I64),
            ("vetos", slot(3), Kind::U32),
            ("period_number", slot(4), Kind::U32),
            ("proton_charge", slot(5), Kind::F32),
        ],
    )?;
    Ok(Pulse {
        source_name: t.string(slot(0)),
        message_id: t.i64(slot(1), 0),
        reference_time: t.i64(slot(2), 0),
        vetos: t.u32(slot(3), 0),
        period_number: t.u32(slot(4), 0),
        proton_charge: t.f32(slot(5), 0.0),
    })
}

/// f144 and f142 differ only in their slots: `(source_name, timestamp, value_type, value)`.
fn decode_log<'a>(
    buf: &'a [u8],
    schema: &'static str,
    name_at: flatbuffers::VOffsetT,
    time_at: flatbuffers::VOffsetT,
    type_at: flatbuffers::VOffsetT,
    value_at: flatbuffers::VOffsetT,
) -> Result<LogValue<'a>, DecodeError> {
    let f142 = schema == "f142";
    let alarm_fields: &[(&'static str, flatbuffers::VOffsetT, Kind)] = if f142 {
        &[
            ("status", slot(4), Kind::U16),
            ("severity", slot(5), Kind::U16),
        ]
    } else {
        &[]
    };
    let fields = [
        ("source_name", name_at, Kind::Str),
        ("timestamp", time_at, Kind::I64),
        ("value_type", type_at, Kind::U8),
        ("value", value_at, Kind::Table),
    ];
    let mut all = [("", 0, Kind::Str); 6];
    for (a, f) in all.iter_mut().zip(fields.iter().chain(alarm_fields)) {
        *a = *f;
    }
    let t = verified_root(buf, schema, &all[..fields.len() + alarm_fields.len()])?;
    let source_name = t.string(name_at);
    if source_name.is_empty() {
        return Err(malformed(schema, "no source_name"));
    }
    let value = match (t.u8(type_at, 0), t.table_at(value_at)) {
        (tag @ 1..=10, Some(pos)) => Some(scalar_value(buf, schema, tag, pos)?),
        _ => None,
    };
    let alarm = (t.u16(slot(4), NO_CHANGE.0), t.u16(slot(5), NO_CHANGE.1));
    Ok(LogValue {
        source_name,
        timestamp: t.i64(time_at, 0),
        value,
        alarm: (f142 && alarm != NO_CHANGE).then_some(alarm),
    })
}

/// The value of a scalar union member `tag` (Byte = 1 ... Double = 10, both schemas) at
/// `pos`: its one field, slot 0, checked as the tag's type before it is read.
fn scalar_value(buf: &[u8], schema: &'static str, tag: u8, pos: usize) -> Result<f64, DecodeError> {
    let kind = [
        Kind::I8,
        Kind::U8,
        Kind::I16,
        Kind::U16,
        Kind::I32,
        Kind::U32,
        Kind::I64,
        Kind::U64,
        Kind::F32,
        Kind::F64,
    ][usize::from(tag.clamp(1, 10)) - 1];
    let v = verified_table(buf, pos, schema, &[("value", slot(0), kind)])?;
    let at = slot(0);
    Ok(match kind {
        Kind::I8 => f64::from(v.i8(at, 0)),
        Kind::U8 => f64::from(v.u8(at, 0)),
        Kind::I16 => f64::from(v.i16(at, 0)),
        Kind::U16 => f64::from(v.u16(at, 0)),
        Kind::I32 => f64::from(v.i32(at, 0)),
        Kind::U32 => f64::from(v.u32(at, 0)),
        Kind::I64 => v.i64(at, 0) as f64,
        Kind::U64 => v.u64(at, 0) as f64,
        Kind::F32 => f64::from(v.f32(at, 0.0)),
        _ => v.f64(at, 0.0),
    })
}

/// The events of one ev44 message.
#[derive(Debug, Clone, Copy)]
pub struct Ev44<'e> {
    /// The bank or monitor.
    pub source_name: &'e str,
    /// Its message id.
    pub message_id: i64,
    /// Each pulse's time (ns since the epoch).
    pub reference_time: &'e [i64],
    /// Each pulse's first event.
    pub reference_time_index: &'e [i32],
    /// ns after the pulse.
    pub time_of_flight: &'e [i32],
    /// Pixel ids (empty: implicit).
    pub pixel_id: &'e [i32],
}

/// Encodes `e` as an ev44 message into `b` (reset first): what a detector sends, for tests
/// and the benchmark.
pub fn encode_ev44<'b>(
    b: &'b mut flatbuffers::FlatBufferBuilder<'static>,
    e: &Ev44<'_>,
) -> &'b [u8] {
    b.reset();
    let name = b.create_string(e.source_name);
    let (t, i) = (
        b.create_vector(e.reference_time),
        b.create_vector(e.reference_time_index),
    );
    let (o, p) = (
        b.create_vector(e.time_of_flight),
        b.create_vector(e.pixel_id),
    );
    let start = b.start_table();
    b.push_slot_always(slot(0), name);
    b.push_slot(slot(1), e.message_id, 0);
    b.push_slot_always(slot(2), t);
    b.push_slot_always(slot(3), i);
    b.push_slot_always(slot(4), o);
    b.push_slot_always(slot(5), p);
    let root = b.end_table(start);
    b.finish(root, Some("ev44"));
    b.finished_data()
}

fn read_i64(bytes: &[u8], k: usize) -> i64 {
    let mut b = [0; 8];
    b.copy_from_slice(&bytes[k * 8..k * 8 + 8]);
    i64::from_le_bytes(b)
}

fn read_i32(bytes: &[u8], k: usize) -> i32 {
    let mut b = [0; 4];
    b.copy_from_slice(&bytes[k * 4..k * 4 + 4]);
    i32::from_le_bytes(b)
}

#[cfg(test)]
#[path = "messages_tests.rs"]
mod tests;
