//! The only place that registers descriptors with the poller, and the only `unsafe` code of
//! the event loop.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;

use socket2::Socket;

pub(crate) use crate::io_task::sys::Interest;
use crate::io_task::sys::Poller;

/// A socket together with its (possible) registration in the loop's poller.
///
/// # Invariant
///
/// While `interest` is `Some`, the descriptor is in the poller's interest list under `key`,
/// and `socket` keeps the descriptor open. `Drop` deletes the descriptor from the poller
/// before the socket can close, so the poller never holds a closed (and possibly reused)
/// descriptor.
///
/// A socket with nothing to ask for is not registered at all: epoll reports `EPOLLHUP` and
/// `EPOLLERR` even for an empty interest set, and in level mode that would spin.
#[derive(Debug)]
pub(crate) struct Registration {
    socket: Arc<Socket>,
    poller: Arc<Poller>,
    key: usize,
    interest: Option<Interest>,
}

impl Registration {
    /// Wraps a socket that is not yet registered.
    pub(crate) fn new(socket: Arc<Socket>, poller: Arc<Poller>, key: usize) -> Registration {
        Registration {
            socket,
            poller,
            key,
            interest: None,
        }
    }

    pub(crate) fn socket(&self) -> &Arc<Socket> {
        &self.socket
    }

    /// The interest currently registered (empty when not registered).
    pub(crate) fn interest(&self) -> Interest {
        self.interest.unwrap_or_default()
    }

    /// Makes the poller report exactly `want`, with the fewest `epoll_ctl` calls: none when
    /// nothing changes.
    pub(crate) fn set_interest(&mut self, want: Interest) -> std::io::Result<()> {
        if self.interest() == want {
            return Ok(());
        }
        match (self.interest, want.is_empty()) {
            (Some(_), true) => {
                // Forget the registration only once the poller did: if `delete` fails, the
                // descriptor may still be registered, and `Drop` must try again.
                self.poller.delete(self.socket.as_fd())?;
                self.interest = None;
            }
            (Some(have), false) if !have.exclusive && !want.exclusive => {
                self.poller.modify(self.socket.as_fd(), self.key, want)?;
                self.interest = Some(want);
            }
            (Some(_), false) => {
                // epoll refuses `EPOLL_CTL_MOD` on an exclusive registration.
                self.poller.delete(self.socket.as_fd())?;
                self.interest = None;
                self.set_interest(want)?;
            }
            (None, false) => {
                // SAFETY: the descriptor stays open while registered, because `self.socket`
                // owns a reference to it, and `Drop` deletes it from the poller before that
                // reference is released (see the type's invariant).
                unsafe {
                    self.poller.add(self.socket.as_raw_fd(), self.key, want)?;
                }
                self.interest = Some(want);
            }
            (None, true) => {}
        }
        Ok(())
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.interest.take().is_some() {
            // Errors are ignored: a destructor must not panic, and the descriptor is about to
            // be released either way.
            let _ = self.poller.delete(self.socket.as_fd());
        }
    }
}
