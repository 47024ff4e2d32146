//! Stream V2 messages encoded from what the daemon wrote (FORMATS.md section 10), with
//! `minicbor` into a reused buffer: `start` from a stream's metadata, `image` around a chunk
//! as the files hold it (the DECTRIS compression tag for bitshuffle-LZ4 and LZ4, the bare
//! typed array for unencoded chunks), `end`. The image's data map is the message's last
//! field, so the chunk is its tail: [`image_head`] writes everything before it.

use std::time::{Duration, UNIX_EPOCH};

use detingest_shm::PixelType;
use detingest_writer::{Codec, DetectorInfo};
use minicbor::data::Tag;
use minicbor::Encoder;
use serde_json::Value;

use crate::dectris::{typed_array_tag, DECTRIS_COMPRESSION, MULTI_DIM, SELF_DESCRIBE};

/// What every message of a series names.
#[derive(Debug, Clone)]
pub struct SeriesIds {
    /// `series_id`: counts the series this output sent, from 1.
    pub id: u64,
    /// `series_unique_id`: the stream and when it started.
    pub unique: String,
}

/// What a series' images are.
#[derive(Debug, Clone, Copy)]
pub struct ImageFormat {
    /// `[ny, nx]`.
    pub shape: [u32; 2],
    /// Pixel type.
    pub pixel: PixelType,
    /// The chunks' codec.
    pub codec: Codec,
}

type Enc<'a> = Encoder<&'a mut Vec<u8>>;
type Res = Result<(), minicbor::encode::Error<std::convert::Infallible>>;

fn begin(
    out: &mut Vec<u8>,
    fields: u64,
) -> Result<Enc<'_>, minicbor::encode::Error<std::convert::Infallible>> {
    out.clear();
    let mut e = Encoder::new(out);
    e.tag(Tag::new(SELF_DESCRIBE))?.map(fields)?;
    Ok(e)
}

/// What a `start` says.
#[derive(Debug, Clone, Copy)]
pub struct StartFields<'a> {
    /// The series.
    pub ids: &'a SeriesIds,
    /// Its images.
    pub format: &'a ImageFormat,
    /// The channel its images carry.
    pub channel: &'a str,
    /// Images announced (0: open-ended).
    pub images: u64,
    /// NXmx fields and the detector's own metadata.
    pub detector: &'a DetectorInfo,
    /// The run's user metadata.
    pub user: &'a Value,
    /// When the stream started, ns since the Unix epoch (`arm_date`).
    pub started_ns: u64,
}

/// `start` of a series: the image format, the detector's NXmx fields and its own metadata
/// (as the source's start carried it), the run's user metadata as `user_data`.
pub fn start(out: &mut Vec<u8>, f: &StartFields<'_>) -> Res {
    let (ids, format, channel, images, detector, user, started_ns) = (
        f.ids,
        f.format,
        f.channel,
        f.images,
        f.detector,
        f.user,
        f.started_ns,
    );
    let d = detector;
    let numbers: Vec<(&str, f64)> = [
        ("pixel_size_x", Some(d.x_pixel_size)),
        ("pixel_size_y", Some(d.y_pixel_size)),
        ("sensor_thickness", Some(d.sensor_thickness)),
        ("beam_center_x", d.beam_center_x),
        ("beam_center_y", d.beam_center_y),
        ("count_time", d.count_time),
        ("frame_time", d.frame_time),
        ("detector_distance", d.detector_distance),
        ("saturation_value", d.saturation_value),
        ("incident_wavelength", d.wavelength()),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k, v?)))
    .collect();
    const OURS: [&str; 13] = [
        "type",
        "series_id",
        "series_unique_id",
        "arm_date",
        "channels",
        "image_dtype",
        "image_size_x",
        "image_size_y",
        "number_of_images",
        "number_of_triggers",
        "detector_description",
        "sensor_material",
        "user_data",
    ];
    let specific: Vec<(&String, &Value)> = (d.specific.iter())
        .filter(|(k, _)| !OURS.contains(&k.as_str()) && !numbers.iter().any(|(n, _)| n == k))
        .collect();
    let mut e = begin(out, 13 + numbers.len() as u64 + specific.len() as u64)?;
    e.str("type")?.str("start")?;
    e.str("series_id")?.u64(ids.id)?;
    e.str("series_unique_id")?.str(&ids.unique)?;
    let when = UNIX_EPOCH + Duration::from_nanos(started_ns);
    e.str("arm_date")?.tag(Tag::new(0))?;
    e.str(&humantime::format_rfc3339_millis(when).to_string())?;
    e.str("channels")?.array(1)?.str(channel)?;
    e.str("image_dtype")?.str(format.pixel.numpy_name())?;
    e.str("image_size_x")?.u32(format.shape[1])?;
    e.str("image_size_y")?.u32(format.shape[0])?;
    e.str("number_of_images")?.u64(images)?;
    e.str("number_of_triggers")?.u64(d.ntrigger.max(1))?;
    e.str("detector_description")?.str(&d.description)?;
    e.str("sensor_material")?.str(&d.sensor_material)?;
    e.str("user_data")?;
    json(&mut e, user)?;
    for (k, v) in numbers {
        e.str(k)?.f64(v)?;
    }
    for (k, v) in specific {
        e.str(k)?;
        json(&mut e, v)?;
    }
    Ok(())
}

/// JSON as CBOR (maps, arrays, text, numbers, booleans, null).
fn json(e: &mut Enc<'_>, v: &Value) -> Res {
    match v {
        Value::Null => {
            e.null()?;
        }
        Value::Bool(b) => {
            e.bool(*b)?;
        }
        Value::Number(n) => {
            match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => e.u64(u)?,
                (None, Some(i)) => e.i64(i)?,
                _ => e.f64(n.as_f64().unwrap_or(f64::NAN))?,
            };
        }
        Value::String(s) => {
            e.str(s)?;
        }
        Value::Array(items) => {
            e.array(items.len() as u64)?;
            for item in items {
                json(e, item)?;
            }
        }
        Value::Object(map) => {
            e.map(map.len() as u64)?;
            for (k, item) in map {
                e.str(k)?;
                json(e, item)?;
            }
        }
    }
    Ok(())
}

/// Everything of image `image_id` before its chunk's `chunk_len` bytes: the caller appends
/// the chunk as the files hold it.
pub fn image_head(
    out: &mut Vec<u8>,
    ids: &SeriesIds,
    image_id: u64,
    channel: &str,
    format: &ImageFormat,
    chunk_len: usize,
) -> Res {
    let mut e = begin(out, 5)?;
    e.str("type")?.str("image")?;
    e.str("series_id")?.u64(ids.id)?;
    e.str("series_unique_id")?.str(&ids.unique)?;
    e.str("image_id")?.u64(image_id)?;
    e.str("data")?.map(1)?.str(channel)?;
    e.tag(Tag::new(MULTI_DIM))?.array(2)?;
    e.array(2)?.u32(format.shape[0])?.u32(format.shape[1])?;
    e.tag(Tag::new(typed_array_tag(format.pixel)))?;
    match format.codec {
        Codec::None => {}
        Codec::BitshuffleLz4 => {
            e.tag(Tag::new(DECTRIS_COMPRESSION))?.array(3)?;
            e.str("bslz4")?.u64(format.pixel.size() as u64)?;
        }
        Codec::Lz4 => {
            e.tag(Tag::new(DECTRIS_COMPRESSION))?.array(3)?;
            e.str("lz4")?.u64(0)?;
        }
    }
    bytes_head(e.into_writer(), chunk_len as u64);
    Ok(())
}

/// The head of a CBOR byte string of `len` bytes (major type 2), its bytes to follow.
fn bytes_head(out: &mut Vec<u8>, len: u64) {
    match len {
        0..=23 => out.push(0x40 | len as u8),
        24..=0xff => out.extend_from_slice(&[0x58, len as u8]),
        0x100..=0xffff => {
            out.push(0x59);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(0x5a);
            out.extend_from_slice(&(len as u32).to_be_bytes());
        }
        _ => {
            out.push(0x5b);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
}

/// `end` of series `ids`.
pub fn end(out: &mut Vec<u8>, ids: &SeriesIds) -> Res {
    let mut e = begin(out, 3)?;
    e.str("type")?.str("end")?;
    e.str("series_id")?.u64(ids.id)?;
    e.str("series_unique_id")?.str(&ids.unique)?;
    Ok(())
}
