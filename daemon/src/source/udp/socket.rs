//! The port's socket: bound, with the receive buffer the configuration asks for (a warning
//! naming `net.core.rmem_max` when the kernel grants less), and a receive timeout so a
//! blocking receive returns to check for stop requests.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// How long a blocking receive waits before returning to tick timeouts and check for stop.
pub const POLL: Duration = Duration::from_millis(10);

/// Binds `addr` with a receive buffer of `rcvbuf` bytes.
pub fn bind(addr: SocketAddr, rcvbuf: usize) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(addr)?;
    socket.set_read_timeout(Some(POLL))?;
    let want = libc::c_int::try_from(rcvbuf).unwrap_or(libc::c_int::MAX);
    // SO_RCVBUF is capped at net.core.rmem_max; SO_RCVBUFFORCE (CAP_NET_ADMIN) is not.
    if set_int(&socket, libc::SO_RCVBUFFORCE, want).is_err() {
        set_int(&socket, libc::SO_RCVBUF, want)?;
    }
    // The kernel reports twice what it grants for the payload (bookkeeping overhead).
    let granted = get_int(&socket, libc::SO_RCVBUF)? as usize / 2;
    if granted < rcvbuf {
        tracing::warn!(
            %addr,
            requested = rcvbuf,
            granted,
            "socket receive buffer smaller than configured: raise net.core.rmem_max \
             (sysctl -w net.core.rmem_max={rcvbuf}) or run with CAP_NET_ADMIN"
        );
    }
    Ok(socket)
}

fn set_int(socket: &UdpSocket, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: a valid socket, a valid option name and a pointer to a live c_int of the
    // length passed.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn get_int(socket: &UdpSocket, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid socket; `value` and `len` are live and sized for a c_int.
    let r = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}
