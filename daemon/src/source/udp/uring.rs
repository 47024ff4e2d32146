//! The fast receive path: one io_uring multishot receive on the socket, fed from a ring of
//! provided buffers. The kernel picks a buffer per datagram and posts a completion naming
//! it; the assembler copies the payload into the frame and the buffer goes straight back
//! to the ring. When the kernel ends the multishot (a completion without the MORE flag,
//! e.g. ENOBUFS after the buffer ring ran dry) it is re-armed and counted.

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::{BufRingEntry, Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, IoUring};

use super::assembler::{Assembler, FrameOut};
use super::header::PacketFormat;
use super::socket::POLL;

/// Provided buffers by default (a power of two, at most 32768).
pub const BUFFERS: u16 = 1024;
/// Buffer group id of our ring.
const GROUP: u16 = 0;
/// `user_data` of the multishot receive.
const RECV: u64 = 1;

/// A ring of provided buffers registered with the kernel, and the multishot receive.
pub struct UringReceiver {
    socket: UdpSocket,
    ring: IoUring,
    entries: memmap2::MmapMut,
    bufs: Box<[u8]>,
    buf_bytes: usize,
    buffers: u16,
    tail: u16,
    armed: bool,
    /// Failed completions are logged at most every few seconds.
    failed: crate::rate_limit::RateLimit,
    timeout: Timespec,
    /// Completions copied out of the queue in one go (capacity: the queue's size).
    cqes: Vec<cqueue::Entry>,
}

impl UringReceiver {
    /// Sets up io_uring for `socket` with `buffers` provided buffers (a power of two) of
    /// `buf_bytes`, or says why it cannot (the caller falls back).
    pub fn new(socket: UdpSocket, buf_bytes: usize, buffers: u16) -> io::Result<Self> {
        if !buffers.is_power_of_two() || buffers > 32_768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffers: a power of two <= 32768",
            ));
        }
        let ring = IoUring::new(256)?;
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        if !probe.is_supported(opcode::RecvMulti::CODE) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "no multishot receive",
            ));
        }
        // The entries must be page aligned: an anonymous mapping is.
        let entries =
            memmap2::MmapMut::map_anon(usize::from(buffers) * std::mem::size_of::<BufRingEntry>())?;
        let bufs = vec![0u8; usize::from(buffers) * buf_bytes].into_boxed_slice();
        // SAFETY: `entries` is a page-aligned mapping of `buffers` entries that lives as long
        // as `self` (and the ring: the ring is dropped, unregistering, before the mapping).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                entries.as_ptr() as u64,
                buffers,
                GROUP,
                0,
            )?;
        }
        let mut r = Self {
            socket,
            ring,
            entries,
            bufs,
            buf_bytes,
            buffers,
            tail: 0,
            armed: false,
            failed: Default::default(),
            timeout: Timespec::new().nsec(POLL.as_nanos() as u32),
            cqes: Vec::new(),
        };
        r.cqes.reserve_exact(r.ring.params().cq_entries() as usize);
        for bid in 0..buffers {
            r.provide(bid);
        }
        r.publish_tail();
        Ok(r)
    }

    /// Puts buffer `bid` back in the ring (visible to the kernel after `publish_tail`).
    fn provide(&mut self, bid: u16) {
        let mask = self.buffers - 1;
        let base = self.entries.as_mut_ptr().cast::<BufRingEntry>();
        // SAFETY: `tail & mask` < buffers: an entry inside the mapping. The kernel reads
        // only entries below the published tail, and this one is past it.
        let entry = unsafe { &mut *base.add(usize::from(self.tail & mask)) };
        // SAFETY: bid < buffers, so the address lies inside `bufs`.
        let addr = unsafe { self.bufs.as_ptr().add(usize::from(bid) * self.buf_bytes) };
        entry.set_addr(addr as u64);
        entry.set_len(self.buf_bytes as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish_tail(&mut self) {
        // SAFETY: the tail field overlays the reserved field of entry 0, inside the mapping,
        // 2-byte aligned; the kernel reads it concurrently, so it is written atomically.
        let tail = unsafe {
            &*BufRingEntry::tail(self.entries.as_ptr().cast::<BufRingEntry>()).cast::<AtomicU16>()
        };
        // Release: the entries written above are visible before the kernel sees the tail.
        tail.store(self.tail, Ordering::Release);
    }

    fn arm(&mut self) -> io::Result<()> {
        let recv = opcode::RecvMulti::new(Fd(self.socket.as_raw_fd()), GROUP)
            .build()
            .user_data(RECV);
        // SAFETY: the socket and the registered buffer group outlive the request (the ring
        // is dropped first, cancelling it).
        unsafe {
            self.ring
                .submission()
                .push(&recv)
                .map_err(|_| io::Error::other("submission queue full"))?;
        }
        self.armed = true;
        Ok(())
    }

    /// Waits up to the poll interval for completions and hands every datagram to `asm`.
    pub fn receive<F: PacketFormat>(
        &mut self,
        asm: &mut Assembler<F>,
        out: &mut impl FrameOut,
    ) -> io::Result<()> {
        if !self.armed {
            self.arm()?;
        }
        let args = SubmitArgs::new().timespec(&self.timeout);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) => {}
            Err(e) => return Err(e),
        }
        let mut returned = false;
        // Copy the completions out in one go (one head update), then process them.
        self.cqes.clear();
        self.cqes.extend(self.ring.completion());
        for i in 0..self.cqes.len() {
            let (result, flags) = (self.cqes[i].result(), self.cqes[i].flags());
            let bid = cqueue::buffer_select(flags);
            if result >= 0 {
                // An empty datagram is a datagram too (counted too short).
                let datagram = match bid {
                    Some(bid) => {
                        let at = usize::from(bid) * self.buf_bytes;
                        &self.bufs[at..at + (result as usize).min(self.buf_bytes)]
                    }
                    None => &[][..],
                };
                asm.on_datagram(datagram, out);
            }
            if let Some(bid) = bid {
                self.provide(bid);
                returned = true;
            }
            if result == -libc::ENOBUFS {
                asm.counts_mut().enobufs += 1;
            } else if result < 0 && result != -libc::EINTR {
                if let Some(held) = self.failed.allow(std::time::Instant::now()) {
                    tracing::warn!(error = %io::Error::from_raw_os_error(-result), not_logged = held, "multishot receive ended");
                }
            }
            if !cqueue::more(flags) {
                self.armed = false;
                asm.counts_mut().rearms += 1;
            }
        }
        if returned {
            self.publish_tail();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use detingest_shm::{BufferPool, FrameBuf, FrameMeta, PixelType, PoolBuf};

    use super::super::assembler::AssemblerConfig;
    use super::super::header::Sls2;
    use super::*;

    struct Nowhere;
    impl FrameOut for Nowhere {
        fn buffer(&mut self, _: u64, _: u16) -> Option<PoolBuf> {
            BufferPool::new(0, 0).try_acquire()
        }
        fn start(&mut self, _: u64) {}
        fn send(&mut self, _: FrameMeta, _: FrameBuf) -> bool {
            true
        }
        fn restart(&mut self, _: u16, _: u64, _: Option<u64>) {}
    }

    #[test]
    fn a_dry_buffer_ring_ends_the_multishot_which_is_rearmed_and_counted() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(POLL)).unwrap();
        let addr = rx.local_addr().unwrap();
        let Ok(mut r) = UringReceiver::new(rx, 128, 2) else {
            eprintln!("io_uring unavailable here: skipped");
            return;
        };
        let cfg = AssemblerConfig {
            mod_id: None,
            place: super::super::assembler::Place::Tile(0),
            packets_per_frame: 1,
            readout: [0, 1],
            payload_bytes: 2,
            pixel: PixelType::U16,
            shape: [1, 1],
            window: 1,
            timeout: Duration::from_millis(10),
            fill: 0,
            flip_rows: false,
            restart_gap: 10,
            restart_confirm: 1,
        };
        let mut asm = Assembler::new(cfg, Sls2);
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..20u8 {
            tx.send_to(&[i; 10], addr).unwrap(); // 20 datagrams wait in the socket
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while asm.counts().datagrams < 20 {
            assert!(Instant::now() < deadline, "{:?}", asm.counts());
            r.receive(&mut asm, &mut Nowhere).unwrap();
        }
        let c = asm.counts();
        assert_eq!(
            (c.datagrams, c.too_short),
            (20, 20),
            "nothing lost to the re-arms"
        );
        assert!(c.enobufs >= 1 && c.rearms >= c.enobufs, "{c:?}");
    }
}
