//! The metadata of a Stream V2 `start` beside its framing: any CBOR value as JSON (kept as
//! the detector's own), the per-channel arrays (`pixel_mask`, `flatfield`) and the count-rate
//! lookup table, kept with their values.

use detingest_shm::PixelType;
use minicbor::data::Type;
use minicbor::Decoder;
use serde_json::{Map, Value};

use super::message::{array, bad, for_each_field, Array, DecodeError};
use crate::dectris::{pixel_of_typed_array, MULTI_DIM};

/// Deepest nesting of the metadata kept as JSON.
const MAX_DEPTH: usize = 16;

/// A map of channel -> two-dimensional array (`pixel_mask`, `flatfield`); anything else
/// under it (a recording may hold a stub) is kept in `fields` as metadata.
pub(super) fn channel_arrays<'b>(
    d: &mut Decoder<'b>,
    field: &'static str,
    fields: &mut Map<String, Value>,
) -> Result<Vec<(String, Array<'b>)>, DecodeError> {
    let mut arrays = Vec::new();
    let mut other = Map::new();
    for_each_field(d, |channel, d| {
        if d.datatype()? == Type::Tag {
            arrays.push((channel.to_owned(), array(d, field)?));
        } else {
            other.insert(channel.to_owned(), json(d, 1)?);
        }
        Ok(())
    })?;
    if !other.is_empty() {
        fields.insert(field.into(), Value::Object(other));
    }
    Ok(arrays)
}

/// An RFC 8746 typed array of unsigned integers (u8, u16, u32 little-endian) as u32s.
pub(super) fn typed_u32s(d: &mut Decoder<'_>) -> Result<Vec<u32>, DecodeError> {
    let tag = d.tag()?.as_u64();
    let bytes = d.bytes()?;
    match pixel_of_typed_array(tag) {
        Some(p @ (PixelType::U8 | PixelType::U16 | PixelType::U32)) => Ok(widen(bytes, p)),
        _ => Err(bad(
            "countrate_correction_lookup_table",
            format!("typed array tag {tag} not supported"),
        )),
    }
}

/// Little-endian elements of `pixel`'s size as u32, whatever their width (a mask, a table).
pub(super) fn widen(bytes: &[u8], pixel: PixelType) -> Vec<u32> {
    match pixel.size() {
        1 => bytes.iter().map(|&b| u32::from(b)).collect(),
        2 => bytes
            .chunks_exact(2)
            .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        _ => bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    }
}

/// Any CBOR value as JSON, for the metadata kept as the detector's own: byte strings and
/// typed arrays by their length only, tags dropped (a date stays its text), at most
/// [`MAX_DEPTH`] deep.
pub(super) fn json(d: &mut Decoder<'_>, depth: usize) -> Result<Value, DecodeError> {
    if depth > MAX_DEPTH {
        return Err(bad("metadata", "nested too deep"));
    }
    Ok(match d.datatype()? {
        Type::Bool => Value::from(d.bool()?),
        Type::Null | Type::Undefined => {
            d.skip()?;
            Value::Null
        }
        Type::U8 | Type::U16 | Type::U32 | Type::U64 => Value::from(d.u64()?),
        Type::I8 | Type::I16 | Type::I32 | Type::I64 | Type::Int => {
            Value::from(i64::try_from(d.int()?).map_err(|e| bad("metadata", e))?)
        }
        Type::F16 | Type::F32 | Type::F64 => {
            serde_json::Number::from_f64(d.f64()?).map_or(Value::Null, Value::Number)
        }
        Type::String => Value::from(d.str()?),
        Type::Bytes => Value::from(format!("<{} bytes>", d.bytes()?.len())),
        Type::Array => {
            let n = d.array()?.unwrap_or(0);
            let mut out = Vec::new();
            for _ in 0..n {
                out.push(json(d, depth + 1)?);
            }
            Value::Array(out)
        }
        Type::Map | Type::MapIndef => {
            let mut out = Map::new();
            for_each_field(d, |k, d| {
                out.insert(k.to_owned(), json(d, depth + 1)?);
                Ok(())
            })?;
            Value::Object(out)
        }
        Type::Tag => {
            let position = d.position();
            let tag = d.tag()?.as_u64();
            if tag == MULTI_DIM {
                d.set_position(position);
                let a = array(d, "metadata")?;
                serde_json::json!({"shape": a.shape, "dtype": a.pixel.name()})
            } else {
                json(d, depth + 1)?
            }
        }
        other => return Err(bad("metadata", format!("CBOR {other:?} not supported"))),
    })
}
