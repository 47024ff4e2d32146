//! Tests of the assembler.

use detingest_shm::BufferPool;

use super::super::header::{write_sls2, Sls2, Sls2Fields};
use super::*;

const PPF: u32 = 4;
const PAYLOAD: usize = 8;
const MOD_ID: u16 = 1234;

struct Collect {
    pool: BufferPool,
    start: Option<u64>,
    frames: Vec<(FrameMeta, Vec<u8>)>,
    restarts: Vec<(u16, u64, Option<u64>)>,
}

impl FrameOut for Collect {
    fn buffer(&mut self, _: u64, _: u16) -> Option<PoolBuf> {
        self.pool.try_acquire()
    }
    fn start(&mut self, first: u64) {
        self.start = Some(first);
    }
    fn send(&mut self, meta: FrameMeta, data: FrameBuf) -> bool {
        self.frames.push((meta, data.as_slice().to_vec()));
        true
    }
    fn restart(&mut self, module: u16, first: u64, last: Option<u64>) {
        self.restarts.push((module, first, last));
    }
}

fn config() -> AssemblerConfig {
    AssemblerConfig {
        mod_id: Some(MOD_ID),
        place: Place::Tile(2),
        packets_per_frame: PPF,
        readout: [0, PPF],
        payload_bytes: PAYLOAD,
        pixel: PixelType::U16,
        shape: [2, 8],
        window: 3,
        timeout: Duration::from_millis(50),
        fill: 0xBEEF,
        flip_rows: false,
        restart_gap: 100,
        restart_confirm: 3,
    }
}

fn setup_with(cfg: AssemblerConfig, buffers: usize) -> (Assembler<Sls2>, Collect) {
    let out = Collect {
        pool: BufferPool::new(buffers, PPF as usize * PAYLOAD),
        start: None,
        frames: Vec::new(),
        restarts: Vec::new(),
    };
    (Assembler::new(cfg, Sls2), out)
}

fn setup(buffers: usize) -> (Assembler<Sls2>, Collect) {
    setup_with(config(), buffers)
}

fn packet_at(frame: u64, k: u32, mod_id: u16, row: u16, column: u16) -> Vec<u8> {
    let mut d = vec![0u8; 48 + PAYLOAD];
    let h = Sls2Fields {
        frame_number: frame,
        packet_number: k,
        bunch_id: frame + 1000,
        timestamp: frame * 10,
        mod_id,
        row,
        column,
        det_type: 3,
    };
    write_sls2(&mut d, &h);
    d[48..].fill((frame as u8) << 4 | k as u8);
    d
}

fn packet(frame: u64, k: u32, mod_id: u16) -> Vec<u8> {
    packet_at(frame, k, mod_id, 0, 0)
}

fn feed(a: &mut Assembler<Sls2>, out: &mut Collect, frame: u64, ks: &[u32]) {
    for &k in ks {
        a.on_datagram(&packet(frame, k, MOD_ID), out);
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
    let (meta, bytes) = &out.frames[1];
    for k in 0..PPF as usize {
        assert!(bytes[k * PAYLOAD..(k + 1) * PAYLOAD]
            .iter()
            .all(|&b| b == (11 << 4 | k as u8)));
    }
    assert_eq!(meta.module, 2, "the configured tile");
    assert_eq!(
        (meta.detector_timestamp, meta.bunch_id),
        (110, 1011),
        "the detector's timestamp and bunch id, as sent"
    );
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
    assert!(bytes[PAYLOAD..2 * PAYLOAD]
        .chunks(2)
        .all(|px| px == 0xBEEFu16.to_le_bytes()));
    let c = a.counts();
    assert_eq!((c.frames_incomplete, c.packets_lost), (1, 2));
    assert_eq!(out.frames[0].0.missing.iter().collect::<Vec<_>>(), [1, 3]);
}

#[test]
fn a_frame_open_too_long_leaves_on_tick_and_a_straggler_is_late() {
    let (mut a, mut out) = setup(8);
    feed(&mut a, &mut out, 5, &[0, 1, 2]);
    a.tick(Instant::now(), &mut out);
    assert!(out.frames.is_empty());
    a.tick(Instant::now() + Duration::from_millis(60), &mut out);
    assert_eq!(numbers(&out), [(5, 1)]);
    feed(&mut a, &mut out, 5, &[3]); // held: it might be a restart to 5
    feed(&mut a, &mut out, 6, &[0]); // the current numbering goes on: it was not
    assert_eq!(a.counts().late, 1, "a packet for a frame that left is late");
    assert!(out.restarts.is_empty());
}

#[test]
fn every_odd_packet_is_counted_by_kind() {
    let (mut a, mut out) = setup(8);
    feed(&mut a, &mut out, 7, &[0, 0]); // duplicate
    a.on_datagram(&packet(7, 1, 2), &mut out); // wrong module
    a.on_datagram(&packet(7, PPF, MOD_ID), &mut out); // out of range
    a.on_datagram(&packet(7, 1, MOD_ID)[..50], &mut out); // short payload
    a.on_datagram(&[0u8; 20], &mut out); // shorter than the header
    a.on_datagram(&[], &mut out);
    let mut v1 = packet(7, 1, MOD_ID);
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
fn the_place_comes_from_the_first_packets_row_and_column() {
    let cfg = AssemblerConfig {
        mod_id: None,
        place: Place::Header { grid: [4, 2] },
        ..config()
    };
    let (mut a, mut out) = setup_with(cfg, 8);
    a.on_datagram(&packet_at(1, 0, 77, 9, 0), &mut out); // row 9: outside the grid
    for k in 0..PPF {
        a.on_datagram(&packet_at(1, k, 77, 3, 1), &mut out);
    }
    a.on_datagram(&packet_at(2, 0, 77, 2, 1), &mut out); // another half module's row
    assert_eq!(a.counts().wrong_place, 2);
    assert_eq!(out.frames.len(), 1);
    assert_eq!(out.frames[0].0.module, 7, "row 3, column 1 of 2 columns");
}

#[test]
fn partial_readout_frames_are_complete_and_the_rows_not_read_hold_the_fill() {
    let cfg = AssemblerConfig {
        readout: [1, 3],
        ..config()
    };
    let (mut a, mut out) = setup_with(cfg, 8);
    feed(&mut a, &mut out, 1, &[0, 1, 2, 3]); // 0 and 3 are not read out
    feed(&mut a, &mut out, 2, &[2]); // 1 never arrives
    assert_eq!(a.finish(&mut out), Some(2));
    assert_eq!(numbers(&out), [(1, 0), (2, 1)]);
    assert_eq!(a.counts().out_of_range, 2);
    let fill = |b: &[u8]| b.chunks(2).all(|px| px == 0xBEEFu16.to_le_bytes());
    let (_, bytes) = &out.frames[0];
    assert!(fill(&bytes[..PAYLOAD]) && fill(&bytes[3 * PAYLOAD..]));
    assert!(bytes[PAYLOAD..3 * PAYLOAD]
        .chunks(PAYLOAD)
        .zip(1..)
        .all(|(p, k)| p.iter().all(|&b| b == (1 << 4 | k))));
    let (meta, _) = &out.frames[1];
    assert_eq!(
        meta.missing.iter().collect::<Vec<_>>(),
        [1],
        "only read packets"
    );
}

#[test]
fn a_lone_far_packet_is_counted_and_the_stream_goes_on() {
    let (mut a, mut out) = setup(8);
    feed(&mut a, &mut out, 150, &[0, 1, 2, 3]);
    feed(&mut a, &mut out, 151, &[0, 1]);
    feed(&mut a, &mut out, 9_000, &[0]); // a corrupt frame number
    feed(&mut a, &mut out, 151, &[2, 3]);
    assert_eq!(numbers(&out), [(150, 0), (151, 0)]);
    let c = a.counts();
    assert_eq!((c.far_ahead, c.restarts, c.accepted), (1, 0, 8));
}

/// The detector restarts at frame `first` (behind frame 101, or far ahead of it): every
/// packet of the new numbering is kept, frame numbers are the detector's own.
fn restart_at(first: u64) {
    let (mut a, mut out) = setup(16);
    feed(&mut a, &mut out, 100, &[0, 1, 2, 3]);
    feed(&mut a, &mut out, 101, &[0, 1, 3]); // 2 never comes
    feed(&mut a, &mut out, first, &[0, 1]);
    assert!(out.restarts.is_empty(), "two packets do not confirm it");
    feed(&mut a, &mut out, first, &[2]);
    assert_eq!(out.restarts, [(2, first, Some(101))]);
    feed(&mut a, &mut out, first, &[3]);
    feed(&mut a, &mut out, first + 1, &[0, 1, 2, 3]);
    assert_eq!(a.finish(&mut out), Some(first + 1));
    assert_eq!(
        numbers(&out),
        [(100, 0), (101, 1), (first, 0), (first + 1, 0)],
        "restart to {first}"
    );
    let c = a.counts();
    assert_eq!((c.accepted, c.late, c.restarts), (15, 0, 1));
}

#[test]
fn a_restart_behind_at_any_distance_keeps_every_packet() {
    for first in [1, 50, 97, 99, 100] {
        restart_at(first);
    }
}

#[test]
fn a_restart_far_ahead_is_confirmed_the_same_way() {
    restart_at(100_000);
}

#[test]
fn a_short_restart_is_confirmed_by_a_complete_frame_and_silence() {
    let cfg = AssemblerConfig {
        restart_confirm: 8,
        ..config()
    };
    let (mut a, mut out) = setup_with(cfg, 8);
    feed(&mut a, &mut out, 40, &[0, 1, 2, 3]);
    feed(&mut a, &mut out, 1, &[0, 1, 2, 3]); // one frame: fewer packets than restart_confirm
    a.tick(Instant::now(), &mut out);
    assert!(out.restarts.is_empty());
    a.tick(Instant::now() + Duration::from_millis(60), &mut out);
    assert_eq!(out.restarts, [(2, 1, Some(40))]);
    assert_eq!(numbers(&out), [(40, 0), (1, 0)]);
}

#[test]
fn without_a_buffer_the_frame_is_dropped_and_counted() {
    let (mut a, mut out) = setup(1);
    feed(&mut a, &mut out, 1, &[0, 1]);
    feed(&mut a, &mut out, 2, &[0, 1, 2, 3]); // the one buffer is frame 1's
    feed(&mut a, &mut out, 1, &[2, 3]);
    assert_eq!(numbers(&out), [(1, 0)]);
    assert_eq!(a.counts().dropped_with_frame, 4);
    assert_eq!(a.finish(&mut out), Some(2));
    assert_eq!(a.counts().frames_dropped, 1);
}

#[test]
fn flipped_rows_land_bottom_to_top_and_missing_ones_are_filled_there() {
    // 8 rows of 2 u16 pixels (4 bytes a row), 2 rows a packet.
    let cfg = AssemblerConfig {
        shape: [8, 2],
        flip_rows: true,
        ..config()
    };
    let (mut a, mut out) = setup_with(cfg, 8);
    for k in [0u32, 1, 3] {
        let mut d = packet(1, k, MOD_ID);
        for (r, row) in d[48..].chunks_mut(4).enumerate() {
            row.fill((k * 2 + r as u32) as u8); // the row's number in the detector's order
        }
        a.on_datagram(&d, &mut out);
    }
    assert_eq!(a.finish(&mut out), Some(1));
    let (meta, bytes) = &out.frames[0];
    assert_eq!(meta.missing.iter().collect::<Vec<_>>(), [2]);
    let rows: Vec<&[u8]> = bytes.chunks(4).collect();
    for sent_row in [0usize, 1, 2, 3, 6, 7] {
        assert!(
            rows[7 - sent_row].iter().all(|&b| b == sent_row as u8),
            "row {sent_row}"
        );
    }
    for sent_row in [4, 5] {
        assert!(
            rows[7 - sent_row]
                .chunks(2)
                .all(|px| px == 0xBEEFu16.to_le_bytes()),
            "packet 2's rows are filled where they would have landed"
        );
    }
}
