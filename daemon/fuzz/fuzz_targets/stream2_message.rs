//! The Stream V2 decoder on arbitrary bytes: never panics, and what it accepts holds what it
//! promises (a raw array's bytes fit its shape, a bslz4 chunk's header its size).
#![no_main]

use detingest_daemon::source::stream2::message::{decode, Message, Payload};
use libfuzzer_sys::fuzz_target;

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
        }
    }
});
