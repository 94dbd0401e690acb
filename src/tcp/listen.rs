//! `listen` and its variants, and the running listener's handle.

use std::any::Any;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use crate::IoTask;
use crate::io_task::command::Command;
use crate::io_task::entry::{AcceptTarget, next_id};
use crate::mailbox::MailboxSender;
use crate::oneshot;
use crate::pool::IoPool;
use crate::tcp::server::ListenerState;
use crate::tcp::{
    ListenError, ListenOptions, NewConnection, OnHandlerError, PoolListener, Server, TcpError,
    ToListenAddrs,
};

/// What reaches the thread blocked in `listen`.
#[derive(Debug)]
pub(crate) enum ListenEvent {
    Connection(NewConnection),
    Kill(Option<TcpError>),
    /// The I/O task closed the listener (shutdown, or the poller refused it).
    Stopped(TcpError),
}

/// How [`KillChan::close`] treats the connections the listener accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseMode {
    /// Stop accepting; existing connections go on untouched.
    LeaveConnections,
    /// Stop accepting and close every existing connection: their ports yield `"CLOSED"`,
    /// their pending writes fail with it.
    CloseConnections,
    /// Stop accepting, let existing connections finish for up to this long, then close the
    /// ones still open as `CloseConnections` does.
    Drain(Duration),
}

/// The running listener's handle, given to `on_establish` and to every `new_connect` call.
///
/// Clone it and send it wherever the server is controlled from.
/// `send(None)` makes [`listen`] return `Ok(())`; `send(Some(error))` makes it return
/// `Err(ListenError::Generic)` with that error's name and message. Either way the listening
/// socket is closed and its port released before `listen` returns, and connections accepted
/// by the kernel but not yet handed to `new_connect` are closed; `new_connect` is never
/// called after `send` or [`close`](KillChan::close) returned. [`close`](KillChan::close)
/// also chooses the fate of existing connections.
///
/// For a listener made by [`listen_into`], which has no `listen` call to return, `send`
/// closes the listening sockets as `close(CloseMode::LeaveConnections)` does, and
/// [`Server::wait`](super::Server::wait) returns the error sent, if any.
#[derive(Clone)]
pub struct KillChan {
    /// The `listen` thread's channel; `None` for a listener feeding a mailbox.
    tx: Option<flume::Sender<ListenEvent>>,
    state: Arc<ListenerState>,
    local_addr: SocketAddr,
}

impl KillChan {
    /// Stops the listener; see the type's documentation. Existing connections are left
    /// alone.
    ///
    /// # Errors
    ///
    /// Gives the reason back when `listen` already returned.
    pub fn send(&self, reason: Option<TcpError>) -> Result<(), Option<TcpError>> {
        let Some(tx) = &self.tx else {
            // No thread to tell: close the listening sockets here, once.
            if !self.state.set_closed() {
                return Err(reason);
            }
            if let Some(reason) = reason {
                self.state.stopped(reason);
            }
            drop(self.state.close_sockets(false, None));
            return Ok(());
        };
        self.state.set_closed();
        tx.send(ListenEvent::Kill(reason))
            .map_err(|flume::SendError(event)| match event {
                ListenEvent::Kill(reason) => reason,
                _ => None,
            })
    }

    /// Stops accepting at once and makes `listen` return `Ok(())`, treating existing
    /// connections as `mode` says. Calling it again has no further effect.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use iotask::tcp::{self, CloseMode};
    ///
    /// let iotask = iotask::IoTask::spawn()?;
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let server = std::thread::spawn({
    ///     let iotask = iotask.clone();
    ///     move || tcp::listen("127.0.0.1:0", 128, &iotask, |kill| tx.send(kill).unwrap(), |_, _| {})
    /// });
    /// let kill = rx.recv_timeout(Duration::from_secs(5))?;
    /// kill.close(CloseMode::Drain(Duration::from_secs(1)));
    /// assert!(kill.is_closed());
    /// assert!(kill.wait_closed(Duration::from_secs(5)));
    /// assert_eq!(server.join().unwrap(), Ok(()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn close(&self, mode: CloseMode) {
        if !self.state.set_closed() {
            return;
        }
        let (close_connections, drain) = match mode {
            CloseMode::LeaveConnections => (false, None),
            CloseMode::CloseConnections => (true, None),
            CloseMode::Drain(timeout) => (false, Instant::now().checked_add(timeout)),
        };
        drop(self.state.close_sockets(close_connections, drain));
        if let Some(tx) = &self.tx {
            let _ = tx.send(ListenEvent::Kill(None));
        }
    }

    /// The address the listener is bound to, with a requested port 0 resolved.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Connections accepted from this listener and still open (including those handed to
    /// `new_connect` but not yet accepted, and those being drained after a close).
    pub fn num_connections(&self) -> usize {
        self.state.num_connections()
    }

    /// While set, every incoming connection is accepted and closed at once (the client sees
    /// it end), instead of waiting in the backlog; `new_connect` is not called for them.
    pub fn set_drop_incoming_connections(&self, drop: bool) {
        self.state
            .drop_incoming
            .store(drop, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stops accepting without closing anything: new clients wait in the kernel's backlog
    /// (and beyond it, retry their SYNs) until [`resume`](KillChan::resume).
    pub fn pause(&self) {
        self.state
            .paused
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.state.recheck_all();
    }

    /// Accepts again after [`pause`](KillChan::pause).
    pub fn resume(&self) {
        self.state
            .paused
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.state.recheck_all();
    }

    /// Whether [`pause`](KillChan::pause) is in effect.
    pub fn is_paused(&self) -> bool {
        self.state.paused.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether the listener was closed or killed (it may still be closing).
    pub fn is_closed(&self) -> bool {
        self.state.is_closed()
    }

    /// Why a listener without a `listen` thread stopped, if not through its handle.
    pub(crate) fn stop_reason(&self) -> Option<TcpError> {
        self.state.stop_reason()
    }

    /// Waits until the listening socket is closed (Async's `close_finished`); returns
    /// whether that happened within `timeout`.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        self.state.wait_closed(false, timeout)
    }

    /// Waits until the listening socket and every connection it accepted are closed
    /// (Async's `close_finished_and_handlers_determined`); returns whether that happened
    /// within `timeout`.
    pub fn wait_connections_closed(&self, timeout: Duration) -> bool {
        self.state.wait_closed(true, timeout)
    }
}

impl fmt::Debug for KillChan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KillChan")
            .field("local_addr", &self.local_addr)
            .field("num_connections", &self.num_connections())
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// Binds `addr`, listens, and runs a server through two callbacks on the calling thread,
/// until killed.
///
/// `SO_REUSEADDR` is set before `bind`, so a port in `TIME_WAIT` can be reused at once;
/// a port another socket listens on still fails with `AddressInUse`. When `addr` resolves to
/// several addresses, each is tried in turn and the first that binds is used.
/// [`listen_with`] takes [`ListenOptions`] for everything else (connection limits, accept
/// batches, `SO_REUSEPORT`, handler-error policy), and [`listen_on_pool`] spreads the
/// connections over several I/O tasks.
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
/// - `Generic` named `"PANIC"`, with the panic's message, when a callback panicked (see
///   [`OnHandlerError`] for other choices).
/// - `Generic` named `"SHUTDOWN"` when the I/O task stops.
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
    A: ToSocketAddrs,
    E: FnOnce(KillChan),
    C: FnMut(NewConnection, &KillChan),
{
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(super::resolve_error)?
        .collect();
    let options = ListenOptions::new().backlog(backlog);
    serve(
        &addrs,
        &options,
        std::slice::from_ref(iotask),
        on_establish,
        new_connect,
    )
}

/// [`listen`] with [`ListenOptions`], and the address forms of [`ToListenAddrs`] (`"8080"`
/// or `"*:8080"` for every interface).
///
/// # Errors
///
/// As [`listen`].
///
/// # Examples
///
/// ```
/// use iotask::tcp::{self, ListenOptions};
///
/// let iotask = iotask::IoTask::spawn()?;
/// let options = ListenOptions::new().max_connections(2);
/// let server = std::thread::spawn({
///     let iotask = iotask.clone();
///     move || tcp::listen_with("127.0.0.1:0", &options, &iotask, |kill| kill.send(None).unwrap(), |_, _| {})
/// });
/// assert_eq!(server.join().unwrap(), Ok(()));
/// # std::io::Result::Ok(())
/// ```
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
    let addrs = addr.to_listen_addrs().map_err(super::resolve_error)?;
    serve(
        &addrs,
        options,
        std::slice::from_ref(iotask),
        on_establish,
        new_connect,
    )
}

/// [`listen_with`] on every I/O task of a pool: by default each task gets its own listening
/// socket on the same address (`SO_REUSEPORT`) and the kernel spreads incoming connections
/// over them; [`ListenOptions::pool_listener`] can make the tasks share one socket instead
/// ([`PoolListener`] compares the two). Each connection lives on the task that accepted it.
/// The callbacks still run on the calling thread; `max_connections` counts the connections
/// of all tasks together, and pausing, dropping incoming connections and closing apply to
/// every task.
///
/// # Errors
///
/// As [`listen`].
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
    let addrs = addr.to_listen_addrs().map_err(super::resolve_error)?;
    serve(&addrs, options, pool.tasks(), on_establish, new_connect)
}

/// Listens on `addr` and hands every connection straight to an actor's mailbox: the I/O
/// task accepts it, attaches it to `mailbox`, and the actor receives
/// [`Event::Accepted`](crate::Event::Accepted) with the [`TcpSocket`](super::TcpSocket),
/// followed by the connection's `Data` and `Closed` events.
///
/// No thread runs the listener and no callback is called, so a connection costs one
/// hand-off (I/O thread to actor) where [`listen`] costs two or three (I/O thread to the
/// `listen` thread, to the actor, and the actor's `attach` back to the I/O thread). Returns
/// once the socket is bound and served. Every [`ListenOptions`] setting applies except
/// `on_handler_error`, as no user code runs on the listener's behalf; the returned
/// [`Server`](super::Server)'s [`kill_chan`](super::Server::kill_chan) counts, pauses, drops
/// and closes as for `listen`.
///
/// The listener stops when the `Server` is stopped or dropped, when it is closed through its
/// `KillChan`, when the I/O task shuts down, or when it finds the mailbox dropped at its next
/// incoming connection (that connection and those behind it in the backlog are refused).
///
/// # Errors
///
/// As [`listen`] for binding.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use iotask::{Event, Mailbox, tcp};
///
/// let iotask = iotask::IoTask::spawn()?;
/// let mut mailbox: Mailbox = Mailbox::new();
/// let server = tcp::listen_into("127.0.0.1:0", &tcp::ListenOptions::new(), &iotask, &mailbox)?;
///
/// let mut client = std::net::TcpStream::connect(server.local_addr())?;
/// std::io::Write::write_all(&mut client, b"hi")?;
///
/// let Some(Event::Accepted(sock)) = mailbox.recv_timeout(Duration::from_secs(5)) else {
///     panic!("expected a connection");
/// };
/// let Some(Event::Data { socket, data }) = mailbox.recv_timeout(Duration::from_secs(5)) else {
///     panic!("expected its data");
/// };
/// assert_eq!((socket, data.as_slice()), (sock.id(), &b"hi"[..]));
/// server.stop()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
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
    listen_into_tasks(
        addr,
        options,
        std::slice::from_ref(iotask),
        &[mailbox.as_ref()],
    )
}

/// [`listen_into`] on every I/O task of a pool, each task handing its connections to a
/// mailbox of its own: task `i` to `mailboxes[i % mailboxes.len()]`. With one mailbox per
/// task (an actor per loop), an actor's sockets all live on one loop, so its writes wake
/// that loop only. The sockets are spread over the tasks as [`listen_on_pool`] does.
///
/// # Errors
///
/// As [`listen`] for binding; `Generic` named `"EINVAL"` when `mailboxes` is empty.
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
    let senders: Vec<&MailboxSender<M>> = mailboxes.iter().map(AsRef::as_ref).collect();
    listen_into_tasks(addr, options, pool.tasks(), &senders)
}

fn listen_into_tasks<A, M>(
    addr: A,
    options: &ListenOptions,
    tasks: &[IoTask],
    mailboxes: &[&MailboxSender<M>],
) -> Result<Server, ListenError>
where
    A: ToListenAddrs,
    M: Send + 'static,
{
    if mailboxes.is_empty() {
        return Err(TcpError::new(
            "EINVAL",
            "no mailbox to hand connections to",
            std::io::ErrorKind::InvalidInput,
        )
        .into());
    }
    let addrs = addr.to_listen_addrs().map_err(super::resolve_error)?;
    let (state, local_addr) = start(&addrs, options, tasks, |i| {
        let mailbox = mailboxes[i % mailboxes.len()];
        AcceptTarget::Mailbox {
            inbox: mailbox.inbox(),
            window: mailbox.window(),
        }
    })?;
    Ok(Server::without_thread(KillChan {
        tx: None,
        state,
        local_addr,
    }))
}

pub(crate) fn serve<E, C>(
    addrs: &[SocketAddr],
    options: &ListenOptions,
    tasks: &[IoTask],
    on_establish: E,
    mut new_connect: C,
) -> Result<(), ListenError>
where
    E: FnOnce(KillChan),
    C: FnMut(NewConnection, &KillChan),
{
    let (tx, rx) = flume::unbounded();
    let (state, local_addr) = start(addrs, options, tasks, |_| AcceptTarget::Thread(tx.clone()))?;
    // From here on, dropping `running` closes the listening sockets.
    let running = Running {
        state: state.clone(),
        rx,
    };
    let kill = KillChan {
        tx: Some(tx),
        state,
        local_addr,
    };
    let establish = kill.clone();
    if let Err(payload) = catch_unwind(AssertUnwindSafe(move || on_establish(establish))) {
        return Err(panic_error(&*payload));
    }
    loop {
        // `kill` holds a sender, so the channel cannot disconnect while this loop runs.
        let Ok(event) = running.rx.recv() else {
            return Err(TcpError::shutdown().into());
        };
        let conn = match event {
            ListenEvent::Connection(conn) => conn,
            ListenEvent::Kill(None) => return Ok(()),
            ListenEvent::Kill(Some(e)) | ListenEvent::Stopped(e) => return Err(e.into()),
        };
        if kill.is_closed() {
            // Accepted before the close took effect: never handed out, closed here.
            continue;
        }
        let peer = conn.peer_addr().ok();
        let Err(payload) = catch_unwind(AssertUnwindSafe(|| new_connect(conn, &kill))) else {
            continue;
        };
        let message = panic_message(&*payload);
        match &options.on_handler_error {
            OnHandlerError::Raise => return Err(panic_error(&*payload)),
            OnHandlerError::Ignore => {
                eprintln!("iotask: new_connect panicked (ignored): {message}");
            }
            OnHandlerError::Call(f) => {
                if catch_unwind(AssertUnwindSafe(|| f(peer, &message))).is_err() {
                    return Err(panic_error(&*payload));
                }
            }
        }
    }
}

/// Binds the listening sockets and registers one with each task, its connections going to
/// `target(i)` for task `i`; on failure, closes those already registered.
fn start(
    addrs: &[SocketAddr],
    options: &ListenOptions,
    tasks: &[IoTask],
    target: impl Fn(usize) -> AcceptTarget,
) -> Result<(Arc<ListenerState>, SocketAddr), ListenError> {
    let shared = tasks.len() > 1
        && (options.pool_listener == PoolListener::Shared
            || !crate::io_task::sys::reuse_port_spreads());
    let sockets = bind_all(addrs, options, tasks.len(), shared)?;
    let local_addr = super::socket::as_inet(sockets[0].local_addr()?)?;
    let state = Arc::new(ListenerState::new(next_id(), options, shared));
    for (i, (task, socket)) in tasks.iter().zip(sockets).enumerate() {
        let (reply, wait) = oneshot::channel();
        let registered = task
            .shared()
            .send(Command::AddListener {
                socket,
                target: target(i),
                state: state.clone(),
                reply,
            })
            .and_then(|()| wait.recv().unwrap_or_else(|_| Err(TcpError::shutdown())));
        match registered {
            Ok(key) => state.add_socket(task.shared().clone(), key),
            Err(e) => {
                close_now(&state);
                return Err(e.into());
            }
        }
    }
    Ok((state, local_addr))
}

/// Closes the listening sockets, returning once their descriptors are closed (a stopped
/// task resolves its reply at once), so that the port is free.
fn close_now(state: &ListenerState) {
    state.set_closed();
    for wait in state.close_sockets(false, None) {
        let _ = wait.recv();
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a callback panicked".to_owned()
    }
}

fn panic_error(payload: &(dyn Any + Send)) -> ListenError {
    ListenError::Generic {
        name: "PANIC".to_owned(),
        message: panic_message(payload),
    }
}

/// Closes the listening sockets when `listen` returns or unwinds, then closes the
/// connections accepted but never handed to `new_connect`.
struct Running {
    state: Arc<ListenerState>,
    rx: flume::Receiver<ListenEvent>,
}

impl Drop for Running {
    fn drop(&mut self) {
        close_now(&self.state);
        // Kill channels may outlive `listen` and keep the channel's queue alive: empty it,
        // so that queued connections are closed now.
        for event in self.rx.drain() {
            drop(event);
        }
    }
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
        match bind(addr, &options) {
            Ok(first) => {
                let bound = super::socket::as_inet(first.local_addr()?)?;
                let mut sockets = Vec::with_capacity(count);
                for _ in 1..count {
                    sockets.push(if shared {
                        first.try_clone()?
                    } else {
                        bind(bound, &options)?
                    });
                }
                sockets.insert(0, first);
                return Ok(sockets);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => e.into(),
        None => super::no_address().into(),
    })
}

fn bind(addr: SocketAddr, options: &ListenOptions) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // flare's rule: reuse before bind, so a restarted server is not locked out of its port
    // by connections in TIME_WAIT.
    socket.set_reuse_address(options.reuse_address)?;
    if options.reuse_port {
        crate::io_task::sys::set_reuse_port(&socket)?;
    }
    if let (true, Some(only_v6)) = (addr.is_ipv6(), options.only_v6) {
        socket.set_only_v6(only_v6)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(options.backlog).unwrap_or(i32::MAX))?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}
