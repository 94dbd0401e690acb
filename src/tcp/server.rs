//! `ListenerState`: what a running listener's handle, its `listen` thread and the I/O tasks
//! serving it share.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::io_task::Shared;
use crate::io_task::command::Command;
use crate::io_task::entry::Key;
use crate::oneshot;
use crate::tcp::{ListenOptions, TcpError};

/// The shared state of one `listen` call (one listening socket per I/O task serving it).
#[derive(Debug)]
pub(crate) struct ListenerState {
    pub(crate) id: u64,
    pub(crate) max_connections: Option<usize>,
    pub(crate) max_accepts_per_batch: usize,
    pub(crate) nodelay: bool,
    pub(crate) write_window: Option<usize>,
    /// One listening socket registered with every task (`EPOLLEXCLUSIVE`), rather than one
    /// socket per task.
    pub(crate) shared_socket: bool,
    /// Connections accepted from this listener and still in a slab.
    num_connections: AtomicUsize,
    pub(crate) drop_incoming: AtomicBool,
    pub(crate) paused: AtomicBool,
    /// Set by the first close (or kill); never cleared.
    closed: AtomicBool,
    /// Why a listener without a `listen` thread stopped, when it was not closed through its
    /// handle (the I/O task shut down, its mailbox was dropped), or the error sent through
    /// `KillChan::send`; the first one is kept.
    stop_reason: Mutex<Option<TcpError>>,
    /// Set while some listening socket stopped accepting at `max_connections`.
    limited: AtomicBool,
    /// The listening sockets and the tasks serving them; filled once by `listen`.
    sockets: Mutex<Vec<(Arc<Shared>, Key)>>,
    /// Listening sockets not yet closed, and the condition that waiters sleep on.
    open_sockets: Mutex<usize>,
    changed: Condvar,
}

impl ListenerState {
    pub(crate) fn new(id: u64, options: &ListenOptions, shared_socket: bool) -> ListenerState {
        ListenerState {
            id,
            max_connections: options.max_connections,
            max_accepts_per_batch: options.max_accepts_per_batch,
            nodelay: options.nodelay,
            write_window: options.write_window,
            shared_socket,
            num_connections: AtomicUsize::new(0),
            drop_incoming: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            stop_reason: Mutex::new(None),
            limited: AtomicBool::new(false),
            sockets: Mutex::new(Vec::new()),
            open_sockets: Mutex::new(0),
            changed: Condvar::new(),
        }
    }

    pub(crate) fn add_socket(&self, task: Arc<Shared>, key: Key) {
        lock(&self.sockets).push((task, key));
    }

    /// Called by an I/O task when it starts serving one of the listening sockets (before
    /// anything can close it, so the count never misses a close).
    pub(crate) fn socket_opened(&self) {
        *lock(&self.open_sockets) += 1;
    }

    pub(crate) fn sockets(&self) -> Vec<(Arc<Shared>, Key)> {
        lock(&self.sockets).clone()
    }

    pub(crate) fn num_connections(&self) -> usize {
        self.num_connections.load(Ordering::SeqCst)
    }

    /// Whether another connection may be accepted now.
    pub(crate) fn has_room(&self) -> bool {
        self.max_connections
            .is_none_or(|max| self.num_connections() < max)
    }

    pub(crate) fn connection_opened(&self) {
        self.num_connections.fetch_add(1, Ordering::SeqCst);
    }

    /// Called when an accepted connection leaves its slab, on whichever I/O thread.
    pub(crate) fn connection_closed(&self) {
        self.num_connections.fetch_sub(1, Ordering::SeqCst);
        self.resume_if_room();
        self.notify();
    }

    /// Marks a listening socket as stopped at the limit, then re-checks (so that a
    /// connection closing meanwhile cannot leave it stopped for good).
    pub(crate) fn mark_limited(&self) {
        self.limited.store(true, Ordering::SeqCst);
        self.resume_if_room();
    }

    fn resume_if_room(&self) {
        if self.has_room() && self.limited.swap(false, Ordering::SeqCst) {
            self.recheck_all();
        }
    }

    /// Asks every I/O task serving this listener to re-evaluate whether it accepts.
    pub(crate) fn recheck_all(&self) {
        for (task, key) in self.sockets() {
            let _ = task.send(Command::RecheckListener(key));
        }
    }

    pub(crate) fn set_closed(&self) -> bool {
        !self.closed.swap(true, Ordering::SeqCst)
    }

    /// Records why the listener stopped (keeping an earlier reason) and marks it closed.
    pub(crate) fn stopped(&self, reason: TcpError) {
        lock(&self.stop_reason).get_or_insert(reason);
        self.set_closed();
    }

    pub(crate) fn stop_reason(&self) -> Option<TcpError> {
        lock(&self.stop_reason).clone()
    }

    /// Asks every I/O task serving this listener to close its listening socket, and with
    /// `close_connections` every connection it accepted (with `drain`, those still open at
    /// that instant). Returns the replies, which resolve once the sockets are closed.
    pub(crate) fn close_sockets(
        &self,
        close_connections: bool,
        drain: Option<Instant>,
    ) -> Vec<oneshot::Receiver<()>> {
        let mut waits = Vec::new();
        for (task, key) in self.sockets() {
            let (reply, wait) = oneshot::channel();
            let command = Command::CloseListener {
                key,
                close_connections,
                drain,
                reply,
            };
            if task.send(command).is_ok() {
                waits.push(wait);
            }
        }
        waits
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Called by an I/O task after it closed one of the listening sockets.
    pub(crate) fn socket_closed(&self) {
        let mut open = lock(&self.open_sockets);
        *open = open.saturating_sub(1);
        drop(open);
        self.notify();
    }

    fn notify(&self) {
        // Taking the lock orders this wake-up after a waiter's check of the condition.
        drop(lock(&self.open_sockets));
        self.changed.notify_all();
    }

    /// Waits until every listening socket is closed and, if `connections`, every connection
    /// too; returns whether that happened before `timeout`.
    pub(crate) fn wait_closed(&self, connections: bool, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        let mut open = lock(&self.open_sockets);
        loop {
            if *open == 0 && (!connections || self.num_connections() == 0) {
                return true;
            }
            let now = Instant::now();
            let wait = match deadline {
                Some(d) if d <= now => return false,
                Some(d) => d - now,
                None => Duration::from_secs(3600),
            };
            open = self
                .changed
                .wait_timeout(open, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Counts an accepted connection as open for as long as it stays in its slab.
#[derive(Debug)]
pub(crate) struct ConnectionGuard {
    pub(crate) listener: Arc<ListenerState>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.listener.connection_closed();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
