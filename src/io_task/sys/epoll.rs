//! The epoll backend, used on Linux unless `--cfg iotask_force_polling` is given: epoll,
//! and an eventfd that wakes it.
//!
//! This replaces the `polling` crate the loop started on. `polling` 3.11's `wait` makes five
//! system calls on Linux (it re-arms a timerfd and its notification eventfd with `epoll_ctl`
//! and reads the eventfd on every call), where the loop needs one `epoll_wait`; with two
//! waits per message at low load that was most of the gap to tokio (ARCHITECTURE.md has the
//! figures). The contract this file fulfils is in `sys/mod.rs`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use super::{Event, Interest, owned};

/// Level-triggered flags for `interest`. Hang-ups and errors count as readable and
/// writable (see `Events::iter`), so that the read or write that follows reports them.
fn flags(interest: Interest) -> u32 {
    if interest.exclusive {
        // epoll takes only `EPOLLIN`, `EPOLLOUT`, `EPOLLET` and `EPOLLWAKEUP` along with
        // `EPOLLEXCLUSIVE`; hang-ups and errors are reported anyway.
        let mut flags = libc::EPOLLEXCLUSIVE;
        if interest.read {
            flags |= libc::EPOLLIN;
        }
        if interest.write {
            flags |= libc::EPOLLOUT;
        }
        return flags as u32;
    }
    let mut flags = 0;
    if interest.read {
        flags |= libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLPRI;
    }
    if interest.write {
        flags |= libc::EPOLLOUT;
    }
    flags as u32
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
            events: flags(interest),
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
            events: flags(interest),
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
