//! Bluesky event-model documents for a stream, in the shape bluesky's `TiledWriter` takes and
//! Tiled serves: `start` and `descriptor` when a stream opens, a `stream_resource` for each
//! data file when its first index is written (the data file's `/entry/data/data`, stacked
//! `[1, ny, nx]` rows), one `stream_datum` per written index (its row in that file), `stop`
//! when the stream closes. Each is sent on the `bluesky` topic as
//! `[b"bluesky", name, document JSON]`.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::sink::{FrameNotice, StreamEndNotice, StreamStartNotice};
use crate::stream::StreamInfo;

/// The data key the images are registered under.
const DATA_KEY: &str = "image";
/// The device (object) the data key belongs to.
const OBJECT: &str = "detector";

struct Run {
    start: String,
    descriptor: String,
    /// The data file the current `stream_resource` names, and its uid.
    resource: Option<(u64, String)>,
}

/// The document ids of every open stream.
#[derive(Default)]
pub struct Bluesky {
    runs: HashMap<String, Run>,
}

fn uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

impl Bluesky {
    /// `start` and `descriptor` of a stream that opened.
    pub fn start(&mut self, s: &StreamStartNotice) -> [(&'static str, Value); 2] {
        let info: &StreamInfo = &s.stream;
        let run = Run {
            start: uid(),
            descriptor: uid(),
            resource: None,
        };
        let [ny, nx] = info.shape;
        let time = seconds(s.started_ns);
        let start = json!({
            "uid": run.start, "time": time,
            "beamtime": info.id.beamtime.as_str(), "data_source": info.id.source.as_str(),
            "stream": info.id.stream.as_str(), "detingest_stream": info.key,
        });
        let descriptor = json!({
            "uid": run.descriptor, "time": time, "run_start": run.start, "name": "primary",
            "data_keys": {DATA_KEY: {
                "source": format!("detingest:{}", info.key), "dtype": "array",
                "dtype_numpy": info.pixel.numpy_typestr(), "shape": [ny, nx], "external": "STREAM:",
                "object_name": OBJECT,
            }},
            "object_keys": {OBJECT: [DATA_KEY]},
            "configuration": {OBJECT: {"data": {}, "timestamps": {}, "data_keys": {}}},
            "hints": {OBJECT: {"fields": [DATA_KEY]}},
        });
        self.runs.insert(info.key.clone(), run);
        [("start", start), ("descriptor", descriptor)]
    }

    /// The documents of one written index: the `stream_resource` of its data file when it is
    /// the file's first, then its `stream_datum` (stop exclusive, 0-based rows of the file).
    pub fn datum(&mut self, f: &FrameNotice) -> (Option<Value>, Option<Value>) {
        let Some(run) = self.runs.get_mut(&f.stream.key) else {
            return (None, None);
        };
        let info = &f.stream;
        let index = f.record.index;
        let (file, row) = info.data_file(index);
        let number = (index - 1) / info.frames_per_file.max(1) + 1;
        let mut resource = None;
        if run.resource.as_ref().is_none_or(|(n, _)| *n != number) {
            let [ny, nx] = info.shape;
            let id = uid();
            resource = Some(json!({
                "uid": id, "run_start": run.start, "data_key": DATA_KEY,
                "mimetype": "application/x-hdf5",
                "uri": format!("file://localhost{file}"),
                "parameters": {
                    "dataset": info.dataset, "chunk_shape": [1, ny, nx], "join_method": "stack",
                    "swmr": true,
                },
            }));
            run.resource = Some((number, id));
        }
        let Some((_, id)) = &run.resource else {
            return (resource, None);
        };
        let datum = json!({
            "uid": format!("{id}/{index}"), "stream_resource": id,
            "descriptor": run.descriptor,
            "indices": {"start": row, "stop": row + 1},
            "seq_nums": {"start": index, "stop": index + 1},
        });
        (resource, Some(datum))
    }

    /// The `stop` of a stream that closed.
    pub fn stop(&mut self, e: &StreamEndNotice) -> Option<Value> {
        let run = self.runs.remove(&e.stream.key)?;
        Some(json!({
            "uid": uid(), "time": seconds(e.ended_ns), "run_start": run.start,
            "exit_status": "success", "num_events": {"primary": e.frames},
        }))
    }
}
