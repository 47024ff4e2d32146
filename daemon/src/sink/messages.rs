//! The JSON bodies of the live messages, one struct per message kind, serialised into a
//! reused buffer. Every field is documented in `docs/NOTIFICATIONS.md`.

#![allow(missing_docs)] // every message field is documented in docs/NOTIFICATIONS.md

use serde::Serialize;

use crate::stream::{DataFilePath, FrameRecord, StreamInfo};

/// Topic `frame`: one written (or lost) index.
#[derive(Serialize)]
pub struct FrameMessage<'a> {
    pub stream: &'a str,
    pub index: u64,
    pub frame_number: u64,
    pub sequence: u32,
    pub file: &'a str,
    pub dataset: &'a str,
    pub chunk: [u64; 3],
    pub data_file: DataFilePath<'a>,
    pub data_chunk: [u64; 3],
    pub complete: bool,
    pub lost: bool,
    pub dropped: bool,
    pub missing_modules: MissingModules,
    pub dropped_modules: MissingModules,
    pub packets_lost: u64,
    pub missing_packets: MissingPackets,
    pub bytes_raw: u64,
    pub bytes_compressed: u64,
    pub timestamp_ns: u64,
    pub detector_timestamp: u64,
    pub bunch_id: u64,
    pub written_ns: u64,
    pub readable_up_to: u64,
    /// When the publisher sent it (live messages only; absent in query answers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published_ns: Option<u64>,
    pub codec: &'a str,
    pub dtype: &'a str,
    pub shape: [u32; 2],
    /// The frame's statistics (docs/QUALITY.md), when taken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<StatsMessage>,
}

/// A frame's statistics in its `frame` message.
#[derive(Serialize)]
pub struct StatsMessage {
    pub sum: f64,
    pub max: f64,
    pub saturated: u64,
    pub masked: u64,
    pub above_threshold: u64,
}

impl<'a> FrameMessage<'a> {
    /// The message of `r` in stream `info`; `file` is the file path as text.
    pub fn new(info: &'a StreamInfo, file: &'a str, r: &FrameRecord) -> Self {
        let missing_modules = info.all_modules() & !r.modules;
        let (data_file, position) = info.data_file(r.index);
        Self {
            stream: &info.key,
            index: r.index,
            frame_number: r.frame_number,
            sequence: r.sequence,
            file,
            dataset: info.dataset,
            chunk: [r.index - 1, 0, 0],
            data_file,
            data_chunk: [position, 0, 0],
            complete: missing_modules == 0 && r.packets_lost == 0,
            lost: r.lost(),
            dropped: r.dropped != 0,
            missing_modules: MissingModules(missing_modules),
            dropped_modules: MissingModules(r.dropped),
            packets_lost: u64::from(r.packets_lost),
            missing_packets: MissingPackets(r.missing),
            bytes_raw: r.raw_bytes,
            bytes_compressed: r.compressed_bytes,
            timestamp_ns: r.timestamp_ns,
            detector_timestamp: r.detector_timestamp,
            bunch_id: r.bunch_id,
            written_ns: r.written_ns,
            readable_up_to: r.readable_up_to,
            published_ns: None,
            codec: info.codec.name(),
            dtype: info.pixel.numpy_name(),
            shape: info.shape,
            stats: r.stats.map(|s| StatsMessage {
                sum: s.sum,
                max: s.max,
                saturated: s.saturated,
                masked: s.masked,
                above_threshold: s.above_threshold,
            }),
        }
    }
}

/// The missing module numbers (bits of a mask), serialised as a JSON array without allocating.
pub struct MissingModules(pub u64);

impl Serialize for MissingModules {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.0.count_ones() as usize))?;
        for m in (0..64).filter(|m| self.0 & (1 << m) != 0) {
            seq.serialize_element(&m)?;
        }
        seq.end()
    }
}

/// The missing packet numbers, serialised as a JSON array without allocating.
pub struct MissingPackets(pub detingest_shm::PacketMask);

impl Serialize for MissingPackets {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter())
    }
}

/// Topic `readable`: the readable watermark moved without a frame message (a timed flush,
/// the stream's close).
#[derive(Serialize)]
pub struct ReadableMessage<'a> {
    pub stream: &'a str,
    pub readable_up_to: u64,
}

impl<'a> ReadableMessage<'a> {
    /// The message of `stream`'s watermark `up_to`.
    pub fn new(info: &'a StreamInfo, up_to: u64) -> Self {
        Self {
            stream: &info.key,
            readable_up_to: up_to,
        }
    }
}

/// Topic `preview`, first part: the odin-data live-view header, then the pixels.
#[derive(Serialize)]
pub struct PreviewHeader<'a> {
    pub frame_num: u64,
    pub acquisition_id: &'a str,
    pub index: u64,
    pub dtype: &'a str,
    pub dsize: usize,
    pub compression: &'a str,
    pub shape: [u32; 2],
}

impl<'a> PreviewHeader<'a> {
    /// The header of a preview of `r` whose payload is `dsize` bytes.
    pub fn new(info: &'a StreamInfo, r: &FrameRecord, dsize: usize) -> Self {
        Self {
            frame_num: r.frame_number,
            acquisition_id: &info.key,
            index: r.index,
            dtype: info.pixel.numpy_name(),
            dsize,
            compression: info.codec.name(),
            shape: info.shape,
        }
    }
}

/// ASAPO's end-of-stream marker.
#[derive(Serialize)]
pub struct FinishMarker {
    #[serde(rename = "_id")]
    pub id: u64,
    pub name: &'static str,
    pub meta: NextStream,
}

/// Where a finished stream continues.
#[derive(Serialize)]
pub struct NextStream {
    pub next_stream: &'static str,
}

/// Topic `run`: a stream began (`event = "start"`) or ended (`event = "end"`).
#[derive(Serialize)]
pub struct RunMessage<'a> {
    pub event: &'static str,
    pub stream: &'a str,
    pub beamtime: &'a str,
    pub source: &'a str,
    pub stream_name: &'a str,
    pub file: &'a str,
    pub dataset: &'a str,
    pub codec: &'a str,
    pub dtype: &'a str,
    pub shape: [u32; 2],
    pub time_ns: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frames: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost: Option<u64>,
    /// Module frames that arrived after their index was recorded (discarded, marked late).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub late_module_frames: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_stream: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_marker: Option<FinishMarker>,
}

impl<'a> RunMessage<'a> {
    /// A start message.
    pub fn start(info: &'a StreamInfo, file: &'a str, time_ns: u64) -> Self {
        Self {
            event: "start",
            stream: &info.key,
            beamtime: info.id.beamtime.as_str(),
            source: info.id.source.as_str(),
            stream_name: info.id.stream.as_str(),
            file,
            dataset: info.dataset,
            codec: info.codec.name(),
            dtype: info.pixel.numpy_name(),
            shape: info.shape,
            time_ns,
            frames: None,
            lost: None,
            late_module_frames: None,
            finished: None,
            next_stream: None,
            finish_marker: None,
        }
    }

    /// An end message: `frames` indices, `lost` of them lost.
    pub fn end(info: &'a StreamInfo, file: &'a str, time_ns: u64, frames: u64, lost: u64) -> Self {
        Self {
            event: "end",
            frames: Some(frames),
            lost: Some(lost),
            finished: Some(true),
            next_stream: Some("asapo_no_next"),
            finish_marker: Some(FinishMarker {
                id: frames + 1,
                name: "asapo_finish_stream",
                meta: NextStream {
                    next_stream: "asapo_no_next",
                },
            }),
            ..Self::start(info, file, time_ns)
        }
    }
}

#[cfg(test)]
mod tests {
    use detingest_shm::PacketMask;

    use super::*;
    use crate::sink::fixture;

    #[test]
    fn a_frame_with_missing_packets_lists_them_and_is_not_complete() {
        let info = fixture::stream(2);
        let mut missing = PacketMask::NONE;
        missing.set(3);
        missing.set(100);
        let r = FrameRecord {
            index: 7,
            frame_number: 107,
            packets_lost: 2,
            missing,
            ..fixture::record(&info, 7)
        };
        let json = serde_json::to_value(FrameMessage::new(&info, "f.h5", &r)).unwrap();
        assert_eq!(json["packets_lost"], 2);
        assert_eq!(json["missing_modules"], serde_json::json!([]));
        assert_eq!(json["data_file"], "/data/bt/det/s1_data_000002.h5");
        assert_eq!(
            json["data_chunk"],
            serde_json::json!([1, 0, 0]),
            "index 7 is 2nd of file 2"
        );
        assert_eq!(json["missing_packets"], serde_json::json!([3, 100]));
        assert_eq!(json["complete"], false);
        let whole = FrameRecord {
            missing: PacketMask::NONE,
            packets_lost: 0,
            ..r
        };
        let json = serde_json::to_value(FrameMessage::new(&info, "f.h5", &whole)).unwrap();
        assert_eq!(json["missing_packets"], serde_json::json!([]));
        assert_eq!(json["complete"], true);
        let half = FrameRecord {
            modules: 0b10,
            ..whole
        };
        let json = serde_json::to_value(FrameMessage::new(&info, "f.h5", &half)).unwrap();
        assert_eq!(json["missing_modules"], serde_json::json!([0]));
        assert_eq!(json["complete"], false);
    }
}

/// Topic `quality`: the sampled analyses of one frame (docs/QUALITY.md).
#[derive(Serialize)]
pub struct QualityMessage<'a> {
    pub stream: &'a str,
    pub index: u64,
    pub frame_number: u64,
    #[serde(flatten)]
    pub report: &'a crate::quality::QualityReport,
}

impl<'a> QualityMessage<'a> {
    /// The message of `q`.
    pub fn new(q: &'a crate::sink::QualityNotice) -> Self {
        Self {
            stream: &q.stream.key,
            index: q.index,
            frame_number: q.frame_number,
            report: &q.report,
        }
    }
}
