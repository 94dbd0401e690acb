//! `listen` and its kill channel.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use socket2::{Domain, Socket, Type};

use crate::IoTask;
use crate::io_task::Shared;
use crate::io_task::command::Command;
use crate::io_task::entry::Key;
use crate::oneshot;
use crate::tcp::{ListenError, NewConnection, TcpError};

/// What reaches the thread blocked in `listen`.
#[derive(Debug)]
pub(crate) enum ListenEvent {
    Connection(NewConnection),
    Kill(Option<TcpError>),
    /// The I/O task closed the listener (shutdown, or the poller refused it).
    Stopped(TcpError),
}

/// The running listener's handle, given to `on_establish` and to every `new_connect` call.
///
/// Clone it and send it wherever the server should be stopped from.
/// `send(None)` makes [`listen`] return `Ok(())`; `send(Some(error))` makes it return
/// `Err(ListenError::Generic)` with that error's name and message. Either way the listening
/// socket is closed and its port released before `listen` returns. Connections accepted by
/// the kernel but not yet handed to `new_connect` are closed.
#[derive(Clone)]
pub struct KillChan {
    tx: flume::Sender<ListenEvent>,
    local_addr: SocketAddr,
}

impl KillChan {
    /// Stops the listener; see the type's documentation.
    ///
    /// # Errors
    ///
    /// Gives the reason back when the listener already stopped.
    pub fn send(&self, reason: Option<TcpError>) -> Result<(), Option<TcpError>> {
        self.tx
            .send(ListenEvent::Kill(reason))
            .map_err(|flume::SendError(event)| match event {
                ListenEvent::Kill(reason) => reason,
                _ => None,
            })
    }

    /// The address the listener is bound to, with a requested port 0 resolved.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl fmt::Debug for KillChan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KillChan")
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

/// Binds `addr`, listens, and runs a server through two callbacks on the calling thread,
/// until killed.
///
/// `SO_REUSEADDR` is set before `bind`, so a port in `TIME_WAIT` can be reused at once;
/// a port another socket listens on still fails with `AddressInUse`. When `addr` resolves to
/// several addresses, each is tried in turn and the first that binds is used.
///
/// Once bound, `on_establish(kill)` runs once. Then, for each incoming connection,
/// `new_connect(new_conn, &kill)` runs on this thread. The I/O task accepts connections
/// and sets `TCP_NODELAY` on them; `new_conn` may be passed to any thread and turned into a
/// [`TcpSocket`](super::TcpSocket) with [`accept`](super::accept) later, or dropped to close
/// the connection. Keep `new_connect` short: connections queue up while it runs.
///
/// # Errors
///
/// - `AddressInUse` (`EADDRINUSE`), `AccessDenied` (`EACCES`, a privileged port), or
///   `Generic` for any other bind or listen failure; `on_establish` is not called.
/// - `Generic` with the name and message of the error sent with `kill.send(Some(e))`.
/// - `Generic` named `"SHUTDOWN"` when the I/O task stops.
///
/// # Panics
///
/// Never by itself. A panic in a callback unwinds out of `listen` after the listener was
/// closed.
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
    mut new_connect: C,
) -> Result<(), ListenError>
where
    A: ToSocketAddrs,
    E: FnOnce(KillChan),
    C: FnMut(NewConnection, &KillChan),
{
    let socket = bind_any(addr, backlog)?;
    let local_addr = super::socket::as_inet(socket.local_addr()?)?;
    let (tx, rx) = flume::unbounded();
    let task = iotask.shared().clone();
    let (reply, wait) = oneshot::channel();
    task.send(Command::AddListener {
        socket,
        events: tx.clone(),
        reply,
    })?;
    let key = wait.recv().unwrap_or_else(|_| Err(TcpError::shutdown()))?;
    let running = Running { task, key, rx };

    let kill = KillChan { tx, local_addr };
    on_establish(kill.clone());
    loop {
        // `kill` holds a sender, so the channel cannot disconnect while this loop runs.
        let Ok(event) = running.rx.recv() else {
            return Err(TcpError::shutdown().into());
        };
        match event {
            ListenEvent::Connection(conn) => new_connect(conn, &kill),
            ListenEvent::Kill(None) => return Ok(()),
            ListenEvent::Kill(Some(e)) | ListenEvent::Stopped(e) => return Err(e.into()),
        }
    }
}

/// Closes the listening socket when `listen` returns or unwinds, then closes the
/// connections accepted but never handed to `new_connect`.
struct Running {
    task: Arc<Shared>,
    key: Key,
    rx: flume::Receiver<ListenEvent>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let (reply, wait) = oneshot::channel();
        if self
            .task
            .send(Command::CloseListener {
                key: self.key,
                reply,
            })
            .is_ok()
        {
            // Returns once the descriptor is closed, so the port is free when `listen`
            // returns; a stopped task resolves it at once.
            let _ = wait.recv();
        }
        // Kill channels may outlive `listen` and keep the channel's queue alive: empty it,
        // so that queued connections are closed now.
        for event in self.rx.drain() {
            drop(event);
        }
    }
}

/// Creates a non-blocking listening socket on the first address that binds.
pub(crate) fn bind_any<A: ToSocketAddrs>(addr: A, backlog: u32) -> Result<Socket, ListenError> {
    let addrs = addr.to_socket_addrs().map_err(super::resolve_error)?;
    let mut last = None;
    for addr in addrs {
        match bind(addr, backlog) {
            Ok(socket) => return Ok(socket),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => e.into(),
        None => super::no_address().into(),
    })
}

fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), None)?;
    // flare's rule: reuse before bind, so a restarted server is not locked out of its port
    // by connections in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}
