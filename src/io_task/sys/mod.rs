//! The system-call layer: the only code of the loop that differs by platform, and with
//! `registration.rs` the only `unsafe` code of the loop (each block has a `SAFETY` comment).
//!
//! # Backends
//!
//! | platform | backend | selected by |
//! |---|---|---|
//! | Linux | `epoll.rs`: epoll and an eventfd, one system call per `wait` | default |
//! | Linux | `polling.rs`: the `polling` crate (on epoll) | `RUSTFLAGS="--cfg iotask_force_polling"` |
//! | macOS, the BSDs, other Unix | `polling.rs`: the `polling` crate (kqueue, event ports or `poll`) | always |
//! | Windows | none: `build.rs` stops the build with one error that says what is missing | |
//!
//! The `polling` backend is what lets iotask build beyond Linux; on Linux it is kept only to
//! test that backend on the machine the tests run on. Linux defaults to epoll because
//! `polling` 3.11 makes five system calls per `wait` there (ARCHITECTURE.md, "Poll mode").
//!
//! # What every backend provides
//!
//! A backend is a module that defines `Poller` and `Events` with the methods below; this
//! file re-exports the one selected. `Interest` and `Event` are shared. The loop relies on
//! every point of this contract, and `tests.rs` checks it against each backend that builds
//! on the machine (on Linux, both).
//!
//! - `Poller::new() -> io::Result<Poller>`. `Poller` is `Send + Sync + Debug`: commands
//!   call `notify` from any thread while the I/O thread waits.
//! - `unsafe Poller::add(fd, key, interest)`: starts reporting `fd` under `key`. The caller
//!   keeps `fd` open until `delete` (`registration.rs` holds that invariant): a poller could
//!   otherwise report a closed descriptor's number, which may name another file by then.
//!   `interest` is never empty (a socket with nothing to wait for is not registered: epoll
//!   reports hang-ups even for an empty set, which would spin in level mode). A key is never
//!   `usize::MAX`, which both backends keep for their wake-up.
//! - `Poller::modify(fd, key, interest)`: replaces the interest of a registered `fd`. Not
//!   called on a registration whose old or new interest is `exclusive` (epoll refuses it);
//!   `Registration` deletes and adds instead.
//! - `Poller::delete(fd)`: stops reporting `fd`; called before `fd` closes.
//! - `Poller::wait(&mut events, timeout)`: clears `events`, then blocks until at least one
//!   registered descriptor is ready, `notify` is called, or `timeout` passes (`None`: no
//!   limit; a timeout may be rounded up to whole milliseconds, never down). It may return
//!   early with no events (a signal, a wake-up, or spuriously): the loop re-checks its
//!   deadlines and queue on every return. Only the I/O thread calls it.
//! - `Poller::notify()`: wakes the `wait` in progress, or else makes the next `wait` return
//!   at once. Any thread may call it, any number of times; wake-ups are never reported as
//!   events. Cheap when repeated, but the loop calls it only after the loop said it sleeps.
//! - **Level-triggered**: a descriptor that stays ready is reported by every `wait` until it
//!   is no longer ready or its interest no longer asks for it. The loop reads once per
//!   readiness and relies on leftovers being reported again.
//! - **Readable** means a `recv` (or, on a listener, an `accept`) will not block: data, the
//!   peer's FIN, a pending connection. **Writable** means a `send` will not block.
//! - **Hang-ups and errors** (`EPOLLHUP`, `EPOLLERR`, kqueue's `EV_EOF`) make the event ready
//!   in each direction the registration asks for (epoll: both, always), so that the read or
//!   write that follows meets the error or the end of stream and reports it.
//! - `Events::with_capacity(n)`, `is_empty`, `clear`, and `iter`, which yields one `Event`
//!   per ready descriptor of the last `wait` (at most `n`; more are reported by the next
//!   `wait`, level-triggered) and never the wake-up.
//! - `Interest::exclusive`, asked for the listening socket that `PoolListener::Shared`
//!   registers with every loop of a pool: with epoll, `EPOLLEXCLUSIVE` (a connection wakes
//!   one waiting loop, not all). The `polling` backend has no such flag and registers the
//!   socket plainly: every loop wakes for a connection, one accepts it, the others find
//!   nothing (`EAGAIN`) and wait again. Correct, and a wake-up per loop more per connection.
//!
//! The socket calls that differ by platform are in `socket.rs`: a non-blocking
//! close-on-exec accept, a send that never raises `SIGPIPE`, the classification of accept
//! errors, and whether `SO_REUSEPORT` spreads connections (and how to ask for it). Datagrams
//! are received and sent in batches (`recvmmsg`, `sendmmsg`) where the system has them, in
//! `mmsg.rs`.

#[cfg(all(target_os = "linux", not(iotask_force_polling)))]
mod epoll;
#[cfg(all(target_os = "linux", not(iotask_force_polling)))]
pub(crate) use epoll::{Events, Poller};

#[cfg(any(not(target_os = "linux"), iotask_force_polling, test))]
mod polling;
#[cfg(any(not(target_os = "linux"), iotask_force_polling))]
pub(crate) use self::polling::{Events, Poller};

mod mmsg;
pub(crate) use mmsg::{Incoming, recv_datagrams, send_datagrams, slots};
mod socket;
pub(crate) use socket::{
    accept_error_is_out_of_resources, accept_error_is_transient, accept_nonblocking, reset,
    reuse_port_spreads, send, send_file, send_vectored, set_reuse_port,
};
#[cfg(unix)]
pub(crate) use socket::{peer_cred, unix_socket_addr};

#[cfg(test)]
mod tests;

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use socket2::Socket;

/// What a registration asks the poller to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Interest {
    pub(crate) read: bool,
    pub(crate) write: bool,
    /// `EPOLLEXCLUSIVE`: of the epoll instances watching the same file this way, a ready
    /// event wakes one (or a few), not all. Only for a listening socket shared by several
    /// loops; epoll refuses to modify such a registration, so it is deleted and added again.
    /// The `polling` backend ignores it (see the contract above).
    pub(crate) exclusive: bool,
}

impl Interest {
    pub(crate) fn is_empty(self) -> bool {
        !self.read && !self.write
    }
}

/// One ready descriptor.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Event {
    pub(crate) key: usize,
    pub(crate) readable: bool,
    pub(crate) writable: bool,
}

/// Receives into the spare capacity of `buf`, which must be empty, without initialising it
/// first; `buf` then holds exactly the bytes received.
pub(crate) fn recv_spare(socket: &Socket, buf: &mut Vec<u8>) -> io::Result<usize> {
    debug_assert!(buf.is_empty());
    let n = socket.recv(buf.spare_capacity_mut())?;
    // SAFETY: `recv` initialised the first `n` bytes of the spare capacity, and `n` is at
    // most its length.
    unsafe { buf.set_len(n) };
    Ok(n)
}

/// Receives one datagram of at most `max` bytes into the spare capacity of `buf` (which
/// must be empty, with room for `max`): `buf` then holds the bytes received. Returns whether
/// the kernel cut the datagram to fit (`MSG_TRUNC`) and its sender, `None` when the sender
/// has no IP address.
#[allow(dead_code)] // Used where datagrams are not received in batches.
pub(crate) fn recv_datagram(
    socket: &Socket,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<(bool, Option<std::net::SocketAddr>)> {
    debug_assert!(buf.is_empty());
    let spare = buf.spare_capacity_mut();
    let max = max.min(spare.len());
    let mut bufs = [socket2::MaybeUninitSlice::new(&mut spare[..max])];
    let (n, flags, from) = socket.recv_from_vectored(&mut bufs)?;
    // SAFETY: `recvmsg` initialised the first `n` bytes of the one slice, which is the
    // spare capacity, and `n` is at most its length.
    unsafe { buf.set_len(n) };
    Ok((flags.is_truncated(), from.as_socket()))
}

/// Takes ownership of a descriptor a system call returned, or its error.
///
/// # Safety
///
/// A non-negative `fd` must be a new descriptor that nothing else owns.
#[allow(dead_code)] // Unused on platforms whose backend and accept need no raw call.
unsafe fn owned(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the caller guarantees that `fd` is new and unowned.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
