//! Packet headers of detector UDP streams, behind [`PacketFormat`] so another detector's
//! header is one more file: parse a datagram into a [`Packet`] (frame number, packet number,
//! module, payload) or say why not.
//!
//! [`Sls2`] is slsDetectorPackage's header, version 2 (JUNGFRAU, EIGER, MOENCH ...): 48 bytes,
//! little-endian, read in place with zerocopy.

use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, KnownLayout, Unaligned};

/// One datagram, parsed. The payload borrows the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// The detector's frame number.
    pub frame_number: u64,
    /// Position of the payload in the frame, 0-based.
    pub packet_number: u32,
    /// Module id the packet claims.
    pub module: u16,
    /// The pixel bytes.
    pub payload: &'a [u8],
}

/// Why a datagram is not a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketError {
    /// Shorter than the header.
    TooShort,
    /// A header version this format does not read.
    BadVersion(u8),
}

/// A detector's packet format.
pub trait PacketFormat: Send {
    /// Parses `datagram`.
    fn parse<'a>(&self, datagram: &'a [u8]) -> Result<Packet<'a>, PacketError>;
}

/// slsDetectorPackage UDP header, version 2 (`udpheader.rst`).
#[derive(FromBytes, KnownLayout, Immutable, Unaligned, Debug)]
#[repr(C)]
pub struct SlsHeaderV2 {
    /// Frame number.
    pub frame_number: U64,
    /// Exposure length (or sub-frame number).
    pub exp_length: U32,
    /// Packet number within the frame.
    pub packet_number: U32,
    /// Bunch id.
    pub det_spec1: U64,
    /// Detector timestamp (detector clock ticks).
    pub timestamp: U64,
    /// Module id.
    pub mod_id: U16,
    /// Row of the module in the detector.
    pub row: U16,
    /// Column of the module in the detector.
    pub column: U16,
    /// Detector specific.
    pub det_spec2: U16,
    /// Detector specific.
    pub det_spec3: U32,
    /// Detector specific.
    pub det_spec4: U16,
    /// Detector type.
    pub det_type: u8,
    /// Header version: 2.
    pub version: u8,
}

/// Bytes of the sls v2 header.
pub const SLS2_HEADER_BYTES: usize = 48;
const _: () = assert!(std::mem::size_of::<SlsHeaderV2>() == SLS2_HEADER_BYTES);

/// The sls v2 format.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sls2;

impl PacketFormat for Sls2 {
    fn parse<'a>(&self, datagram: &'a [u8]) -> Result<Packet<'a>, PacketError> {
        let (h, payload) =
            SlsHeaderV2::ref_from_prefix(datagram).map_err(|_| PacketError::TooShort)?;
        if h.version != 2 {
            return Err(PacketError::BadVersion(h.version));
        }
        Ok(Packet {
            frame_number: h.frame_number.get(),
            packet_number: h.packet_number.get(),
            module: h.mod_id.get(),
            payload,
        })
    }
}

/// Writes an sls v2 header for `frame_number`, `packet_number`, `module` into `out[..48]`
/// (the detector simulator's and the tests' side of the format).
pub fn write_sls2(out: &mut [u8], frame_number: u64, packet_number: u32, module: u16) {
    out[..SLS2_HEADER_BYTES].fill(0);
    out[0..8].copy_from_slice(&frame_number.to_le_bytes());
    out[12..16].copy_from_slice(&packet_number.to_le_bytes());
    out[32..34].copy_from_slice(&module.to_le_bytes());
    out[47] = 2;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_sit_at_the_documented_offsets() {
        let mut d = vec![0u8; 48 + 4];
        write_sls2(&mut d, 0x0102_0304_0506_0708, 127, 3);
        d[48..].copy_from_slice(b"pix!");
        let p = Sls2.parse(&d).unwrap();
        assert_eq!(p.frame_number, 0x0102_0304_0506_0708);
        assert_eq!((p.packet_number, p.module), (127, 3));
        assert_eq!(p.payload, b"pix!");
        assert_eq!(d[12], 127, "packetNumber at offset 12");
        assert_eq!(d[32], 3, "modId at offset 32");
    }

    #[test]
    fn short_and_foreign_datagrams_are_refused() {
        assert_eq!(Sls2.parse(&[]), Err(PacketError::TooShort));
        assert_eq!(Sls2.parse(&[2; 47]), Err(PacketError::TooShort));
        let mut d = [0u8; 48];
        d[47] = 1;
        assert_eq!(Sls2.parse(&d), Err(PacketError::BadVersion(1)));
        d[47] = 2;
        assert_eq!(Sls2.parse(&d).unwrap().payload, &[] as &[u8]);
    }
}
