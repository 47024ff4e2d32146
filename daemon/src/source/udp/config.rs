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
    /// only some rows; the rest of the tile holds `fill`. Default: all. `readnrows` says the
    /// same from what the detector was told; give one of the two.
    #[serde(default)]
    pub readout_packets: Option<[u32; 2]>,
    /// The module's `readnrows` (JUNGFRAU partial readout: that many rows around the module's
    /// middle are read out): the port's packet range follows from it, `interface` and
    /// `interfaces` (see [`UdpConfig::readout`]).
    #[serde(default)]
    pub readnrows: Option<u32>,
    /// UDP interfaces of the module (`numinterfaces`): 1, or 2 when each half module sends to
    /// its own port (the port's `shape` is then half the module's rows).
    #[serde(default = "default_interfaces")]
    pub interfaces: u32,
    /// Which of the module's interfaces this port receives: 0 (the module's first rows) or 1.
    #[serde(default)]
    pub interface: u32,
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
fn default_interfaces() -> u32 {
    1
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

    /// The packet numbers sent per frame, `[first, end)`: `readout_packets`, or from
    /// `readnrows`. The module has `interfaces x shape[0]` rows; the rows read out are the
    /// `readnrows` around its middle; interface `i` holds rows `i x shape[0]` up, its packet
    /// `k` the rows `k x r ..< (k + 1) x r` of those (`r` rows per packet). So with 512 rows
    /// and `readnrows` 256, one interface sends packets 32-95 of 128; with two, interface 0
    /// sends 32-63 and interface 1 sends 0-31 of 64.
    pub fn readout(&self) -> [u32; 2] {
        match (self.readout_packets, self.readnrows_packets()) {
            (Some(r), _) => r,
            (None, Some(Ok(r))) => r,
            _ => [0, self.packets_per_frame],
        }
    }

    /// The packet range `readnrows` gives this port, or why it cannot.
    fn readnrows_packets(&self) -> Option<Result<[u32; 2], String>> {
        let n = self.readnrows?;
        let ny = self.shape[0];
        let module = ny * self.interfaces;
        let rows_per_packet = ny / self.packets_per_frame.max(1);
        if rows_per_packet == 0 || rows_per_packet * self.packets_per_frame != ny {
            return Some(Err(format!(
                "needs whole rows per packet: {ny} rows in {} packets",
                self.packets_per_frame
            )));
        }
        if n == 0 || n > module || (module - n) % (2 * rows_per_packet) != 0 {
            return Some(Err(format!(
                "must be 1..={module} rows leaving whole packets of {rows_per_packet} rows \
                 unread on each side (e.g. {})",
                module / 2
            )));
        }
        let (low, high) = ((module - n) / 2, (module + n) / 2);
        let (mine_low, mine_high) = (self.interface * ny, (self.interface + 1) * ny);
        let (lo, hi) = (low.max(mine_low), high.min(mine_high));
        if lo >= hi {
            return Some(Err(format!(
                "reads rows {low}..{high} of the module: interface {} (rows {mine_low}..{mine_high}) sends nothing",
                self.interface
            )));
        }
        Some(Ok([
            (lo - mine_low) / rows_per_packet,
            (hi - mine_low) / rows_per_packet,
        ]))
    }

    /// Checks what the types alone cannot, naming `source[i].udp.*` keys.
    pub(crate) fn check(&self, i: usize) -> Result<(), ConfigError> {
        let key = |k: &str| format!("source[{i}].udp.{k}");
        check_range(key("interfaces"), self.interfaces, 1..=2)?;
        check_range(key("interface"), self.interface, 0..=self.interfaces - 1)?;
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
        match (self.readout_packets, self.readnrows_packets()) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    key("readnrows"),
                    "give readnrows or readout_packets, not both",
                ))
            }
            (None, Some(Err(e))) => return Err(ConfigError::new(key("readnrows"), e)),
            _ => {}
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A JUNGFRAU port: 128 packets of 8192 bytes for a whole module (one interface), 64 for
    /// a half module (two).
    fn port(interfaces: u32, interface: u32, readnrows: Option<u32>) -> UdpConfig {
        let text = format!(
            "port = 9000\nshape = [{}, 1024]\npackets_per_frame = {}\ninterfaces = {interfaces}\n\
             interface = {interface}\n{}",
            512 / interfaces,
            128 / interfaces,
            readnrows.map_or(String::new(), |n| format!("readnrows = {n}\n"))
        );
        toml::from_str(&text).unwrap()
    }

    #[test]
    fn readnrows_gives_each_interface_its_packets() {
        assert_eq!(port(1, 0, None).readout(), [0, 128]);
        assert_eq!(port(1, 0, Some(256)).readout(), [32, 96]);
        assert_eq!(port(2, 0, Some(256)).readout(), [32, 64]);
        assert_eq!(port(2, 1, Some(256)).readout(), [0, 32]);
        assert_eq!(port(2, 1, Some(512)).readout(), [0, 64]);
        assert_eq!(port(2, 0, Some(8)).readout(), [63, 64]);
        for p in [port(1, 0, Some(256)), port(2, 1, Some(8))] {
            assert!(p.check(0).is_ok());
        }
    }

    #[test]
    fn bad_partial_readout_names_its_key() {
        let key = |c: UdpConfig| c.check(3).unwrap_err().key;
        assert_eq!(key(port(2, 0, Some(6))), "source[3].udp.readnrows"); // not whole packets
        assert_eq!(key(port(1, 0, Some(1024))), "source[3].udp.readnrows");
        assert_eq!(key(port(2, 2, None)), "source[3].udp.interface");
        assert_eq!(key(port(3, 0, None)), "source[3].udp.interfaces");
        let mut both = port(1, 0, Some(256));
        both.readout_packets = Some([32, 96]);
        assert_eq!(key(both), "source[3].udp.readnrows");
    }
}
