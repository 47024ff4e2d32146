//! Criterion: what the metrics cost. Per chunk, the hot path reads the clock twice and adds
//! one observation to a histogram (`metrics_observe`); next to it, in the same run, the
//! bitshuffle-LZ4 encoding of the chunk it times (one synthetic JUNGFRAU module frame), the
//! baseline the ratio is taken against. Per scrape, `GET /metrics` renders the text
//! (`metrics_render`, off the frame's path).

use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use detingest_daemon::contract::{RunState, SourceSummary, StatsSnapshot};
use detingest_daemon::metrics::{self, LatencyHistogram, Reading, Totals};
use detingest_daemon::source::synthetic::config::SyntheticConfig;
use detingest_daemon::source::synthetic::FrameBank;
use detingest_daemon::source::udp::assembler::PacketCounts;
use detingest_writer::Codec;

fn costs(c: &mut Criterion) {
    let mut g = c.benchmark_group("metrics");
    let h = LatencyHistogram::new();
    g.bench_function("metrics_observe", |b| {
        b.iter(|| {
            let t = Instant::now();
            h.observe(std::hint::black_box(t).elapsed());
        })
    });
    let syn = SyntheticConfig {
        bank_frames: 1,
        ..SyntheticConfig::default()
    };
    let input = FrameBank::generate(&syn).frame(1).to_vec();
    let codec = Codec::BitshuffleLz4;
    let mut out = vec![0u8; codec.max_compressed_len(input.len(), 2)];
    g.bench_function("bslz4_encode_module", |b| {
        b.iter(|| codec.compress_into(std::hint::black_box(&input), 2, &mut out))
    });
    let mut totals = Totals::default();
    let counters = StatsSnapshot {
        indexed: 1,
        recorded: 1,
        bytes_raw: 1,
        ..Default::default()
    };
    let packets = PacketCounts {
        accepted: 1,
        ..Default::default()
    };
    let sources: Vec<_> = (0..4)
        .map(|i| SourceSummary {
            name: format!("module{i}"),
            sent: 1,
            dropped: 0,
            torn: 0,
            malformed: 0,
            kind: Some(Arc::new(packets)),
            bound: None,
        })
        .collect();
    totals.add(&counters, &sources);
    let reading = Reading {
        totals,
        state: RunState::Running,
        stream: Some("bt/det/s".into()),
        ..Default::default()
    };
    g.bench_function("metrics_render", |b| {
        b.iter(|| metrics::render(std::hint::black_box(reading.clone())))
    });
    g.finish();
}

criterion_group!(benches, costs);
criterion_main!(benches);
