//! Criterion: the LZ4 (32004) codec on one synthetic JUNGFRAU module frame, next to memcpy of
//! the same bytes.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use detingest_daemon::config::Config;
use detingest_daemon::source::synthetic::FrameBank;
use detingest_writer::Codec;

fn frame() -> Vec<u8> {
    let cfg = Config::parse(
        "[[source]]\nname = \"b\"\nstream = { beamtime = \"b\", source = \"b\", stream = \"b\" }\n\
         [source.synthetic]\nbank_frames = 1\n",
    )
    .expect("valid benchmark config");
    let syn = cfg.sources[0].synthetic.clone().expect("synthetic source");
    FrameBank::generate(&syn).frame(1).to_vec()
}

fn codec(c: &mut Criterion) {
    let input = frame();
    let mut out = vec![0u8; Codec::Lz4.max_compressed_len(input.len())];
    let len = Codec::Lz4.compress_into(&input, &mut out).expect("encodes");
    let chunk = out[..len].to_vec();
    let mut back = vec![0u8; input.len()];
    let mut g = c.benchmark_group("jungfrau_module_u16");
    g.throughput(Throughput::Bytes(input.len() as u64));
    g.bench_function("memcpy", |b| {
        b.iter(|| back.copy_from_slice(std::hint::black_box(&input)))
    });
    g.bench_function("lz4_32004_encode", |b| {
        b.iter(|| Codec::Lz4.compress_into(std::hint::black_box(&input), &mut out))
    });
    g.bench_function("lz4_32004_decode", |b| {
        b.iter(|| Codec::Lz4.decompress_into(std::hint::black_box(&chunk), &mut back))
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
