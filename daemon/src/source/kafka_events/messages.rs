//! The messages an event run reads, decoded after the flatbuffers verifier checked every field
//! read: `ev44` events (ess-dmsc `ev44_events.fbs`), `pu00` pulse metadata (ISIS), `f144` and
//! the older `f142` logged values. The event arrays stay the message's own bytes (little-endian
//! i32, copied once into the file's columns). Anything malformed is refused with a reason,
//! never read out of bounds.

use crate::sink::kafka::schema::{
    f32_field, i32_vector_bytes, i64_field, i64_vector_bytes, schema_id, slot, string, u16_field,
    u64_field, u8_field, verified_root, DecodeError, Kind,
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
}

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
        source_name: string(&t, slot(0)),
        message_id: i64_field(&t, slot(1), 0),
        reference_time: i64_vector_bytes(&t, slot(2)),
        reference_time_index: i32_vector_bytes(&t, slot(3)),
        time_of_flight: i32_vector_bytes(&t, slot(4)),
        pixel_id: i32_vector_bytes(&t, slot(5)),
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
        source_name: string(&t, slot(0)),
        message_id: i64_field(&t, slot(1), 0),
        reference_time: i64_field(&t, slot(2), 0),
        vetos: u64_field_u32(&t, slot(3)),
        period_number: u64_field_u32(&t, slot(4)),
        proton_charge: f32_field(&t, slot(5), 0.0),
    })
}

fn u64_field_u32(t: &flatbuffers::Table<'_>, at: flatbuffers::VOffsetT) -> u32 {
    // SAFETY: `t` came from `verified_root`, which checked this slot holds a u32.
    unsafe { t.get::<u32>(at, Some(0)) }.unwrap_or(0)
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
    let t = verified_root(
        buf,
        schema,
        &[
            ("source_name", name_at, Kind::Str),
            ("timestamp", time_at, Kind::I64),
            ("value_type", type_at, Kind::U8),
            ("value", value_at, Kind::Table),
        ],
    )?;
    let source_name = string(&t, name_at);
    if source_name.is_empty() {
        return Err(malformed(schema, "no source_name"));
    }
    let timestamp = i64_field(&t, time_at, 0);
    // SAFETY: `verified_root` checked that `value_at` holds a table (its vtable and bounds).
    let value =
        unsafe { t.get::<flatbuffers::ForwardsUOffset<flatbuffers::Table<'a>>>(value_at, None) };
    let value = match (u8_field(&t, type_at, 0), value) {
        (tag @ 1..=10, Some(v)) => Some(scalar_value(buf, schema, tag, &v)?),
        _ => None,
    };
    Ok(LogValue {
        source_name,
        timestamp,
        value,
    })
}

/// The value of a scalar union member `tag` (Byte = 1 ... Double = 10, both schemas): its
/// one field, slot 0, checked by the verifier as its own type before it is read.
fn scalar_value(
    buf: &[u8],
    schema: &'static str,
    tag: u8,
    v: &flatbuffers::Table<'_>,
) -> Result<f64, DecodeError> {
    use flatbuffers::{Verifier, VerifierOptions};
    let opts = VerifierOptions::default();
    let mut ver = Verifier::new(&opts, buf);
    let pos = v.loc();
    let bad = |e: flatbuffers::InvalidFlatbuffer| malformed(schema, e.to_string());
    let t = ver.visit_table(pos).map_err(bad)?;
    let at = slot(0);
    let checked = match tag {
        1 => t.visit_field::<i8>("value", at, false),
        2 => t.visit_field::<u8>("value", at, false),
        3 => t.visit_field::<i16>("value", at, false),
        4 => t.visit_field::<u16>("value", at, false),
        5 => t.visit_field::<i32>("value", at, false),
        6 => t.visit_field::<u32>("value", at, false),
        7 => t.visit_field::<i64>("value", at, false),
        8 => t.visit_field::<u64>("value", at, false),
        9 => t.visit_field::<f32>("value", at, false),
        _ => t.visit_field::<f64>("value", at, false),
    };
    checked.map_err(bad)?.finish();
    // SAFETY: the verifier just checked slot 0 of this table as the tag's type.
    let value = unsafe {
        match tag {
            1 => v.get::<i8>(at, Some(0)).map(f64::from),
            2 => v.get::<u8>(at, Some(0)).map(f64::from),
            3 => v.get::<i16>(at, Some(0)).map(f64::from),
            4 => Some(f64::from(u16_field(v, at, 0))),
            5 => v.get::<i32>(at, Some(0)).map(f64::from),
            6 => v.get::<u32>(at, Some(0)).map(f64::from),
            7 => Some(i64_field(v, at, 0) as f64),
            8 => Some(u64_field(v, at, 0) as f64),
            9 => Some(f64::from(f32_field(v, at, 0.0))),
            _ => v.get::<f64>(at, Some(0.0)),
        }
    };
    Ok(value.unwrap_or(0.0))
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
