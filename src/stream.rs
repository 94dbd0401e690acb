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
    /// end of the stream, or a timeout error after `timeout` (`Duration::MAX`: never) or at
    /// the socket's [deadline](Stream::set_deadline), whichever comes first.
    pub fn read_future(&self, timeout: Duration) -> ReadFuture {
        let deadline = match (deadline_after(timeout), self.raw.deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match self.raw.read_once(deadline) {
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
        if self
            .raw
            .deadline()
            .is_some_and(|d| d <= std::time::Instant::now())
        {
            // Refused whole: nothing of it went out, and the stream is not cut short.
            return WriteFuture::ready(Err(Error::write_timeout(0)));
        }
        match self.raw.write(data.into()) {
            Ok(seq) => WriteFuture::queued(self.raw.writes().clone(), seq),
            Err(e) => WriteFuture::ready(Err(e)),
        }
    }

    /// Sends `len` bytes of `file` from `offset` (to its end with `None`), in order with the
    /// socket's other writes; the future resolves when the kernel has them all.
    ///
    /// The I/O task sends the file with `sendfile(2)` on Linux, a copy inside the kernel
    /// that never passes through this process, a megabyte at a time so that a large file
    /// shares the loop with other sockets; elsewhere (and on file systems without
    /// `sendfile`) it reads and sends 64 KiB at a time. The socket keeps its own handle to
    /// the file (`File::try_clone`), so `file` may be dropped at once. Deadlines, the age
    /// limit and the watermarks count the file's bytes as any other write's.
    ///
    /// # Errors
    ///
    /// Through the future: as [`write_future`](Stream::write_future); `"EINVAL"` for an
    /// `offset` past the end; the file's own read errors; `UnexpectedEof` when the file
    /// shrank below `offset + len` while being sent (the socket's writes then fail, as the
    /// stream was cut short).
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::io::Read;
    /// # use iotask::tcp;
    /// # let iotask = iotask::IoTask::spawn()?;
    /// # let server = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// # let sock = tcp::connect(server.local_addr()?, &iotask)?;
    /// # let (mut peer, _) = server.accept()?;
    /// let path = std::env::temp_dir().join(format!("iotask-send-file-{}", std::process::id()));
    /// std::fs::write(&path, b"headerpayload")?;
    /// let file = std::fs::File::open(&path)?;
    /// sock.write(b"> ".to_vec())?;
    /// sock.send_file(&file, 6, None).get()?;
    /// let mut got = [0; 9];
    /// peer.read_exact(&mut got)?;
    /// assert_eq!(&got, b"> payload");
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send_file(&self, file: &std::fs::File, offset: u64, len: Option<u64>) -> WriteFuture {
        let plan = || -> Result<(std::fs::File, usize), Error> {
            let size = file.metadata()?.len();
            if offset > size {
                return Err(Error::new(
                    "EINVAL",
                    "the offset is past the end of the file",
                    std::io::ErrorKind::InvalidInput,
                ));
            }
            let len = len.unwrap_or(size - offset);
            let len = usize::try_from(len).map_err(|_| {
                Error::new(
                    "EINVAL",
                    "the length does not fit in memory's address range",
                    std::io::ErrorKind::InvalidInput,
                )
            })?;
            Ok((file.try_clone()?, len))
        };
        if self
            .raw
            .deadline()
            .is_some_and(|d| d <= std::time::Instant::now())
        {
            return WriteFuture::ready(Err(Error::write_timeout(0)));
        }
        match plan().and_then(|(file, len)| self.raw.send_file(file, offset, len)) {
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
    /// delivered stay in the mailbox; later bytes wait, in the kernel, for the next reader
    /// (flow control slows the peer meanwhile). Like [`attach`](Stream::attach), it does not
    /// wait for the I/O task, so an actor never blocks on it: it takes effect when the task
    /// gets to it, before any command sent after it, and what the task read before that
    /// still reaches the mailbox. A socket that is not attached (or is gone) is left as it
    /// is.
    ///
    /// # Errors
    ///
    /// `"SHUTDOWN"` when the I/O task stopped.
    pub fn detach(&self) -> Result<(), Error> {
        self.raw.detach()
    }

    /// Another handle to the same connection, for another thread (the socket is also `Sync`,
    /// so an `Arc` works as well). The connection closes when the last handle is dropped.
    ///
    /// The rule for several handles: reads go to one reader at a time (a port, a future or a
    /// mailbox, through any handle; another gets `"BUSY"`), so one thread reads while others
    /// write; writes from several handles go out whole, each after the writes queued before
    /// it, never interleaved inside one write. Options, deadlines, shutdowns and `abort`
    /// belong to the connection: through any handle, they apply to all. Mailbox events
    /// carry the same [`id`](Stream::id) for every handle.
    ///
    /// # Errors
    ///
    /// `"SHUTDOWN"` when the I/O task stopped.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use iotask::tcp;
    /// # let iotask = iotask::IoTask::spawn()?;
    /// # let server = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// # let sock = tcp::connect(server.local_addr()?, &iotask)?;
    /// # let (mut peer, _) = server.accept()?;
    /// let writer = sock.try_clone()?;
    /// std::thread::spawn(move || writer.write(b"from another thread".to_vec()));
    /// std::io::Write::write_all(&mut peer, b"hi")?;
    /// assert_eq!(sock.read(Duration::from_secs(5))?, b"hi");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_clone(&self) -> Result<Stream<F>, Error> {
        Ok(Stream::from_raw(self.raw.try_clone()?))
    }

    /// Takes the socket out of the I/O task: unregistered, open, in blocking mode, for
    /// `std::net::TcpStream::from` or `UnixStream::from` (the families' `into_std`).
    pub(crate) fn into_socket(self) -> Result<socket2::Socket, IntoStdError<F>> {
        match self.raw.release() {
            Ok(socket) => {
                socket.set_nonblocking(false).map_err(|e| IntoStdError {
                    inner: Box::new((Error::from(e), None)),
                })?;
                Ok(socket)
            }
            Err(failed) => {
                let (error, raw) = *failed;
                Err(IntoStdError {
                    inner: Box::new((error, raw.map(Stream::from_raw))),
                })
            }
        }
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
    /// Writes queued before this call are flushed first (this waits for them), never cut
    /// short. Callable from any thread that holds the socket.
    ///
    /// # Errors
    ///
    /// As the writes queued before it.
    pub fn shutdown_write(&self) -> Result<(), Error> {
        self.shutdown_write_future().get()
    }

    /// Shuts down the writing half after the writes queued before it, without waiting: the
    /// future resolves once the peer has been sent the end of the stream. For an actor that
    /// passes a half-close on and must not block on a slow peer.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::io::Read;
    /// # use iotask::tcp;
    /// # let iotask = iotask::IoTask::spawn()?;
    /// # let server = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// # let sock = tcp::connect(server.local_addr()?, &iotask)?;
    /// # let (mut peer, _) = server.accept()?;
    /// drop(sock.write_future(b"last words".to_vec()));
    /// drop(sock.shutdown_write_future()); // returns at once
    /// let mut got = Vec::new();
    /// peer.read_to_end(&mut got)?;
    /// assert_eq!(got, b"last words");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shutdown_write_future(&self) -> WriteFuture {
        match self.raw.shutdown_write() {
            Ok(seq) => WriteFuture::queued(self.raw.writes().clone(), seq),
            Err(e) => WriteFuture::ready(Err(e)),
        }
    }

    /// Sets the write queue's watermarks (Erlang's `high_watermark` and `low_watermark`):
    /// once more than `high` bytes are queued, the mailbox this socket is attached to gets
    /// [`Event::Drained`](crate::Event::Drained) when no more than `low` are. An actor that
    /// copies from one socket to another stops reading the first when the second passes its
    /// high mark, and reads again on `Drained`, so its memory stays bounded whatever the two
    /// peers' speeds. (A blocking [`write`](Stream::write) already waits until the kernel
    /// has its bytes.) `high` 0 turns the watermarks off, the default.
    ///
    /// # Errors
    ///
    /// `"EINVAL"` when `low` is above `high`.
    ///
    /// # Examples
    ///
    /// ```
    /// # use iotask::tcp;
    /// # let iotask = iotask::IoTask::spawn()?;
    /// # let server = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// # let sock = tcp::connect(server.local_addr()?, &iotask)?;
    /// sock.set_watermarks(1 << 20, 256 << 10)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_watermarks(&self, high: usize, low: usize) -> Result<(), Error> {
        if low > high {
            return Err(Error::new(
                "EINVAL",
                "the low watermark is above the high one",
                std::io::ErrorKind::InvalidInput,
            ));
        }
        self.raw.set_watermarks(high, low);
        Ok(())
    }

    /// Fails the socket's writes with `"STALLED"` when queued bytes have waited longer than
    /// `limit` to reach the kernel (OCaml Async's `buffer_age_limit`), so that a peer that
    /// stopped reading cannot hold memory for ever; `None` (the default) lets them wait.
    /// Applies to writes queued from now on; a stalled socket's later writes fail too.
    pub fn set_write_age_limit(&self, limit: Option<Duration>) {
        self.raw.set_write_age_limit(limit);
    }

    /// Sets the socket's deadline (Inko's `deadline=`): from then on, reads fail with
    /// `"ETIMEDOUT"` once it passed ([`read`](Stream::read), [`read_future`](Stream::read_future),
    /// [`read_exact`](Stream::read_exact), the buffered socket's reads), and writes still
    /// queued at that instant fail with `"ETIMEDOUT"`, saying how many of their bytes went out
    /// ([`Error::bytes_written`]); a write made after it passed is refused whole. A write cut
    /// short leaves the stream cut short: every later write fails with the same error. The
    /// deadline applies until [`reset_deadline`](Stream::reset_deadline) or another
    /// `set_deadline`. A socket without a deadline costs the I/O task nothing.
    ///
    /// # Errors
    ///
    /// `"SHUTDOWN"` when the I/O task stopped.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use iotask::tcp;
    /// # let iotask = iotask::IoTask::spawn()?;
    /// # let server = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// # let sock = tcp::connect(server.local_addr()?, &iotask)?;
    /// // The peer never reads: 64 MiB cannot all go out.
    /// sock.timeout_after(Duration::from_millis(100))?;
    /// let e = sock.write(vec![0u8; 64 << 20]).unwrap_err();
    /// assert!(e.is_timeout());
    /// assert!(e.bytes_written().unwrap() < 64 << 20);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_deadline(&self, deadline: std::time::Instant) -> Result<(), Error> {
        self.raw.set_deadline(Some(deadline))
    }

    /// Sets the deadline `timeout` from now (see [`set_deadline`](Stream::set_deadline)).
    ///
    /// # Errors
    ///
    /// As [`set_deadline`](Stream::set_deadline).
    pub fn timeout_after(&self, timeout: Duration) -> Result<(), Error> {
        self.raw.set_deadline(deadline_after(timeout))
    }

    /// Removes the deadline.
    ///
    /// # Errors
    ///
    /// `"SHUTDOWN"` when the I/O task stopped.
    pub fn reset_deadline(&self) -> Result<(), Error> {
        self.raw.set_deadline(None)
    }

    /// The socket's deadline, if one is set.
    pub fn deadline(&self) -> Option<std::time::Instant> {
        self.raw.deadline()
    }

    /// Shuts down the reading half: the reader (a port, a future, a mailbox) gets the end of
    /// the stream (`"EOF"`) after what it was already given, and a thread blocked on it wakes;
    /// bytes still in the kernel are discarded, and the kernel may answer the peer's later
    /// sends with a reset (Linux does once unread bytes wait). Callable from any thread that
    /// holds the socket.
    ///
    /// # Errors
    ///
    /// `"CLOSED"` or `"SHUTDOWN"` when the socket or the I/O task is gone.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use iotask::tcp;
    /// # let iotask = iotask::IoTask::spawn()?;
    /// # let server = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let sock = std::sync::Arc::new(tcp::connect(server.local_addr()?, &iotask)?);
    /// let port = sock.read_start()?;
    /// let reader = std::thread::spawn(move || port.recv());
    /// sock.shutdown_read()?; // from another thread: the blocked reader wakes
    /// assert!(reader.join().unwrap().unwrap_err().is_eof());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shutdown_read(&self) -> Result<(), Error> {
        self.raw.shutdown_read()
    }

    /// Shuts down both halves: the writing half after the queued writes (as
    /// [`shutdown_write`](Stream::shutdown_write)), then the reading half (as
    /// [`shutdown_read`](Stream::shutdown_read)).
    ///
    /// # Errors
    ///
    /// As the writes queued before it; the reading half is shut down even then.
    pub fn shutdown(&self) -> Result<(), Error> {
        let written = self.shutdown_write();
        let read = self.shutdown_read();
        written.and(read)
    }

    /// Resets the connection now (TCP sends a reset; a Unix-domain socket is shut down):
    /// queued writes are discarded and fail with `"ABORTED"`, as does the reader, and every
    /// later operation fails. Callable from any thread that holds the socket.
    ///
    /// # Errors
    ///
    /// `"CLOSED"` or `"SHUTDOWN"` when the socket or the I/O task is gone already.
    pub fn abort(&self) -> Result<(), Error> {
        self.raw.abort()
    }

    /// Reads exactly `n` bytes, waiting at most `timeout` in all.
    ///
    /// Bytes beyond the `n`th that came in the same chunk stay for the next read. Nothing is
    /// lost on failure either: what was read before a timeout or the end of the stream is
    /// put back in front of the socket's next read.
    ///
    /// # Errors
    ///
    /// `"ETIMEDOUT"` when the bytes did not all come in time, `"EOF"` when the stream ended
    /// first, `"BUSY"` while another reader receives this socket's reads, or the socket's
    /// read error.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use iotask::tcp;
    /// # let iotask = iotask::IoTask::spawn()?;
    /// # let server = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// # let sock = tcp::connect(server.local_addr()?, &iotask)?;
    /// # let (mut peer, _) = server.accept()?;
    /// std::io::Write::write_all(&mut peer, b"headerbody")?;
    /// assert_eq!(sock.read_exact(6, Duration::from_secs(5))?, b"header");
    /// assert_eq!(sock.read_exact(4, Duration::from_secs(5))?, b"body");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read_exact(&self, n: usize, timeout: Duration) -> Result<Vec<u8>, Error> {
        self.read_until(timeout, |got, _| got.len() >= n, Some(n))
    }

    /// Reads until the peer closes its side, at most `limit` bytes, waiting at most
    /// `timeout` in all.
    ///
    /// # Errors
    ///
    /// `"ETIMEDOUT"` when the stream did not end in time and `"EMSGSIZE"` when more than
    /// `limit` bytes came (what was read is then put back in front of the next read, so
    /// nothing is lost); `"BUSY"` while another reader receives this socket's reads; the
    /// socket's read error.
    pub fn read_to_end(&self, limit: usize, timeout: Duration) -> Result<Vec<u8>, Error> {
        self.read_until(timeout, |got, ended| ended || got.len() > limit, None)
            .and_then(|got| {
                if got.len() > limit {
                    self.raw.unread(got);
                    Err(Error::new(
                        "EMSGSIZE",
                        "the stream is longer than the limit",
                        std::io::ErrorKind::InvalidData,
                    ))
                } else {
                    Ok(got)
                }
            })
    }

    /// Reads through a port until `done(bytes, ended)`; then takes back what the port still
    /// holds and, when `exact` is given, puts back the bytes past it. On an error other than
    /// the end of the stream (`done` decides whether that end is one), puts everything back.
    fn read_until(
        &self,
        timeout: Duration,
        done: impl Fn(&[u8], bool) -> bool,
        exact: Option<usize>,
    ) -> Result<Vec<u8>, Error> {
        let deadline = match (deadline_after(timeout), self.raw.deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let port = self.read_start()?;
        let mut got = Vec::new();
        let outcome = loop {
            if done(&got, false) {
                break Ok(());
            }
            let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
            let next = match left {
                Some(left) => port.recv_timeout(left),
                None => port.recv(),
            };
            match next {
                Ok(chunk) => got.extend_from_slice(&chunk),
                Err(e) if e.is_eof() && done(&got, true) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        // Whatever the port still holds goes back to the socket, ahead of newer bytes.
        let stopped = self.read_stop(port);
        match outcome {
            Ok(()) => {
                if let Some(n) = exact.filter(|&n| got.len() > n) {
                    self.raw.unread(got.split_off(n));
                }
                stopped.map(|()| got)
            }
            Err(e) => {
                if !got.is_empty() {
                    self.raw.unread(got);
                }
                Err(e)
            }
        }
    }

    /// `SO_SNDBUF`: the kernel's send buffer for this socket, in bytes.
    ///
    /// # Errors
    ///
    /// As `getsockopt(2)`.
    pub fn send_buffer_size(&self) -> std::io::Result<usize> {
        self.raw.socket().send_buffer_size()
    }

    /// Sets `SO_SNDBUF` (the kernel may round or double it).
    ///
    /// # Errors
    ///
    /// As `setsockopt(2)`.
    pub fn set_send_buffer_size(&self, bytes: usize) -> std::io::Result<()> {
        self.raw.socket().set_send_buffer_size(bytes)
    }

    /// `SO_RCVBUF`: the kernel's receive buffer for this socket, in bytes.
    ///
    /// # Errors
    ///
    /// As `getsockopt(2)`.
    pub fn recv_buffer_size(&self) -> std::io::Result<usize> {
        self.raw.socket().recv_buffer_size()
    }

    /// Sets `SO_RCVBUF` (the kernel may round or double it).
    ///
    /// # Errors
    ///
    /// As `setsockopt(2)`.
    pub fn set_recv_buffer_size(&self, bytes: usize) -> std::io::Result<()> {
        self.raw.socket().set_recv_buffer_size(bytes)
    }
}

/// The socket's descriptor, for options and queries iotask has no method for (`getsockopt`,
/// `setsockopt`, `fstat`). Only the I/O task may read, write, close or change the
/// blocking mode of it: doing so would break the loop's invariants.
#[cfg(unix)]
impl<F: Family> std::os::fd::AsFd for Stream<F> {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.raw.socket().as_fd()
    }
}

/// As [`AsFd`](std::os::fd::AsFd): the descriptor is the I/O task's to read and write.
#[cfg(unix)]
impl<F: Family> std::os::fd::AsRawFd for Stream<F> {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.raw.socket().as_raw_fd()
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

/// Why a socket could not be taken out of its I/O task, with the socket given back.
pub struct IntoStdError<F: Family> {
    inner: Box<(Error, Option<Stream<F>>)>,
}

impl<F: Family> IntoStdError<F> {
    /// Why: `"BUSY"` while other handles exist, a reader is attached, or bytes wait to be
    /// read or written (handing the socket out would lose or reorder them); `"CLOSED"` or
    /// `"SHUTDOWN"` when it is gone.
    pub fn error(&self) -> &Error {
        &self.inner.0
    }

    /// The socket, still served by its I/O task (`None` only when it had already been let
    /// go and putting it into blocking mode failed).
    pub fn into_inner(self) -> Option<Stream<F>> {
        self.inner.1
    }
}

impl<F: Family> fmt::Debug for IntoStdError<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntoStdError")
            .field("error", &self.inner.0)
            .finish_non_exhaustive()
    }
}

impl<F: Family> fmt::Display for IntoStdError<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot take the socket out of its i/o task: {}",
            self.inner.0
        )
    }
}

impl<F: Family> std::error::Error for IntoStdError<F> {}

impl<F: Family> fmt::Debug for NewConnection<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewConnection")
            .field("family", &F::NAME)
            .field("peer", &self.peer_addr().ok())
            .finish()
    }
}
