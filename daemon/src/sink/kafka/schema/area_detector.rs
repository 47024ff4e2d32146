//! `ad00` (ADArray): one frame's pixels for live viewers that read Kafka, as EPICS
//! areaDetector's Kafka plugin sends them: shape `[ny, nx]`, the pixel type, the raw
//! little-endian pixels, and attributes naming the stream, the index and the binning.

use detingest_shm::PixelType;
use flatbuffers::{FlatBufferBuilder, WIPOffset};

use super::slot;

/// The `ad00` DType of a pixel type.
pub fn dtype(p: PixelType) -> i8 {
    match p {
        PixelType::U8 => 1,
        PixelType::U16 => 3,
        PixelType::I32 => 4,
        PixelType::U32 => 5,
        PixelType::F32 => 8,
    }
}

/// One frame's preview.
#[derive(Debug, Clone)]
pub struct Frame<'a> {
    /// The stream (`beamtime/source/stream`), also `source_name`.
    pub stream: &'a str,
    /// Its index (the message's `id`).
    pub index: u64,
    /// The detector's frame number.
    pub frame_number: u64,
    /// When it was acquired, ns since the Unix epoch.
    pub timestamp_ns: u64,
    /// `[ny, nx]` of the pixels sent.
    pub shape: [u32; 2],
    /// The image was binned by this factor (largest of each block) to fit a message.
    pub binning: u32,
    /// The pixel type.
    pub pixel: PixelType,
    /// The decoded pixels, little-endian.
    pub pixels: &'a [u8],
}

/// Encodes `f` as an `ad00`.
pub fn encode<'b>(b: &'b mut FlatBufferBuilder<'static>, f: &Frame<'_>) -> &'b [u8] {
    b.reset();
    let attributes = [
        attribute(b, "stream", 10, f.stream.as_bytes()),
        attribute(b, "index", 6, &f.index.to_le_bytes()),
        attribute(b, "frame_number", 6, &f.frame_number.to_le_bytes()),
        attribute(b, "binning", 6, &i64::from(f.binning).to_le_bytes()),
    ];
    let attributes = b.create_vector(&attributes);
    let data = b.create_vector(f.pixels);
    let dims = b.create_vector(&[i64::from(f.shape[0]), i64::from(f.shape[1])]);
    let name = b.create_string(f.stream);
    let t = b.start_table();
    b.push_slot_always(slot(2), f.timestamp_ns as i64);
    b.push_slot_always(slot(0), name);
    b.push_slot_always(slot(1), f.index as i32);
    b.push_slot_always(slot(3), dims);
    b.push_slot_always(slot(5), data);
    b.push_slot_always(slot(6), attributes);
    b.push_slot_always(slot(4), dtype(f.pixel));
    let root = b.end_table(t);
    b.finish(root, Some("ad00"));
    b.finished_data()
}

/// One `Attribute` table: name, an empty description, source `detingestd`, its type and bytes.
fn attribute(
    b: &mut FlatBufferBuilder<'static>,
    name: &str,
    data_type: i8,
    data: &[u8],
) -> WIPOffset<flatbuffers::TableFinishedWIPOffset> {
    let (name, description, source) = (
        b.create_string(name),
        b.create_string(""),
        b.create_string("detingestd"),
    );
    let data = b.create_vector(data);
    let t = b.start_table();
    b.push_slot_always(slot(0), name);
    b.push_slot_always(slot(1), description);
    b.push_slot_always(slot(2), source);
    b.push_slot_always(slot(4), data);
    b.push_slot_always(slot(3), data_type);
    b.end_table(t)
}
