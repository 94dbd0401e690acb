//! What every stream socket has, whatever its family: [`Stream`] (a connected socket),
//! [`NewConnection`], [`ReadPort`], the futures, and the buffered [`SocketBuf`].
//!
//! A socket family ([`Tcp`](crate::tcp::Tcp), [`Unix`](crate::unix::Unix)) is a marker type
//! implementing [`Family`]: it fixes the address type and adds its own methods in an
//! `impl Stream<Tcp>` block. The family modules name the concrete types
//! (`tcp::TcpSocket` is `Stream<Tcp>`), so most code never writes the parameter.

mod buf;
mod future;
mod port;

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

pub use buf::SocketBuf;
pub use future::{ConnectFuture, ReadFuture, WriteFuture};
pub use port::ReadPort;

use crate::error::Error;
use crate::io_task::Shared;
use crate::io_task::handle::RawStream;
use crate::io_task::timers::deadline_after;
use crate::mailbox::{MailboxSender, SocketId};

/// A socket family: its address type and how the I/O task treats its sockets.
///
/// Implemented by [`tcp::Tcp`](crate::tcp::Tcp) and, on Unix, [`unix::Unix`](crate::unix::Unix);
/// sealed, so no other crate can add one.
pub trait Family: sealed::Sealed + Send + Sync + Sized + 'static {
    /// The family's socket address: [`std::net::SocketAddr`] or
    /// [`std::os::unix::net::SocketAddr`].
    type Addr: Clone + fmt::Debug + Send + Sync + 'static;

    /// The family's name in debug output (`"tcp"`, `"unix"`).
    const NAME: &'static str;

    /// The local or remote address of a socket of this family.
    #[doc(hidden)]
    fn socket_addr(socket: &socket2::Socket, peer: bool) -> std::io::Result<Self::Addr>;
}

pub(crate) mod sealed {
    /// Keeps [`Family`](super::Family) closed to other crates.
    pub trait Sealed {
        /// Whether the family's sockets are Unix-domain sockets (else internet sockets).
        #[doc(hidden)]
        const UNIX: bool;
    }
}

/// A connected stream socket served by an I/O task; `tcp::TcpSocket` and
/// `unix::UnixSocket` are this type for their family.
///
/// Every read and write goes through the I/O task: reads arrive on a [`ReadPort`] (or a
/// [`Mailbox`](crate::Mailbox), or one at a time through [`read`](Stream::read)), and
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
pub struct Stream<F: Family> {
    raw: RawStream,
    family: PhantomData<fn() -> F>,
}

/// An incoming connection, handed to a listener's `new_connect` callback.
///
/// The connection is already accepted by the kernel and served by the I/O task (data the
/// client sends waits, unread). Turn it into a socket with
/// [`tcp::accept`](crate::tcp::accept) (or [`accept`](NewConnection::accept)) on any thread,
/// at any time; dropping it instead closes the connection.
pub struct NewConnection<F: Family> {
    stream: Stream<F>,
}

impl<F: Family> NewConnection<F> {
    pub(crate) fn from_raw(raw: RawStream) -> NewConnection<F> {
        NewConnection {
            stream: Stream::from_raw(raw),
        }
    }

    /// The client's address.
    ///
    /// # Errors
    ///
    /// Fails when the client already reset the connection (`ENOTCONN`).
    pub fn peer_addr(&self) -> std::io::Result<F::Addr> {
        self.stream.peer_addr()
    }

    /// Turns the connection into a socket.
    ///
    /// # Errors
    ///
    /// `"SHUTDOWN"` when the I/O task stopped since the connection arrived (it is closed).
    pub fn accept(self) -> Result<Stream<F>, Error> {
        if self.stream.raw.task_stopped() {
            return Err(Error::shutdown());
        }
        Ok(self.stream)
    }
}

impl<F: Family> Stream<F> {
    pub(crate) fn from_raw(raw: RawStream) -> Stream<F> {
        Stream {
            raw,
            family: PhantomData,
        }
    }

    pub(crate) fn raw(&self) -> &RawStream {
        &self.raw
    }

    pub(crate) fn into_raw(self) -> RawStream {
        self.raw
    }

    /// The I/O task serving this socket.
    pub(crate) fn task(&self) -> &std::sync::Arc<Shared> {
        self.raw.task()
    }

    /// Starts delivering this socket's reads to a new port.
    ///
    /// Chunks given back by an earlier [`read_stop`](Stream::read_stop) come first, in
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
    pub fn read_start(&self) -> Result<ReadPort, Error> {
        let parts = self.raw.read_start()?;
        Ok(ReadPort::new(self.raw.key(), parts))
    }

    /// Stops delivering reads to `port`, without losing any byte.
    ///
    /// Chunks still sitting in the port are taken back and delivered first to the next
    /// reader ([`read_start`](Stream::read_start), [`read`](Stream::read),
    /// [`attach`](Stream::attach)); bytes that arrive meanwhile wait in the kernel.
    ///
    /// # Errors
    ///
    /// `"EINVAL"` when the port belongs to another socket (it is dropped);
    /// `"CLOSED"` or `"SHUTDOWN"` when the socket or the I/O task is gone.
    pub fn read_stop(&self, port: ReadPort) -> Result<(), Error> {
        if port.key != self.raw.key() {
            return Err(Error::new(
                "EINVAL",
                "the port belongs to another socket",
                std::io::ErrorKind::InvalidInput,
            ));
        }
        self.raw.read_stop(port.parts)
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
    pub fn read(&self, timeout: Duration) -> Result<Vec<u8>, Error> {
        self.read_future(timeout).get()
    }

    /// Starts reading one chunk and returns at once; the future resolves with the chunk, the
    /// end of the stream, or a timeout error after `timeout` (`Duration::MAX`: never).
    pub fn read_future(&self, timeout: Duration) -> ReadFuture {
        match self.raw.read_once(deadline_after(timeout)) {
            Ok(rx) => ReadFuture::waiting(rx),
            Err(e) => ReadFuture::ready(Err(e)),
        }
    }

    /// Writes `data`, blocking until the kernel has all of it.
    ///
    /// # Errors
    ///
    /// As [`WriteFuture::get`].
    pub fn write(&self, data: impl Into<Vec<u8>>) -> Result<(), Error> {
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
        match self.raw.write(data.into()) {
            Ok(seq) => WriteFuture::queued(self.raw.writes().clone(), seq),
            Err(e) => WriteFuture::ready(Err(e)),
        }
    }

    /// Bytes handed to [`write_future`](Stream::write_future) (or `write`) that are not
    /// yet in the kernel; zero once the socket is closed.
    ///
    /// An actor that must not block on writes uses this to notice a peer that does not read,
    /// for example to drop a slow subscriber instead of queueing for it without bound.
    pub fn queued_bytes(&self) -> usize {
        self.raw.queued_bytes()
    }

    /// Stops reading this socket while more than `window` bytes of its writes are queued,
    /// until half of them drained (`None`: never).
    ///
    /// This bounds the memory a request/response server spends on a client that sends but
    /// never reads: its requests stay in the kernel, where flow control stops it, as a
    /// blocking server's would. Sockets accepted by a listener start with
    /// [`ListenOptions::write_window`](crate::server::ListenOptions::write_window) (1 MiB by
    /// default); connected sockets start with `None`, so that a client streaming both ways
    /// cannot deadlock against such a server. Writes themselves are never refused.
    ///
    /// The new window applies to everything read after this call returns.
    ///
    /// # Errors
    ///
    /// `"CLOSED"` or `"SHUTDOWN"` when the socket or the I/O task is gone.
    pub fn set_write_window(&self, window: Option<usize>) -> Result<(), Error> {
        self.raw.set_write_window(window)
    }

    /// Delivers this socket's reads to a mailbox, tagged with [`id`](Stream::id), batched
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
    ) -> Result<(), Error> {
        let sender = mailbox.as_ref();
        self.raw.attach(sender.inbox(), sender.window())
    }

    /// Stops delivering reads to the mailbox this socket is attached to. Chunks already
    /// delivered stay in the mailbox; later bytes wait for the next reader.
    ///
    /// # Errors
    ///
    /// `"CLOSED"` or `"SHUTDOWN"` when the socket or the I/O task is gone.
    pub fn detach(&self) -> Result<(), Error> {
        self.raw.detach()
    }

    /// This socket's identity, as mailbox events carry it. Unique in the process.
    pub fn id(&self) -> SocketId {
        SocketId(self.raw.key().id)
    }

    /// The remote address.
    ///
    /// # Errors
    ///
    /// `ENOTCONN` once the connection was reset or closed.
    pub fn peer_addr(&self) -> std::io::Result<F::Addr> {
        F::socket_addr(self.raw.socket(), true)
    }

    /// The local address.
    ///
    /// # Errors
    ///
    /// Fails only if the descriptor became invalid, which iotask prevents.
    pub fn local_addr(&self) -> std::io::Result<F::Addr> {
        F::socket_addr(self.raw.socket(), false)
    }

    /// Shuts down the writing half: the peer reads EOF after the bytes already written.
    /// Writes queued before this call are flushed first.
    ///
    /// # Errors
    ///
    /// As the writes queued before it.
    pub fn shutdown_write(&self) -> Result<(), Error> {
        self.raw.shutdown_write()
    }
}

impl<F: Family> fmt::Debug for Stream<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stream")
            .field("family", &F::NAME)
            .field("id", &self.raw.key().id)
            .field("local", &self.local_addr().ok())
            .field("peer", &self.peer_addr().ok())
            .finish()
    }
}

impl<F: Family> fmt::Debug for NewConnection<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewConnection")
            .field("family", &F::NAME)
            .field("peer", &self.peer_addr().ok())
            .finish()
    }
}
