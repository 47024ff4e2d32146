//! Packet headers of detector UDP streams, behind [`PacketFormat`] so another detector's
//! header is one more file: parse a datagram into a [`Packet`] (frame number, packet number,
//! module id, row and column, the detector's timestamp and bunch id, payload) or say why not.
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
    /// Module id the packet claims (the module's own id, e.g. 1234).
    pub mod_id: u16,
    /// Row of the sending port's part of the detector.
    pub row: u16,
    /// Column of the sending port's part of the detector.
    pub column: u16,
    /// The detector's timestamp (its clock's ticks).
    pub timestamp: u64,
    /// The bunch id (JUNGFRAU: the machine's; 0 where the detector has none).
    pub bunch_id: u64,
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
            mod_id: h.mod_id.get(),
            row: h.row.get(),
            column: h.column.get(),
            timestamp: h.timestamp.get(),
            bunch_id: h.det_spec1.get(),
            payload,
        })
    }
}

/// The header fields a sender chooses (the detector simulator's and the tests' side).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sls2Fields {
    /// Frame number.
    pub frame_number: u64,
    /// Packet number within the frame.
    pub packet_number: u32,
    /// Bunch id (`detSpec1`).
    pub bunch_id: u64,
    /// Detector timestamp.
    pub timestamp: u64,
    /// Module id.
    pub mod_id: u16,
    /// Row of the port's part.
    pub row: u16,
    /// Column of the port's part.
    pub column: u16,
    /// Detector type (JUNGFRAU: 3).
    pub det_type: u8,
}

/// Writes the sls v2 header of `h` into `out[..48]`.
pub fn write_sls2(out: &mut [u8], h: &Sls2Fields) {
    out[..SLS2_HEADER_BYTES].fill(0);
    out[0..8].copy_from_slice(&h.frame_number.to_le_bytes());
    out[12..16].copy_from_slice(&h.packet_number.to_le_bytes());
    out[16..24].copy_from_slice(&h.bunch_id.to_le_bytes());
    out[24..32].copy_from_slice(&h.timestamp.to_le_bytes());
    out[32..34].copy_from_slice(&h.mod_id.to_le_bytes());
    out[34..36].copy_from_slice(&h.row.to_le_bytes());
    out[36..38].copy_from_slice(&h.column.to_le_bytes());
    out[46] = h.det_type;
    out[47] = 2;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_sit_at_the_documented_offsets() {
        let mut d = vec![0u8; 48 + 4];
        let h = Sls2Fields {
            frame_number: 0x0102_0304_0506_0708,
            packet_number: 127,
            bunch_id: 0x1111_2222_3333_4444,
            timestamp: 0x5555_6666_7777_8888,
            mod_id: 1234,
            row: 3,
            column: 1,
            det_type: 3,
        };
        write_sls2(&mut d, &h);
        d[48..].copy_from_slice(b"pix!");
        let p = Sls2.parse(&d).unwrap();
        assert_eq!(p.frame_number, h.frame_number);
        assert_eq!(
            (p.packet_number, p.mod_id, p.row, p.column),
            (127, 1234, 3, 1)
        );
        assert_eq!((p.bunch_id, p.timestamp), (h.bunch_id, h.timestamp));
        assert_eq!(p.payload, b"pix!");
        assert_eq!(d[12], 127, "packetNumber at offset 12");
        assert_eq!(
            &d[16..18],
            &[0x44, 0x44],
            "bunch id (detSpec1) at offset 16"
        );
        assert_eq!(&d[32..34], &1234u16.to_le_bytes(), "modId at offset 32");
        assert_eq!((d[34], d[36]), (3, 1), "row at 34, column at 36");
        assert_eq!((d[46], d[47]), (3, 2), "detType, version");
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
