//! The frame model: stream names, pixel types and the per-frame description.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest accepted name part, in bytes.
pub const NAME_MAX: usize = 64;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty.
    #[error("name is empty (expected 1 to {NAME_MAX} characters of [A-Za-z0-9._-])")]
    Empty,
    /// The name is longer than [`NAME_MAX`].
    #[error("name {0:?} is longer than {NAME_MAX} characters")]
    TooLong(String),
    /// The name contains a character outside `[A-Za-z0-9._-]`.
    #[error("name {name:?} contains {bad:?}; only [A-Za-z0-9._-] is allowed")]
    BadChar {
        /// The refused name.
        name: String,
        /// The first offending character.
        bad: char,
    },
    /// The name is `.` or `..`, which would address a directory other than its own.
    #[error("name {0:?} would escape the data directory")]
    DotName(String),
}

/// One part of a stream's identity: `[A-Za-z0-9._-]{1,64}`, and never `.` or `..`.
///
/// Names become directory and file names under the data directory, so anything that could
/// escape it or confuse a shell is refused at construction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

impl Name {
    /// Validates `s` as a name part.
    pub fn new(s: &str) -> Result<Self, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > NAME_MAX {
            return Err(NameError::TooLong(s.to_owned()));
        }
        if let Some(bad) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(NameError::BadChar {
                name: s.to_owned(),
                bad,
            });
        }
        if s == "." || s == ".." {
            return Err(NameError::DotName(s.to_owned()));
        }
        Ok(Self(s.to_owned()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Name {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        Self::new(&s)
    }
}

impl From<Name> for String {
    fn from(n: Name) -> String {
        n.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A stream: beamtime / data source / stream, as in ASAPO. Each stream numbers its frames
/// 1, 2, 3 ... without gaps.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamId {
    /// The beamtime (proposal or experiment) the data belongs to.
    pub beamtime: Name,
    /// The data source, usually the detector.
    pub source: Name,
    /// The stream within the source, usually one scan or run.
    pub stream: Name,
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.beamtime, self.source, self.stream)
    }
}

/// The element type of a frame's pixels, stored little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelType {
    /// Unsigned 8-bit.
    U8,
    /// Unsigned 16-bit (JUNGFRAU, EIGER in 16-bit mode).
    U16,
    /// Unsigned 32-bit.
    U32,
    /// Signed 32-bit.
    I32,
    /// IEEE 754 single precision.
    F32,
}

impl PixelType {
    /// Every pixel type.
    pub const ALL: [PixelType; 5] = [Self::U8, Self::U16, Self::U32, Self::I32, Self::F32];

    /// The type of a [`PixelType::name`] (`"u16"`).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Bytes per pixel.
    pub const fn size(self) -> usize {
        match self {
            Self::U8 => 1,
            Self::U16 => 2,
            Self::U32 | Self::I32 | Self::F32 => 4,
        }
    }

    /// The lower-case name used in configuration and notifications (`"u16"`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Self::U8 => "u8",
            Self::U16 => "u16",
            Self::U32 => "u32",
            Self::I32 => "i32",
            Self::F32 => "f32",
        }
    }

    /// NumPy's name of the type (`"uint16"`), as viewers pass it to `np.dtype`.
    pub const fn numpy_name(self) -> &'static str {
        match self {
            Self::U8 => "uint8",
            Self::U16 => "uint16",
            Self::U32 => "uint32",
            Self::I32 => "int32",
            Self::F32 => "float32",
        }
    }

    /// NumPy's array-interface type string, little-endian (`"<u2"`).
    pub const fn numpy_typestr(self) -> &'static str {
        match self {
            Self::U8 => "|u1",
            Self::U16 => "<u2",
            Self::U32 => "<u4",
            Self::I32 => "<i4",
            Self::F32 => "<f4",
        }
    }

    /// Bytes of a `[ny, nx]` frame of this type.
    pub const fn frame_bytes(self, shape: [u32; 2]) -> usize {
        shape[0] as usize * shape[1] as usize * self.size()
    }

    /// The largest value a pixel can hold, as f64: NXmx's `saturation_value`.
    pub fn max_value(self) -> f64 {
        match self {
            Self::U8 => f64::from(u8::MAX),
            Self::U16 => f64::from(u16::MAX),
            Self::U32 => f64::from(u32::MAX),
            Self::I32 => f64::from(i32::MAX),
            Self::F32 => f64::from(f32::MAX),
        }
    }
}

/// What the detector says about one frame of one module. Plain data, `Copy`: it travels beside
/// the pixel buffer, never inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameMeta {
    /// The detector's own frame counter.
    pub frame_number: u64,
    /// Module (ASAPO dataset substream) id; 0 for single-module detectors.
    pub module: u16,
    /// Element type of the pixels.
    pub pixel: PixelType,
    /// Rows and columns: `[ny, nx]`.
    pub shape: [u32; 2],
    /// When the frame was taken as the source knows it, nanoseconds since the Unix epoch: a
    /// shared-memory producer's own timestamp; for UDP, the host's arrival time of its first
    /// packet.
    pub timestamp_ns: u64,
    /// The detector's own timestamp, in its clock's ticks, as sent (0: the source has none).
    pub detector_timestamp: u64,
    /// The bunch id the detector sent (0: none).
    pub bunch_id: u64,
    /// Packets of this frame that never arrived (UDP sources; their bytes hold the fill
    /// value). Empty for a complete frame.
    pub missing: PacketMask,
}

/// Which packets of a frame never arrived: bit `k` (byte `k / 8`, bit `k % 8`) for packet
/// `k`, up to [`PacketMask::MAX`] packets (the sls receivers' 512-bit mask).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketMask(pub [u8; 64]);

impl Default for PacketMask {
    fn default() -> Self {
        Self::NONE
    }
}

impl PacketMask {
    /// Most packets a mask describes.
    pub const MAX: u32 = 512;
    /// No packet missing.
    pub const NONE: Self = Self([0; 64]);

    /// Marks packet `k` missing (`k < MAX`; larger `k` are ignored).
    pub fn set(&mut self, k: u32) {
        if let Some(b) = self.0.get_mut((k / 8) as usize) {
            *b |= 1 << (k % 8);
        }
    }

    /// True when packet `k` is marked missing.
    pub fn contains(&self, k: u32) -> bool {
        self.0
            .get((k / 8) as usize)
            .is_some_and(|b| b & (1 << (k % 8)) != 0)
    }

    /// Number of packets marked missing.
    pub fn count(&self) -> u32 {
        self.0.iter().map(|b| b.count_ones()).sum()
    }

    /// The missing packet numbers, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (0..Self::MAX).filter(|&k| self.contains(k))
    }
}

impl FrameMeta {
    /// Bytes of pixel data this frame holds: `ny * nx * pixel size`.
    pub fn byte_len(&self) -> usize {
        self.pixel.frame_bytes(self.shape)
    }

    /// Packets of the frame that never arrived.
    pub fn packets_lost(&self) -> u32 {
        self.missing.count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_names_of_the_allowed_alphabet() {
        for ok in [
            "a",
            "scan_001",
            "p11-2026.10",
            &"x".repeat(64),
            "..a",
            "a..",
        ] {
            assert!(Name::new(ok).is_ok(), "{ok} should be accepted");
        }
    }

    #[test]
    fn refuses_names_that_could_escape_or_confuse() {
        assert_eq!(Name::new(""), Err(NameError::Empty));
        assert!(matches!(
            Name::new(&"x".repeat(65)),
            Err(NameError::TooLong(_))
        ));
        assert!(matches!(Name::new("."), Err(NameError::DotName(_))));
        assert!(matches!(Name::new(".."), Err(NameError::DotName(_))));
        for (bad, c) in [
            ("a/b", '/'),
            ("a b", ' '),
            ("ä", 'ä'),
            ("a\0", '\0'),
            ("$x", '$'),
        ] {
            assert_eq!(
                Name::new(bad),
                Err(NameError::BadChar {
                    name: bad.into(),
                    bad: c
                })
            );
        }
    }

    #[test]
    fn error_message_names_the_refused_name() {
        let msg = Name::new("../etc").unwrap_err().to_string();
        assert!(msg.contains("\"../etc\""), "{msg}");
    }

    #[test]
    fn packet_masks_count_and_list_their_packets() {
        let mut m = PacketMask::NONE;
        for k in [0, 9, 127, 511, 512] {
            m.set(k);
        }
        assert_eq!(m.count(), 4, "512 is beyond the mask");
        assert_eq!(m.iter().collect::<Vec<_>>(), [0, 9, 127, 511]);
        assert_eq!(m.0[1], 0b10, "packet 9: byte 1, bit 1");
    }

    #[test]
    fn byte_len_follows_shape_and_type() {
        let meta = FrameMeta {
            frame_number: 1,
            module: 0,
            pixel: PixelType::U16,
            shape: [512, 1024],
            timestamp_ns: 0,
            detector_timestamp: 0,
            bunch_id: 0,
            missing: PacketMask::NONE,
        };
        assert_eq!(meta.byte_len(), 1 << 20);
    }
}
