//! What a slab slot holds, the generation-checked `Key` that names it, and where a socket's
//! reads go (`Sink`, `Window`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::io_task::Shared;
use crate::io_task::command::Command;
use crate::io_task::registration::Registration;
use crate::oneshot;
use crate::tcp::server::{ConnectionGuard, ListenerState};
use crate::tcp::{ListenEvent, TcpError, TcpSocket};

/// A slab index plus the unique id of the socket or listener that held it when the key was
/// made. Slab indices are reused; ids never are, so a late command for a closed socket can
/// never reach the socket that got its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub(crate) index: usize,
    pub(crate) id: u64,
}

/// Hands out ids that are unique in the process, so ids from two I/O tasks never clash.
pub(crate) fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Set in a socket's queued-bytes gauge once its entry left the slab: the count is then
/// meaningless and reported as zero.
pub(crate) const QUEUED_CLOSED: usize = 1 << (usize::BITS - 1);

/// One read result on its way to a user: bytes, or the error that ended reading.
pub(crate) type Chunk = Result<Vec<u8>, TcpError>;

/// A slab slot.
///
/// Sockets far outnumber listeners, so the size difference is kept rather than boxing every
/// socket.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Entry {
    Listener(ListenerEntry),
    Socket(SocketEntry),
}

impl Entry {
    pub(crate) fn id(&self) -> u64 {
        match self {
            Entry::Listener(l) => l.id,
            Entry::Socket(s) => s.id,
        }
    }
}

/// A listening socket.
#[derive(Debug)]
pub(crate) struct ListenerEntry {
    pub(crate) id: u64,
    pub(crate) reg: Registration,
    /// Where accepted connections go.
    pub(crate) target: AcceptTarget,
    /// Limits, flags and counters shared with the `listen` thread and the `KillChan`.
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
    /// The thread blocked in `listen`, as `NewConnection`s.
    Thread(flume::Sender<ListenEvent>),
    /// A mailbox (`listen_into`): each connection is attached to it on the I/O thread and
    /// announced as `Event::Accepted`, ahead of its first read.
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

/// Counts a listening socket as open while it is in a slab, and tells the listener's
/// waiters when it is closed.
#[derive(Debug)]
pub(crate) struct ListenerClosed(Arc<ListenerState>);

impl ListenerClosed {
    pub(crate) fn new(state: Arc<ListenerState>) -> ListenerClosed {
        state.socket_opened();
        ListenerClosed(state)
    }
}

impl Drop for ListenerClosed {
    fn drop(&mut self) {
        self.0.socket_closed();
    }
}

/// A connected socket and everything queued on it.
#[derive(Debug)]
pub(crate) struct SocketEntry {
    pub(crate) id: u64,
    pub(crate) reg: Registration,
    /// Where reads go; `Sink::None` while nobody reads.
    pub(crate) sink: Sink,
    /// Read results taken back from a port given to `read_stop`, a dropped future or a
    /// dropped mailbox, in order; handed to the next sink before anything new is read.
    pub(crate) stash: VecDeque<Chunk>,
    /// Set once EOF or a read error was seen: every later reader gets this error.
    pub(crate) read_end: Option<TcpError>,
    /// Set while the sink's window is full: the socket is not read.
    pub(crate) paused: bool,
    /// Writes not yet fully accepted by the kernel, oldest first.
    pub(crate) writes: VecDeque<PendingWrite>,
    /// Set after a write failed: every later write fails with it.
    pub(crate) write_error: Option<TcpError>,
    /// Set when the user dropped the socket: close as soon as `writes` is empty.
    pub(crate) closing: bool,
    /// Set once a closing socket's output is flushed and its write side shut down: it is
    /// read (and the input discarded) until the peer closes, then closed.
    pub(crate) lingering: bool,
    /// Whether the socket is on the loop's list of sockets to flush this cycle.
    pub(crate) dirty: bool,
    /// The listener that accepted the socket, which counts it while it is in the slab.
    pub(crate) owner: Option<ConnectionGuard>,
    /// Bytes accepted by `write_future` and not yet in the kernel, shared with the
    /// `TcpSocket` (which adds, while the loop subtracts).
    pub(crate) queued: Arc<AtomicUsize>,
    /// The loop's own count of the bytes in `writes`.
    pub(crate) queued_here: usize,
    /// Above this many queued bytes the socket is not read (see `write_blocked`).
    pub(crate) write_window: Option<usize>,
    /// Set while more than `write_window` bytes are queued, until half of them drained.
    pub(crate) write_blocked: bool,
}

/// A write in the queue, with the sender that resolves its future.
#[derive(Debug)]
pub(crate) struct PendingWrite {
    pub(crate) data: Vec<u8>,
    /// Bytes of `data` already written.
    pub(crate) written: usize,
    pub(crate) done: Option<oneshot::Sender<Result<(), TcpError>>>,
}

/// Where a socket's reads are delivered.
pub(crate) enum Sink {
    None,
    /// A `ReadPort`: every chunk is sent as soon as it is read.
    Port {
        tx: flume::Sender<Chunk>,
        window: Arc<Window>,
    },
    /// A `Mailbox`: chunks of one loop cycle are sent as one batch.
    Mailbox {
        inbox: Arc<dyn Inbox>,
        window: Arc<Window>,
    },
    /// A `ReadFuture`: one chunk, or a timeout at `deadline`.
    Once {
        tx: oneshot::Sender<Chunk>,
        deadline: Option<Instant>,
    },
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Sink::None => "None",
            Sink::Port { .. } => "Port",
            Sink::Mailbox { .. } => "Mailbox",
            Sink::Once { .. } => "Once",
        })
    }
}

impl Sink {
    /// Whether the reader behind this sink is gone, so that a new reader may take its place.
    pub(crate) fn is_abandoned(&self) -> bool {
        match self {
            Sink::None => true,
            Sink::Port { tx, .. } => tx.is_disconnected(),
            Sink::Mailbox { inbox, .. } => inbox.is_closed(),
            Sink::Once { tx, .. } => tx.is_canceled(),
        }
    }
}

/// What the loop delivers to a mailbox.
#[derive(Debug)]
pub(crate) enum Delivery {
    /// A socket's read (or the error that ended reading).
    Read { key: Key, chunk: Chunk },
    /// A connection accepted by a listener feeding the mailbox, already attached to it.
    Accepted(TcpSocket),
}

/// The receiving end of a mailbox, as the loop sees it (the mailbox's message type erased).
pub(crate) trait Inbox: Send + Sync {
    /// Sends one cycle's deliveries; gives them back when the mailbox is gone.
    fn deliver(&self, batch: Vec<Delivery>) -> Result<(), Vec<Delivery>>;
    fn is_closed(&self) -> bool;
}

/// The flow-control window of a port or a mailbox: how many delivered bytes wait unreceived.
///
/// The loop adds what it delivers and parks the socket when `pending` exceeds `limit`; the
/// receiver subtracts what it takes and, once `pending` falls to `limit / 2`, sends every
/// parked socket a `Resume`. Both sides run `resume_if_drained` after their update, with
/// sequentially consistent atomics, so a socket can never stay parked behind an empty port.
#[derive(Debug)]
pub(crate) struct Window {
    pending: AtomicUsize,
    limit: usize,
    paused: AtomicBool,
    parked: Mutex<Vec<(Arc<Shared>, Key)>>,
}

impl Window {
    pub(crate) fn new(limit: usize) -> Window {
        Window {
            pending: AtomicUsize::new(0),
            limit: limit.max(1),
            paused: AtomicBool::new(false),
            parked: Mutex::new(Vec::new()),
        }
    }

    /// Counts bytes delivered; returns whether the reader is now over its limit.
    pub(crate) fn add(&self, n: usize) -> bool {
        self.pending.fetch_add(n, Ordering::SeqCst) + n > self.limit
    }

    /// Counts bytes received (or taken back), resuming parked sockets when drained enough.
    pub(crate) fn sub(&self, n: usize) {
        if n > 0 {
            self.pending.fetch_sub(n, Ordering::SeqCst);
            self.resume_if_drained();
        }
    }

    /// Parks a socket until the reader catches up.
    pub(crate) fn park(&self, shared: Arc<Shared>, key: Key) {
        let mut parked = self.parked.lock().unwrap_or_else(|p| p.into_inner());
        parked.push((shared, key));
        self.paused.store(true, Ordering::SeqCst);
        drop(parked);
        self.resume_if_drained();
    }

    fn resume_if_drained(&self) {
        if self.pending.load(Ordering::SeqCst) > self.limit / 2 {
            return;
        }
        if self.paused.swap(false, Ordering::SeqCst) {
            let parked =
                std::mem::take(&mut *self.parked.lock().unwrap_or_else(|p| p.into_inner()));
            for (shared, key) in parked {
                // A stopped I/O task has nothing left to resume.
                let _ = shared.send(Command::Resume(key));
            }
        }
    }
}
