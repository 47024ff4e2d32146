//! A port's packet counters, by kind: every datagram lands in exactly one of `accepted`,
//! `too_short`, `bad_version`, `wrong_module`, `wrong_place`, `out_of_range`, `bad_length`,
//! `duplicate`, `late`, `far_ahead` and `dropped_with_frame` (packets of a restart still being
//! confirmed are counted once it is confirmed or refuted).

use serde::Serialize;

use crate::contract::{Counters, KindCounts};

/// Counters of one port.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PacketCounts {
    /// Datagrams received.
    pub datagrams: u64,
    /// Bytes received.
    pub bytes: u64,
    /// Packets whose payload went into a frame.
    pub accepted: u64,
    /// Shorter than the header.
    pub too_short: u64,
    /// Header version not understood.
    pub bad_version: u64,
    /// Module id (`modId`) other than the port's.
    pub wrong_module: u64,
    /// `row`/`column` other than the port's, or outside the grid.
    pub wrong_place: u64,
    /// Packet number outside the packets the detector sends per frame.
    pub out_of_range: u64,
    /// Payload not of the configured size.
    pub bad_length: u64,
    /// A packet already caught for its frame.
    pub duplicate: u64,
    /// Behind the current numbering (its frame already left), and no restart followed.
    pub late: u64,
    /// `restart_gap` or more ahead of the current numbering, and no restart followed.
    pub far_ahead: u64,
    /// Packets of frames dropped for want of a buffer.
    pub dropped_with_frame: u64,
    /// Frames that left complete.
    pub frames_complete: u64,
    /// Frames that left with packets missing.
    pub frames_incomplete: u64,
    /// Frames dropped here: no buffer was free, or the pipeline's queue was full (their
    /// indices are recorded dropped, not lost).
    pub frames_dropped: u64,
    /// Packets missing from frames that left incomplete.
    pub packets_lost: u64,
    /// Detector restarts accepted (a new numbering; each starts a new sequence).
    pub restarts: u64,
    /// Times the io_uring multishot receive ended and was re-armed.
    pub rearms: u64,
    /// Of those, because the provided buffer ring ran dry (ENOBUFS).
    pub enobufs: u64,
}

impl PacketCounts {
    /// Datagrams that did not belong to the port's stream: wrong module or place, bad size
    /// or version, out of range, late or far ahead.
    pub fn foreign(&self) -> u64 {
        self.too_short
            + self.bad_version
            + self.wrong_module
            + self.wrong_place
            + self.out_of_range
            + self.bad_length
            + self.late
            + self.far_ahead
    }
}

impl KindCounts for PacketCounts {
    fn key(&self) -> &'static str {
        "packets"
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn metric(&self) -> (&'static str, &'static str) {
        ("detingest_udp_", "UDP source")
    }

    fn counters(&self) -> Counters {
        Counters::new()
            .total("datagrams", "Datagrams received", self.datagrams)
            .total("bytes", "Bytes received", self.bytes)
            .metric("received_bytes")
            .total("accepted", "Packets whose payload went into a frame", self.accepted)
            .total("too_short", "Shorter than the header", self.too_short)
            .total("bad_version", "Header version not understood", self.bad_version)
            .total("wrong_module", "Module id (`modId`) other than the port's", self.wrong_module)
            .total("wrong_place", "`row`/`column` other than the port's, or outside the grid", self.wrong_place)
            .total("out_of_range", "Packet number outside the packets the detector sends per frame", self.out_of_range)
            .total("bad_length", "Payload not of the configured size", self.bad_length)
            .total("duplicate", "A packet already caught for its frame", self.duplicate)
            .total("late", "Behind the current numbering (its frame already left), and no restart followed", self.late)
            .total("far_ahead", "`restart_gap` or more ahead of the current numbering, and no restart followed", self.far_ahead)
            .total("dropped_with_frame", "Packets of frames dropped for want of a buffer", self.dropped_with_frame)
            .total("frames_complete", "Frames that left complete", self.frames_complete)
            .total("frames_incomplete", "Frames that left with packets missing", self.frames_incomplete)
            .total("frames_dropped", "Frames dropped here: no buffer was free, or the pipeline's queue was full (their indices are recorded dropped, not lost)", self.frames_dropped)
            .total("packets_lost", "Packets missing from frames that left incomplete", self.packets_lost)
            .total("restarts", "Detector restarts accepted (a new numbering; each starts a new sequence)", self.restarts)
            .total("rearms", "Times the io_uring multishot receive ended and was re-armed", self.rearms)
            .total("enobufs", "Of those, because the provided buffer ring ran dry (ENOBUFS)", self.enobufs)
    }

    fn summary_line(&self) -> String {
        let p = self;
        format!(
            "  packets        {} accepted, {} refused (wrong module {}, wrong place {}, out of range {}, \
             bad length {}, too short {}, bad version {}, late {}, far ahead {}), {} duplicate; \
             frames {} complete, {} incomplete ({} packets lost), {} dropped here; restarts {}",
            p.accepted,
            p.foreign(),
            p.wrong_module,
            p.wrong_place,
            p.out_of_range,
            p.bad_length,
            p.too_short,
            p.bad_version,
            p.late,
            p.far_ahead,
            p.duplicate,
            p.frames_complete,
            p.frames_incomplete,
            p.packets_lost,
            p.frames_dropped,
            p.restarts
        )
    }

    fn refused(&self) -> u64 {
        self.foreign()
    }
}
