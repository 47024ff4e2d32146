//! What a stream looks like as a Blissdata scan: the keys, the scan's JSON document (identity,
//! info, state stream, data streams with their encodings) and the data streams' names and
//! encodings. Layout as PyPI `blissdata` 2.x writes and reads it (docs/REDIS.md).

use std::sync::Arc;

use detingest_writer::{DetectorInfo, FileOptions, MasterData};
use serde_json::{json, Value};

use crate::stream::StreamInfo;

/// The stream Blissdata readers watch for new scans (`XADD ... * key <scan key>`).
pub const SCAN_HISTORY: &str = "_SCAN_HISTORY_";
/// The key whose value readers check before they read anything.
pub const PROTOCOL_KEY: &str = "_PROTOCOL_VERSION_";
/// Blissdata's protocol version.
pub const PROTOCOL_VERSION: u32 = 1;
/// The id of the entry that seals a stream.
pub const SEAL_ID: &str = "18446744073709551615-18446744073709551615";

/// Blissdata scan states (the state stream's `state` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanState {
    /// Made.
    Created = 0,
    /// Data streams declared.
    Prepared = 1,
    /// Data flowing.
    Started = 2,
    /// Data streams sealed.
    Stopped = 3,
    /// Final metadata written.
    Closed = 4,
}

/// The numeric data streams every scan has, one value per index: name suffix, numpy dtype.
pub const NUMERIC: [(&str, &str); 4] = [
    ("frame_number", "<u8"),
    ("lost", "|b1"),
    ("packets_lost", "<u4"),
    ("timestamp", "<f8"),
];

/// Where the image stream's frames are read from when Redis does not hold them.
#[derive(Debug, Clone, PartialEq)]
pub struct Fallback {
    /// The file.
    pub file_path: String,
    /// The dataset whose first axis is the Blissdata index.
    pub data_path: String,
}

impl Fallback {
    /// A run held by one data file is read from it, during the run too; a run of several
    /// files from the master's VDS, which Blissdata reads only once its last source file is
    /// closed, after the run.
    fn of(stream: &StreamInfo, files: &FileOptions) -> Self {
        let one_file = files.frames > 0 && files.frames <= stream.frames_per_file;
        let file_path = if one_file {
            stream.data_file(1).0.to_string()
        } else {
            stream.file.display().to_string()
        };
        Self {
            file_path,
            data_path: stream.dataset.to_owned(),
        }
    }

    /// True when readers can use it while the run goes on.
    fn live(&self, stream: &StreamInfo) -> bool {
        self.file_path != stream.file.display().to_string()
    }
}

/// One stream's scan: its keys and what its document says.
#[derive(Debug, Clone)]
pub struct ScanDoc {
    /// The stream.
    pub stream: Arc<StreamInfo>,
    /// `<prefix>:scan:<pk>`.
    pub key: String,
    pk: String,
    id_pk: String,
    number: u64,
    state_pk: String,
    /// The image stream's key, then the numeric streams' keys in [`NUMERIC`] order.
    pub stream_keys: [String; 5],
    stream_pks: [String; 5],
    fallback: Fallback,
    info: Value,
}

impl ScanDoc {
    /// The scan of `stream`, number `number`, under `prefix`.
    pub fn new(
        prefix: &str,
        stream: Arc<StreamInfo>,
        number: u64,
        detector: &DetectorInfo,
        user_json: &str,
        files: &FileOptions,
    ) -> Self {
        let pk = ulid();
        let state_pk = ulid();
        let stream_pks: [String; 5] = std::array::from_fn(|_| ulid());
        let stream_keys = stream_pks.clone().map(|p| format!("{prefix}:stream:{p}"));
        let fallback = Fallback::of(&stream, files);
        let user: Value = serde_json::from_str(user_json).unwrap_or(Value::Null);
        let info = json!({
            "title": format!("detingest {}", stream.key),
            "type": "detingest",
            "detingest": {
                "stream": stream.key,
                "beamtime": stream.id.beamtime.as_str(),
                "source": stream.id.source.as_str(),
                "master_file": stream.file.display().to_string(),
                "image_file": fallback.file_path,
                "image_file_live": fallback.live(&stream),
                "dataset": stream.dataset,
                "codec": stream.codec.name(),
                "frames_per_file": stream.frames_per_file,
                "frames_expected": files.frames,
                "master_data": match files.master_data {
                    MasterData::Vds => "vds",
                    MasterData::Links => "links",
                    MasterData::Both => "both",
                },
                "swmr": files.swmr,
                "index_base": "blissdata index = detingest index - 1",
            },
            "detector": {
                "description": detector.description,
                "dtype": stream.pixel.numpy_name(),
                "shape": stream.shape,
                "modules": stream.modules,
                "x_pixel_size": detector.x_pixel_size,
                "y_pixel_size": detector.y_pixel_size,
                "sensor_material": detector.sensor_material,
                "sensor_thickness": detector.sensor_thickness,
                "beam_center_x": detector.beam_center_x,
                "beam_center_y": detector.beam_center_y,
                "count_time": detector.count_time,
                "frame_time": detector.frame_time,
                "detector_distance": detector.detector_distance,
                "saturation_value": detector.saturation_value,
            },
            "user": user,
            "npoints": files.frames,
        });
        Self {
            key: format!("{prefix}:scan:{pk}"),
            pk,
            id_pk: ulid(),
            number,
            state_pk: state_pk.clone(),
            stream_keys,
            stream_pks,
            fallback,
            info,
            stream,
        }
    }

    /// The state stream's key.
    pub fn state_key(&self, prefix: &str) -> String {
        format!("{prefix}:stream:{}", self.state_pk)
    }

    /// The data streams' names: `<source>:image`, `<source>:frame_number`, ...
    pub fn stream_names(&self) -> [String; 5] {
        let source = self.stream.id.source.as_str();
        std::array::from_fn(|i| match i {
            0 => format!("{source}:image"),
            i => format!("{source}:{}", NUMERIC[i - 1].0),
        })
    }

    /// Sets the scan number (once the server gave it).
    pub fn set_number(&mut self, number: u64) {
        self.number = number;
    }

    /// Sets `info.<key>` (the end of the run: only before the document is written at CLOSED).
    pub fn set_info(&mut self, key: &str, value: Value) {
        if let Some(obj) = self.info.as_object_mut() {
            obj.insert(key.to_owned(), value);
        }
    }

    /// The JSON document; `with_streams` once the scan is PREPARED.
    pub fn document(&self, with_streams: bool) -> String {
        let id = &self.stream.id;
        let mut data_streams = serde_json::Map::new();
        if with_streams {
            let names = self.stream_names();
            let [rows, cols] = self.stream.shape;
            let dtype = self.stream.pixel.numpy_typestr();
            data_streams.insert(
                names[0].clone(),
                json!({
                    "pk": self.stream_pks[0],
                    "encoding": {"type": "numeric", "dtype_str": dtype, "shape": [rows, cols]},
                    "info": {
                        "plugin": "hdf5_fallback",
                        "file_path": self.fallback.file_path,
                        "data_path": self.fallback.data_path,
                        "save": true,
                        "dtype": self.stream.pixel.numpy_name(),
                        "shape": [rows, cols],
                    },
                }),
            );
            for (i, (_, dtype)) in NUMERIC.iter().enumerate() {
                data_streams.insert(
                    names[i + 1].clone(),
                    json!({
                        "pk": self.stream_pks[i + 1],
                        "encoding": {"type": "numeric", "dtype_str": dtype, "shape": []},
                        "info": {"dtype": numpy_name(dtype), "shape": []},
                    }),
                );
            }
        }
        let mut info = self.info.clone();
        if let (true, Some(obj)) = (with_streams, info.as_object_mut()) {
            obj.insert("h5maps".into(), self.h5maps());
        }
        json!({
            "pk": self.pk,
            "id": {
                "pk": self.id_pk,
                "name": id.stream.as_str(),
                "number": self.number,
                "data_policy": "no_policy",
                "session": "detingest",
                "proposal": id.beamtime.as_str(),
                "collection": id.source.as_str(),
                "dataset": id.stream.as_str(),
                "path": self.fallback.file_path,
            },
            "info": info,
            "state_stream": {"pk": self.state_pk, "encoding": null, "info": null},
            "data_streams": data_streams,
        })
        .to_string()
    }
}

impl ScanDoc {
    /// How `blissdata.h5api` shows the scan (`info.h5maps`, keyed by the file `id.path`
    /// names): entry `/<number>.1` an NXentry with its `title`, and `measurement` mapping
    /// each data stream (`image`, `frame_number`, `lost`, `packets_lost`, `timestamp`), so
    /// `File(path)["/<number>.1/measurement/image"]` reads the run live through Redis.
    fn h5maps(&self) -> Value {
        let names = self.stream_names();
        let stream = |n: &str| json!({"type": "dataset", "value": {"type": "stream", "stream": n}});
        let mut measurement = serde_json::Map::new();
        measurement.insert("image".into(), stream(&names[0]));
        for (i, (suffix, _)) in NUMERIC.iter().enumerate() {
            measurement.insert((*suffix).into(), stream(&names[i + 1]));
        }
        let title = self.info.get("title").cloned().unwrap_or(Value::Null);
        let entry = json!({
            "type": "group",
            "attributes": {"NX_class": "NXentry"},
            "children": {
                "title": {"type": "dataset", "value": title},
                "measurement": {
                    "type": "group",
                    "attributes": {"NX_class": "NXcollection"},
                    "children": measurement,
                },
            },
        });
        // The file's root holds the scan's entry, as BLISS's files hold each scan's.
        let mut root = serde_json::Map::new();
        root.insert(format!("{}.1", self.number), entry);
        let mut maps = serde_json::Map::new();
        maps.insert(
            self.fallback.file_path.clone(),
            json!({"type": "group", "children": root}),
        );
        Value::Object(maps)
    }
}

/// numpy's name of a dtype string of [`NUMERIC`].
fn numpy_name(dtype: &str) -> &'static str {
    match dtype {
        "<u8" => "uint64",
        "|b1" => "bool",
        "<u4" => "uint32",
        _ => "float64",
    }
}

/// A ULID (48-bit milliseconds, 80 random bits, Crockford base 32), as Blissdata's models
/// name their keys: sortable by creation time.
pub fn ulid() -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let ms = u128::from(crate::stream::now_ns() / 1_000_000) & ((1 << 48) - 1);
    let random = u128::from_le_bytes(*uuid::Uuid::new_v4().as_bytes()) & ((1 << 80) - 1);
    let value = (ms << 80) | random;
    (0..26)
        .rev()
        .map(|i| ALPHABET[((value >> (i * 5)) & 31) as usize] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::fixture;

    #[test]
    fn ulids_sort_by_time_and_use_crockford_letters() {
        let a = ulid();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = ulid();
        assert_eq!(a.len(), 26);
        assert!(a[..10] < b[..10], "{a} {b}");
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()));
        assert!(!a.contains(['I', 'L', 'O', 'U']));
    }

    #[test]
    fn the_document_declares_the_image_with_its_file_and_the_numeric_streams() {
        let files = FileOptions {
            frames: 10,
            ..FileOptions::default()
        };
        let doc = ScanDoc::new(
            "esrf",
            fixture::stream(1),
            7,
            &DetectorInfo::default(),
            r#"{"sample": "lysozyme"}"#,
            &files,
        );
        assert!(doc.key.starts_with("esrf:scan:"));
        let created: Value = serde_json::from_str(&doc.document(false)).unwrap();
        assert_eq!(created["data_streams"], json!({}));
        assert_eq!(created["id"]["number"], 7);
        assert_eq!(created["info"]["user"]["sample"], "lysozyme");
        let prepared: Value = serde_json::from_str(&doc.document(true)).unwrap();
        let image = &prepared["data_streams"]["det:image"];
        assert_eq!(image["info"]["plugin"], "hdf5_fallback");
        assert_eq!(
            image["info"]["file_path"], "/data/bt/det/s1_master.h5",
            "10 frames in files of 5: the master's VDS"
        );
        assert_eq!(image["encoding"]["shape"], json!([1024, 1024]));
        assert_eq!(image["encoding"]["dtype_str"], "<u2");
        assert_eq!(
            prepared["data_streams"]["det:lost"]["encoding"]["dtype_str"],
            "|b1"
        );
        let one = FileOptions { frames: 5, ..files };
        let doc = ScanDoc::new(
            "esrf",
            fixture::stream(1),
            7,
            &DetectorInfo::default(),
            "",
            &one,
        );
        let prepared: Value = serde_json::from_str(&doc.document(true)).unwrap();
        assert_eq!(
            prepared["data_streams"]["det:image"]["info"]["file_path"],
            "/data/bt/det/s1_data_000001.h5",
            "5 frames in files of 5: the data file"
        );
        let image = &prepared["data_streams"]["det:image"];
        let pk = image["pk"].as_str().unwrap();
        assert_eq!(doc.stream_keys[0], format!("esrf:stream:{pk}"));
    }
}
