//! The portable receive path: `recvmmsg(2)` into a fixed batch of buffers, each datagram
//! handed to the assembler, which copies its payload into the frame. Chosen when io_uring is
//! unavailable (old kernels, container seccomp profiles) or by configuration.

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;

use super::assembler::{Assembler, FrameOut};
use super::header::PacketFormat;

/// Datagrams per `recvmmsg` call.
const BATCH: usize = 64;

/// A batch of receive buffers and the headers pointing into them, allocated once.
pub struct MmsgReceiver {
    socket: UdpSocket,
    buf_bytes: usize,
    bufs: Box<[u8]>,
    iovecs: Box<[libc::iovec]>,
    headers: Box<[libc::mmsghdr]>,
}

// SAFETY: the raw pointers in `iovecs` and `headers` point into the boxes this struct owns
// (heap memory that does not move with the struct) and are only used by its owner's thread.
unsafe impl Send for MmsgReceiver {}

impl MmsgReceiver {
    /// Receives from `socket` (which has a receive timeout) into buffers of `buf_bytes`.
    pub fn new(socket: UdpSocket, buf_bytes: usize) -> Self {
        let mut bufs = vec![0u8; BATCH * buf_bytes].into_boxed_slice();
        let iovecs: Box<[libc::iovec]> = (0..BATCH)
            .map(|i| libc::iovec {
                // SAFETY: i * buf_bytes < bufs.len(): a pointer inside the allocation.
                iov_base: unsafe { bufs.as_mut_ptr().add(i * buf_bytes) }.cast(),
                iov_len: buf_bytes,
            })
            .collect();
        let headers: Box<[libc::mmsghdr]> = (0..BATCH)
            .map(|i| {
                // SAFETY: mmsghdr is plain data; all-zero is valid and filled in below.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_iov = (&iovecs[i] as *const libc::iovec).cast_mut();
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        Self {
            socket,
            buf_bytes,
            bufs,
            iovecs,
            headers,
        }
    }

    /// Receives what is there (waiting up to the socket's timeout for the first datagram)
    /// and hands every datagram to `asm`.
    pub fn receive<F: PacketFormat>(
        &mut self,
        asm: &mut Assembler<F>,
        out: &mut impl FrameOut,
    ) -> io::Result<()> {
        debug_assert_eq!(self.iovecs.len(), BATCH);
        // SAFETY: `headers` holds BATCH initialised mmsghdr whose iovecs point to distinct
        // `buf_bytes` regions of `bufs`, all owned by `self` and alive for the call.
        let n = unsafe {
            libc::recvmmsg(
                self.socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => Ok(()),
                _ => Err(e),
            };
        }
        for i in 0..n as usize {
            // A datagram longer than the buffer arrives truncated (MSG_TRUNC); the
            // assembler then sees a wrong payload length and counts it.
            let len = (self.headers[i].msg_len as usize).min(self.buf_bytes);
            let at = i * self.buf_bytes;
            asm.on_datagram(&self.bufs[at..at + len], out);
        }
        Ok(())
    }
}
