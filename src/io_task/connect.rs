//! Non-blocking connects, run by the loop: a socket whose connect is in progress waits in
//! the slab for writability, then becomes a stream or gives way to the next address.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{SockAddr, Socket, Type};

use crate::error::Error;
use crate::io_task::command::{Reply, SetupFn};
use crate::io_task::entry::{Entry, Key, next_id};
use crate::io_task::event_loop::EventLoop;
use crate::io_task::handle::RawStream;
use crate::io_task::registration::{Interest, Registration};
use crate::io_task::sink::{Delivery, Inbox, Sink, StreamKind, Window};
use crate::io_task::timers::{Timer, deadline_after};
use crate::io_task::writes::WriteState;

/// How long a Unix-domain connect waits before trying again when the listener's backlog
/// is full (the kernel answers `EAGAIN` at once instead of waiting).
const CONNECT_RETRY: Duration = Duration::from_millis(5);

/// A connect request: the addresses still to try, and whom to tell.
pub(crate) struct ConnectJob {
    pub(crate) addrs: VecDeque<SockAddr>,
    pub(crate) setup: Option<SetupFn>,
    /// Bounds each address's attempt.
    pub(crate) timeout: Option<Duration>,
    pub(crate) reply: ConnectReply,
    /// The last address's failure, reported if no address connects.
    pub(crate) last_error: Option<Error>,
}

/// Who hears how a connect ended.
pub(crate) enum ConnectReply {
    /// A `ConnectFuture` (or a thread blocked in `connect`).
    Future(Reply<RawStream>),
    /// A mailbox: the connected stream is attached to it and announced as
    /// `Delivery::Connected` with the id it was promised, ahead of its reads; a failure is
    /// announced the same way.
    Mailbox {
        inbox: Arc<dyn Inbox>,
        window: Arc<Window>,
        id: u64,
        kind: StreamKind,
    },
}

impl ConnectReply {
    /// Whether nobody will hear the outcome any more.
    fn is_canceled(&self) -> bool {
        match self {
            ConnectReply::Future(reply) => reply.is_canceled(),
            ConnectReply::Mailbox { inbox, .. } => inbox.is_closed(),
        }
    }
}

impl EventLoop {
    /// Tells whoever asked that the connect failed.
    pub(super) fn connect_refused(&mut self, reply: ConnectReply, error: Error) {
        match reply {
            ConnectReply::Future(reply) => {
                let _ = reply.send(Err(error));
            }
            ConnectReply::Mailbox {
                inbox, id, kind, ..
            } => {
                self.outbox.post(
                    &inbox,
                    Delivery::Connected {
                        id,
                        result: Err(error),
                        kind,
                    },
                );
            }
        }
    }
}

impl std::fmt::Debug for ConnectJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectJob")
            .field("addrs", &self.addrs.len())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// A socket whose connect is in progress.
///
/// Invariant: write interest ⇔ the kernel reported the connect in progress (`EINPROGRESS`);
/// a socket waiting to retry after `EAGAIN` is not registered.
#[derive(Debug)]
pub(crate) struct ConnectEntry {
    pub(crate) id: u64,
    pub(crate) reg: Registration,
    pub(crate) job: ConnectJob,
    /// The address being tried.
    pub(crate) addr: SockAddr,
    /// When this address's attempt gives up.
    pub(crate) deadline: Option<Instant>,
}

/// What one `connect(2)` call said.
enum Attempt {
    Connected,
    InProgress,
    /// A Unix-domain listener's backlog is full: try the same socket again shortly.
    Again,
    Failed(io::Error),
}

impl EventLoop {
    /// Tries the job's addresses in turn until one connects or waits in progress.
    pub(super) fn connect_next(&mut self, mut job: ConnectJob) {
        if job.reply.is_canceled() {
            // Whoever asked gave up (dropped the future): connect nowhere.
            return;
        }
        while let Some(addr) = job.addrs.pop_front() {
            let socket = match new_stream_socket(&addr) {
                Ok(socket) => socket,
                Err(e) => {
                    job.last_error = Some(Error::from(e));
                    continue;
                }
            };
            let deadline = job.timeout.and_then(deadline_after);
            let socket = Arc::new(socket);
            match attempt(&socket, &addr) {
                Attempt::Connected => return self.connected(socket, job),
                Attempt::Failed(e) => job.last_error = Some(Error::from(e)),
                wait @ (Attempt::InProgress | Attempt::Again) => {
                    let vacant = self.entries.vacant_entry();
                    let key = Key {
                        index: vacant.key(),
                        id: next_id(),
                    };
                    let mut reg = Registration::new(socket, self.shared.poller.clone(), key.index);
                    let in_progress = matches!(wait, Attempt::InProgress);
                    if in_progress {
                        if let Err(e) = reg.set_interest(Interest {
                            read: false,
                            write: true,
                            exclusive: false,
                        }) {
                            job.last_error = Some(Error::from(e));
                            continue;
                        }
                    }
                    self.stats.connecting += 1;
                    vacant.insert(Entry::Connecting(Box::new(ConnectEntry {
                        id: key.id,
                        reg,
                        job,
                        addr,
                        deadline,
                    })));
                    self.push_timer(deadline, Timer::ConnectDeadline(key));
                    if !in_progress {
                        self.push_timer(deadline_after(CONNECT_RETRY), Timer::ConnectRetry(key));
                    }
                    return;
                }
            }
        }
        let error = job
            .last_error
            .take()
            .unwrap_or_else(|| Error::other("RESOLVE", "the address resolved to nothing"));
        self.connect_refused(job.reply, error);
    }

    /// The connect in progress at `key` finished, one way or the other.
    pub(super) fn connect_ready(&mut self, key: Key) {
        let Some(Entry::Connecting(c)) = self.get(key) else {
            return;
        };
        match c.reg.socket().take_error() {
            // An event meant for a previous owner of this slot (see `EventLoop::dispatch`)
            // can arrive while the connect is still in progress: only a socket with a peer
            // is connected.
            Ok(None) if not_yet_connected(c.reg.socket()) => {}
            Ok(None) => {
                let Some(Entry::Connecting(c)) = self.take(key) else {
                    return;
                };
                let socket = c.reg.socket().clone();
                drop(c.reg);
                self.connected(socket, c.job);
            }
            Ok(Some(e)) | Err(e) => self.connect_failed(key, Error::from(e)),
        }
    }

    /// Calls `connect` again on a Unix-domain socket whose listener's backlog was full.
    pub(super) fn connect_retry(&mut self, key: Key) {
        let Some(Entry::Connecting(c)) = self.get(key) else {
            return;
        };
        match attempt(c.reg.socket(), &c.addr) {
            Attempt::Connected => self.connect_ready(key),
            Attempt::Again => {
                self.push_timer(deadline_after(CONNECT_RETRY), Timer::ConnectRetry(key));
            }
            Attempt::InProgress => {
                let result = c.reg.set_interest(Interest {
                    read: false,
                    write: true,
                    exclusive: false,
                });
                if let Err(e) = result {
                    self.connect_failed(key, Error::from(e));
                }
            }
            Attempt::Failed(e) => self.connect_failed(key, Error::from(e)),
        }
    }

    /// The attempt at `key` failed with `error`: try the next address.
    pub(super) fn connect_failed(&mut self, key: Key, error: Error) {
        if let Some(Entry::Connecting(c)) = self.take(key) {
            let mut job = c.job;
            job.last_error = Some(error);
            drop(c.reg);
            self.connect_next(job);
        }
    }

    /// A connected socket becomes a stream and is handed to whoever asked.
    fn connected(&mut self, socket: Arc<Socket>, job: ConnectJob) {
        if let Some(setup) = &job.setup {
            // A failure leaves the family's option unset; the socket still works.
            let _ = setup(&socket);
        }
        self.stats.connected += 1;
        let writes = Arc::new(WriteState::new());
        let id = match &job.reply {
            ConnectReply::Mailbox { id, .. } => Some(*id),
            ConnectReply::Future(_) => None,
        };
        let key = self.insert_stream_as(id, socket.clone(), None, writes.clone(), None);
        let stream = RawStream::new(key, self.shared.clone(), socket, writes);
        match job.reply {
            // If the caller gave up, dropping the stream closes it.
            ConnectReply::Future(reply) => {
                let _ = reply.send(Ok(stream));
            }
            ConnectReply::Mailbox {
                inbox,
                window,
                id,
                kind,
            } => {
                // Announced before anything it reads, as an accepted connection is.
                self.outbox.post(
                    &inbox,
                    Delivery::Connected {
                        id,
                        result: Ok(stream),
                        kind,
                    },
                );
                if let Some(s) = self.stream(key) {
                    s.sink = Sink::Mailbox { inbox, window };
                }
                self.update_interest(key);
            }
        }
    }
}

/// Whether a socket whose connect reported no error has no peer yet (still in progress).
fn not_yet_connected(socket: &Socket) -> bool {
    matches!(socket.peer_addr(), Err(e) if e.kind() == io::ErrorKind::NotConnected)
}

/// A non-blocking, close-on-exec stream socket for `addr`'s family.
fn new_stream_socket(addr: &SockAddr) -> io::Result<Socket> {
    let socket = Socket::new(addr.domain(), Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn attempt(socket: &Socket, addr: &SockAddr) -> Attempt {
    match socket.connect(addr) {
        Ok(()) => Attempt::Connected,
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Attempt::InProgress,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            if addr.is_unix() {
                Attempt::Again
            } else {
                Attempt::InProgress
            }
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Attempt::InProgress,
        Err(e) => Attempt::Failed(e),
    }
}
