//! The raw system calls of the loop: epoll, the eventfd that wakes it, and `accept4`.
//!
//! This replaces the `polling` crate the loop started on. `polling` 3.11's `wait` makes five
//! system calls on Linux (it re-arms a timerfd and its notification eventfd with `epoll_ctl`
//! and reads the eventfd on every call), where the loop needs one `epoll_wait`; with two
//! waits per message at low load that was most of the gap to tokio (ARCHITECTURE.md has the
//! figures). Every `unsafe` block of the loop is in this file or in `registration.rs`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use socket2::Socket;

/// What a registration asks epoll to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Interest {
    pub(crate) read: bool,
    pub(crate) write: bool,
    /// `EPOLLEXCLUSIVE`: of the epoll instances watching the same file this way, a ready
    /// event wakes one (or a few), not all. Only for a listening socket shared by several
    /// loops; epoll refuses to modify such a registration, so it is deleted and added again.
    pub(crate) exclusive: bool,
}

impl Interest {
    pub(crate) fn is_empty(self) -> bool {
        !self.read && !self.write
    }

    /// Level-triggered flags. Hang-ups and errors count as readable and writable, so that
    /// the read or write that follows reports them.
    fn flags(self) -> u32 {
        if self.exclusive {
            // epoll takes only `EPOLLIN`, `EPOLLOUT`, `EPOLLET` and `EPOLLWAKEUP` along with
            // `EPOLLEXCLUSIVE`; hang-ups and errors are reported anyway.
            let mut flags = libc::EPOLLEXCLUSIVE;
            if self.read {
                flags |= libc::EPOLLIN;
            }
            if self.write {
                flags |= libc::EPOLLOUT;
            }
            return flags as u32;
        }
        let mut flags = 0;
        if self.read {
            flags |= libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLPRI;
        }
        if self.write {
            flags |= libc::EPOLLOUT;
        }
        flags as u32
    }
}

/// The key of the wake-up eventfd; slab keys never reach it.
const NOTIFY_KEY: u64 = u64::MAX;

/// An epoll instance and the eventfd that wakes its waiter.
#[derive(Debug)]
pub(crate) struct Poller {
    epoll: OwnedFd,
    /// Registered edge-triggered: every `write` makes one event, whether or not the counter
    /// was read, so the loop never reads it (the counter cannot reach its 2^64 limit).
    wake: OwnedFd,
}

/// A buffer of events filled by `Poller::wait`.
pub(crate) struct Events {
    list: Vec<libc::epoll_event>,
    len: usize,
}

/// One ready descriptor.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Event {
    pub(crate) key: usize,
    pub(crate) readable: bool,
    pub(crate) writable: bool,
}

impl Poller {
    pub(crate) fn new() -> io::Result<Poller> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new descriptor
        // owned by nothing else.
        let epoll = unsafe { owned(libc::epoll_create1(libc::EPOLL_CLOEXEC))? };
        // SAFETY: as above, for eventfd.
        let wake = unsafe { owned(libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK))? };
        let poller = Poller { epoll, wake };
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: NOTIFY_KEY,
        };
        // SAFETY: the eventfd is owned by `poller` and closes only with the epoll instance.
        unsafe { poller.ctl(libc::EPOLL_CTL_ADD, poller.wake.as_raw_fd(), &mut event)? };
        Ok(poller)
    }

    /// Adds `fd` under `key`.
    ///
    /// # Safety
    ///
    /// `fd` must stay open until it is deleted with `delete`: epoll would otherwise keep
    /// reporting a closed descriptor's number, which may by then name another file.
    pub(crate) unsafe fn add(&self, fd: RawFd, key: usize, interest: Interest) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: interest.flags(),
            u64: key as u64,
        };
        // SAFETY: the caller keeps `fd` open until it is deleted.
        unsafe { self.ctl(libc::EPOLL_CTL_ADD, fd, &mut event) }
    }

    pub(crate) fn modify(
        &self,
        fd: BorrowedFd<'_>,
        key: usize,
        interest: Interest,
    ) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: interest.flags(),
            u64: key as u64,
        };
        // SAFETY: a borrowed descriptor is open for the call.
        unsafe { self.ctl(libc::EPOLL_CTL_MOD, fd.as_raw_fd(), &mut event) }
    }

    pub(crate) fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: a borrowed descriptor is open for the call.
        unsafe { self.ctl(libc::EPOLL_CTL_DEL, fd.as_raw_fd(), &mut event) }
    }

    /// # Safety
    ///
    /// `fd` must be open; after `EPOLL_CTL_ADD`, it must stay open until deleted.
    unsafe fn ctl(&self, op: i32, fd: RawFd, event: &mut libc::epoll_event) -> io::Result<()> {
        // SAFETY: `event` is a valid epoll_event for the duration of the call (the kernel
        // copies it); the caller vouches for `fd`.
        let rc = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, event) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits for events (clearing `events` first), at most `timeout` (rounded up to whole
    /// milliseconds; `None` waits until an event or a `notify`). A signal ends the wait
    /// early with no events.
    pub(crate) fn wait(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<()> {
        events.len = 0;
        let timeout_ms = match timeout {
            None => -1,
            Some(t) => {
                let ms = t.as_nanos().div_ceil(1_000_000);
                i32::try_from(ms).unwrap_or(i32::MAX)
            }
        };
        let capacity = i32::try_from(events.list.len()).unwrap_or(i32::MAX);
        // SAFETY: the buffer holds `capacity` events and lives across the call; the kernel
        // writes at most that many.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                events.list.as_mut_ptr(),
                capacity,
                timeout_ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        events.len = n as usize;
        Ok(())
    }

    /// Wakes the current or next `wait`.
    pub(crate) fn notify(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to an eventfd this poller owns.
        let rc = unsafe {
            libc::write(
                self.wake.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            // EAGAIN: the counter is full, so a wake-up is pending anyway.
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(e);
            }
        }
        Ok(())
    }
}

impl Events {
    pub(crate) fn with_capacity(capacity: usize) -> Events {
        Events {
            list: vec![libc::epoll_event { events: 0, u64: 0 }; capacity.max(1)],
            len: 0,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }

    /// The socket events of the last wait (wake-ups are left out).
    pub(crate) fn iter(&self) -> impl Iterator<Item = Event> + '_ {
        self.list[..self.len].iter().filter_map(|e| {
            let (flags, key) = (e.events, e.u64);
            if key == NOTIFY_KEY {
                return None;
            }
            let any = |mask: i32| flags & mask as u32 != 0;
            Some(Event {
                key: key as usize,
                readable: any(libc::EPOLLIN
                    | libc::EPOLLRDHUP
                    | libc::EPOLLPRI
                    | libc::EPOLLHUP
                    | libc::EPOLLERR),
                writable: any(libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR),
            })
        })
    }
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

/// Takes ownership of a descriptor a system call returned, or its error.
///
/// # Safety
///
/// A non-negative `fd` must be a new descriptor that nothing else owns.
unsafe fn owned(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the caller guarantees that `fd` is new and unowned.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `accept4` with `SOCK_NONBLOCK | SOCK_CLOEXEC`: one system call for what std and socket2
/// do in three.
pub(crate) fn accept_nonblocking(listener: &Socket) -> io::Result<Socket> {
    // SAFETY: `accept4` with null address pointers only reads the listening descriptor,
    // which `listener` keeps open for the duration of the call; a non-negative result is a
    // new descriptor that nothing else owns.
    let fd = unsafe {
        owned(libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        ))?
    };
    Ok(Socket::from(fd))
}

/// The local or remote address of a Unix-domain socket, as the standard library names it
/// (std has no way to build an unnamed address, so it must ask the socket itself).
#[cfg(unix)]
pub(crate) fn unix_socket_addr(
    socket: &Socket,
    peer: bool,
) -> io::Result<std::os::unix::net::SocketAddr> {
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
    let mut uid: libc::uid_t = 0;
    let mut gid: libc::gid_t = 0;
    // SAFETY: both pointers are valid for writes; the descriptor is open for the call.
    let rc = unsafe { libc::getpeereid(socket.as_raw_fd(), &mut uid, &mut gid) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((uid, gid, None))
}
