//! [`MmsgBuffers`]: a block of datagram buffers with the `iovec`s and `mmsghdr`s that point
//! into them, allocated once and used for `recvmmsg(2)` (the fallback receive path, the
//! benchmark's drain loop) and `sendmmsg(2)` (the detector simulator).

use std::io;
use std::os::fd::RawFd;

/// `count` buffers of `buf_bytes`, one datagram each.
pub struct MmsgBuffers {
    bufs: Box<[u8]>,
    buf_bytes: usize,
    iovecs: Box<[libc::iovec]>,
    headers: Box<[libc::mmsghdr]>,
}

// SAFETY: the raw pointers in `iovecs` and `headers` point into the boxes this struct owns
// (heap memory that does not move with the struct); only `&mut self` methods use them.
unsafe impl Send for MmsgBuffers {}

impl MmsgBuffers {
    /// `count` buffers of `buf_bytes` each, every iovec spanning its whole buffer.
    pub fn new(count: usize, buf_bytes: usize) -> Self {
        let mut bufs = vec![0u8; count * buf_bytes].into_boxed_slice();
        let iovecs: Box<[libc::iovec]> = (0..count)
            .map(|i| libc::iovec {
                // SAFETY: i * buf_bytes < bufs.len() (or 0 for an empty block): inside it.
                iov_base: unsafe { bufs.as_mut_ptr().add(i * buf_bytes) }.cast(),
                iov_len: buf_bytes,
            })
            .collect();
        let headers = (0..count)
            .map(|i| {
                // SAFETY: mmsghdr is plain data; all-zero is valid and filled in below.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_iov = (&iovecs[i] as *const libc::iovec).cast_mut();
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        Self {
            bufs,
            buf_bytes,
            iovecs,
            headers,
        }
    }

    /// Number of buffers.
    pub fn count(&self) -> usize {
        self.headers.len()
    }

    /// Receives up to [`Self::count`] datagrams from `fd`, waiting (within the socket's
    /// receive timeout) for the first; returns how many. A timeout or signal gives 0.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        // SAFETY: every header points at an iovec spanning a distinct buffer of the block,
        // all owned by `self` and alive for the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                self.headers.len() as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted => {
                Ok(0)
            }
            _ => Err(e),
        }
    }

    /// Datagram `i` as received by the last [`Self::recv`]. A datagram longer than the
    /// buffer arrives truncated; the assembler then sees a wrong length and counts it.
    pub fn received(&self, i: usize) -> &[u8] {
        let len = (self.headers[i].msg_len as usize).min(self.buf_bytes);
        &self.bufs[i * self.buf_bytes..i * self.buf_bytes + len]
    }

    /// Buffer `i` made `len` bytes long (at most the buffer) for the next [`Self::send`].
    pub fn prepare(&mut self, i: usize, len: usize) -> &mut [u8] {
        let len = len.min(self.buf_bytes);
        self.iovecs[i].iov_len = len;
        &mut self.bufs[i * self.buf_bytes..i * self.buf_bytes + len]
    }

    /// Sends datagrams `from..to` on the connected socket `fd`; returns how many went.
    pub fn send(&mut self, fd: RawFd, from: usize, to: usize) -> io::Result<usize> {
        let headers = &mut self.headers[from..to];
        // SAFETY: the headers point at iovecs and buffers owned by `self`, alive for the call.
        let n =
            unsafe { libc::sendmmsg(fd, headers.as_mut_ptr(), headers.len() as libc::c_uint, 0) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}
