//! Unix-domain stream sockets through the I/O task: the same servers, ports, futures and
//! mailboxes as [`tcp`](crate::tcp), on filesystem paths (and, on Linux, abstract names).
//!
//! What is Unix-domain's own lives here: addresses ([`ToUnixAddr`]), binding (taking over a
//! stale socket file, the file's mode, removing it on close), and [`peer_cred`](Stream::peer_cred).
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use iotask::{server::ListenOptions, unix};
//!
//! let iotask = iotask::IoTask::spawn()?;
//! let path = std::env::temp_dir().join(format!("iotask-doc-{}.sock", std::process::id()));
//! let server = unix::bind(&path, &ListenOptions::new(), &iotask)?.spawn(|conn, _| {
//!     let sock = unix::accept(conn).unwrap();
//!     drop(sock.write_future(b"hello".to_vec()));
//! })?;
//! let client = unix::connect(&path, &iotask)?;
//! assert_eq!(client.read(Duration::from_secs(5))?, b"hello");
//! server.stop()?;
//! assert!(!path.exists(), "the listener removes its socket file");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};

pub use std::os::unix::net::SocketAddr;

use crate::error::{ConnectError, Error, ListenError};
use crate::io_task::handle;
use crate::io_task::sink::StreamKind;
use crate::io_task::sys;
use crate::mailbox::{MailboxSender, SocketId};
use crate::pool::IoPool;
use crate::server::ListenOptions;
use crate::stream::{self, Family, Stream};
use crate::{IoTask, server};

/// The Unix-domain stream family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unix;

impl stream::sealed::Sealed for Unix {
    const UNIX: bool = true;
}

impl Family for Unix {
    type Addr = SocketAddr;
    const NAME: &'static str = "unix";

    fn socket_addr(socket: &Socket, peer: bool) -> io::Result<SocketAddr> {
        sys::unix_socket_addr(socket, peer)
    }
}

/// A connected Unix-domain socket served by an I/O task (see [`Stream`] for every method).
pub type UnixSocket = Stream<Unix>;
/// An incoming Unix-domain connection, handed to `new_connect`.
pub type NewConnection = stream::NewConnection<Unix>;
/// A Unix-domain socket as a buffered `Read + BufRead + Write` stream.
pub type UnixSocketBuf = stream::SocketBuf<Unix>;
/// A running Unix-domain listener's handle.
pub type KillChan = server::KillChan<Unix>;
/// A running Unix-domain listener that does not need the caller's thread.
pub type Server = server::Server<Unix>;
/// A bound Unix-domain listener, not yet serving.
pub type Listener = server::Listener<Unix>;
/// A Unix-domain connect in progress.
pub type ConnectFuture = stream::ConnectFuture<Unix>;

/// The credentials of a Unix-domain socket's peer, recorded by the kernel when it connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// The peer's effective user id.
    pub uid: u32,
    /// The peer's effective group id.
    pub gid: u32,
    /// The peer's process id, where the platform reports it (Linux does; macOS and the BSDs
    /// do not through this call).
    pub pid: Option<i32>,
}

impl Stream<Unix> {
    /// Serves a connected `std` Unix-domain stream through `iotask` (it is made
    /// non-blocking). Reading or writing the descriptor by other means afterwards is not
    /// supported: only the I/O task may.
    ///
    /// # Errors
    ///
    /// `"SHUTDOWN"` when the I/O task stopped; as `fcntl(2)` when the stream cannot be made
    /// non-blocking.
    pub fn from_std(
        stream: std::os::unix::net::UnixStream,
        iotask: &IoTask,
    ) -> Result<UnixSocket, Error> {
        stream.set_nonblocking(true)?;
        Ok(Stream::from_raw(handle::adopt(
            iotask.shared(),
            Socket::from(stream),
        )?))
    }

    /// Takes the socket out of its I/O task, as a blocking `std` stream; see
    /// [`TcpSocket::into_std`](crate::tcp::TcpSocket::into_std) for when it is refused.
    ///
    /// # Errors
    ///
    /// As [`TcpSocket::into_std`](crate::tcp::TcpSocket::into_std).
    pub fn into_std(self) -> Result<std::os::unix::net::UnixStream, stream::IntoStdError<Unix>> {
        self.into_socket().map(std::os::unix::net::UnixStream::from)
    }

    /// The credentials of the process at the other end, as the kernel recorded them when
    /// the connection was made (`SO_PEERCRED` on Linux, `getpeereid` elsewhere).
    ///
    /// # Errors
    ///
    /// As `getsockopt(2)`; fails when the connection is already gone.
    pub fn peer_cred(&self) -> io::Result<PeerCred> {
        let (uid, gid, pid) = sys::peer_cred(self.raw().socket())?;
        Ok(PeerCred { uid, gid, pid })
    }
}

/// Addresses a Unix-domain socket can be given: a path (`&str`, `String`, `&Path`,
/// `PathBuf`), or a [`SocketAddr`] (which on Linux may be an abstract name, made with
/// `std::os::linux::net::SocketAddrExt::from_abstract_name`).
pub trait ToUnixAddr {
    /// The address.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a path too long for a socket address (about 100 bytes).
    fn to_unix_addr(&self) -> io::Result<SocketAddr>;
}

impl ToUnixAddr for Path {
    fn to_unix_addr(&self) -> io::Result<SocketAddr> {
        SocketAddr::from_pathname(self)
    }
}

impl ToUnixAddr for PathBuf {
    fn to_unix_addr(&self) -> io::Result<SocketAddr> {
        SocketAddr::from_pathname(self)
    }
}

impl ToUnixAddr for str {
    fn to_unix_addr(&self) -> io::Result<SocketAddr> {
        SocketAddr::from_pathname(self)
    }
}

impl ToUnixAddr for String {
    fn to_unix_addr(&self) -> io::Result<SocketAddr> {
        SocketAddr::from_pathname(self)
    }
}

impl ToUnixAddr for SocketAddr {
    fn to_unix_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.clone())
    }
}

impl<T: ToUnixAddr + ?Sized> ToUnixAddr for &T {
    fn to_unix_addr(&self) -> io::Result<SocketAddr> {
        (**self).to_unix_addr()
    }
}

impl server::Listener<Unix> {
    /// The bound socket back out as a blocking `std` listener, not yet served. Its socket
    /// file is then the `std` listener's holder's: iotask no longer removes it.
    ///
    /// # Errors
    ///
    /// `Generic` named `"EINVAL"` for a listener bound on a pool; as `fcntl(2)`.
    pub fn into_std(self) -> Result<std::os::unix::net::UnixListener, ListenError> {
        self.into_socket()
            .map(std::os::unix::net::UnixListener::from)
    }

    /// Serves a listener made elsewhere (a `std::os::unix::net::UnixListener`), made
    /// non-blocking here. Its socket file is not iotask's: the listener leaves it in place
    /// when it closes.
    ///
    /// # Errors
    ///
    /// As `fcntl(2)` and `getsockname(2)`.
    pub fn from_std(
        listener: std::os::unix::net::UnixListener,
        options: &ListenOptions,
        iotask: &IoTask,
    ) -> Result<Listener, ListenError> {
        Listener::adopt(Socket::from(listener), iotask, options, None)
    }
}

/// Binds `addr` and puts the socket in listening mode on `iotask`, ready to be served
/// ([`Listener::serve`](server::Listener::serve), `spawn`, `into_mailbox`).
///
/// - A socket file left at the path by a server that died (nothing accepts on it) is
///   removed and the path bound again; a path a live server listens on gives
///   `AddressInUse` and the live server is not touched; a file that is not a socket is never
///   removed (`AddressInUse`).
/// - [`ListenOptions::unix_mode`] sets the file's permission bits before it accepts.
/// - The listener removes its socket file when it closes (if the file is still its own).
///
/// # Errors
///
/// `AddressInUse` as above, `AccessDenied` (`EACCES`: no write permission on the folder),
/// `Generic` for any other failure (`"ENOENT"` for a missing folder).
pub fn bind<A: ToUnixAddr>(
    addr: A,
    options: &ListenOptions,
    iotask: &IoTask,
) -> Result<Listener, ListenError> {
    bind_tasks(addr, options, std::slice::from_ref(iotask))
}

/// [`bind`] on every I/O task of a pool. The tasks share one listening socket (a Unix-domain
/// path cannot be bound twice). With epoll (Linux) each registers it with `EPOLLEXCLUSIVE`, so an
/// incoming connection wakes one task; elsewhere every task may wake and one accepts.
///
/// # Errors
///
/// As [`bind`].
pub fn bind_pool<A: ToUnixAddr>(
    addr: A,
    options: &ListenOptions,
    pool: &IoPool,
) -> Result<Listener, ListenError> {
    bind_tasks(addr, options, pool.tasks())
}

/// Binds `addr`, listens, and runs a server through two callbacks on the calling thread,
/// until killed: the seed's `listen` on a Unix-domain path, which is
/// `bind(addr, &ListenOptions::new().backlog(backlog), iotask)?.serve(on_establish, new_connect)`.
///
/// # Errors
///
/// As [`bind`], and as [`Listener::serve`](server::Listener::serve).
pub fn listen<A, E, C>(
    addr: A,
    backlog: u32,
    iotask: &IoTask,
    on_establish: E,
    new_connect: C,
) -> Result<(), ListenError>
where
    A: ToUnixAddr,
    E: FnOnce(KillChan),
    C: FnMut(NewConnection, &KillChan),
{
    bind(addr, &ListenOptions::new().backlog(backlog), iotask)?.serve(on_establish, new_connect)
}

/// Turns an incoming connection into a [`UnixSocket`]; callable on any thread.
///
/// # Errors
///
/// `"SHUTDOWN"` when the I/O task stopped since the connection arrived (it is closed).
pub fn accept(new_conn: NewConnection) -> Result<UnixSocket, Error> {
    new_conn.accept()
}

/// Connects to `addr`, blocking the calling thread until the connection is established. The
/// I/O task runs the connect; when the listener's backlog is full, it tries again every few
/// milliseconds (as a blocking connect would wait) until [`IoTask::shutdown`] or, with
/// [`connect_timeout`], the timeout.
///
/// # Errors
///
/// `ConnectionRefused` when the file exists but nothing listens on it; `Generic` named
/// `"ENOENT"` when there is no such file, `"EACCES"` without write permission on it,
/// `"SHUTDOWN"` when the I/O task stopped.
pub fn connect<A: ToUnixAddr>(addr: A, iotask: &IoTask) -> Result<UnixSocket, ConnectError> {
    start_connect(addr, iotask, None)?.get()
}

/// Like [`connect`], but gives up after `timeout` (`"ETIMEDOUT"`).
///
/// # Errors
///
/// As [`connect`].
pub fn connect_timeout<A: ToUnixAddr>(
    addr: A,
    timeout: Duration,
    iotask: &IoTask,
) -> Result<UnixSocket, ConnectError> {
    start_connect(addr, iotask, Some(timeout))?.get()
}

/// Starts connecting to `addr` and returns at once; the future resolves with the socket.
///
/// # Errors
///
/// As [`connect`], through the future.
pub fn connect_future<A: ToUnixAddr>(addr: A, iotask: &IoTask) -> ConnectFuture {
    match start_connect(addr, iotask, None) {
        Ok(future) => future,
        Err(e) => stream::ConnectFuture::failed(e),
    }
}

/// Starts connecting to `addr` from the I/O task and returns at once with the id the
/// socket will have: the mailbox receives
/// [`Event::ConnectedUnix`](crate::Event::ConnectedUnix) with that id and the socket
/// (already attached), or the failure. See [`tcp::connect_into`](crate::tcp::connect_into).
///
/// # Errors
///
/// `InvalidInput` for an address that cannot be connected to, `"SHUTDOWN"` when the I/O
/// task stopped; everything else comes through the event.
pub fn connect_into<A: ToUnixAddr, M: Send + 'static>(
    addr: A,
    iotask: &IoTask,
    mailbox: &impl AsRef<MailboxSender<M>>,
) -> Result<SocketId, Error> {
    let addr = to_sockaddr(&addr.to_unix_addr()?)?;
    let sender = mailbox.as_ref();
    let id = handle::connect_into(
        iotask.shared(),
        vec![addr],
        None,
        None,
        sender.inbox(),
        sender.window(),
        StreamKind::Unix,
    )?;
    Ok(SocketId(id))
}

/// Wraps a socket as a buffered reader and writer.
pub fn socket_buf(sock: UnixSocket) -> UnixSocketBuf {
    UnixSocketBuf::new(sock)
}

fn start_connect<A: ToUnixAddr>(
    addr: A,
    iotask: &IoTask,
    timeout: Option<Duration>,
) -> Result<ConnectFuture, Error> {
    let addr = to_sockaddr(&addr.to_unix_addr()?)?;
    let rx = handle::connect(iotask.shared(), vec![addr], None, timeout);
    Ok(stream::ConnectFuture::new(rx))
}

fn bind_tasks<A: ToUnixAddr>(
    addr: A,
    options: &ListenOptions,
    tasks: &[IoTask],
) -> Result<Listener, ListenError> {
    let addr = addr.to_unix_addr()?;
    let sockaddr = to_sockaddr(&addr)?;
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    let path = addr.as_pathname().map(Path::to_path_buf);
    match socket.bind(&sockaddr) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => match &path {
            Some(path) if is_stale(path) => {
                std::fs::remove_file(path)?;
                socket.bind(&sockaddr)?;
            }
            _ => return Err(ListenError::AddressInUse),
        },
        Err(e) => return Err(e.into()),
    }
    // From here on the file is ours: remove it on every way out.
    let file = match &path {
        Some(path) => {
            let meta = std::fs::symlink_metadata(path)?;
            Some((path.clone(), meta.dev(), meta.ino()))
        }
        None => None,
    };
    let listening = (|| -> io::Result<Vec<Socket>> {
        if let (Some(mode), Some(path)) = (options.unix_mode, &path) {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        }
        socket.listen(i32::try_from(options.backlog).unwrap_or(i32::MAX))?;
        socket.set_nonblocking(true)?;
        let mut sockets = Vec::with_capacity(tasks.len());
        for _ in 1..tasks.len() {
            sockets.push(socket.try_clone()?);
        }
        sockets.insert(0, socket);
        Ok(sockets)
    })();
    let sockets = match listening {
        Ok(sockets) => sockets,
        Err(e) => {
            if let Some((path, dev, ino)) = &file {
                crate::io_task::listener::unlink_if_ours(path, *dev, *ino);
            }
            return Err(e.into());
        }
    };
    let mut listener = Listener::new(
        sockets,
        tasks.to_vec(),
        options,
        addr,
        tasks.len() > 1,
        None,
    );
    if let Some((path, dev, ino)) = file {
        listener.unlink_on_close(path, dev, ino);
    }
    Ok(listener)
}

/// Whether the socket file at `path` was left by a server that is gone: it is a socket, and
/// connecting to it is refused. A live server (even one whose backlog is full) is not stale.
fn is_stale(path: &Path) -> bool {
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    if !is_socket {
        return false;
    }
    let probe = || -> io::Result<()> {
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        socket.connect(&SockAddr::unix(path)?)
    };
    matches!(probe(), Err(e) if e.kind() == io::ErrorKind::ConnectionRefused)
}

/// The socket2 form of a Unix-domain address.
fn to_sockaddr(addr: &SocketAddr) -> io::Result<SockAddr> {
    if let Some(path) = addr.as_pathname() {
        return SockAddr::unix(path);
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::ffi::OsStr;
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::ffi::OsStrExt;
        if let Some(name) = addr.as_abstract_name() {
            let mut bytes = Vec::with_capacity(name.len() + 1);
            bytes.push(0);
            bytes.extend_from_slice(name);
            return SockAddr::unix(Path::new(OsStr::from_bytes(&bytes)));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        "an unnamed Unix-domain address cannot be bound or connected to",
    ))
}
