//! A listening socket in the slab, the state its handles share (`ListenerState`), and what
//! the loop does with one: accept, hand connections over, stop at limits, close.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use socket2::Socket;

use crate::error::Error;
use crate::io_task::Shared;
use crate::io_task::command::{Command, SetupFn};
use crate::io_task::entry::{Entry, Key, next_id};
use crate::io_task::event_loop::EventLoop;
use crate::io_task::handle::{RawStream, request};
use crate::io_task::registration::{Interest, Registration};
use crate::io_task::sink::{Delivery, Inbox, Sink, StreamKind, Window};
use crate::io_task::sys::{self, accept_nonblocking};
use crate::io_task::timers::Timer;
use crate::io_task::writes::WriteState;
use crate::oneshot;

/// How long accepting pauses after the process ran out of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A listening socket.
///
/// Invariant: read interest ⇔ not `backing_off`, not `at_limit` and its state not paused
/// (`update_listener_interest` is the only place that chooses it).
#[derive(Debug)]
pub(crate) struct ListenerEntry {
    pub(crate) id: u64,
    pub(crate) reg: Registration,
    /// Where accepted connections go.
    pub(crate) target: AcceptTarget,
    /// Limits, flags and counters shared with the user's handles.
    pub(crate) state: Arc<ListenerState>,
    /// Set while accepting is suspended after `EMFILE`/`ENFILE`, until a timer retries.
    pub(crate) backing_off: bool,
    /// Set while accepting is suspended because `max_connections` are open.
    pub(crate) at_limit: bool,
    /// Declared after `reg`, so it tells waiters only once the descriptor is closed.
    pub(crate) _closed: ListenerClosed,
}

/// Where a listener's accepted connections go.
pub(crate) enum AcceptTarget {
    /// A thread blocked in a serve loop, as `AcceptEvent::Connection`s.
    Thread(flume::Sender<AcceptEvent>),
    /// A mailbox: each connection is attached to it on the I/O thread and announced as
    /// `Delivery::Accepted`, ahead of its first read.
    Mailbox {
        inbox: Arc<dyn Inbox>,
        window: Arc<Window>,
    },
}

impl std::fmt::Debug for AcceptTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AcceptTarget::Thread(_) => "Thread",
            AcceptTarget::Mailbox { .. } => "Mailbox",
        })
    }
}

/// What reaches a thread serving a listener.
#[derive(Debug)]
pub(crate) enum AcceptEvent {
    Connection(RawStream),
    /// Sent through the listener's handle: stop, with `Ok` or with the given error.
    Kill(Option<Error>),
    /// The I/O task closed the listener (shutdown, or the poller refused it).
    Stopped(Error),
}

/// What an accepting listener does, fixed when it starts.
#[derive(Clone)]
pub(crate) struct AcceptConfig {
    pub(crate) max_connections: Option<usize>,
    pub(crate) max_accepts_per_batch: usize,
    pub(crate) write_window: Option<usize>,
    /// Run on each accepted socket before it is served.
    pub(crate) setup: Option<SetupFn>,
    /// What an accepted stream becomes in a mailbox.
    pub(crate) kind: StreamKind,
    /// One listening socket registered with every task (`EPOLLEXCLUSIVE`), rather than one
    /// socket per task.
    pub(crate) shared_socket: bool,
}

impl std::fmt::Debug for AcceptConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcceptConfig")
            .field("max_connections", &self.max_connections)
            .field("max_accepts_per_batch", &self.max_accepts_per_batch)
            .field("write_window", &self.write_window)
            .field("kind", &self.kind)
            .field("shared_socket", &self.shared_socket)
            .finish_non_exhaustive()
    }
}

/// The shared state of one listener (one listening socket per I/O task serving it).
///
/// Every field is either fixed at start, atomic, or behind its own mutex; none is held
/// across a call into another.
#[derive(Debug)]
pub(crate) struct ListenerState {
    pub(crate) id: u64,
    pub(crate) config: AcceptConfig,
    /// Connections accepted from this listener and still in a slab.
    num_connections: AtomicUsize,
    pub(crate) drop_incoming: AtomicBool,
    pub(crate) paused: AtomicBool,
    /// Set by the first close, kill or stop; never cleared.
    closed: AtomicBool,
    /// Why the listener stopped when it was not through its handle (the I/O task shut
    /// down, its mailbox was dropped), or the error sent through the handle; the first one.
    stop_reason: Mutex<Option<Error>>,
    /// Set while some listening socket stopped accepting at `max_connections`.
    limited: AtomicBool,
    /// The listening sockets and the tasks serving them; filled once at start.
    sockets: Mutex<Vec<(Arc<Shared>, Key)>>,
    /// Listening sockets not yet closed, and the condition that waiters sleep on.
    open_sockets: Mutex<usize>,
    /// Whether anybody sleeps on `changed`, so a closing connection skips the wake-up.
    waiters: AtomicUsize,
    changed: Condvar,
    /// The first listening socket's descriptor number, for `Server`'s `AsRawFd` (-1 before
    /// it is registered).
    raw_fd: std::sync::atomic::AtomicI32,
    /// A socket file to remove once the last listening socket closed (Unix-domain), with
    /// the device and inode it had, so that a file another server bound since is kept.
    unlink: Mutex<Option<(PathBuf, u64, u64)>>,
}

impl ListenerState {
    pub(crate) fn new(config: AcceptConfig) -> ListenerState {
        ListenerState {
            id: next_id(),
            config,
            num_connections: AtomicUsize::new(0),
            drop_incoming: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            stop_reason: Mutex::new(None),
            limited: AtomicBool::new(false),
            sockets: Mutex::new(Vec::new()),
            open_sockets: Mutex::new(0),
            waiters: AtomicUsize::new(0),
            changed: Condvar::new(),
            raw_fd: std::sync::atomic::AtomicI32::new(-1),
            unlink: Mutex::new(None),
        }
    }

    /// Registers a bound, listening, non-blocking socket with `task`.
    pub(crate) fn register(
        self: &Arc<Self>,
        task: &Arc<Shared>,
        socket: Socket,
        target: AcceptTarget,
    ) -> Result<(), Error> {
        let key = request(task, |reply| Command::AddListener {
            socket,
            target,
            state: self.clone(),
            reply,
        })?;
        lock(&self.sockets).push((task.clone(), key));
        Ok(())
    }

    /// Records the first listening socket's descriptor number.
    pub(crate) fn set_raw_fd(&self, fd: i32) {
        self.raw_fd.store(fd, Ordering::SeqCst);
        if self.is_closed() {
            self.raw_fd.store(-1, Ordering::SeqCst);
        }
    }

    /// The first listening socket's descriptor number (-1 before it was registered and once
    /// the listener is closing).
    pub(crate) fn raw_fd(&self) -> i32 {
        self.raw_fd.load(Ordering::SeqCst)
    }

    /// Removes `path` once the last listening socket is closed, if it is still the file
    /// with this device and inode.
    pub(crate) fn unlink_on_close(&self, path: PathBuf, dev: u64, ino: u64) {
        *lock(&self.unlink) = Some((path, dev, ino));
    }

    /// Removes the socket file now (see `unlink_on_close`).
    pub(crate) fn unlink_now(&self) {
        if let Some((path, dev, ino)) = lock(&self.unlink).take() {
            unlink_if_ours(&path, dev, ino);
        }
    }

    /// Called by an I/O task when it starts serving one of the listening sockets (before
    /// anything can close it, so the count never misses a close).
    fn socket_opened(&self) {
        *lock(&self.open_sockets) += 1;
    }

    fn sockets(&self) -> Vec<(Arc<Shared>, Key)> {
        lock(&self.sockets).clone()
    }

    pub(crate) fn num_connections(&self) -> usize {
        self.num_connections.load(Ordering::SeqCst)
    }

    /// Whether another connection may be accepted now.
    fn has_room(&self) -> bool {
        self.config
            .max_connections
            .is_none_or(|max| self.num_connections() < max)
    }

    /// Called when an accepted connection leaves its slab, on whichever I/O thread.
    fn connection_closed(&self) {
        self.num_connections.fetch_sub(1, Ordering::SeqCst);
        self.resume_if_room();
        self.notify();
    }

    /// Marks a listening socket as stopped at the limit, then re-checks (so that a
    /// connection closing meanwhile cannot leave it stopped for good).
    fn mark_limited(&self) {
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

    /// Marks the listener closed; returns whether this call did.
    pub(crate) fn set_closed(&self) -> bool {
        let first = !self.closed.swap(true, Ordering::SeqCst);
        // A closing socket's number may be reused by the kernel: stop handing it out (after
        // the flag, so that a `set_raw_fd` racing with this ends at -1 either way).
        self.raw_fd.store(-1, Ordering::SeqCst);
        first
    }

    /// Records why the listener stopped (keeping an earlier reason) and marks it closed.
    pub(crate) fn stopped(&self, reason: Error) {
        lock(&self.stop_reason).get_or_insert(reason);
        self.set_closed();
    }

    pub(crate) fn stop_reason(&self) -> Option<Error> {
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

    /// Closes the listening sockets, returning once their descriptors are closed (a
    /// stopped task resolves its reply at once), so that the address is free.
    pub(crate) fn close_now(&self) {
        self.set_closed();
        for wait in self.close_sockets(false, None) {
            let _ = wait.recv();
        }
        if *lock(&self.open_sockets) == 0 {
            self.unlink_now();
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Called by an I/O task after it closed one of the listening sockets.
    fn socket_closed(&self) {
        let mut open = lock(&self.open_sockets);
        if *open <= 1 {
            // Before the count reaches zero: a waiter that sees it closed finds the file gone.
            self.unlink_now();
        }
        *open = open.saturating_sub(1);
        drop(open);
        self.notify();
    }

    fn notify(&self) {
        if self.waiters.load(Ordering::SeqCst) == 0 {
            return;
        }
        // Taking the lock orders this wake-up after a waiter's check of the condition.
        drop(lock(&self.open_sockets));
        self.changed.notify_all();
    }

    /// Waits until every listening socket is closed and, if `connections`, every connection
    /// too; returns whether that happened before `timeout`.
    pub(crate) fn wait_closed(&self, connections: bool, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        let mut open = lock(&self.open_sockets);
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let done = loop {
            if *open == 0 && (!connections || self.num_connections() == 0) {
                break true;
            }
            let now = Instant::now();
            let wait = match deadline {
                Some(d) if d <= now => break false,
                Some(d) => d - now,
                None => Duration::from_secs(3600),
            };
            open = self
                .changed
                .wait_timeout(open, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        };
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        done
    }
}

/// Counts an accepted connection as open for as long as it stays in its slab.
#[derive(Debug)]
pub(crate) struct ConnectionGuard {
    pub(crate) listener: Arc<ListenerState>,
}

impl ConnectionGuard {
    /// Takes a place for one more connection, unless `max_connections` are open.
    fn reserve(listener: &Arc<ListenerState>) -> Option<ConnectionGuard> {
        let max = listener.config.max_connections.unwrap_or(usize::MAX);
        listener
            .num_connections
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(ConnectionGuard {
            listener: listener.clone(),
        })
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.listener.connection_closed();
    }
}

/// Counts a listening socket as open while it is in a slab, and tells the listener's
/// waiters when it is closed. If the entry goes without a word (the loop died), the
/// listener is marked stopped with `SHUTDOWN` and a serving thread is told.
#[derive(Debug)]
pub(crate) struct ListenerClosed {
    state: Arc<ListenerState>,
    events: Option<flume::Sender<AcceptEvent>>,
}

impl ListenerClosed {
    fn new(state: Arc<ListenerState>, target: &AcceptTarget) -> ListenerClosed {
        state.socket_opened();
        let events = match target {
            AcceptTarget::Thread(tx) => Some(tx.clone()),
            AcceptTarget::Mailbox { .. } => None,
        };
        ListenerClosed { state, events }
    }
}

impl Drop for ListenerClosed {
    fn drop(&mut self) {
        if !self.state.is_closed() {
            self.state.stopped(Error::shutdown());
            if let Some(events) = &self.events {
                let _ = events.send(AcceptEvent::Stopped(Error::shutdown()));
            }
        }
        self.state.socket_closed();
    }
}

impl EventLoop {
    pub(super) fn add_listener(
        &mut self,
        socket: Socket,
        target: AcceptTarget,
        state: Arc<ListenerState>,
    ) -> Result<Key, Error> {
        let id = next_id();
        let vacant = self.entries.vacant_entry();
        let key = Key {
            index: vacant.key(),
            id,
        };
        let mut reg = Registration::new(Arc::new(socket), self.shared.poller.clone(), key.index);
        reg.set_interest(Interest {
            read: !state.paused.load(Ordering::SeqCst),
            write: false,
            exclusive: state.config.shared_socket,
        })?;
        self.stats.listeners += 1;
        vacant.insert(Entry::Listener(ListenerEntry {
            id,
            reg,
            _closed: ListenerClosed::new(state.clone(), &target),
            target,
            state,
            backing_off: false,
            at_limit: false,
        }));
        Ok(key)
    }

    /// Closes a listening socket, and its connections as asked.
    pub(super) fn close_listener(
        &mut self,
        key: Key,
        close_connections: bool,
        drain: Option<Instant>,
    ) {
        if let Some(Entry::Listener(l)) = self.get(key) {
            let id = l.state.id;
            self.take(key);
            if close_connections {
                self.close_connections_of(id);
            } else if drain.is_some() {
                self.push_timer(drain, Timer::DrainListener(id));
            }
        }
    }

    /// Accepts while not paused, not backing off after `EMFILE` and not at the limit.
    pub(super) fn update_listener_interest(&mut self, key: Key) {
        let Some(Entry::Listener(l)) = self.get(key) else {
            return;
        };
        let read = !l.backing_off && !l.at_limit && !l.state.paused.load(Ordering::SeqCst);
        let exclusive = l.state.config.shared_socket;
        if let Err(e) = l.reg.set_interest(Interest {
            read,
            write: false,
            exclusive,
        }) {
            log!(warn, "the poller refused a listening socket: {e}");
            self.remove(key, Error::from(e));
        }
    }

    /// Closes every connection accepted by the listener with state `id`; their readers
    /// and writers get `CLOSED`.
    pub(super) fn close_connections_of(&mut self, id: u64) {
        let keys: Vec<Key> = self
            .entries
            .iter()
            .filter_map(|(index, e)| match e {
                Entry::Stream(s) if s.owner.as_ref().is_some_and(|o| o.listener.id == id) => {
                    Some(Key { index, id: s.id })
                }
                _ => None,
            })
            .collect();
        for key in keys {
            self.remove(key, Error::closed());
        }
    }

    /// A removed listener tells whoever serves it why it stopped.
    pub(super) fn retire_listener(listener: ListenerEntry, error: Error) {
        listener.state.stopped(error.clone());
        match &listener.target {
            AcceptTarget::Thread(events) => {
                let _ = events.send(AcceptEvent::Stopped(error));
            }
            AcceptTarget::Mailbox { .. } => {
                // As a serving thread returns when any of its sockets stops, the listener
                // stops as a whole: the sockets on other tasks close too.
                drop(listener.state.close_sockets(false, None));
            }
        }
    }

    pub(super) fn accept(&mut self, key: Key) {
        let Some(Entry::Listener(l)) = self.get(key) else {
            return;
        };
        let state = l.state.clone();
        for _ in 0..state.config.max_accepts_per_batch {
            if state.paused.load(Ordering::SeqCst) {
                break;
            }
            // The connection's place under `max_connections` is taken before the accept, so
            // that loops sharing the listener cannot both take the last one; dropping the
            // guard unused gives it back.
            let Some(guard) = ConnectionGuard::reserve(&state) else {
                // At the limit: stop asking (the kernel backlog holds the rest) until one of
                // this listener's connections closes.
                if let Some(Entry::Listener(l)) = self.get(key) {
                    l.at_limit = true;
                }
                self.update_listener_interest(key);
                state.mark_limited();
                return;
            };
            let Some(Entry::Listener(l)) = self.get(key) else {
                return;
            };
            if let AcceptTarget::Mailbox { inbox, .. } = &l.target {
                if inbox.is_closed() {
                    // Its actor is gone: refuse the connections waiting and free the address.
                    let gone = Error::new(
                        "CLOSED",
                        "the listener's mailbox was dropped",
                        io::ErrorKind::NotConnected,
                    );
                    self.remove(key, gone);
                    return;
                }
            }
            match accept_nonblocking(l.reg.socket()) {
                Ok(socket) => {
                    if state.drop_incoming.load(Ordering::SeqCst) {
                        // Accept and close at once: the client sees the connection end.
                        drop(socket);
                        continue;
                    }
                    if let Some(setup) = &state.config.setup {
                        // A failure leaves the family's option unset; the socket still works.
                        let _ = setup(&socket);
                    }
                    self.stats.accepted += 1;
                    let socket = Arc::new(socket);
                    let writes = Arc::new(WriteState::new());
                    let stream_key = self.insert_stream(
                        socket.clone(),
                        Some(guard),
                        writes.clone(),
                        state.config.write_window,
                    );
                    let stream = RawStream::new(stream_key, self.shared.clone(), socket, writes);
                    self.hand_over(key, stream);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if sys::accept_error_is_transient(&e) => {}
                Err(e) if sys::accept_error_is_out_of_resources(&e) => {
                    log!(warn, "accept: {e}; backing off");
                    // Out of descriptors or memory: in level mode the pending connection would
                    // be reported again at once, a busy loop. Stop asking until a timer fires;
                    // existing connections are served meanwhile.
                    l.backing_off = true;
                    self.update_listener_interest(key);
                    self.push_timer(
                        Instant::now().checked_add(ACCEPT_BACKOFF),
                        Timer::AcceptRetry(key),
                    );
                    return;
                }
                Err(_e) => {
                    log!(warn, "accept: {_e}");
                    return;
                }
            }
        }
    }

    /// Gives a connection accepted by listener `key` to the listener's target.
    fn hand_over(&mut self, key: Key, stream: RawStream) {
        let Some(Entry::Listener(l)) = self.get(key) else {
            return;
        };
        match &l.target {
            AcceptTarget::Thread(events) => {
                // If the serving thread already returned, dropping the stream closes it.
                let _ = events.send(AcceptEvent::Connection(stream));
            }
            AcceptTarget::Mailbox { inbox, window } => {
                let (inbox, window) = (inbox.clone(), window.clone());
                let kind = l.state.config.kind;
                let stream_key = stream.key();
                // Announced before anything it reads: its reads are posted later in the batch.
                self.outbox.post(&inbox, Delivery::Accepted(stream, kind));
                if let Some(s) = self.stream(stream_key) {
                    s.sink = Sink::Mailbox { inbox, window };
                }
                self.update_interest(stream_key);
            }
        }
    }

    /// The accept back-off is over.
    pub(super) fn accept_retry(&mut self, key: Key) {
        if let Some(Entry::Listener(l)) = self.get(key) {
            l.backing_off = false;
        }
        self.update_listener_interest(key);
    }

    pub(super) fn recheck_listener(&mut self, key: Key) {
        if let Some(Entry::Listener(l)) = self.get(key) {
            l.at_limit = false;
        }
        self.update_listener_interest(key);
    }
}

/// Removes the socket file at `path` if it is still the one with this device and inode (a
/// server that bound the path since keeps its file).
pub(crate) fn unlink_if_ours(path: &std::path::Path, dev: u64, ino: u64) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let ours = std::fs::symlink_metadata(path).is_ok_and(|m| m.dev() == dev && m.ino() == ino);
        if ours {
            let _ = std::fs::remove_file(path);
        }
    }
    #[cfg(not(unix))]
    let _ = (path, dev, ino);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
