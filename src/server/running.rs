//! `Server`: a running listener that does not need the caller's thread.

use std::fmt;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, ListenError};
use crate::server::KillChan;
use crate::stream::Family;

/// A running listener that does not need the caller's thread: one served on a thread of its
/// own ([`Listener::spawn`](super::Listener::spawn)), or one that feeds a mailbox
/// ([`Listener::into_mailbox`](super::Listener::into_mailbox)).
///
/// Dropping it stops the listener (as `kill.send(None)`) and waits until it stopped: its
/// thread ended, its listening sockets closed.
#[must_use = "dropping a Server stops it at once; keep it for as long as it should serve"]
pub struct Server<F: Family> {
    kill: KillChan<F>,
    /// The serving thread; `None` for a listener feeding a mailbox.
    thread: Option<JoinHandle<Result<(), ListenError>>>,
    /// Cleared once stopped or waited for.
    running: bool,
}

impl<F: Family> Server<F> {
    /// A listener the I/O tasks run by themselves, stopped through `kill`.
    pub(crate) fn without_thread(kill: KillChan<F>) -> Server<F> {
        Server {
            kill,
            thread: None,
            running: true,
        }
    }

    /// A listener served by `thread`.
    pub(crate) fn with_thread(
        kill: KillChan<F>,
        thread: JoinHandle<Result<(), ListenError>>,
    ) -> Server<F> {
        Server {
            kill,
            thread: Some(thread),
            running: true,
        }
    }

    /// The bound address, with a requested port 0 resolved.
    pub fn local_addr(&self) -> F::Addr {
        self.kill.local_addr()
    }

    /// The listener's handle: connection counts, pause, drop-incoming, close modes.
    pub fn kill_chan(&self) -> &KillChan<F> {
        &self.kill
    }

    /// Stops the listener and waits until it stopped; the port is free when this returns.
    /// Connections already accepted are left alone.
    ///
    /// # Errors
    ///
    /// Why the listener stopped, if it stopped for another reason first: `SHUTDOWN`, a
    /// panicking handler, an error sent through the kill channel, or `CLOSED` for a mailbox
    /// that was dropped.
    pub fn stop(mut self) -> Result<(), ListenError> {
        let _ = self.kill.send(None);
        self.join()
    }

    /// Waits until the listener stops (killed or closed through its [`KillChan`], its I/O
    /// task shut down, or its mailbox dropped).
    ///
    /// # Errors
    ///
    /// As [`stop`](Server::stop).
    pub fn wait(mut self) -> Result<(), ListenError> {
        self.join()
    }

    fn join(&mut self) -> Result<(), ListenError> {
        if !std::mem::replace(&mut self.running, false) {
            return Ok(());
        }
        match self.thread.take() {
            Some(thread) => thread.join().unwrap_or_else(|_| {
                Err(Error::other("PANIC", "the listener thread panicked").into())
            }),
            None => {
                self.kill.wait_closed(Duration::MAX);
                match self.kill.stop_reason() {
                    Some(e) => Err(e.into()),
                    None => Ok(()),
                }
            }
        }
    }
}

/// The (first) listening socket's descriptor number, for `getsockopt` and the like (Async's
/// `listening_socket`), valid while the server runs: the I/O task closes it when the server
/// stops, and from then on this is -1. Only the I/O task may accept on it or close it.
#[cfg(unix)]
impl<F: Family> std::os::fd::AsRawFd for Server<F> {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.kill.state.raw_fd()
    }
}

impl<F: Family> Drop for Server<F> {
    fn drop(&mut self) {
        if self.running {
            let _ = self.kill.send(None);
            let _ = self.join();
        }
    }
}

impl<F: Family> fmt::Debug for Server<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr())
            .field("running", &self.running)
            .finish()
    }
}
