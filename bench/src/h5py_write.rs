//! The h5py baseline of `detingest-bench pipeline`: what a Python program writing the same
//! frames through HDF5's own filter pipeline (h5py + hdf5plugin, one frame per chunk, the
//! filter the pipeline's codec matches) achieves, timed from creating the file to closing it,
//! in a process started once per measurement. One thread: HDF5 runs filters on the calling
//! thread, so that is what such a writer gets.

use std::path::Path;

use anyhow::{Context, Result};
use detingest_writer::Codec;

/// Frames as h5py receives them: `distinct` frames of `shape` little-endian u16 pixels back to
/// back in `raw` (cycled over `count` writes).
pub(crate) struct Frames<'a> {
    pub raw: &'a Path,
    pub distinct: usize,
    pub shape: [usize; 2],
    pub count: u64,
}

/// Seconds h5py took to write `frames` into a new file in `dir` with the filter of `codec`;
/// `None` when `python` lacks h5py or hdf5plugin.
pub(crate) fn time_h5py(
    python: &str,
    frames: &Frames<'_>,
    codec: Codec,
    dir: &Path,
) -> Result<Option<f64>> {
    let script = r#"
import json, os, sys, time
import numpy as np
try:
    import h5py, hdf5plugin
except ImportError:
    print(json.dumps(None)); sys.exit(0)
raw, distinct, ny, nx, count, codec, out = sys.argv[1:8]
distinct, ny, nx, count = int(distinct), int(ny), int(nx), int(count)
frames = np.fromfile(raw, dtype="<u2").reshape(distinct, ny, nx)
filters = {"bslz4": hdf5plugin.Bitshuffle(cname="lz4"), "lz4": hdf5plugin.LZ4(), "none": {}}[codec]
t = time.perf_counter()
with h5py.File(out, "w") as f:
    d = f.create_dataset("data", shape=(count, ny, nx), dtype="<u2", chunks=(1, ny, nx), **filters)
    for i in range(count):
        d[i] = frames[i % distinct]
seconds = time.perf_counter() - t
os.remove(out)
print(json.dumps({"seconds": seconds}))
"#;
    let out_file = dir.join(format!("h5py_{}.h5", std::process::id()));
    let [ny, nx] = frames.shape;
    let args = [
        frames.raw.display().to_string(),
        frames.distinct.to_string(),
        ny.to_string(),
        nx.to_string(),
        frames.count.to_string(),
        codec.name().to_owned(),
        out_file.display().to_string(),
    ];
    let Some(v) = crate::common::python_baseline(python, script, &args, &[], "the h5py baseline")?
    else {
        return Ok(None);
    };
    Ok(Some(v["seconds"].as_f64().context("seconds")?))
}
