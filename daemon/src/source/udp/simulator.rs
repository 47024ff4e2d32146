//! The detector side of the UDP source, for tests and `detingest-bench udp`: sends frames as
//! sls v2 packets with `sendmmsg`, at a rate, with loss, duplication, reordering and garbage
//! injected from a seed, and reports exactly what it injected.
//!
//! Payload byte `j` of packet `k` of frame `f` is [`payload_byte`]`(f, k, j)`, so a receiver
//! can check every byte it got. The header carries the module id, row and column given, the
//! detector timestamp [`detector_timestamp`]`(f)` and the bunch id [`bunch_id`]`(f)`; only
//! the packets of the readout range are sent. A restart is a second `send` whose first frame
//! is behind the first's.

use std::collections::BTreeSet;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::header::{write_sls2, Sls2Fields, SLS2_HEADER_BYTES};
use super::mmsg::MmsgBuffers;

/// Datagrams per `sendmmsg` call.
const BATCH: usize = 64;

/// What to send.
#[derive(Debug, Clone)]
pub struct Simulation {
    /// Receiver address.
    pub target: SocketAddr,
    /// Module id in the headers.
    pub mod_id: u16,
    /// `[row, column]` in the headers.
    pub place: [u16; 2],
    /// Packets per frame of the full tile.
    pub packets_per_frame: u32,
    /// `[first, end)`: the packet numbers sent (partial readout), `None`: all.
    pub readout: Option<[u32; 2]>,
    /// Payload bytes per packet.
    pub payload_bytes: usize,
    /// First frame number.
    pub first_frame: u64,
    /// Frames to send.
    pub frames: u64,
    /// Frames per second (0: as fast as the socket takes them).
    pub rate_hz: f64,
    /// Probability that a packet is not sent.
    pub loss: f64,
    /// Probability that a packet is sent twice.
    pub duplicate: f64,
    /// Send each frame's packets in a shuffled order.
    pub reorder: bool,
    /// Send a garbage datagram (empty, 37 random bytes, or 65507: the largest) after every this
    /// many frames (0: never).
    pub garbage_every: u64,
    /// Seed of the injections.
    pub seed: u64,
}

/// What was sent and injected.
#[derive(Debug, Default, Clone)]
pub struct Sent {
    /// Datagrams sent, garbage included.
    pub datagrams: u64,
    /// Packets withheld, as (frame, packet).
    pub lost: BTreeSet<(u64, u32)>,
    /// Packets sent a second time.
    pub duplicated: u64,
    /// Garbage datagrams sent.
    pub garbage: u64,
    /// Seconds from the first send to the last.
    pub seconds: f64,
}

/// The payload byte `j` of packet `k` of frame `f`: a per-packet start, then counting up.
pub fn payload_byte(f: u64, k: u32, j: usize) -> u8 {
    (f.wrapping_mul(131) ^ u64::from(k).wrapping_mul(17)).wrapping_add(j as u64) as u8
}

/// The detector timestamp of frame `f` (a 10 MHz clock running since frame 0).
pub fn detector_timestamp(f: u64) -> u64 {
    f.wrapping_mul(10_000) + 7
}

/// The bunch id of frame `f`.
pub fn bunch_id(f: u64) -> u64 {
    f.wrapping_add(1 << 40)
}

/// Sends `sim` from an unbound UDP socket.
pub fn send(sim: &Simulation) -> io::Result<Sent> {
    let socket = UdpSocket::bind(("0.0.0.0", 0))?;
    socket.connect(sim.target)?;
    let mut rng = ChaCha8Rng::seed_from_u64(sim.seed);
    let dgram = SLS2_HEADER_BYTES + sim.payload_bytes;
    let mut batch = Batch::new(dgram.max(65_536));
    let mut sent = Sent::default();
    let [first_packet, end_packet] = sim.readout.unwrap_or([0, sim.packets_per_frame]);
    let mut order: Vec<u32> = (first_packet..end_packet).collect();
    // Payload bytes count up from a per-packet start (see `payload_byte`): each payload is a
    // window of this ramp, copied rather than computed byte by byte.
    let ramp: Vec<u8> = (0..256 + sim.payload_bytes).map(|i| i as u8).collect();
    let start = Instant::now();
    for i in 0..sim.frames {
        let f = sim.first_frame + i;
        if sim.rate_hz > 0.0 {
            let due = start + Duration::from_secs_f64(i as f64 / sim.rate_hz);
            while Instant::now() < due {
                std::hint::spin_loop();
            }
        }
        if sim.reorder {
            order.shuffle(&mut rng);
        }
        for &k in &order {
            if sim.loss > 0.0 && rng.random_bool(sim.loss) {
                sent.lost.insert((f, k));
                continue;
            }
            let copies = if sim.duplicate > 0.0 && rng.random_bool(sim.duplicate) {
                sent.duplicated += 1;
                2
            } else {
                1
            };
            for _ in 0..copies {
                let d = batch.next(&socket, dgram)?;
                let h = Sls2Fields {
                    frame_number: f,
                    packet_number: k,
                    bunch_id: bunch_id(f),
                    timestamp: detector_timestamp(f),
                    mod_id: sim.mod_id,
                    row: sim.place[0],
                    column: sim.place[1],
                    det_type: 3,
                };
                write_sls2(d, &h);
                let start = usize::from(payload_byte(f, k, 0));
                d[SLS2_HEADER_BYTES..].copy_from_slice(&ramp[start..start + sim.payload_bytes]);
                sent.datagrams += 1;
            }
        }
        if sim.garbage_every > 0 && (i + 1) % sim.garbage_every == 0 {
            let len = [0, 37, 65_507][(sent.garbage % 3) as usize]; // 65507: the largest UDP payload
            let d = batch.next(&socket, len)?;
            rng.fill(d);
            sent.garbage += 1;
            sent.datagrams += 1;
        }
        batch.flush(&socket)?;
    }
    batch.flush(&socket)?;
    sent.seconds = start.elapsed().as_secs_f64();
    Ok(sent)
}

/// Up to BATCH datagrams waiting for one `sendmmsg`.
struct Batch {
    bufs: MmsgBuffers,
    queued: usize,
}

impl Batch {
    fn new(max: usize) -> Self {
        Self {
            bufs: MmsgBuffers::new(BATCH, max),
            queued: 0,
        }
    }

    /// The next datagram's buffer, `len` bytes (flushing a full batch first).
    fn next(&mut self, socket: &UdpSocket, len: usize) -> io::Result<&mut [u8]> {
        if self.queued == self.bufs.count() {
            self.flush(socket)?;
        }
        self.queued += 1;
        Ok(self.bufs.prepare(self.queued - 1, len))
    }

    fn flush(&mut self, socket: &UdpSocket) -> io::Result<()> {
        let mut done = 0;
        while done < self.queued {
            match self.bufs.send(socket.as_raw_fd(), done, self.queued) {
                Ok(n) => done += n,
                // Loopback has no drop on send; a full socket buffer (ENOBUFS/EAGAIN) waits.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR)
                    ) =>
                {
                    std::thread::yield_now();
                }
                // A refused datagram (ICMP from an earlier one) is not the sender's problem.
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {}
                Err(e) => return Err(e),
            }
        }
        self.queued = 0;
        Ok(())
    }
}
