//! The frame assembler on arbitrary datagram sequences. The input is a list of records:
//! one control byte (bit 7: tick the clock past the timeout first; bit 0: another module id;
//! bit 1: a foreign header version; bit 2: the other row of the grid) then a frame-number
//! delta, packet number and length that shape a datagram, so that the fuzzer reaches real
//! packets, restarts and partial readout, not only garbage.
//! Checks: no panic; every datagram counted in exactly one kind; frames leave in strictly
//! increasing frame-number order between restarts, with the full frame length and a
//! consistent lost count.
#![no_main]

use std::time::{Duration, Instant};

use detingest_daemon::source::udp::assembler::{Assembler, AssemblerConfig, FrameOut, Place};
use detingest_daemon::source::udp::header::{write_sls2, Sls2, Sls2Fields};
use detingest_shm::{BufferPool, FrameBuf, FrameMeta, PixelType, PoolBuf};
use libfuzzer_sys::fuzz_target;

const PPF: u32 = 8;
const PAYLOAD: usize = 16;
/// Packets the detector sends: 1..7 of 0..8.
const READOUT: [u32; 2] = [1, 7];

struct Check {
    pool: BufferPool,
    last: Option<u64>,
    tile: Option<u16>,
    frames: u64,
}

impl FrameOut for Check {
    fn buffer(&mut self, _: u64, _: u16) -> Option<PoolBuf> {
        self.pool.try_acquire()
    }
    fn start(&mut self, _: u64) {}
    fn send(&mut self, meta: FrameMeta, data: FrameBuf) -> bool {
        assert!(self.last.is_none_or(|l| meta.frame_number > l), "order");
        assert_eq!(data.len(), PPF as usize * PAYLOAD);
        assert!(meta.packets_lost() < READOUT[1] - READOUT[0]);
        assert!(meta.missing.iter().all(|k| (READOUT[0]..READOUT[1]).contains(&k)));
        assert!(self.tile.is_none_or(|t| t == meta.module), "the first packet fixes the tile");
        self.tile = Some(meta.module);
        self.last = Some(meta.frame_number);
        self.frames += 1;
        true
    }
    fn restart(&mut self, _: u16, _: u64, _: Option<u64>) {
        self.last = None;
    }
}

fuzz_target!(|data: &[u8]| {
    let cfg = AssemblerConfig {
        mod_id: Some(1234),
        place: Place::Header { grid: [2, 1] },
        packets_per_frame: PPF,
        readout: READOUT,
        payload_bytes: PAYLOAD,
        pixel: PixelType::U16,
        shape: [1, 64],
        window: 3,
        timeout: Duration::from_millis(5),
        fill: 7,
        flip_rows: false,
        restart_gap: 50,
        restart_confirm: 2,
    };
    let mut asm = Assembler::new(cfg, Sls2);
    let mut out = Check {
        pool: BufferPool::new(4, PPF as usize * PAYLOAD),
        last: None,
        tile: None,
        frames: 0,
    };
    let mut now = Instant::now();
    // Far from 0 and u64::MAX: detector numbering never wraps (2^64 frames), so a walk that
    // wrapped would only test the harness.
    let mut frame = 1u64 << 40;
    let mut dgram = vec![0u8; 48 + PAYLOAD + 8];
    for rec in data.chunks(4) {
        let [ctl, delta, k, len] = [rec[0], *rec.get(1).unwrap_or(&0), *rec.get(2).unwrap_or(&0), *rec.get(3).unwrap_or(&64)];
        if ctl & 0x80 != 0 {
            now += Duration::from_millis(6);
            asm.tick(now, &mut out);
        }
        frame = frame.wrapping_add(i8::from_ne_bytes([delta]) as i64 as u64);
        let h = Sls2Fields {
            frame_number: frame,
            packet_number: u32::from(k % 10),
            mod_id: if ctl & 1 == 0 { 1234 } else { 2 },
            row: if ctl & 4 == 0 { 1 } else { 0 },
            ..Sls2Fields::default()
        };
        write_sls2(&mut dgram, &h);
        if ctl & 2 != 0 {
            dgram[47] = ctl;
        }
        let n = usize::from(len).min(dgram.len());
        asm.on_datagram(&dgram[..n], &mut out);
    }
    asm.finish(&mut out);
    let c = asm.counts();
    let kinds = c.accepted + c.too_short + c.bad_version + c.wrong_module + c.wrong_place
        + c.out_of_range + c.bad_length + c.duplicate + c.late + c.far_ahead
        + c.dropped_with_frame;
    assert_eq!(kinds, c.datagrams, "{c:?}");
    assert_eq!(c.frames_complete + c.frames_incomplete, out.frames);
});
