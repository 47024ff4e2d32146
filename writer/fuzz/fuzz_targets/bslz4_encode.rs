//! Fuzz the bitshuffle-LZ4 (32008) encoder: any bytes as pixels of any element size, and the
//! same bytes stretched into runs (the zero bit planes the encoder takes without hashing),
//! must encode without a panic and decode back to themselves.
#![no_main]

use detingest_writer::Codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let es = [1, 2, 4, 8][usize::from(sel & 3)];
    let stretch = usize::from(sel >> 2) + 1;
    let runs: Vec<u8> = rest
        .iter()
        .flat_map(|&b| std::iter::repeat_n(b, stretch))
        .collect();
    for input in [rest, &runs[..]] {
        let input = &input[..input.len() / es * es];
        let codec = Codec::BitshuffleLz4;
        let mut chunk = vec![0u8; codec.max_compressed_len(input.len(), es)];
        let len = codec
            .compress_into(input, es, &mut chunk)
            .expect("any whole pixels encode");
        let mut back = vec![0u8; input.len()];
        let n = codec
            .decompress_into(&chunk[..len], es, &mut back)
            .expect("our own chunk decodes");
        assert_eq!(&back[..n], input);
    }
});
