//! `[source.shm]`: the shared-memory ring's table, defaults and validation.

use std::path::PathBuf;

use detingest_shm::{Name, PixelType};
use serde::Deserialize;

use crate::check::{check_frame, ConfigError};

/// `[source.shm]`: a shared-memory ring, created by the daemon at start, that one producer
/// process at a time (vendor software linking libdetingest) writes frames into.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShmConfig {
    /// Ring name: the file `<dir>/<ring>` (default: the source's name).
    #[serde(default)]
    pub ring: Option<Name>,
    /// Directory of the ring files.
    #[serde(default = "default_shm_dir")]
    pub dir: PathBuf,
    /// Slots in the ring (a power of two): frames the producer can be ahead by.
    #[serde(default = "default_slots")]
    pub slots: u32,
    /// `[ny, nx]` of the frames producers must send.
    pub shape: [u32; 2],
    /// Their pixel type.
    pub pixel: PixelType,
    /// The module this ring carries (producers must say the same).
    #[serde(default)]
    pub module: u16,
    /// File mode of the ring, e.g. `0o600` (default), `0o660` (default with a group).
    #[serde(default)]
    pub mode: Option<u32>,
    /// Group that may open the ring (a name from /etc/group).
    #[serde(default)]
    pub group: Option<String>,
    /// End the stream, and so the run, when a producer closes cleanly (default: serve
    /// producer after producer until the daemon is stopped).
    #[serde(default)]
    pub end_on_close: bool,
    /// Microseconds the source spins on an empty ring before sleeping on its futex: longer
    /// keeps a core busy while idle, and saves the producer a wake-up call and the frame a
    /// wake-up latency (tens of us here, docs/BENCHMARKS.md) whenever frames come closer
    /// together than this.
    #[serde(default = "default_spin_us")]
    pub spin_us: u64,
}

fn default_spin_us() -> u64 {
    detingest_shm::ring::DEFAULT_SPIN.as_micros() as u64
}

fn default_shm_dir() -> PathBuf {
    PathBuf::from("/dev/shm/detingest")
}
fn default_slots() -> u32 {
    64
}

impl ShmConfig {
    /// The ring file of source `source`.
    pub fn ring_path(&self, source: &Name) -> PathBuf {
        self.dir.join(self.ring.as_ref().unwrap_or(source).as_str())
    }

    /// The file mode: as configured, else 0o660 with a group and 0o600 without.
    pub fn file_mode(&self) -> u32 {
        self.mode
            .unwrap_or(if self.group.is_some() { 0o660 } else { 0o600 })
    }

    /// The group's id, looked up by name.
    pub fn gid(&self, i: usize) -> Result<Option<u32>, ConfigError> {
        let Some(name) = &self.group else {
            return Ok(None);
        };
        let key = format!("source[{i}].shm.group");
        match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => Ok(Some(g.gid.as_raw())),
            Ok(None) => Err(ConfigError::new(key, format!("no group named {name:?}"))),
            Err(e) => Err(ConfigError::new(
                key,
                format!("cannot look up {name:?}: {e}"),
            )),
        }
    }

    /// Checks what the types alone cannot, naming `source[i].shm.*` keys.
    pub(crate) fn check(&self, i: usize) -> Result<(), ConfigError> {
        let key = |k: &str| format!("source[{i}].shm.{k}");
        if self.slots < 2 || self.slots > 65_536 || !self.slots.is_power_of_two() {
            return Err(ConfigError::new(
                key("slots"),
                format!("{} is not a power of two in 2..=65536", self.slots),
            ));
        }
        check_frame(&key("shape"), self.pixel, self.shape)?;
        if let Some(m) = self.mode {
            if m > 0o777 || m & 0o600 != 0o600 {
                return Err(ConfigError::new(
                    key("mode"),
                    format!("{m:#o} must be permission bits (<= 0o777) including 0o600"),
                ));
            }
        }
        if self.spin_us > 1_000_000 {
            return Err(ConfigError::new(
                key("spin_us"),
                "must be at most 1000000 (1 s)",
            ));
        }
        if !self.dir.is_absolute() {
            return Err(ConfigError::new(key("dir"), "must be an absolute path"));
        }
        self.gid(i)?;
        Ok(())
    }
}
