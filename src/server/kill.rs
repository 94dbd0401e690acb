//! `KillChan`: a running listener's handle, and the ways to close it.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::io_task::listener::{AcceptEvent, ListenerState};
use crate::stream::Family;

/// How [`KillChan::close`] treats the connections the listener accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseMode {
    /// Stop accepting; existing connections go on untouched.
    LeaveConnections,
    /// Stop accepting and close every existing connection: their ports yield `"CLOSED"`,
    /// their pending writes fail with it.
    CloseConnections,
    /// Stop accepting, let existing connections finish for up to this long, then close the
    /// ones still open as `CloseConnections` does.
    Drain(Duration),
}

/// The running listener's handle, given to `on_establish` and to every `new_connect` call.
///
/// Clone it and send it wherever the server is controlled from.
/// `send(None)` makes [`Listener::serve`](super::Listener::serve) (and [`tcp::listen`](crate::tcp::listen)) return `Ok(())`; `send(Some(error))` makes it return
/// `Err(ListenError::Generic)` with that error's name and message. Either way the listening
/// socket is closed and its port released before `listen` returns, and connections accepted
/// by the kernel but not yet handed to `new_connect` are closed; `new_connect` is never
/// called after `send` or [`close`](KillChan::close) returned. [`close`](KillChan::close)
/// also chooses the fate of existing connections.
///
/// For a listener feeding a mailbox ([`Listener::into_mailbox`](super::Listener::into_mailbox)), which has no serving
/// thread to return, `send`
/// closes the listening sockets as `close(CloseMode::LeaveConnections)` does, and
/// [`Server::wait`](super::Server::wait) returns the error sent, if any.
pub struct KillChan<F: Family> {
    /// The serving thread's channel; `None` for a listener feeding a mailbox.
    pub(super) tx: Option<flume::Sender<AcceptEvent>>,
    pub(crate) state: Arc<ListenerState>,
    pub(super) local_addr: F::Addr,
}

impl<F: Family> Clone for KillChan<F> {
    fn clone(&self) -> KillChan<F> {
        KillChan {
            tx: self.tx.clone(),
            state: self.state.clone(),
            local_addr: self.local_addr.clone(),
        }
    }
}

impl<F: Family> KillChan<F> {
    /// Stops the listener; see the type's documentation. Existing connections are left
    /// alone.
    ///
    /// # Errors
    ///
    /// Gives the reason back when `listen` already returned.
    pub fn send(&self, reason: Option<Error>) -> Result<(), Option<Error>> {
        let Some(tx) = &self.tx else {
            // No thread to tell: close the listening sockets here, once.
            if !self.state.set_closed() {
                return Err(reason);
            }
            if let Some(reason) = reason {
                self.state.stopped(reason);
            }
            drop(self.state.close_sockets(false, None));
            return Ok(());
        };
        self.state.set_closed();
        tx.send(AcceptEvent::Kill(reason))
            .map_err(|flume::SendError(event)| match event {
                AcceptEvent::Kill(reason) => reason,
                _ => None,
            })
    }

    /// Stops accepting at once and makes `listen` return `Ok(())`, treating existing
    /// connections as `mode` says. Calling it again has no further effect.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use iotask::{server::CloseMode, tcp};
    ///
    /// let iotask = iotask::IoTask::spawn()?;
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let server = std::thread::spawn({
    ///     let iotask = iotask.clone();
    ///     move || tcp::listen("127.0.0.1:0", 128, &iotask, |kill| tx.send(kill).unwrap(), |_, _| {})
    /// });
    /// let kill = rx.recv_timeout(Duration::from_secs(5))?;
    /// kill.close(CloseMode::Drain(Duration::from_secs(1)));
    /// assert!(kill.is_closed());
    /// assert!(kill.wait_closed(Duration::from_secs(5)));
    /// assert_eq!(server.join().unwrap(), Ok(()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn close(&self, mode: CloseMode) {
        if !self.state.set_closed() {
            return;
        }
        let (close_connections, drain) = match mode {
            CloseMode::LeaveConnections => (false, None),
            CloseMode::CloseConnections => (true, None),
            CloseMode::Drain(timeout) => (false, Instant::now().checked_add(timeout)),
        };
        drop(self.state.close_sockets(close_connections, drain));
        if let Some(tx) = &self.tx {
            let _ = tx.send(AcceptEvent::Kill(None));
        }
    }

    /// The address the listener is bound to, with a requested port 0 resolved.
    pub fn local_addr(&self) -> F::Addr {
        self.local_addr.clone()
    }

    /// Connections accepted from this listener and still open (including those handed to
    /// `new_connect` but not yet accepted, and those being drained after a close). While an
    /// I/O task calls `accept(2)`, the place it reserved for the connection counts too, for
    /// that instant, so that loops sharing the listener never exceed `max_connections`.
    pub fn num_connections(&self) -> usize {
        self.state.num_connections()
    }

    /// While set, every incoming connection is accepted and closed at once (the client sees
    /// it end), instead of waiting in the backlog; `new_connect` is not called for them.
    pub fn set_drop_incoming_connections(&self, drop: bool) {
        self.state
            .drop_incoming
            .store(drop, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stops accepting without closing anything: new clients wait in the kernel's backlog
    /// (and beyond it, retry their SYNs) until [`resume`](KillChan::resume).
    pub fn pause(&self) {
        self.state
            .paused
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.state.recheck_all();
    }

    /// Accepts again after [`pause`](KillChan::pause).
    pub fn resume(&self) {
        self.state
            .paused
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.state.recheck_all();
    }

    /// Whether [`pause`](KillChan::pause) is in effect.
    pub fn is_paused(&self) -> bool {
        self.state.paused.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether the listener was closed or killed (it may still be closing).
    pub fn is_closed(&self) -> bool {
        self.state.is_closed()
    }

    /// Why a listener without a `listen` thread stopped, if not through its handle.
    pub(crate) fn stop_reason(&self) -> Option<Error> {
        self.state.stop_reason()
    }

    /// Waits until the listening socket is closed (Async's `close_finished`); returns
    /// whether that happened within `timeout`.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        self.state.wait_closed(false, timeout)
    }

    /// Waits until the listening socket and every connection it accepted are closed
    /// (Async's `close_finished_and_handlers_determined`); returns whether that happened
    /// within `timeout`.
    pub fn wait_connections_closed(&self, timeout: Duration) -> bool {
        self.state.wait_closed(true, timeout)
    }
}

impl<F: Family> fmt::Debug for KillChan<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KillChan")
            .field("local_addr", &self.local_addr)
            .field("num_connections", &self.num_connections())
            .field("closed", &self.is_closed())
            .finish()
    }
}
