//! A compression worker: takes raw frames in index order from the shared queue, encodes each
//! straight out of its input buffer into a pooled output buffer, releases the input buffer, and
//! passes the chunk on. Other steps pass through untouched.
//!
//! A worker takes its output buffer *before* it takes the next item, and passes a finished
//! chunk on before it waits for another buffer. Items leave the queue in `seq` order, so the
//! item the writer waits for is always held by a worker that already has a buffer: the
//! writer's reorder window can never hold every buffer while the item it needs waits for one.
//!
//! A frame that arrived encoded ([`FrameBuf::Encoded`], a Stream V2 image in the stream's
//! codec) passes through: its own buffer becomes the chunk, nothing is decoded or encoded.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crossbeam::channel::{Receiver, Sender};
use detingest_shm::{BufferPool, FrameBuf};
use detingest_writer::{Codec, StatsLimits};

use super::job::{Item, Step};
use super::stats::PipelineStats;
use crate::metrics;
use crate::quality::stats::StatsPass;
use crate::rate_limit::RateLimit;

/// What a worker does to each stream's frames: its codec, and the limits of its per-frame
/// statistics (`None`: not taken).
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamCoding {
    pub codec: Codec,
    pub statistics: Option<StatsLimits>,
}

/// Runs one worker until the indexer's queue closes.
pub(crate) fn run(
    codings: &[StreamCoding],
    input: Receiver<Item>,
    output: Sender<Item>,
    pool: BufferPool,
    stats: Arc<PipelineStats>,
) {
    let mut warned = RateLimit::default();
    loop {
        // Hold an output buffer before taking an item (see the module doc).
        let mut out = pool.acquire();
        let Ok(item) = input.recv() else {
            return; // the indexer is done
        };
        let step = match item.step {
            Step::Raw {
                index,
                meta,
                pixels: FrameBuf::Encoded(chunk),
            } => {
                // Already in the stream's codec (the source checked its framing): written as
                // it arrived; the buffer taken for it goes back unused.
                drop(out);
                let codec = codings[usize::from(item.stream)].codec;
                let raw = codec.decoded_len(chunk.as_slice()).unwrap_or(0);
                stats.compressed.fetch_add(1, Ordering::Relaxed);
                stats.bytes_raw.fetch_add(raw as u64, Ordering::Relaxed);
                stats
                    .bytes_compressed
                    .fetch_add(chunk.as_slice().len() as u64, Ordering::Relaxed);
                // Not decoded for statistics: the index records none.
                Step::Chunk {
                    index,
                    meta,
                    chunk,
                    stats: None,
                }
            }
            Step::Raw {
                index,
                meta,
                pixels,
            } => {
                let raw = pixels.len();
                let coding = codings[usize::from(item.stream)];
                let codec = coding.codec;
                let started = Instant::now();
                // The statistics take each block as the codec reads it (from L1 then): the
                // frame is fetched from memory once. Without them the codec notes nothing.
                let (es, input) = (meta.pixel.size(), pixels.as_slice());
                let (encoded, figures) = match coding.statistics.as_ref() {
                    Some(l) => {
                        let mut pass = StatsPass::new(meta.pixel, l);
                        let mut see = |block: &[u8], noted| pass.add_noted(block, noted);
                        let encoded = codec.compress_seeing(input, es, out.spare_mut(), &mut see);
                        (encoded, Some(pass.finish()))
                    }
                    None => (codec.compress_into(input, es, out.spare_mut()), None),
                };
                match encoded {
                    Ok(len) => {
                        metrics::COMPRESS_SECONDS.observe(started.elapsed());
                        drop(pixels); // the input buffer goes back to its source's pool now
                        out.set_len(len);
                        stats.compressed.fetch_add(1, Ordering::Relaxed);
                        stats.bytes_raw.fetch_add(raw as u64, Ordering::Relaxed);
                        stats
                            .bytes_compressed
                            .fetch_add(len as u64, Ordering::Relaxed);
                        Step::Chunk {
                            index,
                            meta,
                            chunk: out,
                            stats: figures,
                        }
                    }
                    Err(e) => {
                        let n = stats.codec_errors.fetch_add(1, Ordering::Relaxed) + 1;
                        if let Some(since) = warned.allow(Instant::now()) {
                            tracing::error!(index, error = %e, codec_errors = n, suppressed = since, "codec refused a chunk; recorded missing");
                        }
                        Step::Failed { index }
                    }
                }
            }
            other => other,
        };
        let item = Item { step, ..item };
        if output.send(item).is_err() {
            return; // the writer is gone
        }
    }
}
