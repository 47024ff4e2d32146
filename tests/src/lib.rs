//! End-to-end tests of detingest that cross crates: the daemon's pipeline run in-process,
//! its files read back through HDF5. The helpers here build configurations and collect
//! notifications; the tests are in `tests/tests/`. Python read-back tests with h5py +
//! hdf5plugin (the readers facilities use) are in `tests/python/` and run by `make test`.

use std::path::Path;
use std::sync::mpsc;

use detingest_daemon::config::Config;
use detingest_daemon::sink::{Notification, NotificationSink};

/// Where the master file keeps the per-index records.
pub const SPECIFIC: &str = "/entry/instrument/detector/detectorSpecific";

/// The whole of dataset `path` in `file`, flat in C order, read with libhdf5 (no filter
/// plugin: use codec none where pixels are read).
pub fn read<T: hdf5::H5Type>(file: &hdf5::File, path: &str) -> Vec<T> {
    match file.dataset(path).and_then(|d| d.read_raw()) {
        Ok(v) => v,
        Err(e) => panic!("cannot read {path}: {e}"),
    }
}

/// A sink that forwards every notification to a channel.
pub struct Collector(pub mpsc::Sender<Notification>);

impl NotificationSink for Collector {
    fn notify(&mut self, n: &Notification) {
        let _ = self.0.send(n.clone());
    }
}

/// A configuration with one synthetic source writing under `dir`; `pipeline` and `source`
/// are extra TOML lines for `[pipeline]` and `[source.synthetic]`, `top` for the top level.
pub fn config(dir: &Path, top: &str, pipeline: &str, source: &str) -> Config {
    let text = format!(
        "data_dir = {dir:?}\n{top}\n[pipeline]\n{pipeline}\n\
         [[source]]\nname = \"sim\"\n\
         stream = {{ beamtime = \"bt\", source = \"det\", stream = \"s1\" }}\n\
         [source.synthetic]\n{source}\n",
        dir = dir.display().to_string()
    );
    match Config::parse(&text) {
        Ok(c) => c,
        Err(e) => panic!("test configuration refused: {e}\n{text}"),
    }
}
