//! The `polling` backend: every platform but Linux, and Linux too under
//! `--cfg iotask_force_polling` (and in the unit tests, which check both backends).
//!
//! `polling` wraps kqueue on macOS and the BSDs, epoll on Linux, event ports on illumos and
//! `poll` elsewhere. Registrations use its level mode, which the contract in `sys/mod.rs`
//! asks for; event ports have no level mode, so `Poller::new` refuses them rather than let
//! the first registration fail.

use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{BorrowedFd, RawFd};
use std::time::Duration;

use ::polling::PollMode;

use super::{Event, Interest};

/// A `polling::Poller`, registering in level mode.
#[derive(Debug)]
pub(crate) struct Poller {
    inner: ::polling::Poller,
}

/// A buffer of events filled by `Poller::wait`.
pub(crate) struct Events {
    inner: ::polling::Events,
}

/// `polling`'s form of an interest. `exclusive` has no equivalent and is left out: the
/// shared listener is then registered plainly with every loop (see the contract).
fn interest_event(key: usize, interest: Interest) -> ::polling::Event {
    ::polling::Event::new(key, interest.read, interest.write)
}

impl Poller {
    pub(crate) fn new() -> io::Result<Poller> {
        let inner = ::polling::Poller::new()?;
        if !inner.supports_level() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "iotask needs level-triggered polling, which this system's poller lacks",
            ));
        }
        Ok(Poller { inner })
    }

    /// Adds `fd` under `key`.
    ///
    /// # Safety
    ///
    /// `fd` must stay open until it is deleted with `delete` (`polling`'s own condition for
    /// `add`): the system's poller would otherwise report a closed descriptor's number, which
    /// may by then name another file.
    pub(crate) unsafe fn add(&self, fd: RawFd, key: usize, interest: Interest) -> io::Result<()> {
        // SAFETY: the caller keeps `fd` open until it is deleted from this poller.
        unsafe {
            self.inner
                .add_with_mode(fd, interest_event(key, interest), PollMode::Level)
        }
    }

    pub(crate) fn modify(
        &self,
        fd: BorrowedFd<'_>,
        key: usize,
        interest: Interest,
    ) -> io::Result<()> {
        self.inner
            .modify_with_mode(fd, interest_event(key, interest), PollMode::Level)
    }

    pub(crate) fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.inner.delete(fd)
    }

    /// Waits for events (clearing `events` first), at most `timeout` (`None` waits until an
    /// event or a `notify`). `polling` retries a wait that a signal interrupted; a
    /// notification ends it with no events.
    pub(crate) fn wait(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<()> {
        events.inner.clear();
        self.inner.wait(&mut events.inner, timeout)?;
        Ok(())
    }

    /// Wakes the current or next `wait`.
    pub(crate) fn notify(&self) -> io::Result<()> {
        self.inner.notify()
    }
}

impl Events {
    pub(crate) fn with_capacity(capacity: usize) -> Events {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Events {
            inner: ::polling::Events::with_capacity(capacity),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    pub(crate) fn clear(&mut self) {
        self.inner.clear();
    }

    /// The socket events of the last wait (`polling` never reports its own wake-ups).
    ///
    /// `polling` already counts epoll's `EPOLLHUP`/`EPOLLERR` as both readable and
    /// writable, and kqueue's end-of-file on the read filter as writable too; where the
    /// system reports a hang-up or an error separately (`is_interrupt`, `is_err`), it is
    /// made both here, as the contract asks.
    pub(crate) fn iter(&self) -> impl Iterator<Item = Event> + '_ {
        self.inner.iter().map(|e| {
            let broken = e.is_interrupt() || e.is_err() == Some(true);
            Event {
                key: e.key,
                readable: e.readable || broken,
                writable: e.writable || broken,
            }
        })
    }
}
