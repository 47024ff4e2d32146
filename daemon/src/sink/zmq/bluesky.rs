//! Bluesky event-model documents for a stream, so a Bluesky/Tiled consumer can register the
//! files as they grow: `start`, `descriptor` and `stream_resource` when a stream opens, one
//! `stream_datum` per written index, `stop` when it closes. Each is sent on the `bluesky` topic
//! as `[b"bluesky", name, document JSON]`.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::sink::{FrameNotice, StreamEndNotice, StreamStartNotice};
use crate::stream::StreamInfo;

/// The data key the images are registered under.
const DATA_KEY: &str = "image";

struct Run {
    start: String,
    descriptor: String,
    resource: String,
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
    /// `start`, `descriptor` and `stream_resource` of a stream that opened.
    pub fn start(&mut self, s: &StreamStartNotice) -> [(&'static str, Value); 3] {
        let info: &StreamInfo = &s.stream;
        let run = Run {
            start: uid(),
            descriptor: uid(),
            resource: uid(),
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
            }},
        });
        let resource = json!({
            "uid": run.resource, "run_start": run.start, "data_key": DATA_KEY,
            "mimetype": "application/x-hdf5",
            "uri": format!("file://localhost{}", info.file.display()),
            "parameters": {"dataset": info.dataset, "chunk_shape": [1, ny, nx]},
        });
        self.runs.insert(info.key.clone(), run);
        [
            ("start", start),
            ("descriptor", descriptor),
            ("stream_resource", resource),
        ]
    }

    /// The `stream_datum` of one written index (stop exclusive, 0-based dataset rows).
    pub fn datum(&self, f: &FrameNotice) -> Option<Value> {
        let run = self.runs.get(&f.stream.key)?;
        let index = f.record.index;
        let (start, stop) = (index - 1, index);
        Some(json!({
            "uid": format!("{}/{}", run.resource, index), "stream_resource": run.resource,
            "descriptor": run.descriptor,
            "indices": {"start": start, "stop": stop},
            "seq_nums": {"start": index, "stop": index + 1},
        }))
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
