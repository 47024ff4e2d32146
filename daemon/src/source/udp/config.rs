//! `[source.udp]`: one UDP port's table, defaults and validation.

use detingest_shm::PixelType;
use serde::Deserialize;

use super::assembler::MAX_PACKETS;
use crate::check::{check_at_least_one, check_frame, check_range, ConfigError};
use crate::source::synthetic::config::{default_pixel, default_shape};

/// `[source.udp]`: one UDP port of a detector module, received by a pinned thread
/// (`core` of the `[[source]]`) and assembled into frames.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UdpConfig {
    /// Address to bind.
    #[serde(default = "default_bind")]
    pub bind: std::net::IpAddr,
    /// Port to bind (0: any free port, for tests).
    pub port: u16,
    /// The module id (`modId`) packets must carry: the module's own id, e.g. 1234 (omitted:
    /// any). `module` is accepted as its old name.
    #[serde(default, alias = "module")]
    pub mod_id: Option<u16>,
    /// `[row, column]` of this port's tile in the source's grid (the grid counts what one port
    /// sends: a module, or half a module with two interfaces). Omitted with a grid of more than
    /// one tile: taken from the packets' `row` and `column`, as slsReceiver does.
    #[serde(default)]
    pub place: Option<[u32; 2]>,
    /// Packets per frame of the port's full tile (at most 512).
    #[serde(default = "default_packets")]
    pub packets_per_frame: u32,
    /// `[first, end)`: the packet numbers the detector sends per frame, when it reads out
    /// only some rows (`readnrows`); the rest of the tile holds `fill`. Default: all.
    #[serde(default)]
    pub readout_packets: Option<[u32; 2]>,
    /// Payload bytes per packet.
    #[serde(default = "default_payload")]
    pub payload_bytes: usize,
    /// Packet header format.
    #[serde(default)]
    pub header: HeaderFormat,
    /// `[ny, nx]` of the frame (its bytes: packets_per_frame x payload_bytes).
    #[serde(default = "default_shape")]
    pub shape: [u32; 2],
    /// Pixel type.
    #[serde(default = "default_pixel")]
    pub pixel: PixelType,
    /// Socket receive buffer (SO_RCVBUF) in bytes.
    #[serde(default = "default_rcvbuf")]
    pub rcvbuf_bytes: usize,
    /// Receive path: `auto` (io_uring if the kernel allows, else recvmmsg), `io_uring`, `recvmmsg`.
    #[serde(default)]
    pub receive: ReceivePath,
    /// Frames open at once: a frame still missing packets leaves when one `window` frames
    /// newer arrives.
    #[serde(default = "default_window")]
    pub window: u64,
    /// Longest a frame stays open, in milliseconds.
    #[serde(default = "default_udp_timeout")]
    pub timeout_ms: u64,
    /// Pixel value written where packets are missing.
    #[serde(default)]
    pub fill: u64,
    /// Store the rows bottom to top: an EIGER bottom half module sends its rows mirrored
    /// (slsDetectorPackage's `flipRows`), so its tile reads the right way up in the image.
    /// Needs whole rows per packet.
    #[serde(default)]
    pub flip_rows: bool,
    /// Frame-number jump ahead from which a new numbering is a detector restart rather than
    /// lost frames (a jump back is one at any distance).
    #[serde(default = "default_restart_gap")]
    pub restart_gap: u64,
    /// Consecutive distinct packets of a new numbering, none of the current one in between,
    /// that confirm a restart.
    #[serde(default = "default_restart_confirm")]
    pub restart_confirm: u32,
}

/// Packet header formats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeaderFormat {
    /// slsDetectorPackage v2 (48 bytes).
    #[default]
    Sls2,
}

/// UDP receive paths.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceivePath {
    /// io_uring when available, else recvmmsg.
    #[default]
    Auto,
    /// io_uring multishot receive with provided buffers; refuse to start without it.
    IoUring,
    /// recvmmsg batches.
    Recvmmsg,
}

fn default_bind() -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
}
fn default_packets() -> u32 {
    128
}
fn default_payload() -> usize {
    8192
}
fn default_rcvbuf() -> usize {
    64 << 20
}
fn default_window() -> u64 {
    4
}
fn default_udp_timeout() -> u64 {
    100
}
fn default_restart_gap() -> u64 {
    65_536
}
fn default_restart_confirm() -> u32 {
    8
}

impl UdpConfig {
    /// The socket address to bind.
    pub fn address(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.bind, self.port)
    }

    /// The packet numbers sent per frame, `[first, end)`.
    pub fn readout(&self) -> [u32; 2] {
        self.readout_packets.unwrap_or([0, self.packets_per_frame])
    }

    /// Checks what the types alone cannot, naming `source[i].udp.*` keys.
    pub(crate) fn check(&self, i: usize) -> Result<(), ConfigError> {
        let key = |k: &str| format!("source[{i}].udp.{k}");
        check_range(
            key("packets_per_frame"),
            self.packets_per_frame,
            1..=MAX_PACKETS,
        )?;
        if self.payload_bytes == 0
            || self.payload_bytes > 65_000
            || self.payload_bytes % self.pixel.size() != 0
        {
            return Err(ConfigError::new(
                key("payload_bytes"),
                format!(
                    "must be in 1..=65000 and a multiple of the pixel size ({})",
                    self.pixel.size()
                ),
            ));
        }
        let frame = check_frame(&key("shape"), self.pixel, self.shape)?;
        let packets = self.packets_per_frame as usize * self.payload_bytes;
        if frame != packets {
            return Err(ConfigError::new(
                key("shape"),
                format!(
                    "{:?} {} pixels make {frame} bytes, but {} packets of {} bytes carry {packets}",
                    self.shape,
                    self.pixel.name(),
                    self.packets_per_frame,
                    self.payload_bytes
                ),
            ));
        }
        let [first, end] = self.readout();
        if first >= end || end > self.packets_per_frame {
            return Err(ConfigError::new(
                key("readout_packets"),
                format!(
                    "[{first}, {end}] is not a range [first, end) inside 0..{}",
                    self.packets_per_frame
                ),
            ));
        }
        let row = self.shape[1] as usize * self.pixel.size();
        if self.flip_rows && (row == 0 || self.payload_bytes % row != 0) {
            return Err(ConfigError::new(
                key("flip_rows"),
                format!(
                    "needs whole rows per packet: {} payload bytes are not a multiple of a row's {row}",
                    self.payload_bytes
                ),
            ));
        }
        check_range(key("window"), self.window, 1..=1024)?;
        check_at_least_one(key("timeout_ms"), self.timeout_ms)?;
        if self.fill > self.pixel.max_value() as u64 {
            return Err(ConfigError::new(
                key("fill"),
                format!("does not fit a {} pixel", self.pixel.name()),
            ));
        }
        if self.restart_gap <= self.window {
            return Err(ConfigError::new(
                key("restart_gap"),
                "must be larger than window",
            ));
        }
        check_at_least_one(key("restart_confirm"), self.restart_confirm)?;
        Ok(())
    }
}
