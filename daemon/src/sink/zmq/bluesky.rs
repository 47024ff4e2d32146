//! Bluesky event-model documents for a stream, in the shape bluesky's `TiledWriter` takes and
//! Tiled serves: `start` and `descriptor` when a stream opens, a `stream_resource` for each
//! data file when the readable watermark first reaches it (the data file's
//! `/entry/data/data`, stacked `[1, ny, nx]` rows), a `stream_datum` each time the watermark
//! moves (the rows it made readable in that file), `stop` when the stream closes. Each is sent on the `bluesky` topic as
//! `[b"bluesky", name, document JSON]`.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::sink::{StreamEndNotice, StreamStartNotice};
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
    /// Indices announced in `stream_datum`s so far.
    announced: u64,
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
            announced: 0,
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

    /// The documents that make the indices up to the stream's readable watermark `up_to`
    /// known: for each data file they reach, its `stream_resource` when first reached, then
    /// one `stream_datum` for the rows (stop exclusive, 0-based rows of the file). Nothing
    /// beyond the watermark is announced, so a reader never asks for a row not yet there.
    pub fn readable(&mut self, info: &StreamInfo, up_to: u64) -> Vec<(&'static str, Value)> {
        let mut docs = Vec::new();
        let Some(run) = self.runs.get_mut(&info.key) else {
            return docs;
        };
        while run.announced < up_to {
            let first = run.announced + 1;
            let (file, row) = info.data_file(first);
            let number = file.number();
            let last = up_to.min(first - row + info.frames_per_file.max(1) - 1);
            if run.resource.as_ref().is_none_or(|(n, _)| *n != number) {
                let [ny, nx] = info.shape;
                let id = uid();
                docs.push((
                    "stream_resource",
                    json!({
                        "uid": id, "run_start": run.start, "data_key": DATA_KEY,
                        "mimetype": "application/x-hdf5",
                        "uri": format!("file://localhost{file}"),
                        "parameters": {
                            "dataset": info.dataset, "chunk_shape": [1, ny, nx],
                            "join_method": "stack", "swmr": true,
                        },
                    }),
                ));
                run.resource = Some((number, id));
            }
            if let Some((_, id)) = &run.resource {
                docs.push((
                    "stream_datum",
                    json!({
                        "uid": format!("{id}/{first}"), "stream_resource": id,
                        "descriptor": run.descriptor,
                        "indices": {"start": row, "stop": row + last - first + 1},
                        "seq_nums": {"start": first, "stop": last + 1},
                    }),
                ));
            }
            run.announced = last;
        }
        docs
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
