//! The DECTRIS Stream V2 wire conventions the `stream2` source decodes and the `stream2` sink
//! encodes (FORMATS.md section 10): CBOR tags, and the RFC 8746 typed-array tag of each pixel
//! type (little-endian).

use detingest_shm::PixelType;

/// CBOR self-describe tag, around a whole message.
pub const SELF_DESCRIBE: u64 = 55799;
/// Multi-dimensional array `[dims, data]`, row-major (RFC 8746).
pub const MULTI_DIM: u64 = 40;
/// The same, column-major.
pub const MULTI_DIM_COLUMN_MAJOR: u64 = 1040;
/// DECTRIS compressed byte string `[algorithm, modifier, bytes]`.
pub const DECTRIS_COMPRESSION: u64 = 56500;

/// Typed-array tags and the pixel types they carry.
const TYPED_ARRAYS: [(u64, PixelType); 5] = [
    (64, PixelType::U8),
    (69, PixelType::U16),
    (70, PixelType::U32),
    (78, PixelType::I32),
    (85, PixelType::F32),
];

/// The typed-array tag of `pixel`.
pub fn typed_array_tag(pixel: PixelType) -> u64 {
    TYPED_ARRAYS
        .iter()
        .find(|(_, p)| *p == pixel)
        .map_or(64, |(t, _)| *t)
}

/// The pixel type of a typed-array tag, if it is one we take.
pub fn pixel_of_typed_array(tag: u64) -> Option<PixelType> {
    TYPED_ARRAYS
        .iter()
        .find(|(t, _)| *t == tag)
        .map(|(_, p)| *p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pixel_type_has_its_own_tag_both_ways() {
        for p in PixelType::ALL {
            assert_eq!(pixel_of_typed_array(typed_array_tag(p)), Some(p));
        }
        assert_eq!(pixel_of_typed_array(71), None, "u64 is not taken");
    }
}
