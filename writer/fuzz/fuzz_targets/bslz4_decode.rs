//! Fuzz the bitshuffle-LZ4 (32008) decoder: any bytes, any element size, must give an error or
//! a result, never a panic or an out-of-bounds access. Valid chunks re-encode identically.
#![no_main]

use detingest_writer::Codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, chunk)) = data.split_first() else {
        return;
    };
    let es = [1, 2, 4, 8][usize::from(sel & 3)];
    let mut out = vec![0u8; 1 << 16];
    if let Ok(n) = Codec::BitshuffleLz4.decompress_into(chunk, es, &mut out) {
        // Whatever decoded must encode and decode back to itself.
        let mut again = vec![0u8; Codec::BitshuffleLz4.max_compressed_len(n, es)];
        let len = Codec::BitshuffleLz4
            .compress_into(&out[..n], es, &mut again)
            .expect("decoded data re-encodes");
        let mut back = vec![0u8; n];
        Codec::BitshuffleLz4
            .decompress_into(&again[..len], es, &mut back)
            .expect("our own chunk decodes");
        assert_eq!(back, out[..n]);
    }
});
