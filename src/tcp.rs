//! TCP through the I/O task: servers with [`listen`] (or [`bind`] and a way to serve),
//! clients with [`connect`], and [`TcpSocket`]s that read into ports and write through
//! futures.
//!
//! The shape is that of Rust's early `std::net::tcp`: a server is a `listen` call that runs
//! two callbacks, a connection is read through a port from `read_start` and written
//! through `write_future`, and [`socket_buf`] wraps a socket as a buffered
//! `Read + BufRead + Write` stream. Everything a stream socket does is written once in
//! [`stream`] and [`server`]; this module adds what is TCP's
//! own: internet addresses, binding (`SO_REUSEADDR`, `SO_REUSEPORT`, `IPV6_V6ONLY`),
//! `TCP_NODELAY`, and the names the seed gave the types.

mod addr;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};

pub use addr::ToListenAddrs;

pub use crate::error::{ConnectError, ListenError};
#[doc(no_inline)]
pub use crate::server::{
    CloseMode, HandlerErrorFn, Keepalive, ListenOptions, OnHandlerError, PoolListener,
};
#[doc(no_inline)]
pub use crate::stream::{ReadFuture, ReadPort, WriteFuture};

use crate::error::Error;
use crate::io_task::command::SetupFn;
use crate::io_task::sink::StreamKind;
use crate::io_task::{handle, sys};
use crate::mailbox::{MailboxSender, SocketId};
use crate::pool::IoPool;
use crate::stream::{self, Family, Stream};
use crate::{IoTask, server};

/// The TCP family: internet stream sockets, IPv4 and IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tcp;

impl stream::sealed::Sealed for Tcp {
    const UNIX: bool = false;
}

impl Family for Tcp {
    type Addr = SocketAddr;
    const NAME: &'static str = "tcp";

    fn socket_addr(socket: &Socket, peer: bool) -> std::io::Result<SocketAddr> {
        let addr = if peer {
            socket.peer_addr()?
        } else {
            socket.local_addr()?
        };
        as_inet(&addr)
    }
}

/// A connected TCP socket served by an I/O task (see [`Stream`] for every method).
pub type TcpSocket = Stream<Tcp>;
/// An incoming TCP connection, handed to `new_connect`.
pub type NewConnection = stream::NewConnection<Tcp>;
/// A TCP socket as a buffered `Read + BufRead + Write` stream.
pub type TcpSocketBuf = stream::SocketBuf<Tcp>;
/// A running TCP listener's handle.
pub type KillChan = server::KillChan<Tcp>;
/// A running TCP listener that does not need the caller's thread.
pub type Server = server::Server<Tcp>;
/// A bound TCP listener, not yet serving.
pub type Listener = server::Listener<Tcp>;
/// A TCP connect in progress.
pub type ConnectFuture = stream::ConnectFuture<Tcp>;
/// The crate's error type, under the name it had when iotask spoke only TCP.
pub type TcpError = Error;

impl Stream<Tcp> {
    /// Serves a connected `std` stream through `iotask` (it is made non-blocking). Its
    /// options are left as they are (`TCP_NODELAY` is not set). Reading or writing the
    /// descriptor by other means afterwards is not supported: only the I/O task may.
    ///
    /// # Errors
    ///
    /// `"SHUTDOWN"` when the I/O task stopped; as `fcntl(2)` when the stream cannot be made
    /// non-blocking.
    ///
    /// # Examples
    ///
    /// ```
    /// use iotask::tcp::TcpSocket;
    ///
    /// let iotask = iotask::IoTask::spawn()?;
    /// let server = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let sock = TcpSocket::from_std(std::net::TcpStream::connect(server.local_addr()?)?, &iotask)?;
    /// assert_eq!(sock.peer_addr()?, server.local_addr()?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_std(stream: std::net::TcpStream, iotask: &IoTask) -> Result<TcpSocket, Error> {
        stream.set_nonblocking(true)?;
        Ok(Stream::from_raw(handle::adopt(
            iotask.shared(),
            Socket::from(stream),
        )?))
    }

    /// Sets or clears `TCP_NODELAY`.
    ///
    /// # Errors
    ///
    /// As `setsockopt(2)`.
    pub fn set_nodelay(&self, nodelay: bool) -> std::io::Result<()> {
        self.raw().socket().set_tcp_nodelay(nodelay)
    }

    /// Whether `SO_KEEPALIVE` is on.
    ///
    /// # Errors
    ///
    /// As `getsockopt(2)`.
    pub fn keepalive(&self) -> std::io::Result<bool> {
        self.raw().socket().keepalive()
    }

    /// Turns TCP keepalive on with these timings, or off with `None`: a peer that vanished
    /// then ends the connection with `"ETIMEDOUT"` instead of leaving it open for ever.
    ///
    /// # Errors
    ///
    /// As `setsockopt(2)`.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// use iotask::tcp::{self, Keepalive};
    /// # let iotask = iotask::IoTask::spawn()?;
    /// # let server = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let sock = tcp::connect(server.local_addr()?, &iotask)?;
    /// sock.set_keepalive(Some(Keepalive::new(Duration::from_secs(30)).retries(4)))?;
    /// assert!(sock.keepalive()?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_keepalive(&self, keepalive: Option<Keepalive>) -> std::io::Result<()> {
        let socket = self.raw().socket();
        match keepalive {
            Some(k) => socket.set_tcp_keepalive(&k.to_socket2()),
            None => socket.set_keepalive(false),
        }
    }

    /// `SO_LINGER`, in whole seconds (`None`: off, the default).
    ///
    /// # Errors
    ///
    /// As `getsockopt(2)`.
    pub fn linger(&self) -> std::io::Result<Option<Duration>> {
        self.raw().socket().linger()
    }

    /// Sets `SO_LINGER`. `Some(Duration::ZERO)` makes dropping the socket reset the
    /// connection at once, discarding queued writes, instead of iotask's graceful close
    /// (flush, then wait for the peer); a longer linger bounds how long the kernel keeps
    /// sending after the descriptor is closed.
    ///
    /// # Errors
    ///
    /// As `setsockopt(2)`.
    pub fn set_linger(&self, linger: Option<Duration>) -> std::io::Result<()> {
        self.raw().socket().set_linger(linger)?;
        self.raw()
            .set_reset_on_close(linger == Some(Duration::ZERO));
        Ok(())
    }

    /// The time-to-live of outgoing packets: `IP_TTL`, or the unicast hop limit on IPv6.
    ///
    /// # Errors
    ///
    /// As `getsockopt(2)`.
    pub fn ttl(&self) -> std::io::Result<u32> {
        let socket = self.raw().socket();
        if self.local_addr()?.is_ipv6() {
            socket.unicast_hops_v6()
        } else {
            socket.ttl_v4()
        }
    }

    /// Sets the time-to-live of outgoing packets (the unicast hop limit on IPv6).
    ///
    /// # Errors
    ///
    /// As `setsockopt(2)`: `"EINVAL"` outside 1 to 255.
    pub fn set_ttl(&self, ttl: u32) -> std::io::Result<()> {
        let socket = self.raw().socket();
        if self.local_addr()?.is_ipv6() {
            socket.set_unicast_hops_v6(ttl)
        } else {
            socket.set_ttl_v4(ttl)
        }
    }

    /// Takes the socket out of its I/O task, as a blocking `std` stream with its options as
    /// they are. Refused, with the socket given back, while other handles
    /// ([`try_clone`](Stream::try_clone)) exist, a reader is attached, or bytes wait to be
    /// read or written: handing it out then would lose or reorder them.
    ///
    /// # Errors
    ///
    /// [`IntoStdError`](stream::IntoStdError): `"BUSY"` as above, `"CLOSED"` or
    /// `"SHUTDOWN"` when the socket or the task is gone.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::io::{Read, Write};
    /// # use iotask::tcp;
    /// # let iotask = iotask::IoTask::spawn()?;
    /// # let server = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let sock = tcp::connect(server.local_addr()?, &iotask)?;
    /// sock.write(b"through iotask".to_vec())?;
    /// let mut std_stream = sock.into_std()?;
    /// std_stream.write_all(b", then std")?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn into_std(self) -> Result<std::net::TcpStream, stream::IntoStdError<Tcp>> {
        self.into_socket().map(std::net::TcpStream::from)
    }

    /// Whether `TCP_NODELAY` is set (iotask sets it on every socket it accepts or connects,
    /// unless [`ListenOptions::nodelay`] says otherwise).
    ///
    /// # Errors
    ///
    /// As `getsockopt(2)`.
    pub fn nodelay(&self) -> std::io::Result<bool> {
        self.raw().socket().tcp_nodelay()
    }
}

impl server::Listener<Tcp> {
    /// The bound socket back out as a blocking `std` listener, not yet served (options as
    /// they were set).
    ///
    /// # Errors
    ///
    /// `Generic` named `"EINVAL"` for a listener bound on a pool (a socket per task); as
    /// `fcntl(2)`.
    pub fn into_std(self) -> Result<std::net::TcpListener, ListenError> {
        self.into_socket().map(std::net::TcpListener::from)
    }

    /// Serves a listener made elsewhere (a `std::net::TcpListener`, bound and listening,
    /// perhaps inherited from a parent process), made non-blocking here. Of `options`, what
    /// applies after binding does (limits, accepted sockets' options, handler errors); the
    /// binding options do not.
    ///
    /// # Errors
    ///
    /// As `fcntl(2)` and `getsockname(2)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use iotask::{server::ListenOptions, tcp};
    ///
    /// let iotask = iotask::IoTask::spawn()?;
    /// let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let listener = tcp::Listener::from_std(std_listener, &ListenOptions::new(), &iotask)?;
    /// let server = listener.spawn(|conn, _| drop(conn))?;
    /// server.stop()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_std(
        listener: std::net::TcpListener,
        options: &ListenOptions,
        iotask: &IoTask,
    ) -> Result<Listener, ListenError> {
        Listener::adopt(
            Socket::from(listener),
            iotask,
            options,
            accepted_setup(options),
        )
    }
}

/// Binds `addr` and puts the socket in listening mode on `iotask`, ready to be served
/// ([`Listener::serve`](server::Listener::serve), `spawn`, `into_mailbox`).
///
/// `SO_REUSEADDR` is set before `bind` (unless [`ListenOptions::reuse_address`] says
/// otherwise), so a port in `TIME_WAIT` can be reused at once; a port another socket
/// listens on still fails with `AddressInUse`. When `addr` resolves to several addresses,
/// each is tried in turn and the first that binds is used.
///
/// # Errors
///
/// `AddressInUse` (`EADDRINUSE`), `AccessDenied` (`EACCES`, a privileged port), or
/// `Generic` for any other failure (`"RESOLVE"` for a name that does not resolve).
///
/// # Examples
///
/// ```
/// use iotask::{server::ListenOptions, tcp};
///
/// let iotask = iotask::IoTask::spawn()?;
/// let listener = tcp::bind("127.0.0.1:0", &ListenOptions::new(), &iotask)?;
/// let port = listener.local_addr().port();
/// assert_ne!(port, 0);
/// assert_eq!(
///     tcp::bind(("127.0.0.1", port), &ListenOptions::new(), &iotask).unwrap_err(),
///     tcp::ListenError::AddressInUse,
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn bind<A: ToListenAddrs>(
    addr: A,
    options: &ListenOptions,
    iotask: &IoTask,
) -> Result<Listener, ListenError> {
    bind_tasks(addr, options, std::slice::from_ref(iotask))
}

/// [`bind`] on every I/O task of a pool: by default each task gets its own listening socket
/// on the same address (`SO_REUSEPORT`) and the kernel spreads incoming connections over
/// them; [`ListenOptions::pool_listener`] can make the tasks share one socket instead
/// ([`PoolListener`] compares the two). Each connection lives on the task that accepted it;
/// `max_connections` counts the connections of all tasks together, and pausing, dropping
/// incoming connections and closing apply to every task.
///
/// # Errors
///
/// As [`bind`].
pub fn bind_pool<A: ToListenAddrs>(
    addr: A,
    options: &ListenOptions,
    pool: &IoPool,
) -> Result<Listener, ListenError> {
    bind_tasks(addr, options, pool.tasks())
}

/// Binds `addr`, listens, and runs a server through two callbacks on the calling thread,
/// until killed: the seed's `listen`, which is
/// `bind(addr, &ListenOptions::new().backlog(backlog), iotask)?.serve(on_establish, new_connect)`.
///
/// Once bound, `on_establish(kill)` runs once. Then, for each incoming connection,
/// `new_connect(new_conn, &kill)` runs on this thread. The I/O task accepts connections
/// and sets `TCP_NODELAY` on them; `new_conn` may be passed to any thread and turned into a
/// [`TcpSocket`] with [`accept`] later, or dropped to close the connection.
///
/// # Errors
///
/// As [`bind`], and as [`Listener::serve`](server::Listener::serve): an error sent through
/// the kill channel, `"PANIC"` when a callback panicked, `"SHUTDOWN"` when the I/O task
/// stops.
///
/// # Panics
///
/// Never: panics in the callbacks are caught and reported as errors.
///
/// # Examples
///
/// ```
/// use iotask::tcp;
///
/// let iotask = iotask::IoTask::spawn()?;
/// let server = std::thread::spawn({
///     let iotask = iotask.clone();
///     move || {
///         tcp::listen(
///             "127.0.0.1:0",
///             128,
///             &iotask,
///             |kill| {
///                 // Connect once to the bound port, then stop the server.
///                 let addr = kill.local_addr();
///                 std::thread::spawn(move || std::net::TcpStream::connect(addr));
///             },
///             |new_conn, kill| {
///                 let sock = tcp::accept(new_conn).unwrap();
///                 sock.write(b"bye".to_vec()).unwrap();
///                 kill.send(None).unwrap();
///             },
///         )
///     }
/// });
/// assert_eq!(server.join().unwrap(), Ok(()));
/// # std::io::Result::Ok(())
/// ```
pub fn listen<A, E, C>(
    addr: A,
    backlog: u32,
    iotask: &IoTask,
    on_establish: E,
    new_connect: C,
) -> Result<(), ListenError>
where
    A: ToListenAddrs,
    E: FnOnce(KillChan),
    C: FnMut(NewConnection, &KillChan),
{
    bind(addr, &ListenOptions::new().backlog(backlog), iotask)?.serve(on_establish, new_connect)
}

/// [`listen`] with [`ListenOptions`].
///
/// # Errors
///
/// As [`listen`].
#[deprecated(
    since = "0.2.0",
    note = "use `tcp::bind(addr, options, iotask)?.serve(on_establish, new_connect)`"
)]
pub fn listen_with<A, E, C>(
    addr: A,
    options: &ListenOptions,
    iotask: &IoTask,
    on_establish: E,
    new_connect: C,
) -> Result<(), ListenError>
where
    A: ToListenAddrs,
    E: FnOnce(KillChan),
    C: FnMut(NewConnection, &KillChan),
{
    bind(addr, options, iotask)?.serve(on_establish, new_connect)
}

/// [`listen`] on every I/O task of a pool (see [`bind_pool`]).
///
/// # Errors
///
/// As [`listen`].
#[deprecated(
    since = "0.2.0",
    note = "use `tcp::bind_pool(addr, options, pool)?.serve(on_establish, new_connect)`"
)]
pub fn listen_on_pool<A, E, C>(
    addr: A,
    options: &ListenOptions,
    pool: &IoPool,
    on_establish: E,
    new_connect: C,
) -> Result<(), ListenError>
where
    A: ToListenAddrs,
    E: FnOnce(KillChan),
    C: FnMut(NewConnection, &KillChan),
{
    bind_pool(addr, options, pool)?.serve(on_establish, new_connect)
}

/// Listens on `addr` and hands every connection straight to an actor's mailbox (see
/// [`Listener::into_mailbox`](server::Listener::into_mailbox)).
///
/// # Errors
///
/// As [`bind`].
#[deprecated(
    since = "0.2.0",
    note = "use `tcp::bind(addr, options, iotask)?.into_mailbox(mailbox)`"
)]
pub fn listen_into<A, M>(
    addr: A,
    options: &ListenOptions,
    iotask: &IoTask,
    mailbox: &impl AsRef<MailboxSender<M>>,
) -> Result<Server, ListenError>
where
    A: ToListenAddrs,
    M: Send + 'static,
{
    bind(addr, options, iotask)?.into_mailbox(mailbox)
}

/// [`listen_into`] on every I/O task of a pool, task `i` handing its connections to
/// `mailboxes[i % mailboxes.len()]` (see
/// [`Listener::into_mailboxes`](server::Listener::into_mailboxes)).
///
/// # Errors
///
/// As [`bind`]; `Generic` named `"EINVAL"` when `mailboxes` is empty.
#[deprecated(
    since = "0.2.0",
    note = "use `tcp::bind_pool(addr, options, pool)?.into_mailboxes(mailboxes)`"
)]
pub fn listen_on_pool_into<A, M, S>(
    addr: A,
    options: &ListenOptions,
    pool: &IoPool,
    mailboxes: &[S],
) -> Result<Server, ListenError>
where
    A: ToListenAddrs,
    M: Send + 'static,
    S: AsRef<MailboxSender<M>>,
{
    bind_pool(addr, options, pool)?.into_mailboxes(mailboxes)
}

/// Binds `addr` and serves it on a new thread (see
/// [`Listener::spawn`](server::Listener::spawn)).
///
/// # Errors
///
/// As [`bind`]; `Generic` when the thread cannot be spawned.
#[deprecated(
    since = "0.2.0",
    note = "use `tcp::bind(addr, options, iotask)?.spawn(new_connect)`"
)]
pub fn spawn_listen<A, C>(
    addr: A,
    options: &ListenOptions,
    iotask: &IoTask,
    new_connect: C,
) -> Result<Server, ListenError>
where
    A: ToListenAddrs,
    C: FnMut(NewConnection, &KillChan) + Send + 'static,
{
    bind(addr, options, iotask)?.spawn(new_connect)
}

/// Turns an incoming connection into a [`TcpSocket`]; callable on any thread.
///
/// # Errors
///
/// `"SHUTDOWN"` when the I/O task stopped since the connection arrived (it is closed).
pub fn accept(new_conn: NewConnection) -> Result<TcpSocket, TcpError> {
    new_conn.accept()
}

/// Connects to `addr`, blocking the calling thread until the connection is established.
///
/// The I/O task runs the connect without blocking (the calling thread only waits), so
/// [`IoTask::shutdown`] ends it with `"SHUTDOWN"`; [`connect_future`] does the same without
/// blocking at all. Each address `addr` resolves to is tried in turn (so
/// `"localhost:2020"` tries `::1` and `127.0.0.1`). The socket gets `TCP_NODELAY`. Without
/// a timeout, the kernel's (about two minutes on Linux) applies; see [`connect_timeout`].
/// Resolving a host name happens on the calling thread.
///
/// # Errors
///
/// `ConnectionRefused` when nobody listens; `Generic` for everything else, named after the
/// kernel's error (`"ENETUNREACH"`, `"ETIMEDOUT"`), `"RESOLVE"` when the name does not
/// resolve, `"SHUTDOWN"` when the I/O task stopped.
///
/// # Examples
///
/// ```
/// use iotask::tcp::{self, ConnectError};
///
/// let iotask = iotask::IoTask::spawn()?;
/// // Bind a port, then free it, so nobody listens there.
/// let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
/// assert_eq!(tcp::connect(addr, &iotask).unwrap_err(), ConnectError::ConnectionRefused);
/// # std::io::Result::Ok(())
/// ```
pub fn connect<A: std::net::ToSocketAddrs>(
    addr: A,
    iotask: &IoTask,
) -> Result<TcpSocket, ConnectError> {
    start_connect(addr, iotask, None)?.get()
}

/// Like [`connect`], but gives up on each address after `timeout` (`"ETIMEDOUT"`).
///
/// # Errors
///
/// As [`connect`].
pub fn connect_timeout<A: std::net::ToSocketAddrs>(
    addr: A,
    timeout: Duration,
    iotask: &IoTask,
) -> Result<TcpSocket, ConnectError> {
    start_connect(addr, iotask, Some(timeout))?.get()
}

/// Starts connecting to `addr` and returns at once: the future (a `std::future::Future`,
/// or blocking through `get`) resolves with the socket. For async code, which must not
/// block its thread; `addr` should then be an IP address, as resolving a name blocks.
///
/// # Errors
///
/// As [`connect`], through the future (`"RESOLVE"` at once).
///
/// # Examples
///
/// ```
/// use iotask::tcp;
///
/// let iotask = iotask::IoTask::spawn()?;
/// let server = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let pending = tcp::connect_future(server.local_addr()?, &iotask);
/// let sock = pending.get()?;
/// assert_eq!(sock.peer_addr()?, server.local_addr()?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn connect_future<A: std::net::ToSocketAddrs>(addr: A, iotask: &IoTask) -> ConnectFuture {
    match start_connect(addr, iotask, None) {
        Ok(future) => future,
        Err(e) => stream::ConnectFuture::failed(e),
    }
}

fn start_connect<A: std::net::ToSocketAddrs>(
    addr: A,
    iotask: &IoTask,
    timeout: Option<Duration>,
) -> Result<ConnectFuture, Error> {
    let addrs: Vec<SockAddr> = addr
        .to_socket_addrs()
        .map_err(resolve_error)?
        .map(SockAddr::from)
        .collect();
    let rx = handle::connect(iotask.shared(), addrs, Some(Arc::new(set_nodelay)), timeout);
    Ok(stream::ConnectFuture::new(rx))
}

/// Starts connecting to `addr` from the I/O task and returns at once with the id the
/// socket will have: the mailbox receives [`Event::Connected`](crate::Event::Connected)
/// with that id and the socket (already attached: its data follows), or the failure. For
/// an actor, which must not block: `addr` should then be an IP address, as resolving a name
/// blocks. Each address `addr` resolves to is tried in turn, as [`connect`] does.
///
/// # Errors
///
/// `"RESOLVE"` when the name does not resolve, `"SHUTDOWN"` when the I/O task stopped;
/// everything else comes through the event.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use iotask::{Event, Mailbox, tcp};
///
/// let iotask = iotask::IoTask::spawn()?;
/// let server = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let mut mailbox: Mailbox = Mailbox::new();
/// let id = tcp::connect_into(server.local_addr()?, &iotask, &mailbox)?;
/// match mailbox.recv_timeout(Duration::from_secs(5)) {
///     Some(Event::Connected { socket, result }) => {
///         assert_eq!(socket, id);
///         assert_eq!(result?.id(), id);
///     }
///     other => panic!("expected the connect's outcome, got {other:?}"),
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn connect_into<A: std::net::ToSocketAddrs, M: Send + 'static>(
    addr: A,
    iotask: &IoTask,
    mailbox: &impl AsRef<MailboxSender<M>>,
) -> Result<SocketId, TcpError> {
    let addrs: Vec<SockAddr> = addr
        .to_socket_addrs()
        .map_err(resolve_error)?
        .map(SockAddr::from)
        .collect();
    let sender = mailbox.as_ref();
    let id = handle::connect_into(
        iotask.shared(),
        addrs,
        Some(Arc::new(set_nodelay)),
        None,
        sender.inbox(),
        sender.window(),
        StreamKind::Inet,
    )?;
    Ok(SocketId(id))
}

/// Wraps a socket as a buffered reader and writer.
pub fn socket_buf(sock: TcpSocket) -> TcpSocketBuf {
    TcpSocketBuf::new(sock)
}

/// The TCP options of every accepted socket: `TCP_NODELAY` unless told otherwise, and
/// keepalive when asked for.
fn accepted_setup(options: &ListenOptions) -> Option<SetupFn> {
    let (nodelay, keepalive) = (options.nodelay, options.keepalive);
    if !nodelay && keepalive.is_none() {
        return None;
    }
    Some(Arc::new(move |socket: &Socket| {
        let mut result = Ok(());
        if nodelay {
            result = result.and(set_nodelay(socket));
        }
        if let Some(keepalive) = keepalive {
            result = result.and(socket.set_tcp_keepalive(&keepalive.to_socket2()));
        }
        result
    }))
}

/// `TCP_NODELAY`, set on every connected socket and (unless told otherwise) every accepted
/// one: iotask already gathers writes, so Nagle's delay would only add latency.
fn set_nodelay(socket: &Socket) -> std::io::Result<()> {
    socket.set_tcp_nodelay(true)
}

fn bind_tasks<A: ToListenAddrs>(
    addr: A,
    options: &ListenOptions,
    tasks: &[IoTask],
) -> Result<Listener, ListenError> {
    let addrs = addr.to_listen_addrs().map_err(resolve_error)?;
    // Where `SO_REUSEPORT` does not spread connections, every task shares one socket.
    let shared = tasks.len() > 1
        && (options.pool_listener == PoolListener::Shared || !sys::reuse_port_spreads());
    let sockets = bind_all(&addrs, options, tasks.len(), shared)?;
    let local_addr = as_inet(&sockets[0].local_addr()?)?;
    let setup = accepted_setup(options);
    Ok(Listener::new(
        sockets,
        tasks.to_vec(),
        options,
        local_addr,
        shared,
        setup,
    ))
}

/// Creates `count` non-blocking listening sockets on the first address that binds: with
/// `shared`, descriptors of one socket; otherwise sockets of their own, bound with
/// `SO_REUSEPORT` to the port the first one got when there are several.
fn bind_all(
    addrs: &[SocketAddr],
    options: &ListenOptions,
    count: usize,
    shared: bool,
) -> Result<Vec<Socket>, ListenError> {
    let mut options = options.clone();
    if count > 1 && !shared {
        options.reuse_port = true;
    }
    let mut last = None;
    for &addr in addrs {
        match bind_one(addr, &options) {
            Ok(first) => {
                let bound = as_inet(&first.local_addr()?)?;
                let mut sockets = Vec::with_capacity(count);
                sockets.push(first);
                for _ in 1..count {
                    sockets.push(if shared {
                        sockets[0].try_clone()?
                    } else {
                        bind_one(bound, &options)?
                    });
                }
                return Ok(sockets);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => e.into(),
        None => no_address().into(),
    })
}

fn bind_one(addr: SocketAddr, options: &ListenOptions) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // flare's rule: reuse before bind, so a restarted server is not locked out of its port
    // by connections in TIME_WAIT.
    socket.set_reuse_address(options.reuse_address)?;
    if options.reuse_port {
        sys::set_reuse_port(&socket)?;
    }
    if let (true, Some(only_v6)) = (addr.is_ipv6(), options.only_v6) {
        socket.set_only_v6(only_v6)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(options.backlog).unwrap_or(i32::MAX))?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

pub(crate) fn as_inet(addr: &SockAddr) -> std::io::Result<SocketAddr> {
    addr.as_socket().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "not an internet address")
    })
}

fn resolve_error(e: std::io::Error) -> Error {
    Error::other("RESOLVE", e.to_string())
}

fn no_address() -> Error {
    Error::other("RESOLVE", "the address resolved to nothing")
}
