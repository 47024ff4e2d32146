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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// A signed byte.
    I8,
    /// A signed 16-bit integer.
    I16,
    /// A signed 32-bit integer.
    I32,
    /// A 64-bit float.
    F64,
}

/// Most fields one table may list for the verifier.
const MAX_FIELDS: usize = 16;

/// A table the flatbuffers verifier checked, with the type it checked each listed slot as.
/// Its accessors read a slot only as that type: a slot not listed, or listed as another type,
/// reads as absent (the default). So no safe code can read a field as the wrong type.
#[derive(Clone, Copy)]
pub struct Verified<'a> {
    table: Table<'a>,
    checked: [(VOffsetT, Option<Kind>); MAX_FIELDS],
}

/// What the verifier refused in a message of `schema`, as a [`DecodeError`].
fn malformed_in(schema: &'static str) -> impl Fn(InvalidFlatbuffer) -> DecodeError + Copy {
    move |e| DecodeError::Malformed {
        schema,
        reason: e.to_string(),
    }
}

/// The root table of `buf`, after the verifier checked every field `fields` lists
/// (`(name, slot, kind)`, at most 16). Fields not listed are never read.
pub fn verified_root<'a>(
    buf: &'a [u8],
    schema: &'static str,
    fields: &[(&'static str, VOffsetT, Kind)],
) -> Result<Verified<'a>, DecodeError> {
    let malformed = malformed_in(schema);
    let opts = VerifierOptions::default();
    let mut v = Verifier::new(&opts, buf);
    let pos = v.get_uoffset(0).map_err(malformed)? as usize;
    verified_table(buf, pos, schema, fields)
}

/// The table at `pos` of `buf` (a union member another table points at), checked as
/// [`verified_root`] checks the root.
pub fn verified_table<'a>(
    buf: &'a [u8],
    pos: usize,
    schema: &'static str,
    fields: &[(&'static str, VOffsetT, Kind)],
) -> Result<Verified<'a>, DecodeError> {
    let malformed = malformed_in(schema);
    if fields.len() > MAX_FIELDS {
        return Err(DecodeError::Malformed {
            schema,
            reason: format!("{} fields listed; at most {MAX_FIELDS}", fields.len()),
        });
    }
    let opts = VerifierOptions::default();
    let mut v = Verifier::new(&opts, buf);
    let mut t = v.visit_table(pos).map_err(malformed)?;
    let mut checked = [(0, None); MAX_FIELDS];
    for (c, &(name, slot, kind)) in checked.iter_mut().zip(fields) {
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
            Kind::I8 => t.visit_field::<i8>(name, slot, false),
            Kind::I16 => t.visit_field::<i16>(name, slot, false),
            Kind::I32 => t.visit_field::<i32>(name, slot, false),
            Kind::F64 => t.visit_field::<f64>(name, slot, false),
        }
        .map_err(malformed)?;
        *c = (slot, Some(kind));
    }
    t.finish();
    // SAFETY: the verifier found a table at `pos` whose vtable lies inside `buf`.
    let table = unsafe { Table::new(buf, pos) };
    Ok(Verified { table, checked })
}

/// A table whose fields are not read: checked for its vtable and bounds only.
struct AnyTable;

impl flatbuffers::Verifiable for AnyTable {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?.finish();
        Ok(())
    }
}

impl<'a> Verified<'a> {
    /// True when `slot` was checked as `kind`.
    fn is(&self, slot: VOffsetT, kind: Kind) -> bool {
        self.checked
            .iter()
            .any(|&(s, k)| s == slot && k == Some(kind))
    }

    /// The string at `slot` (`""` when absent or not checked as a string).
    pub fn string(&self, slot: VOffsetT) -> &'a str {
        if !self.is(slot, Kind::Str) {
            return "";
        }
        // SAFETY: the verifier checked that this slot holds a string inside the buffer.
        unsafe { self.table.get::<ForwardsUOffset<&str>>(slot, Some("")) }.unwrap_or("")
    }

    /// The little-endian bytes of the vector of i32 at `slot` (empty when absent or not
    /// checked as one).
    pub fn i32_bytes(&self, slot: VOffsetT) -> &'a [u8] {
        self.vector_bytes::<i32>(slot, Kind::VecI32)
    }

    /// The little-endian bytes of the vector of i64 at `slot` (as [`Self::i32_bytes`]).
    pub fn i64_bytes(&self, slot: VOffsetT) -> &'a [u8] {
        self.vector_bytes::<i64>(slot, Kind::VecI64)
    }

    /// The bytes of the vector of `T` at `slot`, if it was checked as `kind` (a vector of
    /// `T`).
    fn vector_bytes<T: flatbuffers::Follow<'a> + 'a>(
        &self,
        slot: VOffsetT,
        kind: Kind,
    ) -> &'a [u8] {
        if !self.is(slot, kind) {
            return &[];
        }
        // SAFETY: the verifier checked that this slot holds a vector of `T` (`kind`, whose
        // callers pair it with its `T`) inside the buffer.
        unsafe { self.table.get::<ForwardsUOffset<Vector<'a, T>>>(slot, None) }
            .map_or(&[], |v| v.bytes())
    }

    /// Where the table at `slot` starts in the buffer, for [`verified_table`] (`None` when
    /// absent or not checked as a table).
    pub fn table_at(&self, slot: VOffsetT) -> Option<usize> {
        if !self.is(slot, Kind::Table) {
            return None;
        }
        // SAFETY: the verifier checked that this slot holds an offset to a table inside the
        // buffer.
        unsafe { self.table.get::<ForwardsUOffset<Table<'a>>>(slot, None) }.map(|t| t.loc())
    }

    /// The buffer the table is in.
    pub fn buf(&self) -> &'a [u8] {
        self.table.buf()
    }
}

macro_rules! scalar_accessor {
    ($name:ident, $t:ty, $kind:ident) => {
        impl Verified<'_> {
            #[doc = concat!("The ", stringify!($t), " at `slot` (`default` when absent or not checked as one).")]
            pub fn $name(&self, slot: VOffsetT, default: $t) -> $t {
                if !self.is(slot, Kind::$kind) {
                    return default;
                }
                // SAFETY: the verifier checked that this slot holds a value of this type.
                unsafe { self.table.get::<$t>(slot, Some(default)) }.unwrap_or(default)
            }
        }
    };
}
scalar_accessor!(u64, u64, U64);
scalar_accessor!(u32, u32, U32);
scalar_accessor!(i64, i64, I64);
scalar_accessor!(u8, u8, U8);
scalar_accessor!(u16, u16, U16);
scalar_accessor!(f32, f32, F32);
scalar_accessor!(i8, i8, I8);
scalar_accessor!(i16, i16, I16);
scalar_accessor!(i32, i32, I32);
scalar_accessor!(f64, f64, F64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_reads_only_as_the_type_it_was_checked_as() {
        let mut b = FlatBufferBuilder::new();
        let msg = encode_table(&mut b, "test", &[(0, "text")], |b| {
            b.push_slot(slot(1), 7u64, 0)
        });
        let t = verified_root(
            msg,
            "test",
            &[("s", slot(0), Kind::Str), ("n", slot(1), Kind::U64)],
        )
        .unwrap();
        assert_eq!((t.string(slot(0)), t.u64(slot(1), 0)), ("text", 7));
        // The string's slot asked for as a number, the number's as a string or a vector, a
        // slot never listed: absent, not a misread.
        assert_eq!(t.u64(slot(0), 99), 99);
        assert_eq!(t.string(slot(1)), "");
        assert!(t.i32_bytes(slot(1)).is_empty());
        assert_eq!(t.u32(slot(2), 5), 5);
        assert_eq!(t.table_at(slot(0)), None);
    }
}
