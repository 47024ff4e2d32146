//! The ESS/ISIS streaming flatbuffers detingest reads and writes (ess-dmsc
//! `streaming-data-types`; field slots as in PyPI `ess-streaming-data-types` 0.27), written
//! against the `flatbuffers` runtime: [`commands`] decodes the run control we obey (`pl72`,
//! `6s4t`), [`reports`] encodes what we say (`answ`, `x5f2`, `wrdn`, `json`), and
//! [`area_detector`] encodes previews (`ad00`).
//!
//! Every incoming buffer is checked by the flatbuffers verifier (offsets, lengths, UTF-8)
//! before a field is read, so garbage is refused with a reason and never read out of bounds.
//! Every outgoing string field is written even when empty: the Python decoders call
//! `.decode()` on them unconditionally.

pub mod area_detector;
pub mod commands;
pub mod reports;

use flatbuffers::{
    FlatBufferBuilder, ForwardsUOffset, InvalidFlatbuffer, Table, VOffsetT, Vector, Verifier,
    VerifierOptions,
};

/// The byte offset of field `n` (0-based) in a table's vtable.
pub const fn slot(n: u16) -> VOffsetT {
    4 + 2 * n
}

/// Most string fields a table built by [`encode_table`] may have.
const MAX_STRINGS: usize = 12;

/// Builds a root table into `b` (reset first, so its buffer is reused): the strings
/// `(field, text)` at their slots, then the scalars `scalars` pushes, finished under the
/// schema id `ident`. Returns the message.
pub fn encode_table<'b>(
    b: &'b mut FlatBufferBuilder<'static>,
    ident: &str,
    strings: &[(u16, &str)],
    scalars: impl FnOnce(&mut FlatBufferBuilder<'static>),
) -> &'b [u8] {
    debug_assert!(strings.len() <= MAX_STRINGS);
    b.reset();
    let mut made = [None; MAX_STRINGS];
    for (m, &(field, text)) in made.iter_mut().zip(strings) {
        *m = Some((slot(field), b.create_string(text)));
    }
    let t = b.start_table();
    for &(at, off) in made.iter().flatten() {
        b.push_slot_always(at, off);
    }
    scalars(b);
    let root = b.end_table(t);
    b.finish(root, Some(ident));
    b.finished_data()
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than a flatbuffer's root offset and identifier.
    #[error("{0} bytes is too short for a flatbuffer")]
    TooShort(usize),
    /// The schema identifier (bytes 4..8) is not one we obey.
    #[error("schema id {0:?} is not a command this daemon obeys (pl72, 6s4t)")]
    UnknownSchema(String),
    /// The verifier refused the buffer.
    #[error("malformed {schema}: {reason}")]
    Malformed {
        /// The schema id it claimed.
        schema: &'static str,
        /// What the verifier found.
        reason: String,
    },
}

/// The 4-byte schema identifier of `buf`, if it is long enough to have one.
pub fn schema_id(buf: &[u8]) -> Result<&[u8], DecodeError> {
    buf.get(4..8).ok_or(DecodeError::TooShort(buf.len()))
}

/// A field type the verifier checks.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// A string.
    Str,
    /// An unsigned 64-bit integer.
    U64,
    /// An unsigned 32-bit integer.
    U32,
    /// A table (checked as a table of unknown fields: its vtable and bounds).
    Table,
    /// A signed 64-bit integer.
    I64,
    /// An unsigned byte (a union's type tag).
    U8,
    /// An unsigned 16-bit integer.
    U16,
    /// A 32-bit float.
    F32,
    /// A vector of signed 32-bit integers.
    VecI32,
    /// A vector of signed 64-bit integers.
    VecI64,
}

/// The root table of `buf`, after the verifier checked every field `fields` lists
/// (`(name, slot, kind)`). Fields not listed are never read.
pub fn verified_root<'a>(
    buf: &'a [u8],
    schema: &'static str,
    fields: &[(&'static str, VOffsetT, Kind)],
) -> Result<Table<'a>, DecodeError> {
    let malformed = |e: InvalidFlatbuffer| DecodeError::Malformed {
        schema,
        reason: e.to_string(),
    };
    let opts = VerifierOptions::default();
    let mut v = Verifier::new(&opts, buf);
    let pos = v.get_uoffset(0).map_err(malformed)? as usize;
    let mut t = v.visit_table(pos).map_err(malformed)?;
    for &(name, slot, kind) in fields {
        t = match kind {
            Kind::Str => t.visit_field::<ForwardsUOffset<&str>>(name, slot, false),
            Kind::U64 => t.visit_field::<u64>(name, slot, false),
            Kind::U32 => t.visit_field::<u32>(name, slot, false),
            Kind::Table => t.visit_field::<ForwardsUOffset<AnyTable>>(name, slot, false),
            Kind::I64 => t.visit_field::<i64>(name, slot, false),
            Kind::U8 => t.visit_field::<u8>(name, slot, false),
            Kind::U16 => t.visit_field::<u16>(name, slot, false),
            Kind::F32 => t.visit_field::<f32>(name, slot, false),
            Kind::VecI32 => t.visit_field::<ForwardsUOffset<Vector<i32>>>(name, slot, false),
            Kind::VecI64 => t.visit_field::<ForwardsUOffset<Vector<i64>>>(name, slot, false),
        }
        .map_err(malformed)?;
    }
    t.finish();
    // SAFETY: the verifier found a table at `pos` whose vtable lies inside `buf`.
    Ok(unsafe { Table::new(buf, pos) })
}

/// A table whose fields are not read: checked for its vtable and bounds only.
struct AnyTable;

impl flatbuffers::Verifiable for AnyTable {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?.finish();
        Ok(())
    }
}

/// Reads the verified string field at `slot` (`""` when absent).
pub fn string<'a>(t: &Table<'a>, slot: VOffsetT) -> &'a str {
    // SAFETY: `t` came from `verified_root`, which checked that this slot holds a string.
    unsafe { t.get::<ForwardsUOffset<&str>>(slot, Some("")) }.unwrap_or("")
}

/// Reads the verified u64 field at `slot` (`default` when absent).
pub fn u64_field(t: &Table<'_>, slot: VOffsetT, default: u64) -> u64 {
    // SAFETY: `t` came from `verified_root`, which checked that this slot holds a u64.
    unsafe { t.get::<u64>(slot, Some(default)) }.unwrap_or(default)
}

/// Reads the verified u32 field at `slot` (`default` when absent).
pub fn u32_field(t: &Table<'_>, slot: VOffsetT, default: u32) -> u32 {
    // SAFETY: `t` came from `verified_root`, which checked that this slot holds a u32.
    unsafe { t.get::<u32>(slot, Some(default)) }.unwrap_or(default)
}

macro_rules! scalar_field {
    ($name:ident, $t:ty) => {
        /// Reads the verified scalar field at `slot` (`default` when absent).
        pub fn $name(t: &Table<'_>, slot: VOffsetT, default: $t) -> $t {
            // SAFETY: `t` came from `verified_root`, which checked this slot's type.
            unsafe { t.get::<$t>(slot, Some(default)) }.unwrap_or(default)
        }
    };
}
scalar_field!(i64_field, i64);
scalar_field!(u8_field, u8);
scalar_field!(u16_field, u16);
scalar_field!(f32_field, f32);

/// The little-endian bytes of the verified vector of i32 at `slot` (empty when absent).
pub fn i32_vector_bytes<'a>(t: &Table<'a>, slot: VOffsetT) -> &'a [u8] {
    // SAFETY: `t` came from `verified_root`, which checked that this slot holds a vector of
    // i32 lying inside the buffer.
    unsafe { t.get::<ForwardsUOffset<Vector<'a, i32>>>(slot, None) }.map_or(&[], |v| v.bytes())
}

/// The little-endian bytes of the verified vector of i64 at `slot` (empty when absent).
pub fn i64_vector_bytes<'a>(t: &Table<'a>, slot: VOffsetT) -> &'a [u8] {
    // SAFETY: as `i32_vector_bytes`, for a vector of i64.
    unsafe { t.get::<ForwardsUOffset<Vector<'a, i64>>>(slot, None) }.map_or(&[], |v| v.bytes())
}
