//! Fuzz the LZ4 (32004) decoder: any bytes must give an error or a result, never a panic.
#![no_main]

use detingest_writer::Codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|chunk: &[u8]| {
    let mut out = vec![0u8; 1 << 16];
    let _ = Codec::Lz4.decompress_into(chunk, 1, &mut out);
});
