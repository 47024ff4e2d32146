//! The pipeline run in-process: every index announced once and in order, lost frames kept at
//! their index, and the file's pixels equal to what the synthetic detector generated.

use std::sync::mpsc;

use detingest_daemon::pipeline;
use detingest_daemon::sink::{Notification, NotificationSink, RunSinks, SinkNeeds};
use detingest_daemon::source::synthetic::FrameBank;
use detingest_tests::{config, read, Collector, SPECIFIC};

fn run(c: &detingest_daemon::config::Config) -> (pipeline::RunSummary, Vec<Notification>) {
    let (tx, rx) = mpsc::channel();
    let sinks: Vec<Box<dyn NotificationSink>> = vec![Box::new(Collector(tx))];
    let summary = pipeline::start(
        c,
        RunSinks {
            sinks,
            needs: SinkNeeds::of(&c.sink.zmq),
        },
    )
    .expect("pipeline starts")
    .wait();
    (summary, rx.try_iter().collect())
}

fn frame_notices(ns: &[Notification]) -> Vec<(u64, u64, bool)> {
    ns.iter()
        .filter_map(|n| match n {
            Notification::Frame(f) => {
                Some((f.record.index, f.record.frame_number, f.record.lost()))
            }
            Notification::StreamStart(_)
            | Notification::StreamEnd(_)
            | Notification::Readable(_)
            | Notification::Quality(_) => None,
        })
        .collect()
}

#[test]
fn every_index_is_announced_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(
        dir.path(),
        "",
        "compress_workers = 3\nqueue_depth = 4\noutput_buffers = 6",
        "frames = 300\nshape = [64, 128]\nfirst_frame_number = 1000\nbank_frames = 4",
    );
    let (summary, ns) = run(&c);
    assert!(summary.ok(), "{summary:?}");
    let frames = frame_notices(&ns);
    let expected: Vec<(u64, u64, bool)> = (1..=300).map(|i| (i, 999 + i, false)).collect();
    assert_eq!(frames, expected);
    match ns.last() {
        Some(Notification::StreamEnd(e)) => assert_eq!((e.frames, e.lost), (300, 0)),
        other => panic!("last notification should end the stream: {other:?}"),
    }
    assert_eq!(summary.stats.written, 300);
    assert_eq!(
        summary.stats.notified, 303,
        "start, 300 frames, the watermark at the close, end"
    );
    // The watermark never runs ahead of the index announced, never goes back, and reaches
    // the last index when the files close.
    let mut last = 0;
    for n in &ns {
        match n {
            Notification::Frame(f) => {
                let w = f.record.readable_up_to;
                assert!(
                    w >= last && w <= f.record.index,
                    "{w} at {}",
                    f.record.index
                );
                last = w;
            }
            Notification::Readable(r) => {
                assert!(r.up_to >= last);
                last = r.up_to;
            }
            _ => {}
        }
    }
    assert_eq!(last, 300);
}

/// Drops when no pool buffer is free (copying source).
#[test]
fn frames_dropped_for_want_of_a_buffer_keep_their_index() {
    dropped_frames_keep_their_index_and_are_recorded_dropped(true);
}

/// Drops when the indexer's queue is full (zero-copy source).
#[test]
fn frames_dropped_at_a_full_queue_keep_their_index() {
    dropped_frames_keep_their_index_and_are_recorded_dropped(false);
}

fn dropped_frames_keep_their_index_and_are_recorded_dropped(copy: bool) {
    let dir = tempfile::tempdir().unwrap();
    // Two raw buffers, a one-slot queue and a codec-less writer that must still wait for the
    // file system: the drop-policy source outruns the pipeline and drops.
    let c = config(
        dir.path(),
        "[writer]\ncodec = \"none\"\nflush_every_frames = 1",
        "compress_workers = 1\nqueue_depth = 1\ninput_buffers = 2\noutput_buffers = 1",
        &format!("frames = 400\nshape = [256, 256]\nbank_frames = 2\ncopy = {copy}"),
    );
    let mut c = c;
    c.sources[0].policy = detingest_daemon::config::Policy::Drop;
    let (summary, ns) = run(&c);
    assert!(summary.ok(), "{summary:?}");
    let (sent, dropped) = (summary.sources[0].sent, summary.sources[0].dropped);
    assert_eq!(
        sent + dropped,
        400,
        "every frame is sent or counted dropped"
    );
    assert!(dropped > 0, "the test must provoke drops (sent {sent})");
    let frames = frame_notices(&ns);
    assert_eq!(frames.len(), 400, "one notification per index, lost or not");
    for (i, &(index, frame_number, _)) in frames.iter().enumerate() {
        assert_eq!((index, frame_number), (i as u64 + 1, i as u64 + 1));
    }
    let lost: Vec<u64> = frames.iter().filter(|f| f.2).map(|f| f.0).collect();
    assert_eq!(lost.len() as u64, dropped);
    assert_eq!(
        (summary.stats.dropped, summary.stats.lost),
        (dropped, 0),
        "dropped here, not lost: every frame reached the daemon"
    );

    // The file agrees: lost indices are flagged and hold the fill value, the others hold
    // exactly the generated pixels of their frame number.
    let file = hdf5::File::open(&summary.streams[0].stream.file).unwrap();
    let flags: Vec<u8> = read(&file, &format!("{SPECIFIC}/frame_lost"));
    assert_eq!(flags.len(), 400);
    let flagged: Vec<u64> = (1..=400).filter(|&i| flags[i as usize - 1] == 1).collect();
    assert_eq!(flagged, lost);
    let dropped_flags: Vec<u8> = read(&file, &format!("{SPECIFIC}/frame_dropped"));
    assert_eq!(dropped_flags, flags, "each of them flagged dropped here");
    let data = file.dataset("/entry/data/data").unwrap();
    assert_eq!(data.shape(), [400, 256, 256]);
    let Some(syn) = c.sources[0].synthetic.as_ref() else {
        unreachable!()
    };
    let bank = FrameBank::generate(syn);
    for index in [1u64, 2, 200, 399, 400] {
        let got: Vec<u16> = data
            .read_slice_2d::<u16, _>((index as usize - 1, .., ..))
            .unwrap()
            .into_raw_vec_and_offset()
            .0;
        if lost.contains(&index) {
            assert!(
                got.iter().all(|&p| p == 0),
                "lost index {index} shows the fill value"
            );
        } else {
            let want: Vec<u16> = bank
                .frame(index)
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect();
            assert_eq!(got, want, "index {index}");
        }
    }
}

#[test]
fn an_existing_file_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path(), "", "", "frames = 3\nshape = [8, 8]");
    let (summary, _) = run(&c);
    assert!(summary.ok());
    let before = std::fs::metadata(&summary.streams[0].stream.file)
        .unwrap()
        .len();
    let Err(e) = pipeline::start(&c, RunSinks::none()) else {
        panic!("a second run on the same stream must be refused");
    };
    assert!(e.to_string().contains("exists already"), "{e}");
    let after = std::fs::metadata(&summary.streams[0].stream.file)
        .unwrap()
        .len();
    assert_eq!(before, after);
}

/// Regression: a worker that waited for a fresh output buffer while holding a finished chunk
/// deadlocked the pipeline once every buffer sat in the writer's reorder window. Small pools
/// and queues with several workers must always finish.
#[test]
fn tiny_pools_and_queues_never_deadlock() {
    for workers in 1..=4usize {
        for extra_buffers in 0..=2 {
            for depth in 1..=2 {
                let dir = tempfile::tempdir().unwrap();
                let c = config(
                    dir.path(),
                    "",
                    &format!(
                        "compress_workers = {workers}\nqueue_depth = {depth}\n\
                         input_buffers = 2\noutput_buffers = {}",
                        workers + extra_buffers
                    ),
                    "frames = 120\nshape = [32, 64]\nbank_frames = 2",
                );
                let (tx, rx) = mpsc::channel();
                std::thread::spawn(move || {
                    let _ = tx.send(run(&c).0);
                });
                let summary = rx
                    .recv_timeout(std::time::Duration::from_secs(60))
                    .unwrap_or_else(|_| {
                        panic!(
                            "deadlock: workers {workers}, +{extra_buffers} buffers, depth {depth}"
                        )
                    });
                assert_eq!(summary.stats.written, 120);
            }
        }
    }
}

/// Regression: previews once held the writer's output buffers, so a sink that kept its
/// notifications (as this test's collector does) starved the pool and stalled ingest. Previews
/// now use their own small pool and are skipped, and counted, when it is empty.
#[test]
fn a_sink_that_keeps_every_preview_never_stalls_ingest() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(
        dir.path(),
        "[live]\npreview_every = 1\npreview_max_hz = 0\npreview_buffers = 2",
        "output_buffers = 4",
        "frames = 200\nshape = [32, 32]\nbank_frames = 2",
    );
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(run(&c));
    });
    let (summary, ns) = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("ingest finished while the sink held its previews");
    assert_eq!(summary.stats.written, 200);
    let with_preview = ns
        .iter()
        .filter(|n| matches!(n, Notification::Frame(f) if f.preview.is_some()))
        .count() as u64;
    assert_eq!(with_preview, 2, "only as many previews as preview buffers");
    assert_eq!(summary.stats.previews_skipped, 198);
}
