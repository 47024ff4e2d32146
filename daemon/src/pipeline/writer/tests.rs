//! Tests of the writer's bookkeeping: accumulators, packet masks, preview choice.

use detingest_shm::{BufferPool, PacketMask, PixelType};

use super::*;

fn meta(module: u16, timestamp_ns: u64, missing: &[u32]) -> FrameMeta {
    let mut mask = PacketMask::NONE;
    for &k in missing {
        mask.set(k);
    }
    FrameMeta {
        frame_number: 7,
        module,
        pixel: PixelType::U16,
        shape: [4, 8],
        timestamp_ns,
        detector_timestamp: 0,
        bunch_id: 0,
        missing: mask,
    }
}

#[test]
fn an_accumulator_notes_each_module_its_packets_and_the_first_timestamp() {
    let mut a = Accum::new(3);
    a.reset(5);
    a.module(&meta(2, 200, &[1, 2]));
    a.module(&meta(0, 100, &[]));
    assert_eq!(a.index, 5);
    assert_eq!(a.modules, 0b101);
    assert_eq!(
        a.timestamp_ns, 200,
        "the first module to arrive dates the frame"
    );
    assert_eq!(a.raw_bytes, 2 * 4 * 8 * 2);
    assert_eq!(PacketMask(a.missing[2]).iter().collect::<Vec<_>>(), [1, 2]);
    assert_eq!(PacketMask(a.missing[1]).count(), 0);
    a.reset(6);
    assert_eq!((a.modules, a.raw_bytes, a.timestamp_ns), (0, 0, 0));
    assert!(a.missing.iter().all(|m| *m == [0; 64]));
}

#[test]
fn an_index_takes_its_ring_slot_and_an_overrun_is_counted_not_silent() {
    let stats = PipelineStats::default();
    let mut accums: Vec<Accum> = (0..4).map(|_| Accum::new(1)).collect();
    accum(&mut accums, 5, &stats).raw_bytes = 10;
    assert_eq!(
        accum(&mut accums, 5, &stats).raw_bytes,
        10,
        "same index, same slot"
    );
    assert_eq!(stats.write_errors.load(Ordering::Relaxed), 0);
    // Index 9 lands on 5's slot while 5 is still open: a wiring bug, counted.
    let a = accum(&mut accums, 9, &stats);
    assert_eq!((a.index, a.raw_bytes), (9, 0));
    assert_eq!(stats.write_errors.load(Ordering::Relaxed), 1);
    // A slot freed by its record (index 0) is taken silently.
    a.index = 0;
    accum(&mut accums, 13, &stats);
    assert_eq!(stats.write_errors.load(Ordering::Relaxed), 1);
}

#[test]
fn missing_packets_merge_into_their_union_and_count_per_module() {
    let a = meta(0, 0, &[0, 3, 511]).missing.0;
    let b = meta(1, 0, &[3, 4]).missing.0;
    let (union, lost) = merge_missing(&[a, b, [0; 64]]);
    assert_eq!(union.iter().collect::<Vec<_>>(), [0, 3, 4, 511]);
    assert_eq!(lost, 5, "packet 3 is lost on two modules");
    assert_eq!(merge_missing(&[]), (PacketMask::NONE, 0));
}

#[test]
fn every_module_of_a_picked_index_joins_its_preview_and_held_buffers_skip_it() {
    use crate::sink::assembly::Placement;
    use crate::sink::{PreviewGeometry, PreviewRequest};
    use detingest_writer::{Chunking, Codec, RunLayout};
    let stats = PipelineStats::default();
    let layout = RunLayout {
        pixel: PixelType::U16,
        module_shape: [4, 8],
        grid: [1, 2],
        chunking: Chunking::Module,
        codec: Codec::None,
    };
    let geometry = PreviewGeometry::new(&layout, [0, 0]);
    let every = PreviewRequest {
        every: 1,
        max_hz: 0.0,
        buffers: 1,
    };
    let mut policy = PreviewPolicy::new(&[every], Some(BufferPool::new(1, 256)));
    let mut a = Accum::new(2);
    a.reset(1);
    add_to_preview(&mut a, &mut policy, &geometry, (1, &[2; 64]), &stats);
    add_to_preview(&mut a, &mut policy, &geometry, (0, &[1; 64]), &stats);
    let held = take_preview(&mut a).expect("index 1 was picked");
    assert_eq!(held.bytes().len(), 128, "both modules' chunks");
    assert!(held.whole_chunk(Placement::Data).is_none());
    a.reset(2);
    add_to_preview(&mut a, &mut policy, &geometry, (0, &[3; 64]), &stats);
    assert!(take_preview(&mut a).is_none(), "the buffer is held");
    assert_eq!(stats.previews_skipped.load(Ordering::Relaxed), 1);
    drop(held);
    a.reset(3);
    add_to_preview(&mut a, &mut policy, &geometry, (0, &[3; 200]), &stats);
    add_to_preview(&mut a, &mut policy, &geometry, (1, &[3; 200]), &stats);
    assert!(take_preview(&mut a).is_none(), "too large: dropped whole");
    let mut none = PreviewPolicy::none();
    a.reset(4);
    add_to_preview(&mut a, &mut none, &geometry, (0, &[3; 64]), &stats);
    assert!(take_preview(&mut a).is_none());
    assert_eq!(
        stats.previews_skipped.load(Ordering::Relaxed),
        2,
        "not asked: not skipped"
    );
}
