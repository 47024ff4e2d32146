//! Tests of the indexer.

use super::*;
use crossbeam::channel;
use detingest_shm::PixelType;
use detingest_writer::Codec;

fn layout(grid: [u32; 2], chunking: Chunking) -> RunLayout {
    RunLayout {
        pixel: PixelType::U8,
        module_shape: [1, 2],
        grid,
        chunking,
        codec: Codec::None,
    }
}

fn plan(grid: [u32; 2], chunking: Chunking, limit: u64) -> StreamPlan {
    let layout = layout(grid, chunking);
    StreamPlan {
        layout,
        expected: layout.all_modules(),
        ahead: 3,
        timeout: Duration::from_secs(60),
        limit,
        first_frame_number: None,
        sources: 1,
        images: (chunking == Chunking::Frame)
            .then(|| BufferPool::new(8, layout.pixel.frame_bytes(layout.image_shape()))),
        drops: Arc::new(DropLog::new(16)),
    }
}

fn restart(module: u16, first: u64, last: u64) -> SourceMsg {
    SourceMsg::Restart {
        stream: 0,
        module,
        first_frame_number: first,
        last_frame_number: Some(last),
    }
}

/// ` @s<sequence>` and ` dropped <mask>` where not 0.
fn marks(sequence: u32, dropped: u64) -> String {
    let mut s = String::new();
    if sequence > 0 {
        s += &format!(" @s{sequence}");
    }
    if dropped > 0 {
        s += &format!(" dropped {dropped:b}");
    }
    s
}

fn start(first: u64) -> SourceMsg {
    SourceMsg::Start {
        stream: 0,
        first_frame_number: first,
    }
}

fn end(last: u64) -> SourceMsg {
    SourceMsg::End {
        stream: 0,
        last_frame_number: Some(last),
    }
}

/// Module `m` of frame `n`, pixels `[n, m]`.
fn module(n: u64, m: u16) -> SourceMsg {
    SourceMsg::Frame {
        stream: 0,
        meta: FrameMeta {
            frame_number: n,
            module: m,
            pixel: PixelType::U8,
            shape: [1, 2],
            timestamp_ns: 0,
            detector_timestamp: 0,
            bunch_id: 0,
            missing: PacketMask::NONE,
        },
        data: FrameBuf::Shared(Arc::from(vec![n as u8, m as u8])),
    }
}

/// What the indexer emits for `msgs`, one string per item, and whether it asked to stop.
fn run(plan: StreamPlan, msgs: Vec<SourceMsg>, expire_at_end: bool) -> (Vec<String>, bool) {
    let (tx, rx) = channel::unbounded();
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(PipelineStats::default());
    let mut ix = Indexer::new(vec![plan], tx, stats, Arc::clone(&stop));
    let t0 = Instant::now();
    for m in msgs {
        ix.handle(m, t0);
    }
    if expire_at_end {
        ix.expire(t0 + Duration::from_secs(61));
    }
    drop(ix);
    let mut seq = 0;
    let out = rx
        .iter()
        .map(|it| {
            assert_eq!(it.seq, seq, "seq numbers every item in order");
            seq += 1;
            match it.step {
                Step::Open => "open".to_string(),
                Step::Raw {
                    index,
                    meta,
                    pixels,
                } => format!(
                    "raw {index}:{}/{} {:?}",
                    meta.frame_number,
                    meta.module,
                    pixels.as_slice()
                ),
                Step::Seen { index, meta } => format!("seen {index}/{}", meta.module),
                Step::Lost {
                    first_index,
                    first_frame_number,
                    count,
                    sequence,
                    dropped,
                } => format!(
                    "lost {first_index}:{first_frame_number}+{count}{}",
                    marks(sequence, dropped)
                ),
                Step::Closed {
                    index,
                    frame_number,
                    sequence,
                    dropped,
                } => format!("closed {index}:{frame_number}{}", marks(sequence, dropped)),
                Step::Late { index, module } => format!("late {index}/{module}"),
                Step::Chunk { .. } | Step::Failed { .. } => "chunk".into(),
                Step::Close => "close".into(),
            }
        })
        .collect();
    (out, stop.load(Ordering::Relaxed))
}

#[test]
fn single_module_gaps_become_lost_ranges_and_indices_stay_dense() {
    let (out, _) = run(
        plan([1, 1], Chunking::Module, 0),
        vec![
            start(100),
            module(101, 0),
            module(102, 0),
            module(109, 0),
            module(104, 0), // recorded lost already: late
            end(110),
        ],
        false,
    );
    assert_eq!(
        out,
        [
            "open",
            "raw 2:101/0 [101, 0]",
            "lost 1:100+1",
            "closed 2:101",
            "raw 3:102/0 [102, 0]",
            "closed 3:102",
            "lost 4:103+4",
            "raw 10:109/0 [109, 0]",
            "lost 8:107+1",
            "lost 9:108+1",
            "closed 10:109",
            "late 5/0",
            "lost 11:110+1",
            "close"
        ]
    );
}

#[test]
fn modules_form_datasets_closed_in_order_once_settled() {
    let (out, _) = run(
        plan([1, 2], Chunking::Module, 0),
        vec![
            start(1),
            module(1, 1),
            module(2, 1), // 1 and 2 wait for module 0
            module(1, 0), // 1 complete
            module(2, 0), // 2 complete
            module(3, 0), // module 1 of 3 never comes
            module(4, 0),
            module(4, 1), // module 1 has passed 3: 3 closes incomplete
            module(6, 1),
            module(3, 1), // after 3 closed without it: late
            module(2, 2), // outside the grid: stale
            end(6),
        ],
        false,
    );
    assert_eq!(
        out,
        [
            "open",
            "raw 1:1/1 [1, 1]",
            "raw 2:2/1 [2, 1]",
            "raw 1:1/0 [1, 0]",
            "closed 1:1",
            "raw 2:2/0 [2, 0]",
            "closed 2:2",
            "raw 3:3/0 [3, 0]",
            "raw 4:4/0 [4, 0]",
            "raw 4:4/1 [4, 1]",
            "closed 3:3",
            "closed 4:4",
            "raw 6:6/1 [6, 1]",
            "late 3/1",
            "lost 5:5+1",
            "closed 6:6",
            "close"
        ]
    );
}

#[test]
fn a_silent_module_costs_datasets_ahead_frames_not_forever() {
    let mut msgs = vec![start(1)];
    msgs.extend((1..=4).map(|n| module(n, 0)));
    let (out, _) = run(plan([1, 2], Chunking::Module, 0), msgs, false);
    assert_eq!(
        out,
        [
            "open",
            "raw 1:1/0 [1, 0]",
            "raw 2:2/0 [2, 0]",
            "raw 3:3/0 [3, 0]",
            "closed 1:1",
            "raw 4:4/0 [4, 0]",
        ]
    );
}

#[test]
fn frame_chunking_assembles_the_image_with_missing_tiles_zeroed() {
    let (out, _) = run(
        plan([2, 1], Chunking::Frame, 0),
        vec![start(1), module(1, 1), module(1, 0), module(2, 1)],
        true, // the timeout closes 2 without module 0
    );
    assert_eq!(
        out,
        [
            "open",
            "seen 1/1",
            "seen 1/0",
            "raw 1:1/0 [1, 0, 1, 1]",
            "closed 1:1",
            "seen 2/1",
            "raw 2:2/0 [0, 0, 2, 1]",
            "closed 2:2",
        ]
    );
}

#[test]
fn a_run_with_a_count_closes_at_it_and_asks_the_sources_to_stop() {
    let (out, stop) = run(
        plan([1, 1], Chunking::Module, 2),
        vec![start(5), module(5, 0), module(6, 0), module(7, 0), end(9)],
        false,
    );
    assert!(stop);
    assert_eq!(
        out,
        [
            "open",
            "raw 1:5/0 [5, 0]",
            "closed 1:5",
            "raw 2:6/0 [6, 0]",
            "closed 2:6",
            "close"
        ]
    );
}

#[test]
fn a_fixed_first_frame_number_gives_every_daemon_the_same_indices() {
    let fixed = StreamPlan {
        first_frame_number: Some(10),
        ..plan([1, 1], Chunking::Module, 0)
    };
    // This daemon's source starts at 12 (it missed 10 and 11) and also sees 9.
    let (out, _) = run(fixed, vec![start(12), module(9, 0), module(12, 0)], false);
    let want = [
        "open",
        "raw 3:12/0 [12, 0]",
        "lost 1:10+1",
        "lost 2:11+1",
        "closed 3:12",
    ];
    assert_eq!(out, want);
}

#[test]
fn a_daemon_taking_part_of_a_detector_closes_a_dataset_once_its_own_modules_are_in() {
    // Modules 0 and 1 of a 1 x 3 detector; module 2 is another daemon's.
    let part = StreamPlan {
        expected: 0b011,
        ..plan([1, 3], Chunking::Module, 0)
    };
    let (out, _) = run(
        part,
        vec![start(1), module(1, 0), module(1, 1), module(2, 1)],
        false,
    );
    // Index 1 closes as soon as its two modules are in (no timeout, no later frame);
    // index 2 waits for module 0.
    assert_eq!(
        out,
        [
            "open",
            "raw 1:1/0 [1, 0]",
            "raw 1:1/1 [1, 1]",
            "closed 1:1",
            "raw 2:2/1 [2, 1]"
        ]
    );
}

#[test]
fn a_stream_fed_by_one_source_per_module_closes_when_the_last_ends() {
    let two = StreamPlan {
        sources: 2,
        ..plan([1, 2], Chunking::Module, 0)
    };
    let end = |last| SourceMsg::End {
        stream: 0,
        last_frame_number: last,
    };
    let (out, _) = run(
        two,
        vec![
            start(1),
            module(1, 0),
            start(2), // module 1's source starts later: the stream is open already
            end(Some(3)),
            module(1, 1),
            module(2, 1),
            end(Some(2)),
        ],
        false,
    );
    assert_eq!(
        out,
        [
            "open",
            "raw 1:1/0 [1, 0]",
            "raw 1:1/1 [1, 1]",
            "closed 1:1",
            "raw 2:2/1 [2, 1]",
            "closed 2:2",
            "lost 3:3+1",
            "close"
        ]
    );
}

#[test]
fn a_jump_beyond_max_gap_is_refused_not_recorded_lost() {
    let (out, _) = run(
        plan([1, 1], Chunking::Module, 0),
        vec![
            start(1),
            module(1, 0),
            module(2 + MAX_GAP + 1, 0),
            module(2, 0),
        ],
        false,
    );
    assert_eq!(
        out,
        [
            "open",
            "raw 1:1/0 [1, 0]",
            "closed 1:1",
            "raw 2:2/0 [2, 0]",
            "closed 2:2"
        ]
    );
}

#[test]
fn frames_of_an_unopened_or_closed_stream_are_refused() {
    let (out, _) = run(
        plan([1, 1], Chunking::Module, 0),
        vec![
            module(1, 0),
            start(1),
            SourceMsg::End {
                stream: 0,
                last_frame_number: None,
            },
            module(1, 0),
        ],
        false,
    );
    assert_eq!(out, ["open", "close"]);
}

#[test]
fn a_restart_begins_a_new_sequence_with_the_detectors_own_numbers() {
    let (out, _) = run(
        plan([1, 1], Chunking::Module, 0),
        vec![
            start(500),
            module(500, 0),
            module(501, 0),
            // 502 left the source dropped, 503 never came; then the detector starts at 1.
            restart(0, 1, 503),
            module(1, 0),
            module(3, 0),
            end(4),
        ],
        false,
    );
    assert_eq!(
        out,
        [
            "open",
            "raw 1:500/0 [244, 0]",
            "closed 1:500",
            "raw 2:501/0 [245, 0]",
            "closed 2:501",
            "lost 3:502+2",
            "raw 5:1/0 [1, 0]",
            "closed 5:1 @s1",
            "raw 7:3/0 [3, 0]",
            "lost 6:2+1 @s1",
            "closed 7:3 @s1",
            "lost 8:4+1 @s1",
            "close"
        ]
    );
}

#[test]
fn every_module_must_restart_before_its_frames_count_again() {
    let (out, _) = run(
        plan([1, 2], Chunking::Module, 0),
        vec![
            start(10),
            module(10, 0),
            module(10, 1),
            restart(1, 1, 10),
            module(1, 1),
            module(11, 0), // module 0 has not restarted yet: an old frame, stale
            restart(0, 1, 11),
            module(1, 0),
            module(2, 1), // module 0's old frame 11 says nothing of the new frame 2
            module(2, 0),
            end(2),
        ],
        false,
    );
    assert_eq!(
        out,
        [
            "open",
            "raw 1:10/0 [10, 0]",
            "raw 1:10/1 [10, 1]",
            "closed 1:10",
            "raw 2:1/1 [1, 1]",
            "raw 2:1/0 [1, 0]",
            "closed 2:1 @s1",
            "raw 3:2/1 [2, 1]",
            "raw 3:2/0 [2, 0]",
            "closed 3:2 @s1",
            "close"
        ]
    );
}

#[test]
fn frames_a_source_dropped_are_recorded_dropped_not_lost() {
    let p = plan([1, 2], Chunking::Module, 0);
    p.drops.push(3, 1); // module 1 of 3 dropped, module 0 of 3 never came
    p.drops.push(4, 0);
    p.drops.push(4, 1); // all of 4 dropped
    p.drops.push(5, 0); // 5: module 0 dropped; module 1 arrives
    let (out, _) = run(
        p,
        vec![
            start(1),
            module(1, 0),
            module(1, 1),
            module(5, 1),
            module(6, 0),
            module(6, 1),
            end(6),
        ],
        false,
    );
    assert_eq!(
        out,
        [
            "open",
            "raw 1:1/0 [1, 0]",
            "raw 1:1/1 [1, 1]",
            "closed 1:1",
            "lost 2:2+1",
            "raw 5:5/1 [5, 1]",
            "lost 3:3+1 dropped 10",
            "raw 6:6/0 [6, 0]",
            "lost 4:4+1 dropped 11",
            "closed 5:5 dropped 1",
            "raw 6:6/1 [6, 1]",
            "closed 6:6",
            "close"
        ]
    );
}

#[test]
fn a_module_that_starts_late_is_waited_for_within_the_window() {
    // Module 1 starts 5 frames after module 0: with a window of 8 every dataset completes.
    let mut p = plan([1, 2], Chunking::Module, 0);
    p.ahead = 8;
    let mut msgs = vec![start(1)];
    msgs.extend((1..=5).map(|n| module(n, 0)));
    for n in 1..=5 {
        msgs.push(module(n, 1));
        msgs.push(module(n + 5, 0));
    }
    msgs.push(end(10));
    let (out, _) = run(p, msgs, false);
    assert!(
        !out.iter()
            .any(|s| s.starts_with("late") || s.starts_with("lost")),
        "{out:?}"
    );
    let closed: Vec<_> = out.iter().filter(|s| s.starts_with("closed")).collect();
    assert_eq!(closed.len(), 10, "{out:?}");
    assert_eq!(closed[0], "closed 1:1");
}

#[test]
fn frames_behind_a_full_window_are_recorded_late_once_not_stale() {
    let (tx, rx) = channel::unbounded();
    let stats = Arc::new(PipelineStats::default());
    let mut ix = Indexer::new(
        vec![plan([1, 2], Chunking::Module, 0)], // a window of 3
        tx,
        Arc::clone(&stats),
        Arc::new(AtomicBool::new(false)),
    );
    let t0 = Instant::now();
    ix.handle(start(1), t0);
    for n in 1..=6 {
        ix.handle(module(n, 0), t0); // 1..=3 close incomplete as 4..=6 arrive
    }
    ix.handle(module(2, 1), t0); // late
    ix.handle(module(2, 1), t0); // a duplicate of a late frame: stale
    ix.handle(module(9, 5), t0); // outside the grid: stale
    drop(ix);
    let late: Vec<_> = rx
        .iter()
        .filter_map(|it| match it.step {
            Step::Late { index, module } => Some((index, module)),
            _ => None,
        })
        .collect();
    assert_eq!(late, [(2, 1)]);
    assert_eq!(stats.late.load(Ordering::Relaxed), 1);
    assert_eq!(stats.stale.load(Ordering::Relaxed), 2);
}
