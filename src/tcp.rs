//! TCP through the I/O task: servers with [`listen`], clients with [`connect`], and
//! [`TcpSocket`]s that read into ports and write through futures.
//!
//! The shape is that of Rust's early `std::net::tcp`: a server is a `listen` call that runs
//! two callbacks, a connection is read through a port from `read_start` and written
//! through `write_future`, and [`socket_buf`] wraps a socket as a buffered
//! `Read + BufRead + Write` stream.

mod buf;
mod error;
mod future;
mod listen;
mod options;
mod port;
pub(crate) mod server;
mod socket;
mod spawn;

use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

pub use buf::TcpSocketBuf;
pub use error::{ConnectError, ListenError, TcpError};
pub use future::{ReadFuture, WriteFuture};
pub use listen::{
    CloseMode, KillChan, listen, listen_into, listen_on_pool, listen_on_pool_into, listen_with,
};
pub use options::{HandlerErrorFn, ListenOptions, OnHandlerError, PoolListener, ToListenAddrs};
pub use port::ReadPort;
pub use socket::{NewConnection, TcpSocket};
pub use spawn::{Server, spawn_listen};

pub(crate) use listen::ListenEvent;

use crate::IoTask;
use crate::io_task::command::Command;
use crate::oneshot;

/// Turns an incoming connection into a [`TcpSocket`]; callable on any thread.
///
/// # Errors
///
/// `"SHUTDOWN"` when the I/O task stopped since the connection arrived (it is closed).
pub fn accept(new_conn: NewConnection) -> Result<TcpSocket, TcpError> {
    new_conn.into_socket()
}

/// Connects to `addr`, blocking the calling thread until the connection is established, and
/// hands the socket to the I/O task.
///
/// Each address `addr` resolves to is tried in turn (so `"localhost:2020"` tries `::1` and
/// `127.0.0.1`). The socket gets `TCP_NODELAY`. Without a timeout, the kernel's (about two
/// minutes on Linux) applies; see [`connect_timeout`].
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
pub fn connect<A: ToSocketAddrs>(addr: A, iotask: &IoTask) -> Result<TcpSocket, ConnectError> {
    connect_with(addr, iotask, None)
}

/// Like [`connect`], but gives up on each address after `timeout` (`"ETIMEDOUT"`).
///
/// # Errors
///
/// As [`connect`].
pub fn connect_timeout<A: ToSocketAddrs>(
    addr: A,
    timeout: Duration,
    iotask: &IoTask,
) -> Result<TcpSocket, ConnectError> {
    connect_with(addr, iotask, Some(timeout))
}

fn connect_with<A: ToSocketAddrs>(
    addr: A,
    iotask: &IoTask,
    timeout: Option<Duration>,
) -> Result<TcpSocket, ConnectError> {
    let task = iotask.shared();
    if !iotask.is_running() {
        return Err(TcpError::shutdown().into());
    }
    let addrs = addr.to_socket_addrs().map_err(resolve_error)?;
    let mut last = None;
    for addr in addrs {
        let stream = match timeout {
            Some(t) => std::net::TcpStream::connect_timeout(&addr, t),
            None => std::net::TcpStream::connect(addr),
        };
        match stream {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                stream.set_nonblocking(true)?;
                let socket = Arc::new(socket2::Socket::from(stream));
                let queued = Arc::new(AtomicUsize::new(0));
                let (reply, rx) = oneshot::channel();
                task.send(Command::AddSocket {
                    socket: socket.clone(),
                    queued: queued.clone(),
                    reply,
                })?;
                let key = rx.recv().unwrap_or_else(|_| Err(TcpError::shutdown()))?;
                return Ok(TcpSocket::new(key, task.clone(), socket, queued));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => e.into(),
        None => no_address().into(),
    })
}

/// Wraps a socket as a buffered reader and writer.
pub fn socket_buf(sock: TcpSocket) -> TcpSocketBuf {
    TcpSocketBuf::new(sock)
}

fn resolve_error(e: std::io::Error) -> TcpError {
    TcpError::other("RESOLVE", e.to_string())
}

fn no_address() -> TcpError {
    TcpError::other("RESOLVE", "the address resolved to nothing")
}
