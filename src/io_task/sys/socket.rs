//! The socket calls whose form differs by platform. Everything else the loop does to a
//! socket goes through `socket2`, which is portable as it is.
//!
//! | what | Linux, Android, FreeBSD, DragonFly, NetBSD, OpenBSD | macOS and the other Apple systems | other Unix |
//! |---|---|---|---|
//! | non-blocking accept | `accept4(SOCK_NONBLOCK \| SOCK_CLOEXEC)`, one call | `accept`, then `O_NONBLOCK`, `FD_CLOEXEC` and `SO_NOSIGPIPE` | as Apple, without `SO_NOSIGPIPE` |
//! | send without `SIGPIPE` | `MSG_NOSIGNAL` on every send | `SO_NOSIGPIPE` on the socket: `socket2` and std set it on every socket they create, and `accept_nonblocking` on every accepted one | `MSG_NOSIGNAL` |
//! | `SO_REUSEPORT` spreads connections | Linux, Android, DragonFly: yes; FreeBSD: with `SO_REUSEPORT_LB`, which `set_reuse_port` sets instead; NetBSD, OpenBSD: no | no (the last socket bound takes them all) | no |
//!
//! Where `SO_REUSEPORT` does not spread connections, `tcp::bind_pool` gives every loop the
//! same listening socket instead (`reuse_port_spreads`): each connection wakes every loop
//! and the first to accept takes it, so clients still go to every loop, to whichever is
//! free first rather than evenly.

use std::io::{self, IoSlice};

use socket2::Socket;

/// The flag that keeps a send on a broken connection from raising `SIGPIPE` (which would
/// kill a process that has not ignored it), where the system has one.
#[cfg(not(target_vendor = "apple"))]
const NO_SIGPIPE: libc::c_int = libc::MSG_NOSIGNAL;
/// Apple systems have no `MSG_NOSIGNAL`: their sockets carry `SO_NOSIGPIPE` instead.
#[cfg(target_vendor = "apple")]
const NO_SIGPIPE: libc::c_int = 0;

/// Sends `buf` on a connected socket without raising `SIGPIPE`.
#[inline]
pub(crate) fn send(socket: &Socket, buf: &[u8]) -> io::Result<usize> {
    socket.send_with_flags(buf, NO_SIGPIPE)
}

/// Sends `bufs` in one gathered `sendmsg` without raising `SIGPIPE`.
#[inline]
pub(crate) fn send_vectored(socket: &Socket, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    socket.send_vectored_with_flags(bufs, NO_SIGPIPE)
}

/// Accepts a connection as a non-blocking, close-on-exec socket: one `accept4` where the
/// system has it.
#[cfg(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "dragonfly",
    target_os = "netbsd",
    target_os = "openbsd",
))]
pub(crate) fn accept_nonblocking(listener: &Socket) -> io::Result<Socket> {
    use std::os::fd::AsRawFd;
    // SAFETY: `accept4` with null address pointers only reads the listening descriptor,
    // which `listener` keeps open for the duration of the call; a non-negative result is a
    // new descriptor that nothing else owns.
    let fd = unsafe {
        super::owned(libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        ))?
    };
    Ok(Socket::from(fd))
}

/// Accepts a connection as a non-blocking, close-on-exec socket where there is no
/// `accept4`: `socket2`'s accept (which sets close-on-exec), then non-blocking mode. Built
/// on Linux too for the tests.
#[cfg(any(
    test,
    not(any(
        target_os = "linux",
        target_os = "android",
        target_os = "freebsd",
        target_os = "dragonfly",
        target_os = "netbsd",
        target_os = "openbsd",
    ))
))]
pub(crate) fn accept_then_set_flags(listener: &Socket) -> io::Result<Socket> {
    let (socket, _) = listener.accept()?;
    socket.set_nonblocking(true)?;
    // The listener's `SO_NOSIGPIPE` is said to be inherited; set it anyway, so that no
    // accepted socket depends on that.
    #[cfg(target_vendor = "apple")]
    socket.set_nosigpipe(true)?;
    Ok(socket)
}

#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "dragonfly",
    target_os = "netbsd",
    target_os = "openbsd",
)))]
pub(crate) use accept_then_set_flags as accept_nonblocking;

/// Whether a failed `accept` only concerns the connection it was about to return, so the
/// listener should go on accepting at once: interrupted (`EINTR`), the client gave up before
/// it was accepted (`ECONNABORTED`; Linux may also report `EPROTO`), or a firewall rule
/// refused it (Linux's `EPERM`). The same set on every Unix: each code exists everywhere,
/// and means the same where the system reports it.
pub(crate) fn accept_error_is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR | libc::ECONNABORTED | libc::EPROTO | libc::EPERM)
    )
}

/// Whether a failed `accept` means the process or system is out of descriptors or memory:
/// the pending connection would be reported again at once (level mode), so the listener
/// must stop asking for a while.
pub(crate) fn accept_error_is_out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Whether sockets bound to one address with `set_reuse_port` share its incoming
/// connections among them (see the table above).
pub(crate) const fn reuse_port_spreads() -> bool {
    cfg!(any(
        target_os = "linux",
        target_os = "android",
        target_os = "dragonfly",
        target_os = "freebsd",
    ))
}

/// Lets several sockets bind the same address: `SO_REUSEPORT`, or on FreeBSD
/// `SO_REUSEPORT_LB`, which also spreads connections over them as Linux's does.
pub(crate) fn set_reuse_port(socket: &Socket) -> io::Result<()> {
    #[cfg(target_os = "freebsd")]
    return socket.set_reuse_port_lb(true);
    #[cfg(not(target_os = "freebsd"))]
    socket.set_reuse_port(true)
}

/// The local or remote address of a Unix-domain socket, as the standard library names it
/// (std has no way to build an unnamed address, so it must ask the socket itself).
#[cfg(unix)]
pub(crate) fn unix_socket_addr(
    socket: &Socket,
    peer: bool,
) -> io::Result<std::os::unix::net::SocketAddr> {
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::net::UnixStream;
    // SAFETY: `socket` keeps the descriptor open for the duration of the call, and the
    // `ManuallyDrop` stream only borrows it: it is never dropped, so it never closes it.
    let stream =
        std::mem::ManuallyDrop::new(unsafe { UnixStream::from_raw_fd(socket.as_raw_fd()) });
    if peer {
        stream.peer_addr()
    } else {
        stream.local_addr()
    }
}

/// The credentials of a Unix-domain socket's peer, as the kernel recorded them when it
/// connected: user id, group id, and (where the platform says) process id.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn peer_cred(socket: &Socket) -> io::Result<(u32, u32, Option<i32>)> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes passed, and the kernel
    // writes at most `len` bytes; the descriptor is open for the call.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((cred.uid, cred.gid, Some(cred.pid)))
}

/// The credentials of a Unix-domain socket's peer (see the Linux version); the BSDs and
/// macOS report no process id through `getpeereid`.
#[cfg(all(unix, not(any(target_os = "linux", target_os = "android"))))]
pub(crate) fn peer_cred(socket: &Socket) -> io::Result<(u32, u32, Option<i32>)> {
    use std::os::fd::AsRawFd;
    let mut uid: libc::uid_t = 0;
    let mut gid: libc::gid_t = 0;
    // SAFETY: both pointers are valid for writes; the descriptor is open for the call.
    let rc = unsafe { libc::getpeereid(socket.as_raw_fd(), &mut uid, &mut gid) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((uid, gid, None))
}

/// Resets a connected TCP socket now, whoever else holds its descriptor: on Linux a
/// `connect` to an `AF_UNSPEC` address disconnects it, sending a reset to the peer from any
/// state that needs one. Elsewhere `SO_LINGER` 0 makes the final close reset it, and the
/// socket is shut down now. Unix-domain sockets have no reset: they are shut down.
pub(crate) fn reset(socket: &Socket) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a zeroed `sockaddr` is a valid value of the type; `connect` only reads
        // `len` bytes of it, and the descriptor is open for the call.
        let rc = unsafe {
            let mut addr: libc::sockaddr = std::mem::zeroed();
            addr.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
            let len = std::mem::size_of::<libc::sockaddr>() as libc::socklen_t;
            libc::connect(socket.as_raw_fd(), &addr, len)
        };
        if rc == 0 {
            return;
        }
    }
    let _ = socket.set_linger(Some(std::time::Duration::ZERO));
    let _ = socket.shutdown(std::net::Shutdown::Both);
}

/// Sends up to `max` bytes of `file` from `offset` on a connected socket: `sendfile(2)` on
/// Linux and Android, which copies inside the kernel; elsewhere, or where `sendfile` cannot
/// serve (`EINVAL`, `ENOSYS`: a file system without it), a read into `buf` and a send. `buf`
/// is the loop's receive buffer, empty before and after. A file that ends before `offset +
/// max` fails with `UnexpectedEof`.
pub(crate) fn send_file(
    socket: &Socket,
    file: &std::fs::File,
    offset: u64,
    max: usize,
    buf: &mut Vec<u8>,
) -> io::Result<usize> {
    if max == 0 {
        return Ok(0);
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::os::fd::AsRawFd;
        let mut off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file offset too large"))?;
        // SAFETY: both descriptors are open for the call (`socket` and `file` are borrowed),
        // and `off` is a valid `off_t` the kernel may update.
        let n = unsafe { libc::sendfile(socket.as_raw_fd(), file.as_raw_fd(), &mut off, max) };
        match n {
            0 => return Err(file_ended()),
            n if n > 0 => return Ok(n as usize),
            _ => {
                let e = io::Error::last_os_error();
                if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) {
                    return Err(e);
                }
            }
        }
    }
    send_file_copy(socket, file, offset, max, buf)
}

/// `send_file` by reading the file into `buf` and sending what was read.
pub(crate) fn send_file_copy(
    socket: &Socket,
    file: &std::fs::File,
    offset: u64,
    max: usize,
    buf: &mut Vec<u8>,
) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    debug_assert!(buf.is_empty());
    let want = max.min(buf.capacity().max(64 * 1024));
    buf.resize(want, 0);
    let read = file.read_at(buf, offset);
    let result = match read {
        Ok(0) => Err(file_ended()),
        Ok(n) => send(socket, &buf[..n]),
        Err(e) => Err(e),
    };
    buf.clear();
    result
}

fn file_ended() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the file ended before the bytes asked for",
    )
}
