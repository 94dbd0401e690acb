//! The closed set of requests a user thread can make of the I/O task.
//!
//! Every way into the loop is one variant here and one arm of `EventLoop::handle`. Commands
//! are built in three places only: `handle.rs` (streams), `listener.rs` (listeners) and
//! `datagram.rs` (datagram sockets). A command that carries a `reply` resolves it exactly
//! once; a command dropped unhandled (the loop stopped) drops its reply, which the waiting
//! user reads as `SHUTDOWN`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{SockAddr, Socket};

use crate::error::Error;
use crate::io_task::connect::ConnectReply;
use crate::io_task::datagram::{DatagramSink, DatagramState, Received, SendReply};
use crate::io_task::entry::Key;
use crate::io_task::listener::{AcceptTarget, ListenerState};
use crate::io_task::sink::{Chunk, Sink, Window};
use crate::io_task::writes::WriteState;
use crate::oneshot;

pub(crate) type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// A family's preparation of a socket it connected or accepted (`TCP_NODELAY`, the
/// listener's options), run by the loop before the socket is served. A failure is ignored:
/// the socket still works.
pub(crate) type SetupFn = Arc<dyn Fn(&Socket) -> std::io::Result<()> + Send + Sync>;

pub(crate) enum Command {
    /// Serve a bound, listening, non-blocking socket; accepted connections go to `target`.
    AddListener {
        socket: Socket,
        target: AcceptTarget,
        state: Arc<ListenerState>,
        reply: Reply<Key>,
    },
    /// Stop accepting and close the listening socket; the reply comes after the close.
    /// With `close_connections`, also close every connection it accepted; with `drain`,
    /// close those still open at that instant.
    CloseListener {
        key: Key,
        close_connections: bool,
        drain: Option<Instant>,
        reply: oneshot::Sender<()>,
    },
    /// The listener's flags or room changed: decide again whether it accepts.
    RecheckListener(Key),
    /// Serve a connected, non-blocking socket.
    AddStream {
        socket: Arc<Socket>,
        writes: Arc<WriteState>,
        reply: Reply<Key>,
    },
    /// Connect to each address in turn, without blocking; reply with the first stream
    /// that connects, or the last error.
    Connect {
        addrs: VecDeque<SockAddr>,
        setup: Option<SetupFn>,
        timeout: Option<Duration>,
        reply: ConnectReply,
    },
    /// Change how many queued write bytes stop the stream being read.
    SetWriteWindow {
        key: Key,
        window: Option<usize>,
        reply: Reply<()>,
    },
    /// Deliver reads to `sink` (a port or a mailbox) from now on. A mailbox attaching sends
    /// no reply: a refusal reaches it as the stream's `Closed` event.
    ReadStart {
        key: Key,
        sink: Sink,
        reply: Option<Reply<()>>,
    },
    /// Stop delivering to the port; take back what it still holds.
    ReadStop {
        key: Key,
        port: flume::Receiver<Chunk>,
        window: Arc<Window>,
        reply: Reply<()>,
    },
    /// Deliver one chunk (or the read error) to `reply`, or a timeout at `deadline`.
    ReadOnce {
        key: Key,
        deadline: Option<Instant>,
        reply: oneshot::Sender<Chunk>,
    },
    /// Stop delivering to a mailbox (what it already holds stays there).
    Detach(Key),
    /// Put bytes back in front of everything not yet delivered.
    Unread { key: Key, data: Vec<u8> },
    /// Queue bytes for writing; the stream's `WriteState` tells when the kernel has them.
    Write { key: Key, data: Vec<u8> },
    /// Tell the stream's mailbox if its queue is at its low watermark (set while above).
    CheckDrained(Key),
    /// Shut down the sending side after every write queued before it.
    ShutdownWrite(Key),
    /// Queue `len` bytes of `file` from `offset`, in order with the writes (`send_file`).
    SendFile {
        key: Key,
        file: std::fs::File,
        offset: u64,
        len: usize,
    },
    /// The reader drained its window: read the stream again.
    Resume(Key),
    /// From `deadline` on, writes still queued fail with `ETIMEDOUT` (`None`: no deadline).
    SetDeadline { key: Key, deadline: Option<Instant> },
    /// Shut down the receiving side: the reader gets the end of the stream after what was
    /// already read; bytes still in the kernel are discarded.
    ShutdownRead { key: Key, reply: Reply<()> },
    /// Reset the connection now: queued writes and the reader fail with `ABORTED`.
    Abort { key: Key, reply: Reply<()> },
    /// Serve a bound, non-blocking datagram socket.
    AddDatagram {
        socket: Arc<Socket>,
        state: Arc<DatagramState>,
        reply: Reply<Key>,
    },
    /// Deliver a datagram socket's receptions to `sink` from now on (a mailbox attaching
    /// sends no reply: a refusal reaches it as the socket's `Closed` event).
    RecvStart {
        key: Key,
        sink: DatagramSink,
        reply: Option<Reply<()>>,
    },
    /// Stop delivering datagrams to the port; take back what it still holds.
    RecvStop {
        key: Key,
        port: flume::Receiver<Received>,
        window: Arc<Window>,
        reply: Reply<()>,
    },
    /// Deliver one datagram (or error) to `reply`, or a timeout at `deadline`.
    RecvOnce {
        key: Key,
        deadline: Option<Instant>,
        reply: oneshot::Sender<Received>,
    },
    /// Send one datagram, to `to` or to the connected peer, after those queued before it.
    SendTo {
        key: Key,
        data: Vec<u8>,
        to: Option<std::net::SocketAddr>,
        reply: SendReply,
    },
    /// Report the loop's counters.
    Stats(oneshot::Sender<crate::io_task::stats::Stats>),
    /// Give the stream up, unregistered and open (`into_std`), if nothing would be lost.
    Release { key: Key, reply: Reply<()> },
    /// The user made another handle to the stream (`try_clone`).
    AddHandle(Key),
    /// The user dropped a handle to the stream: once the last is gone, flush what is
    /// queued, then close.
    Close(Key),
    /// Close everything and stop the loop.
    Shutdown,
    /// Makes the loop panic, to test that a dying loop fails every caller instead of
    /// leaving them hanging.
    #[cfg(test)]
    Panic,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Only the variant: payloads hold sockets, channels and closures.
        let name = match self {
            Command::AddListener { .. } => "AddListener",
            Command::CloseListener { .. } => "CloseListener",
            Command::RecheckListener(_) => "RecheckListener",
            Command::AddStream { .. } => "AddStream",
            Command::Connect { .. } => "Connect",
            Command::SetWriteWindow { .. } => "SetWriteWindow",
            Command::ReadStart { .. } => "ReadStart",
            Command::ReadStop { .. } => "ReadStop",
            Command::ReadOnce { .. } => "ReadOnce",
            Command::Detach(_) => "Detach",
            Command::Unread { .. } => "Unread",
            Command::Write { .. } => "Write",
            Command::SendFile { .. } => "SendFile",
            Command::ShutdownWrite(_) => "ShutdownWrite",
            Command::CheckDrained(_) => "CheckDrained",
            Command::Resume(_) => "Resume",
            Command::SetDeadline { .. } => "SetDeadline",
            Command::ShutdownRead { .. } => "ShutdownRead",
            Command::Abort { .. } => "Abort",
            Command::AddDatagram { .. } => "AddDatagram",
            Command::RecvStart { .. } => "RecvStart",
            Command::RecvStop { .. } => "RecvStop",
            Command::RecvOnce { .. } => "RecvOnce",
            Command::SendTo { .. } => "SendTo",
            Command::Stats(_) => "Stats",
            Command::Release { .. } => "Release",
            Command::AddHandle(_) => "AddHandle",
            Command::Close(_) => "Close",
            Command::Shutdown => "Shutdown",
            #[cfg(test)]
            Command::Panic => "Panic",
        };
        f.write_str(name)
    }
}
