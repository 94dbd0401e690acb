//! `TcpSocket` and `NewConnection`: user-side handles to a connection the I/O task serves.

use std::fmt;
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use socket2::Socket;

use crate::io_task::Shared;
use crate::io_task::command::Command;
use crate::io_task::entry::{Key, QUEUED_CLOSED, Sink, Window};
use crate::mailbox::{MailboxSender, SocketId};
use crate::oneshot;
use crate::tcp::{ReadFuture, ReadPort, TcpError, WriteFuture};

/// A connected TCP socket served by an I/O task.
///
/// Every read and write goes through the I/O task: reads arrive on a [`ReadPort`] (or a
/// [`Mailbox`](crate::Mailbox), or one at a time through [`read`](TcpSocket::read)), and
/// writes are moved into the task and resolved through a [`WriteFuture`]. The socket is
/// `Send + Sync`; it can be shared (in an `Arc`) between threads.
///
/// Dropping the socket stops reading (a port attached to it yields `"CLOSED"`), flushes the
/// writes already queued, then closes the connection: unless the peer already closed its
/// side, it shuts down its sending side and discards what the peer still sends until the peer
/// closes, so that unread input cannot make the kernel reset the connection and lose the
/// last replies. The flush is bounded by the task's
/// [`drain_timeout`](crate::Builder::drain_timeout), the wait for the peer by its
/// [`linger_timeout`](crate::Builder::linger_timeout).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use iotask::tcp;
///
/// let iotask = iotask::IoTask::spawn()?;
/// let server = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let sock = tcp::connect(server.local_addr()?, &iotask)?;
/// let (mut peer, _) = server.accept()?;
///
/// sock.write(b"ping".to_vec())?;
/// let mut buf = [0; 4];
/// std::io::Read::read_exact(&mut peer, &mut buf)?;
/// assert_eq!(&buf, b"ping");
///
/// std::io::Write::write_all(&mut peer, b"pong")?;
/// assert_eq!(sock.read(Duration::from_secs(5))?, b"pong");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct TcpSocket {
    key: Key,
    task: Arc<Shared>,
    socket: Arc<Socket>,
    /// Bytes handed to `write_future` and not yet in the kernel (see `queued_bytes`).
    queued: Arc<AtomicUsize>,
}

/// An incoming connection, handed to `listen`'s `new_connect` callback.
///
/// The connection is already accepted by the kernel and served by the I/O task (data the
/// client sends waits, unread). Turn it into a [`TcpSocket`] with [`accept`](super::accept)
/// on any thread, at any time; dropping it instead closes the connection.
pub struct NewConnection {
    socket: TcpSocket,
}

impl NewConnection {
    pub(crate) fn new(
        key: Key,
        task: Arc<Shared>,
        socket: Arc<Socket>,
        queued: Arc<AtomicUsize>,
    ) -> NewConnection {
        NewConnection {
            socket: TcpSocket::new(key, task, socket, queued),
        }
    }

    /// The client's address.
    ///
    /// # Errors
    ///
    /// Fails when the client already reset the connection (`ENOTCONN`).
    pub fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.peer_addr()
    }

    pub(crate) fn into_socket(self) -> Result<TcpSocket, TcpError> {
        if self
            .socket
            .task
            .stopped
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(TcpError::shutdown());
        }
        Ok(self.socket)
    }
}

impl TcpSocket {
    /// The I/O task serving this socket.
    pub(crate) fn task(&self) -> &Arc<Shared> {
        &self.task
    }

    pub(crate) fn new(
        key: Key,
        task: Arc<Shared>,
        socket: Arc<Socket>,
        queued: Arc<AtomicUsize>,
    ) -> TcpSocket {
        TcpSocket {
            key,
            task,
            socket,
            queued,
        }
    }

    /// Starts delivering this socket's reads to a new port.
    ///
    /// Chunks given back by an earlier [`read_stop`](TcpSocket::read_stop) come first, in
    /// order; if the stream already ended, the port yields that end at once.
    ///
    /// # Errors
    ///
    /// `"BUSY"` when another port, future or mailbox still receives the reads; `"CLOSED"`
    /// or `"SHUTDOWN"` when the socket or the I/O task is gone.
    ///
    /// # Examples
    ///
    /// ```
    /// # use iotask::tcp;
    /// # let iotask = iotask::IoTask::spawn()?;
    /// # let server = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// # let sock = tcp::connect(server.local_addr()?, &iotask)?;
    /// # let (mut peer, _) = server.accept()?;
    /// let port = sock.read_start()?;
    /// std::io::Write::write_all(&mut peer, b"hello")?;
    /// drop(peer);
    /// let mut got = Vec::new();
    /// loop {
    ///     match port.recv() {
    ///         Ok(chunk) => got.extend(chunk),
    ///         Err(e) if e.is_eof() => break,
    ///         Err(e) => return Err(e.into()),
    ///     }
    /// }
    /// assert_eq!(got, b"hello");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read_start(&self) -> Result<ReadPort, TcpError> {
        let window = Arc::new(Window::new(self.task.read_window));
        let (tx, rx) = flume::unbounded();
        let sink = Sink::Port {
            tx,
            window: window.clone(),
        };
        self.request(|reply| Command::ReadStart {
            key: self.key,
            sink,
            reply: Some(reply),
        })?;
        Ok(ReadPort::new(self.key, rx, window))
    }

    /// Stops delivering reads to `port`, without losing any byte.
    ///
    /// Chunks still sitting in the port are taken back and delivered first to the next
    /// reader ([`read_start`](TcpSocket::read_start), [`read`](TcpSocket::read),
    /// [`attach`](TcpSocket::attach)); bytes that arrive meanwhile wait in the kernel.
    ///
    /// # Errors
    ///
    /// `"EINVAL"` when the port belongs to another socket (it is dropped);
    /// `"CLOSED"` or `"SHUTDOWN"` when the socket or the I/O task is gone.
    pub fn read_stop(&self, port: ReadPort) -> Result<(), TcpError> {
        if port.key != self.key {
            return Err(TcpError::new(
                "EINVAL",
                "the port belongs to another socket",
                std::io::ErrorKind::InvalidInput,
            ));
        }
        let ReadPort {
            key, rx, window, ..
        } = port;
        self.request(|reply| Command::ReadStop {
            key,
            port: rx,
            window,
            reply,
        })
    }

    /// Reads one chunk, waiting at most `timeout`.
    ///
    /// A convenience for reading on the current thread without a port: it is
    /// `read_future(timeout).get()`.
    ///
    /// # Errors
    ///
    /// As [`ReadFuture::get`]: `"ETIMEDOUT"` when nothing came in time, `"EOF"` after the
    /// peer closed, `"BUSY"` while a port or mailbox receives this socket's reads.
    pub fn read(&self, timeout: Duration) -> Result<Vec<u8>, TcpError> {
        self.read_future(timeout).get()
    }

    /// Starts reading one chunk and returns at once; the future resolves with the chunk, the
    /// end of the stream, or a timeout error after `timeout`.
    pub fn read_future(&self, timeout: Duration) -> ReadFuture {
        let (reply, rx) = oneshot::channel();
        let deadline = Instant::now().checked_add(timeout);
        match self.task.send(Command::ReadOnce {
            key: self.key,
            deadline,
            reply,
        }) {
            Ok(()) => ReadFuture::waiting(rx, self.key, self.task.clone()),
            Err(e) => ReadFuture::ready(Err(e)),
        }
    }

    /// Writes `data`, blocking until the kernel has all of it.
    ///
    /// # Errors
    ///
    /// As [`WriteFuture::get`].
    pub fn write(&self, data: impl Into<Vec<u8>>) -> Result<(), TcpError> {
        self.write_future(data).get()
    }

    /// Moves `data` into the I/O task to be written after every earlier write on this
    /// socket; returns at once.
    ///
    /// Writes queued together go out in one gathered system call. The future resolves when
    /// every byte is in the kernel; it may be dropped unresolved, and the write still
    /// happens.
    ///
    /// # Examples
    ///
    /// ```
    /// # use iotask::tcp;
    /// # let iotask = iotask::IoTask::spawn()?;
    /// # let server = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// # let sock = tcp::connect(server.local_addr()?, &iotask)?;
    /// let first = sock.write_future(b"one ".to_vec());
    /// let second = sock.write_future(b"two".to_vec());
    /// first.get()?;
    /// second.get()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_future(&self, data: impl Into<Vec<u8>>) -> WriteFuture {
        let data = data.into();
        let len = data.len();
        let (done, rx) = oneshot::channel();
        self.queued.fetch_add(len, Ordering::SeqCst);
        match self.task.send(Command::Write {
            key: self.key,
            data,
            done,
        }) {
            Ok(()) => WriteFuture::waiting(rx),
            Err(e) => {
                self.queued.fetch_sub(len, Ordering::SeqCst);
                WriteFuture::ready(Err(e))
            }
        }
    }

    /// Bytes handed to [`write_future`](TcpSocket::write_future) (or `write`) that are not
    /// yet in the kernel; zero once the socket is closed.
    ///
    /// An actor that must not block on writes uses this to notice a peer that does not read,
    /// for example to drop a slow subscriber instead of queueing for it without bound.
    pub fn queued_bytes(&self) -> usize {
        let queued = self.queued.load(Ordering::SeqCst);
        if queued & QUEUED_CLOSED != 0 {
            0
        } else {
            queued
        }
    }

    /// Stops reading this socket while more than `window` bytes of its writes are queued,
    /// until half of them drained (`None`: never).
    ///
    /// This bounds the memory a request/response server spends on a client that sends but
    /// never reads: its requests stay in the kernel, where TCP flow control stops it, as a
    /// blocking server's would. Sockets accepted by a listener start with
    /// [`ListenOptions::write_window`](super::ListenOptions::write_window) (1 MiB by
    /// default); connected sockets start with `None`, so that a client streaming both ways
    /// cannot deadlock against such a server. Writes themselves are never refused.
    ///
    /// The new window applies to everything read after this call returns.
    ///
    /// # Errors
    ///
    /// `"CLOSED"` or `"SHUTDOWN"` when the socket or the I/O task is gone.
    pub fn set_write_window(&self, window: Option<usize>) -> Result<(), TcpError> {
        self.request(|reply| Command::SetWriteWindow {
            key: self.key,
            window,
            reply,
        })
    }

    /// Delivers this socket's reads to a mailbox, tagged with [`id`](TcpSocket::id), batched
    /// with the reads of every other socket attached to it.
    ///
    /// The mailbox sees `Event::Data` for each chunk and one `Event::Closed` when reading
    /// ends (EOF, an error, the socket dropped, the task shut down).
    ///
    /// Attaching does not wait for the I/O task, so an actor never blocks on it. Attaching
    /// to the mailbox the socket is attached to already does nothing. When the I/O task
    /// refuses (a port, future or other mailbox still receives this socket's reads, or the
    /// socket was closed), the mailbox gets `Event::Closed` for this socket with that error
    /// (`"BUSY"`, `"CLOSED"`).
    ///
    /// # Errors
    ///
    /// `"SHUTDOWN"` when the I/O task stopped.
    pub fn attach<M: Send + 'static>(
        &self,
        mailbox: &impl AsRef<MailboxSender<M>>,
    ) -> Result<(), TcpError> {
        let sender = mailbox.as_ref();
        let sink = Sink::Mailbox {
            inbox: sender.inbox(),
            window: sender.window(),
        };
        self.task.send(Command::ReadStart {
            key: self.key,
            sink,
            reply: None,
        })
    }

    /// Stops delivering reads to the mailbox this socket is attached to. Chunks already
    /// delivered stay in the mailbox; later bytes wait for the next reader.
    ///
    /// # Errors
    ///
    /// `"CLOSED"` or `"SHUTDOWN"` when the socket or the I/O task is gone.
    pub fn detach(&self) -> Result<(), TcpError> {
        self.request(|reply| Command::Detach {
            key: self.key,
            reply,
        })
    }

    /// This socket's identity, as mailbox events carry it. Unique in the process.
    pub fn id(&self) -> SocketId {
        SocketId(self.key.id)
    }

    /// The remote address.
    ///
    /// # Errors
    ///
    /// `ENOTCONN` once the connection was reset or closed.
    pub fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        as_inet(self.socket.peer_addr()?)
    }

    /// The local address.
    ///
    /// # Errors
    ///
    /// Fails only if the descriptor became invalid, which iotask prevents.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        as_inet(self.socket.local_addr()?)
    }

    /// Whether `TCP_NODELAY` is set (iotask sets it on every socket it accepts or connects).
    ///
    /// # Errors
    ///
    /// As `getsockopt(2)`.
    pub fn nodelay(&self) -> std::io::Result<bool> {
        self.socket.tcp_nodelay()
    }

    /// Shuts down the writing half: the peer reads EOF after the bytes already written.
    /// Writes queued before this call are flushed first.
    ///
    /// # Errors
    ///
    /// As the writes queued before it.
    pub fn shutdown_write(&self) -> Result<(), TcpError> {
        // Wait for the queue to drain through an empty write, which resolves in order.
        self.write(Vec::new())?;
        self.socket
            .shutdown(Shutdown::Write)
            .map_err(TcpError::from)
    }

    pub(crate) fn unread(&self, data: Vec<u8>) {
        let _ = self.task.send(Command::Unread {
            key: self.key,
            data,
        });
    }

    /// Sends a command carrying a reply, and waits for the reply.
    fn request<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, TcpError>>) -> Command,
    ) -> Result<T, TcpError> {
        let (reply, rx) = oneshot::channel();
        self.task.send(command(reply))?;
        rx.recv().unwrap_or_else(|_| Err(TcpError::shutdown()))
    }
}

pub(crate) fn as_inet(addr: socket2::SockAddr) -> std::io::Result<SocketAddr> {
    addr.as_socket().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "not an internet address")
    })
}

impl Drop for TcpSocket {
    fn drop(&mut self) {
        // A stopped task has closed the socket already.
        let _ = self.task.send(Command::Close(self.key));
    }
}

impl fmt::Debug for TcpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpSocket")
            .field("id", &self.key.id)
            .field("local", &self.local_addr().ok())
            .field("peer", &self.peer_addr().ok())
            .finish()
    }
}

impl fmt::Debug for NewConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewConnection")
            .field("peer", &self.peer_addr().ok())
            .finish()
    }
}
