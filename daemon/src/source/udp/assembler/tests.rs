//! Tests of the assembler.

use detingest_shm::BufferPool;

use super::super::header::{write_sls2, Sls2};
use super::*;

const PPF: u32 = 4;
const PAYLOAD: usize = 8;

struct Collect {
    pool: BufferPool,
    start: Option<u64>,
    frames: Vec<(FrameMeta, Vec<u8>)>,
}

impl FrameOut for Collect {
    fn buffer(&mut self) -> Option<PoolBuf> {
        self.pool.try_acquire()
    }
    fn start(&mut self, first: u64) {
        self.start = Some(first);
    }
    fn send(&mut self, meta: FrameMeta, data: FrameBuf) {
        self.frames.push((meta, data.as_slice().to_vec()));
    }
}

fn setup(buffers: usize) -> (Assembler<Sls2>, Collect) {
    let cfg = AssemblerConfig {
        module: 1,
        packets_per_frame: PPF,
        payload_bytes: PAYLOAD,
        pixel: PixelType::U16,
        shape: [2, 8],
        window: 3,
        timeout: Duration::from_millis(50),
        fill: 0xBEEF,
        restart_gap: 100,
        restart_confirm: 3,
    };
    let out = Collect {
        pool: BufferPool::new(buffers, PPF as usize * PAYLOAD),
        start: None,
        frames: Vec::new(),
    };
    (Assembler::new(cfg, Sls2), out)
}

fn packet(frame: u64, k: u32, module: u16) -> Vec<u8> {
    let mut d = vec![0u8; 48 + PAYLOAD];
    write_sls2(&mut d, frame, k, module);
    d[48..].fill((frame as u8) << 4 | k as u8);
    d
}

fn feed(a: &mut Assembler<Sls2>, out: &mut Collect, frame: u64, ks: &[u32]) {
    for &k in ks {
        a.on_datagram(&packet(frame, k, 1), out);
    }
}

fn numbers(out: &Collect) -> Vec<(u64, u32)> {
    out.frames
        .iter()
        .map(|(m, _)| (m.frame_number, m.packets_lost()))
        .collect()
}

#[test]
fn complete_frames_leave_in_order_with_every_payload_in_place() {
    let (mut a, mut out) = setup(8);
    feed(&mut a, &mut out, 10, &[0, 1, 2, 3]);
    feed(&mut a, &mut out, 12, &[3, 2, 1, 0]); // 12 before 11: waits
    assert_eq!(numbers(&out), [(10, 0)]);
    feed(&mut a, &mut out, 11, &[1, 0, 3, 2]);
    assert_eq!(numbers(&out), [(10, 0), (11, 0), (12, 0)]);
    assert_eq!(out.start, Some(10));
    let (_, bytes) = &out.frames[1];
    for k in 0..PPF as usize {
        assert!(bytes[k * PAYLOAD..(k + 1) * PAYLOAD]
            .iter()
            .all(|&b| b == (11 << 4 | k as u8)));
    }
    assert_eq!(a.counts().frames_complete, 3);
    assert_eq!(a.counts().accepted, 12);
}

#[test]
fn a_frame_missing_packets_leaves_filled_when_the_window_moves_on() {
    let (mut a, mut out) = setup(8);
    feed(&mut a, &mut out, 1, &[0, 2]); // 1 and 3 never come
    feed(&mut a, &mut out, 2, &[0, 1, 2, 3]);
    feed(&mut a, &mut out, 3, &[0, 1, 2, 3]);
    assert!(out.frames.is_empty(), "frame 1 may still complete");
    feed(&mut a, &mut out, 4, &[0]); // 4 - 1 >= window 3: frame 1 leaves
    assert_eq!(numbers(&out), [(1, 2), (2, 0), (3, 0)]);
    let (_, bytes) = &out.frames[0];
    assert!(bytes[..PAYLOAD].iter().all(|&b| b == 1 << 4));
    assert_eq!(
        &bytes[PAYLOAD..PAYLOAD + 2],
        &0xBEEFu16.to_le_bytes(),
        "fill value"
    );
    assert!(bytes[PAYLOAD..2 * PAYLOAD]
        .chunks(2)
        .all(|px| px == 0xBEEFu16.to_le_bytes()));
    let c = a.counts();
    assert_eq!((c.frames_incomplete, c.packets_lost), (1, 2));
    assert_eq!(out.frames[0].0.missing.iter().collect::<Vec<_>>(), [1, 3]);
}

#[test]
fn a_frame_open_too_long_leaves_on_tick() {
    let (mut a, mut out) = setup(8);
    feed(&mut a, &mut out, 5, &[0, 1, 2]);
    a.tick(Instant::now(), &mut out);
    assert!(out.frames.is_empty());
    a.tick(Instant::now() + Duration::from_millis(60), &mut out);
    assert_eq!(numbers(&out), [(5, 1)]);
    feed(&mut a, &mut out, 5, &[3]);
    assert_eq!(a.counts().late, 1, "a packet for a frame that left is late");
}

#[test]
fn every_odd_packet_is_counted_by_kind() {
    let (mut a, mut out) = setup(8);
    feed(&mut a, &mut out, 7, &[0, 0]); // duplicate
    a.on_datagram(&packet(7, 1, 2), &mut out); // wrong module
    a.on_datagram(&packet(7, PPF, 1), &mut out); // out of range
    a.on_datagram(&packet(7, 1, 1)[..50], &mut out); // short payload
    a.on_datagram(&[0u8; 20], &mut out); // shorter than the header
    a.on_datagram(&[], &mut out);
    let mut v1 = packet(7, 1, 1);
    v1[47] = 1;
    a.on_datagram(&v1, &mut out); // header version 1
    a.on_datagram(&vec![0xA5; 65536], &mut out);
    let c = *a.counts();
    assert_eq!(c.duplicate, 1);
    assert_eq!(c.wrong_module, 1);
    assert_eq!(c.out_of_range, 1);
    assert_eq!(c.bad_length, 1);
    assert_eq!(c.too_short, 2);
    assert_eq!(c.bad_version, 2);
    assert_eq!(c.datagrams, 9);
    feed(&mut a, &mut out, 7, &[1, 2, 3]);
    assert_eq!(
        numbers(&out),
        [(7, 0)],
        "odd packets do not disturb the frame"
    );
}

#[test]
fn a_lone_far_packet_is_dropped_and_a_confirmed_restart_continues_the_numbering() {
    let (mut a, mut out) = setup(8);
    feed(&mut a, &mut out, 150, &[0, 1, 2, 3]);
    feed(&mut a, &mut out, 151, &[0, 1]);
    feed(&mut a, &mut out, 9_000, &[0]); // garbage frame number
    feed(&mut a, &mut out, 151, &[2, 3]);
    assert_eq!(numbers(&out), [(150, 0), (151, 0)]);
    assert_eq!((a.counts().far_ahead, a.counts().restarts), (1, 0));
    feed(&mut a, &mut out, 152, &[0, 1]);
    feed(&mut a, &mut out, 100, &[0]); // within restart_gap behind: late
    assert_eq!(a.counts().late, 1);
    // The detector restarts at frame 1: three packets in a row confirm it.
    feed(&mut a, &mut out, 1, &[0, 1, 2]);
    assert_eq!((a.counts().backwards, a.counts().restarts), (3, 1));
    feed(&mut a, &mut out, 1, &[3]);
    feed(&mut a, &mut out, 2, &[0, 1, 2, 3]);
    assert_eq!(a.finish(&mut out), Some(154));
    assert_eq!(
        numbers(&out),
        [(150, 0), (151, 0), (152, 2), (153, 3), (154, 0)],
        "152 closed at the restart; detector frames 1 and 2 continue as 153 and 154"
    );
}

#[test]
fn without_a_buffer_the_frame_is_dropped_and_counted() {
    let (mut a, mut out) = setup(1);
    feed(&mut a, &mut out, 1, &[0, 1]);
    feed(&mut a, &mut out, 2, &[0, 1, 2, 3]); // the one buffer is frame 1's
    feed(&mut a, &mut out, 1, &[2, 3]);
    assert_eq!(numbers(&out), [(1, 0)]);
    let c = a.counts();
    assert_eq!((c.frames_dropped, c.dropped_with_frame), (1, 4));
    assert_eq!(a.finish(&mut out), Some(2));
}
