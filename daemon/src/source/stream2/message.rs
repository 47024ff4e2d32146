//! DECTRIS SIMPLON Stream V2 messages (docs: FORMATS.md section 10), decoded in place from a
//! ZeroMQ message's bytes with `minicbor`: an image's pixels are borrowed from the message,
//! never copied, and decoding an image allocates nothing.
//!
//! Every message is one CBOR map (optionally under the self-describe tag 55799) with a
//! `type` of `start`, `image` or `end`. Arrays are tag 40 `[dims, typed array]` (1040:
//! column-major) over an RFC 8746 typed array (64 u8, 69 u16 LE, 70 u32 LE, 78 i32 LE,
//! 85 f32 LE) whose content is the bytes or a DECTRIS compressed byte string, tag 56500
//! `[algorithm, modifier, bytes]` (`69(56500(["bslz4", 2, bytes]))`, as an EIGER2 sends it):
//! `"bslz4"` (modifier: element size; the bytes an HDF5 filter 32008 chunk, checked here so
//! it can go to `H5Dwrite_chunk` unchanged) or `"lz4"`. Anything else is a [`DecodeError`]
//! whose [`kind`](DecodeError::kind) a source counts; decoding never panics (fuzzed:
//! `daemon/fuzz/fuzz_targets/stream2_message.rs`).

use detingest_shm::PixelType;
use detingest_writer::{Codec, CodecError};

use crate::dectris::{
    pixel_of_typed_array, DECTRIS_COMPRESSION, MULTI_DIM, MULTI_DIM_COLUMN_MAJOR, SELF_DESCRIBE,
};
use minicbor::data::Type;
use minicbor::Decoder;
use serde_json::{Map, Value};

use super::metadata::{channel_arrays, json, typed_u32s};

/// Channels an image may carry (EIGER2 has two thresholds; PILATUS4 up to four).
pub const MAX_CHANNELS: usize = 4;
/// The bitshuffle chunk header: u64 BE uncompressed bytes, u32 BE block bytes.
const BSLZ4_HEADER: usize = 12;

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// Not CBOR, or CBOR cut short.
    #[error("malformed CBOR: {0}")]
    Cbor(String),
    /// A CBOR value that is not a map.
    #[error("the message is not a CBOR map")]
    NotAMap,
    /// A `type` other than start, image or end.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// A required field is absent.
    #[error("field {0} missing")]
    Missing(&'static str),
    /// A field has the wrong type or an impossible value.
    #[error("field {field}: {why}")]
    Bad {
        /// The field.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
}

impl DecodeError {
    /// A short name for counting refusals by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Cbor(_) | Self::NotAMap => "malformed",
            Self::UnknownType(_) => "unknown_type",
            Self::Missing(_) => "missing_field",
            Self::Bad { .. } => "bad_field",
        }
    }
}

impl From<minicbor::decode::Error> for DecodeError {
    fn from(e: minicbor::decode::Error) -> Self {
        Self::Cbor(e.to_string())
    }
}

pub(super) fn bad(field: &'static str, why: impl ToString) -> DecodeError {
    DecodeError::Bad {
        field,
        why: why.to_string(),
    }
}

/// How an array's bytes are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload<'a> {
    /// Little-endian pixels.
    Raw(&'a [u8]),
    /// An HDF5 filter 32008 chunk (bitshuffle + LZ4), header checked against the shape.
    Bslz4(&'a [u8]),
    /// LZ4 as DECTRIS frames it.
    Lz4(&'a [u8]),
}

/// An image (or a mask): `[ny, nx]` pixels of one type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Array<'a> {
    /// `[ny, nx]` (rows, columns).
    pub shape: [u32; 2],
    /// The pixel type.
    pub pixel: PixelType,
    /// The bytes, encoded.
    pub payload: Payload<'a>,
}

impl Array<'_> {
    /// Bytes of the decoded pixels.
    pub fn raw_len(&self) -> usize {
        self.pixel.frame_bytes(self.shape)
    }

    /// The payload's codec, if it is one of ours (raw pixels: `None`).
    pub fn codec(&self) -> Option<Codec> {
        match self.payload {
            Payload::Raw(_) => None,
            Payload::Bslz4(_) => Some(Codec::BitshuffleLz4),
            Payload::Lz4(_) => Some(Codec::Lz4),
        }
    }

    /// The payload's bytes as they arrived.
    pub fn bytes(&self) -> &[u8] {
        match self.payload {
            Payload::Raw(b) | Payload::Bslz4(b) | Payload::Lz4(b) => b,
        }
    }

    /// Decodes the pixels into `out` (at least [`Array::raw_len`] bytes); `"lz4"` is LZ4 in
    /// the framing of HDF5 filter 32004, as DECTRIS's compression library has it.
    pub fn decode_into(&self, out: &mut [u8]) -> Result<usize, CodecError> {
        let (n, have) = (self.raw_len(), out.len());
        let out = out
            .get_mut(..n)
            .ok_or(CodecError::OutputTooSmall { have, need: n })?;
        let got = match self.codec() {
            None => {
                out.copy_from_slice(self.bytes());
                n
            }
            Some(codec) => codec.decompress_into(self.bytes(), self.pixel.size(), out)?,
        };
        if got != n {
            return Err(CodecError::Corrupt("decoded size differs from the shape"));
        }
        Ok(n)
    }
}

/// `start`: a series begins.
#[derive(Debug, Clone, PartialEq)]
pub struct Start<'a> {
    /// The series' number (restarts with the detector).
    pub series_id: u64,
    /// Its unique id.
    pub series_unique_id: String,
    /// Images announced (`number_of_images`, times triggers where given).
    pub number_of_images: u64,
    /// `[image_size_y, image_size_x]`.
    pub image_size: [u32; 2],
    /// `image_dtype`, if given (DECTRIS's own recordings may omit it: the images' typed
    /// arrays say it too).
    pub pixel: Option<PixelType>,
    /// The channels images will carry (`channels`), in order.
    pub channels: Vec<String>,
    /// `pixel_mask` per channel.
    pub pixel_masks: Vec<(String, Array<'a>)>,
    /// `flatfield` per channel.
    pub flatfields: Vec<(String, Array<'a>)>,
    /// `countrate_correction_lookup_table` (a typed array of unsigned integers).
    pub countrate_table: Vec<u32>,
    /// Every other field, as JSON (arrays by shape and type only: `flatfield` and the like).
    pub fields: Map<String, Value>,
}

/// `image`: one image of the series, one array per channel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Image<'a> {
    /// The series.
    pub series_id: u64,
    /// The image's number in the series, from 0.
    pub image_id: u64,
    /// `start_time`, `stop_time`, `real_time` as (numerator, denominator) s, if given.
    pub times: [Option<(u64, u64)>; 3],
    /// `(channel, array)`, the first `channel_count` in use.
    pub channels: [Option<(&'a str, Array<'a>)>; MAX_CHANNELS],
}

impl<'a> Image<'a> {
    /// The channels present.
    pub fn arrays(&self) -> impl Iterator<Item = (&'a str, Array<'a>)> + '_ {
        self.channels.iter().flatten().copied()
    }
}

/// One decoded message.
// An image is decoded for every frame: boxing it (as the lint asks) would allocate each time.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Message<'a> {
    /// A series begins.
    Start(Box<Start<'a>>),
    /// An image.
    Image(Image<'a>),
    /// The series ended.
    End {
        /// The series.
        series_id: u64,
    },
}

/// Decodes one message.
pub fn decode(bytes: &[u8]) -> Result<Message<'_>, DecodeError> {
    let mut d = Decoder::new(bytes);
    if d.datatype()? == Type::Tag {
        let t = d.tag()?.as_u64();
        if t != SELF_DESCRIBE {
            return Err(DecodeError::NotAMap);
        }
    }
    if !matches!(d.datatype()?, Type::Map | Type::MapIndef) {
        return Err(DecodeError::NotAMap);
    }
    let start = d.position();
    let kind = message_type(&mut d)?;
    d.set_position(start);
    match kind {
        "start" => start_message(&mut d).map(|s| Message::Start(Box::new(s))),
        "image" => image_message(&mut d).map(Message::Image),
        "end" => end_message(&mut d),
        other => Err(DecodeError::UnknownType(other.chars().take(64).collect())),
    }
}

/// Calls `field` for every key of the map at `d` (definite or indefinite).
pub(super) fn for_each_field<'b>(
    d: &mut Decoder<'b>,
    mut field: impl FnMut(&'b str, &mut Decoder<'b>) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let len = d.map()?;
    let mut seen = 0u64;
    loop {
        match len {
            Some(n) if seen == n => return Ok(()),
            None if d.datatype()? == Type::Break => {
                d.skip()?;
                return Ok(());
            }
            _ => {}
        }
        let key = d.str()?;
        field(key, d)?;
        seen += 1;
    }
}

fn message_type<'b>(d: &mut Decoder<'b>) -> Result<&'b str, DecodeError> {
    let mut kind = None;
    for_each_field(d, |key, d| {
        if key == "type" {
            kind = Some(d.str()?);
        } else {
            d.skip()?;
        }
        Ok(())
    })?;
    kind.ok_or(DecodeError::Missing("type"))
}

fn end_message<'b>(d: &mut Decoder<'b>) -> Result<Message<'b>, DecodeError> {
    let mut series_id = None;
    for_each_field(d, |key, d| {
        match key {
            "series_id" => series_id = Some(d.u64()?),
            _ => d.skip()?,
        }
        Ok(())
    })?;
    Ok(Message::End {
        series_id: series_id.ok_or(DecodeError::Missing("series_id"))?,
    })
}

fn image_message<'b>(d: &mut Decoder<'b>) -> Result<Image<'b>, DecodeError> {
    let mut image = Image {
        series_id: u64::MAX,
        image_id: u64::MAX,
        times: [None; 3],
        channels: [None; MAX_CHANNELS],
    };
    let mut has_data = false;
    for_each_field(d, |key, d| {
        match key {
            "series_id" => image.series_id = d.u64()?,
            "image_id" => image.image_id = d.u64()?,
            "start_time" => image.times[0] = Some(ratio(d, "start_time")?),
            "stop_time" => image.times[1] = Some(ratio(d, "stop_time")?),
            "real_time" => image.times[2] = Some(ratio(d, "real_time")?),
            "data" => {
                has_data = true;
                let mut n = 0;
                for_each_field(d, |channel, d| {
                    let slot = image
                        .channels
                        .get_mut(n)
                        .ok_or_else(|| bad("data", format!("more than {MAX_CHANNELS} channels")))?;
                    *slot = Some((channel, array(d, "data")?));
                    n += 1;
                    Ok(())
                })?;
            }
            _ => d.skip()?,
        }
        Ok(())
    })?;
    if image.series_id == u64::MAX {
        return Err(DecodeError::Missing("series_id"));
    }
    if image.image_id == u64::MAX {
        return Err(DecodeError::Missing("image_id"));
    }
    if !has_data || image.channels[0].is_none() {
        return Err(DecodeError::Missing("data"));
    }
    Ok(image)
}

fn start_message<'b>(d: &mut Decoder<'b>) -> Result<Start<'b>, DecodeError> {
    let mut s = Start {
        series_id: u64::MAX,
        series_unique_id: String::new(),
        number_of_images: 0,
        image_size: [0, 0],
        pixel: None,
        channels: Vec::new(),
        pixel_masks: Vec::new(),
        flatfields: Vec::new(),
        countrate_table: Vec::new(),
        fields: Map::new(),
    };
    let mut triggers = 1;
    for_each_field(d, |key, d| {
        match key {
            "type" => d.skip()?,
            "series_id" => s.series_id = d.u64()?,
            "series_unique_id" => s.series_unique_id = d.str()?.to_owned(),
            "number_of_images" => s.number_of_images = d.u64()?,
            "number_of_triggers" => triggers = d.u64()?.max(1),
            "image_size_x" => s.image_size[1] = d.u32()?,
            "image_size_y" => s.image_size[0] = d.u32()?,
            "image_dtype" => s.pixel = Some(pixel_type(d.str()?, "image_dtype")?),
            "channels" => {
                let n = d.array()?.ok_or_else(|| bad("channels", "indefinite"))?;
                for _ in 0..n.min(MAX_CHANNELS as u64 + 1) {
                    s.channels.push(d.str()?.to_owned());
                }
                if s.channels.len() > MAX_CHANNELS {
                    return Err(bad("channels", format!("more than {MAX_CHANNELS}")));
                }
            }
            "pixel_mask" => s.pixel_masks = channel_arrays(d, "pixel_mask", &mut s.fields)?,
            "flatfield" => s.flatfields = channel_arrays(d, "flatfield", &mut s.fields)?,
            "countrate_correction_lookup_table" if d.datatype()? == Type::Tag => {
                s.countrate_table = typed_u32s(d)?;
            }
            _ => {
                let v = json(d, 0)?;
                s.fields.insert(key.to_owned(), v);
            }
        }
        Ok(())
    })?;
    if s.series_id == u64::MAX {
        return Err(DecodeError::Missing("series_id"));
    }
    if s.image_size[0] == 0 || s.image_size[1] == 0 {
        return Err(DecodeError::Missing("image_size_x/image_size_y"));
    }
    s.number_of_images = s.number_of_images.saturating_mul(triggers);
    Ok(s)
}

/// A pixel type by its NumPy name (`image_dtype`: `"uint16"`, ...).
fn pixel_type(name: &str, field: &'static str) -> Result<PixelType, DecodeError> {
    PixelType::ALL
        .into_iter()
        .find(|p| p.numpy_name() == name)
        .ok_or_else(|| bad(field, format!("unsupported type {name:?}")))
}

/// `[numerator, denominator]`.
fn ratio(d: &mut Decoder<'_>, field: &'static str) -> Result<(u64, u64), DecodeError> {
    if d.array()? != Some(2) {
        return Err(bad(field, "not [numerator, denominator]"));
    }
    let (n, q) = (d.u64()?, d.u64()?);
    if q == 0 {
        return Err(bad(field, "zero denominator"));
    }
    Ok((n, q))
}

/// A tag 40 / 1040 array of two dimensions over a typed array or a compressed byte string.
pub(super) fn array<'b>(
    d: &mut Decoder<'b>,
    field: &'static str,
) -> Result<Array<'b>, DecodeError> {
    let tag = d.tag()?.as_u64();
    if tag == MULTI_DIM_COLUMN_MAJOR {
        return Err(bad(
            field,
            "column-major arrays (tag 1040) are not supported",
        ));
    }
    if tag != MULTI_DIM {
        return Err(bad(
            field,
            format!("tag {tag}, not a multi-dimensional array (40)"),
        ));
    }
    if d.array()? != Some(2) {
        return Err(bad(field, "tag 40 must hold [dimensions, data]"));
    }
    if d.array()? != Some(2) {
        return Err(bad(field, "only two-dimensional images"));
    }
    let shape = [d.u32()?, d.u32()?];
    let elements = u64::from(shape[0]) * u64::from(shape[1]);
    // The typed array's tag names the pixel type; its content is the bytes, or the bytes
    // compressed under tag 56500: `69(56500(["bslz4", 2, bytes]))`, as EIGER2s send it.
    let tag = d.tag()?.as_u64();
    let Some(pixel) = pixel_of_typed_array(tag) else {
        return Err(bad(field, format!("typed array tag {tag} not supported")));
    };

    if d.datatype()? == Type::Tag {
        let tag = d.tag()?.as_u64();
        if tag != DECTRIS_COMPRESSION {
            return Err(bad(field, format!("tag {tag} inside a typed array")));
        }
        let payload = compressed(d, field, pixel, shape, elements)?;
        return Ok(Array {
            shape,
            pixel,
            payload,
        });
    }
    let bytes = d.bytes()?;
    if bytes.len() as u64 != elements * pixel.size() as u64 {
        return Err(bad(
            field,
            format!("{} bytes for {shape:?} {pixel:?}", bytes.len()),
        ));
    }
    Ok(Array {
        shape,
        pixel,
        payload: Payload::Raw(bytes),
    })
}

/// The content of tag 56500: `[algorithm, modifier, bytes]`.
fn compressed<'b>(
    d: &mut Decoder<'b>,
    field: &'static str,
    pixel: PixelType,
    shape: [u32; 2],
    elements: u64,
) -> Result<Payload<'b>, DecodeError> {
    if d.array()? != Some(3) {
        return Err(bad(
            field,
            "tag 56500 must hold [algorithm, modifier, data]",
        ));
    }
    let algorithm = d.str()?;
    let modifier = d.u64()?;
    let bytes = d.bytes()?;
    match algorithm {
        "bslz4" => {
            if modifier != pixel.size() as u64 {
                return Err(bad(
                    field,
                    format!("bslz4 element size {modifier}, pixels {pixel:?}"),
                ));
            }
            let (total, block) = bslz4_header(bytes)
                .ok_or_else(|| bad(field, "bslz4 chunk shorter than its header"))?;
            let expected = elements * pixel.size() as u64;
            if total != expected {
                return Err(bad(
                    field,
                    format!("bslz4 header says {total} bytes, {shape:?} {pixel:?} has {expected}"),
                ));
            }
            if block == 0 || block % 8 != 0 {
                return Err(bad(field, format!("bslz4 block size {block}")));
            }
            Ok(Payload::Bslz4(bytes))
        }
        "lz4" => Ok(Payload::Lz4(bytes)),
        other => Err(bad(field, format!("compression {other:?} not supported"))),
    }
}

/// The uncompressed size and block size of an HDF5 32008 chunk.
fn bslz4_header(bytes: &[u8]) -> Option<(u64, u32)> {
    let header = bytes.get(..BSLZ4_HEADER)?;
    let total = u64::from_be_bytes(header[..8].try_into().ok()?);
    let block = u32::from_be_bytes(header[8..].try_into().ok()?);
    Some((total, block))
}

#[cfg(test)]
#[path = "message_tests.rs"]
mod tests;
