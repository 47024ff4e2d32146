//! Criterion: the cost of moving a frame between stages, a pool-buffer handle through a
//! bounded crossbeam channel to another thread and back to its pool, next to a bare channel
//! round trip of a `usize`.

use std::thread;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use crossbeam::channel;
use detingest_shm::BufferPool;

const BATCH: u64 = 10_000;

fn handoff(c: &mut Criterion) {
    let mut g = c.benchmark_group("handoff");
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function("pool_buffer_through_queue", |b| {
        let pool = BufferPool::new(64, 1 << 20);
        b.iter(|| {
            let (tx, rx) = channel::bounded(16);
            let consumer = thread::spawn(move || rx.iter().count());
            for _ in 0..BATCH {
                let mut buf = pool.acquire();
                buf.set_len(1 << 20);
                tx.send(buf).expect("consumer alive");
            }
            drop(tx);
            consumer.join().expect("consumer finished")
        })
    });
    g.bench_function("bare_usize_through_queue", |b| {
        b.iter(|| {
            let (tx, rx) = channel::bounded(16);
            let consumer = thread::spawn(move || rx.iter().count());
            for i in 0..BATCH as usize {
                tx.send(i).expect("consumer alive");
            }
            drop(tx);
            consumer.join().expect("consumer finished")
        })
    });
    g.finish();
}

criterion_group!(benches, handoff);
criterion_main!(benches);
