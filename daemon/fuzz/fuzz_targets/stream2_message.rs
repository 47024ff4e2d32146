//! The Stream V2 decoder on arbitrary bytes: never panics, and what it accepts holds what it
//! promises (a raw array's bytes fit its shape, a bslz4 chunk's header its size); then what a
//! source does with an accepted image: the framing check of a chunk it would pass through,
//! and the decoding of one it would not, neither panicking, and a chunk whose framing checks
//! decoding to the size it states or refusing it.
#![no_main]

use detingest_daemon::source::stream2::message::{decode, Message, Payload};
use libfuzzer_sys::fuzz_target;

/// Largest decoded image tried (the fuzzer's shapes can claim gigabytes).
const MAX_RAW: usize = 1 << 22;

fuzz_target!(|data: &[u8]| {
    if let Ok(Message::Image(image)) = decode(data) {
        for (_, a) in image.arrays() {
            let bytes = u64::from(a.shape[0]) * u64::from(a.shape[1]) * a.pixel.size() as u64;
            match a.payload {
                Payload::Raw(b) => assert_eq!(b.len() as u64, bytes),
                Payload::Bslz4(b) => {
                    assert!(b.len() >= 12);
                    assert_eq!(u64::from_be_bytes(b[..8].try_into().unwrap()), bytes);
                }
                Payload::Lz4(_) => {}
            }
            if let Some(codec) = a.codec() {
                let framed = codec.check_framing(a.bytes(), a.pixel.size());
                if a.raw_len() <= MAX_RAW {
                    let mut out = vec![0u8; a.raw_len()];
                    let decoded = a.decode_into(&mut out);
                    if let (Ok(n), Ok(m)) = (framed, decoded) {
                        assert_eq!(n, m, "framing and decoding disagree on the size");
                    }
                }
            }
        }
    }
});
