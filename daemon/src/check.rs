//! Configuration errors that name the offending key, and the checks every configuration
//! table uses (ranges, frame sizes, cores). The top-level configuration and every source's
//! and sink's table use this module; it uses none of them.

use std::fmt;

use detingest_shm::PixelType;
use serde::Deserialize;

/// A configuration error: the key it concerns and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config key `{key}`: {message}")]
pub struct ConfigError {
    /// Dotted path of the offending key, e.g. `source[0].rate_hz`; `.` for the whole file.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    /// The error `message` about `key`.
    pub fn new(key: impl Into<String>, message: impl fmt::Display) -> Self {
        Self {
            key: key.into(),
            message: message.to_string(),
        }
    }
}

/// Refuses `value` (under `key`) outside `range` (a NaN is outside every range).
pub(crate) fn check_range<T: PartialOrd + fmt::Display>(
    key: impl Into<String>,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<(), ConfigError> {
    if range.contains(&value) {
        return Ok(());
    }
    let (lo, hi) = range.into_inner();
    Err(ConfigError::new(
        key,
        format!("{value} is not in {lo}..={hi}"),
    ))
}

/// Refuses a zero (under `key`).
pub(crate) fn check_at_least_one(
    key: impl Into<String>,
    value: impl Into<u64>,
) -> Result<(), ConfigError> {
    match value.into() {
        0 => Err(ConfigError::new(key, "must be at least 1")),
        _ => Ok(()),
    }
}

/// Deserialises from `de`, naming the offending key (its path in table `prefix`) on error.
pub(crate) fn deserialize_keyed<'de, D, T>(de: D, prefix: &str) -> Result<T, ConfigError>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = match e.path().to_string().as_str() {
            "." if prefix.is_empty() => ".".to_string(),
            "." => prefix.to_string(),
            path => key_in(prefix, path),
        };
        ConfigError::new(key, e.into_inner().to_string().trim_end())
    })
}

/// The dotted name of key `k` in table `prefix` (`k` alone at the top level).
pub(crate) fn key_in(prefix: &str, k: &str) -> String {
    if prefix.is_empty() {
        k.to_string()
    } else {
        format!("{prefix}.{k}")
    }
}

/// Largest frame accepted, in bytes: a chunk must stay below 2 GiB for HDF5 and LZ4.
pub const MAX_FRAME_BYTES: usize = 1 << 30;

/// The bytes of a `shape` frame of `pixel`, refused (under `key`) when empty or too large.
pub(crate) fn check_frame(
    key: &str,
    pixel: PixelType,
    shape: [u32; 2],
) -> Result<usize, ConfigError> {
    let bytes = pixel.frame_bytes(shape);
    if shape.contains(&0) || bytes > MAX_FRAME_BYTES {
        return Err(ConfigError::new(
            key,
            format!("{shape:?} gives {bytes} bytes per frame; need 1..={MAX_FRAME_BYTES}"),
        ));
    }
    Ok(bytes)
}

/// Refuses an `endpoint` that is not a ZeroMQ address (`tcp://`, `ipc://` or `inproc://`
/// followed by something), naming `key`.
pub(crate) fn check_zmq_endpoint(key: &str, endpoint: &str) -> Result<(), ConfigError> {
    let ok = ["tcp://", "ipc://", "inproc://"]
        .iter()
        .any(|p| endpoint.starts_with(p) && endpoint.len() > p.len());
    if ok {
        return Ok(());
    }
    Err(ConfigError::new(
        key,
        format!("{endpoint:?} is not a ZeroMQ endpoint (tcp://host:port, ipc://path)"),
    ))
}

pub(crate) fn core_count() -> usize {
    core_affinity::get_core_ids().map_or(1, |ids| ids.len().max(1))
}

pub(crate) fn check_core(key: &str, core: Option<usize>, cores: usize) -> Result<(), ConfigError> {
    match core {
        Some(c) if c >= cores => Err(ConfigError::new(
            key,
            format!("core {c} does not exist (this machine has cores 0..{cores})"),
        )),
        _ => Ok(()),
    }
}
