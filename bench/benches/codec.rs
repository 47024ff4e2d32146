//! Criterion: every codec (and every bitshuffle transpose kernel) on one synthetic JUNGFRAU
//! module frame (512 x 1024 u16, Poisson(0.5) background plus peaks), next to memcpy of the
//! same bytes.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use detingest_daemon::source::synthetic::config::SyntheticConfig;
use detingest_daemon::source::synthetic::FrameBank;
use detingest_writer::{bitshuffle_lz4_with, Codec, Kernel};

fn frame() -> Vec<u8> {
    let syn = SyntheticConfig {
        bank_frames: 1,
        ..SyntheticConfig::default()
    };
    FrameBank::generate(&syn).frame(1).to_vec()
}

fn codec(c: &mut Criterion) {
    let input = frame();
    let mut back = vec![0u8; input.len()];
    let mut g = c.benchmark_group("jungfrau_module_u16");
    g.throughput(Throughput::Bytes(input.len() as u64));
    g.bench_function("memcpy", |b| {
        b.iter(|| back.copy_from_slice(std::hint::black_box(&input)))
    });
    for codec in [Codec::Lz4, Codec::BitshuffleLz4] {
        let mut out = vec![0u8; codec.max_compressed_len(input.len(), 2)];
        let len = codec.compress_into(&input, 2, &mut out).expect("encodes");
        let chunk = out[..len].to_vec();
        g.bench_function(format!("{}_encode", codec.name()), |b| {
            b.iter(|| codec.compress_into(std::hint::black_box(&input), 2, &mut out))
        });
        g.bench_function(format!("{}_decode", codec.name()), |b| {
            b.iter(|| codec.decompress_into(std::hint::black_box(&chunk), 2, &mut back))
        });
    }
    let mut out = vec![0u8; Codec::BitshuffleLz4.max_compressed_len(input.len(), 2)];
    for kernel in Kernel::available() {
        g.bench_function(format!("bslz4_encode_{kernel:?}").to_lowercase(), |b| {
            b.iter(|| bitshuffle_lz4_with(kernel, std::hint::black_box(&input), 2, &mut out))
        });
    }
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
