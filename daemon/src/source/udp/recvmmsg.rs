//! The portable receive path: `recvmmsg(2)` into a fixed batch of buffers, each datagram
//! handed on (to the assembler, which copies its payload into the frame). Chosen when
//! io_uring is unavailable (old kernels, container seccomp profiles) or by configuration.

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;

use super::mmsg::MmsgBuffers;

/// Datagrams per `recvmmsg` call.
const BATCH: usize = 64;

/// A socket and a batch of receive buffers, allocated once.
pub struct MmsgReceiver {
    socket: UdpSocket,
    bufs: MmsgBuffers,
}

impl MmsgReceiver {
    /// Receives from `socket` (which has a receive timeout) into buffers of `buf_bytes`.
    pub fn new(socket: UdpSocket, buf_bytes: usize) -> Self {
        Self {
            socket,
            bufs: MmsgBuffers::new(BATCH, buf_bytes),
        }
    }

    /// Receives what is there (waiting up to the socket's timeout for the first datagram)
    /// and hands every datagram to `each`.
    pub fn receive(&mut self, mut each: impl FnMut(&[u8])) -> io::Result<()> {
        let n = self.bufs.recv(self.socket.as_raw_fd())?;
        for i in 0..n {
            each(self.bufs.received(i));
        }
        Ok(())
    }
}
