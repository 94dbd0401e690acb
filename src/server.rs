//! Servers of every stream family: a bound [`Listener`], then one way to serve it (on this
//! thread, on a thread of its own, or into an actor's mailbox), and the running server's
//! handles [`KillChan`] and [`Server`].
//!
//! Binding is the family's part ([`tcp::bind`](crate::tcp::bind),
//! [`tcp::bind_pool`](crate::tcp::bind_pool), [`unix::bind`](crate::unix::bind)); everything
//! after it is written once here:
//!
//! | serve it | call | returns |
//! |---|---|---|
//! | on this thread, through callbacks | [`Listener::serve`] | when killed |
//! | on a thread of its own | [`Listener::spawn`] | a [`Server`], once serving |
//! | into an actor's [`Mailbox`](crate::Mailbox) | [`Listener::into_mailbox`] | a [`Server`] |
//! | a pool, one mailbox per task | [`Listener::into_mailboxes`] | a [`Server`] |
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use iotask::{Event, Mailbox, server::ListenOptions, tcp};
//!
//! let iotask = iotask::IoTask::spawn()?;
//! let mut mailbox: Mailbox = Mailbox::new();
//! let server = tcp::bind("127.0.0.1:0", &ListenOptions::new(), &iotask)?.into_mailbox(&mailbox)?;
//! let _client = std::net::TcpStream::connect(server.local_addr())?;
//! assert!(matches!(mailbox.recv_timeout(Duration::from_secs(5)), Some(Event::Accepted(_))));
//! server.stop()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod kill;
mod options;
mod running;

use std::any::Any;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;

use socket2::Socket;

pub use kill::{CloseMode, KillChan};
pub use options::{HandlerErrorFn, Keepalive, ListenOptions, OnHandlerError, PoolListener};
pub use running::Server;

use crate::IoTask;
use crate::error::{Error, ListenError};
use crate::io_task::command::SetupFn;
use crate::io_task::listener::{
    AcceptConfig, AcceptEvent, AcceptTarget, ListenerState, unlink_if_ours,
};
use crate::io_task::sink::StreamKind;
use crate::mailbox::MailboxSender;
use crate::stream::{Family, NewConnection};

/// A bound listening socket (one per I/O task on a pool), not yet accepting: choose how to
/// serve it. Made by a family's `bind`.
///
/// Dropping it unserved closes the socket (and removes a Unix-domain socket's file).
#[must_use = "a bound listener accepts nothing until it is served"]
pub struct Listener<F: Family> {
    /// One listening socket per task in `tasks`; empty once served.
    sockets: Vec<Socket>,
    tasks: Vec<IoTask>,
    options: ListenOptions,
    local_addr: F::Addr,
    /// Several tasks share one socket (`EPOLLEXCLUSIVE`) instead of one socket each.
    shared_socket: bool,
    /// The family's preparation of each accepted socket.
    setup: Option<SetupFn>,
    /// A socket file to remove when the listener closes (Unix-domain).
    unlink: Option<(PathBuf, u64, u64)>,
}

impl<F: Family> Listener<F> {
    /// Wraps sockets a family bound and put in listening, non-blocking mode.
    pub(crate) fn new(
        sockets: Vec<Socket>,
        tasks: Vec<IoTask>,
        options: &ListenOptions,
        local_addr: F::Addr,
        shared_socket: bool,
        setup: Option<SetupFn>,
    ) -> Listener<F> {
        Listener {
            sockets,
            tasks,
            options: options.clone(),
            local_addr,
            shared_socket,
            setup,
            unlink: None,
        }
    }

    /// Wraps a listening socket made elsewhere (a `std` listener), made non-blocking here.
    pub(crate) fn adopt(
        socket: Socket,
        iotask: &IoTask,
        options: &ListenOptions,
        setup: Option<SetupFn>,
    ) -> Result<Listener<F>, ListenError> {
        socket.set_nonblocking(true)?;
        let local_addr = F::socket_addr(&socket, false)?;
        Ok(Listener::new(
            vec![socket],
            vec![iotask.clone()],
            options,
            local_addr,
            false,
            setup,
        ))
    }

    /// The listening socket back out, in blocking mode, for a family's `into_std`; refused
    /// for a listener bound on several tasks (it has a socket per task).
    pub(crate) fn into_socket(mut self) -> Result<Socket, ListenError> {
        if self.sockets.len() != 1 {
            return Err(Error::new(
                "EINVAL",
                "a listener bound on a pool has a socket per task",
                std::io::ErrorKind::InvalidInput,
            )
            .into());
        }
        let socket = self.sockets.pop().expect("one socket");
        socket.set_nonblocking(false)?;
        // The socket file now belongs to whoever holds the socket.
        self.unlink = None;
        Ok(socket)
    }

    /// Removes `path` when the listener closes, if it is still this socket's file.
    pub(crate) fn unlink_on_close(&mut self, path: PathBuf, dev: u64, ino: u64) {
        self.unlink = Some((path, dev, ino));
    }

    /// The bound address, with a requested port 0 resolved.
    pub fn local_addr(&self) -> F::Addr {
        self.local_addr.clone()
    }

    /// Serves the listener on the calling thread through two callbacks, until killed: the
    /// shape of the seed's `listen`.
    ///
    /// `on_establish(kill)` runs once, as soon as connections are accepted. Then, for each
    /// incoming connection, `new_connect(new_conn, &kill)` runs on this thread. The I/O task
    /// accepts connections (and sets the family's options, `TCP_NODELAY` for TCP);
    /// `new_conn` may be passed to any thread and accepted there later, or dropped to close
    /// the connection. Keep `new_connect` short: connections queue up while it runs.
    ///
    /// # Errors
    ///
    /// - `Generic` with the name and message of the error sent with `kill.send(Some(e))`.
    /// - `Generic` named `"PANIC"`, with the panic's message, when a callback panicked (see
    ///   [`OnHandlerError`] for other choices).
    /// - `Generic` named `"SHUTDOWN"` when the I/O task stops.
    ///
    /// # Panics
    ///
    /// Never: panics in the callbacks are caught and reported as errors.
    pub fn serve<E, C>(self, on_establish: E, mut new_connect: C) -> Result<(), ListenError>
    where
        E: FnOnce(KillChan<F>),
        C: FnMut(NewConnection<F>, &KillChan<F>),
    {
        let on_handler_error = self.options.on_handler_error.clone();
        let (tx, rx) = flume::unbounded();
        let target = tx.clone();
        let (state, local_addr) = self.start(|_| AcceptTarget::Thread(target.clone()))?;
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
                return Err(Error::shutdown().into());
            };
            let conn = match event {
                AcceptEvent::Connection(raw) => NewConnection::<F>::from_raw(raw),
                AcceptEvent::Kill(None) => return Ok(()),
                AcceptEvent::Kill(Some(e)) | AcceptEvent::Stopped(e) => return Err(e.into()),
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
            match &on_handler_error {
                OnHandlerError::Raise => return Err(panic_error(&*payload)),
                OnHandlerError::Ignore => {
                    log!(warn, "new_connect panicked (ignored): {message}");
                    let _ = &message;
                }
                OnHandlerError::Call(f) => {
                    let peer = peer.and_then(|p| inet(&p));
                    if catch_unwind(AssertUnwindSafe(|| f(peer, &message))).is_err() {
                        return Err(panic_error(&*payload));
                    }
                }
            }
        }
    }

    /// Serves the listener on a new thread, as [`serve`](Listener::serve) does, and returns
    /// once it accepts. `new_connect` runs on that thread.
    ///
    /// # Errors
    ///
    /// `Generic` when the thread cannot be spawned, or when registering with the I/O task
    /// fails (`"SHUTDOWN"`).
    ///
    /// # Examples
    ///
    /// ```
    /// use iotask::{server::ListenOptions, tcp};
    ///
    /// let iotask = iotask::IoTask::spawn()?;
    /// let server = tcp::bind("127.0.0.1:0", &ListenOptions::new(), &iotask)?.spawn(|conn, _| {
    ///     let sock = tcp::accept(conn).unwrap();
    ///     drop(sock.write_future(b"hello".to_vec()));
    /// })?;
    /// let sock = tcp::connect(server.local_addr(), &iotask)?;
    /// assert_eq!(sock.read(std::time::Duration::from_secs(5))?, b"hello");
    /// server.stop()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn spawn<C>(self, new_connect: C) -> Result<Server<F>, ListenError>
    where
        C: FnMut(NewConnection<F>, &KillChan<F>) + Send + 'static,
    {
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let failed_tx = ready_tx.clone();
        let thread = std::thread::Builder::new()
            .name("iotask-listen".to_owned())
            .spawn(move || {
                let established = move |kill| {
                    let _ = ready_tx.send(Ok(kill));
                };
                let result = self.serve(established, new_connect);
                if let Err(e) = &result {
                    // Heard only if starting failed; afterwards nobody waits on this channel.
                    let _ = failed_tx.send(Err(e.clone()));
                }
                result
            })
            .map_err(Error::from)?;
        match ready.recv() {
            Ok(Ok(kill)) => Ok(Server::with_thread(kill, thread)),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            // `serve` catches panics in the callbacks, so the thread ends without a word only
            // if it died some other way.
            Err(_) => match thread.join() {
                Ok(Err(e)) => Err(e),
                _ => {
                    Err(Error::other("PANIC", "the listener thread ended before listening").into())
                }
            },
        }
    }

    /// Hands every connection straight to an actor's mailbox: the I/O task accepts it,
    /// attaches it to `mailbox`, and the actor receives
    /// [`Event::Accepted`](crate::Event::Accepted) (or `AcceptedUnix`) with the socket,
    /// followed by the connection's `Data` and `Closed` events.
    ///
    /// No thread serves the listener and no callback is called, so a connection costs one
    /// hand-off (I/O thread to actor) where [`serve`](Listener::serve) costs two or three.
    /// Every [`ListenOptions`] setting applies except `on_handler_error`, as no user code
    /// runs on the listener's behalf; the returned [`Server`]'s
    /// [`kill_chan`](Server::kill_chan) counts, pauses, drops and closes as for `serve`.
    ///
    /// The listener stops when the `Server` is stopped or dropped, when it is closed through
    /// its `KillChan`, when the I/O task shuts down, or when it finds the mailbox dropped at
    /// its next incoming connection (that connection and those behind it in the backlog are
    /// refused).
    ///
    /// # Errors
    ///
    /// `"SHUTDOWN"` when the I/O task stopped.
    pub fn into_mailbox<M: Send + 'static>(
        self,
        mailbox: &impl AsRef<MailboxSender<M>>,
    ) -> Result<Server<F>, ListenError> {
        self.into_mailboxes(&[mailbox.as_ref()])
    }

    /// [`into_mailbox`](Listener::into_mailbox) for a listener bound on a pool, each task
    /// handing its connections to a mailbox of its own: task `i` to
    /// `mailboxes[i % mailboxes.len()]`. With one mailbox per task (an actor per loop), an
    /// actor's sockets all live on one loop, so its writes wake that loop only.
    ///
    /// # Errors
    ///
    /// `Generic` named `"EINVAL"` when `mailboxes` is empty; otherwise as `into_mailbox`.
    pub fn into_mailboxes<M, S>(self, mailboxes: &[S]) -> Result<Server<F>, ListenError>
    where
        M: Send + 'static,
        S: AsRef<MailboxSender<M>>,
    {
        if mailboxes.is_empty() {
            return Err(Error::new(
                "EINVAL",
                "no mailbox to hand connections to",
                std::io::ErrorKind::InvalidInput,
            )
            .into());
        }
        let (state, local_addr) = self.start(|i| {
            let mailbox = mailboxes[i % mailboxes.len()].as_ref();
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

    /// Registers the listening sockets, one with each task, its connections going to
    /// `target(i)` for task `i`; on failure, closes those already registered.
    fn start(
        mut self,
        target: impl Fn(usize) -> AcceptTarget,
    ) -> Result<(Arc<ListenerState>, F::Addr), ListenError> {
        let setup = accepted_setup(self.setup.take(), &self.options);
        let state = Arc::new(ListenerState::new(AcceptConfig {
            max_connections: self.options.max_connections,
            max_accepts_per_batch: self.options.max_accepts_per_batch,
            write_window: self.options.write_window,
            setup,
            kind: if <F as crate::stream::sealed::Sealed>::UNIX {
                StreamKind::Unix
            } else {
                StreamKind::Inet
            },
            shared_socket: self.shared_socket,
        }));
        if let Some((path, dev, ino)) = self.unlink.take() {
            state.unlink_on_close(path, dev, ino);
        }
        let sockets = std::mem::take(&mut self.sockets);
        #[cfg(unix)]
        if let Some(first) = sockets.first() {
            use std::os::fd::AsRawFd as _;
            state.set_raw_fd(first.as_raw_fd());
        }
        for (i, (task, socket)) in self.tasks.iter().zip(sockets).enumerate() {
            if let Err(e) = state.register(task.shared(), socket, target(i)) {
                state.close_now();
                return Err(e.into());
            }
        }
        Ok((state, self.local_addr.clone()))
    }
}

impl<F: Family> Drop for Listener<F> {
    fn drop(&mut self) {
        // Unserved: close the sockets first, then remove their file.
        self.sockets.clear();
        if let Some((path, dev, ino)) = self.unlink.take() {
            unlink_if_ours(&path, dev, ino);
        }
    }
}

/// The (first) listening socket's descriptor, for options iotask has no method for. Only
/// the I/O task may accept on it, close it or change its blocking mode.
#[cfg(unix)]
impl<F: Family> std::os::fd::AsFd for Listener<F> {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.sockets[0].as_fd()
    }
}

impl<F: Family> fmt::Debug for Listener<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("family", &F::NAME)
            .field("local_addr", &self.local_addr)
            .field("tasks", &self.tasks.len())
            .finish()
    }
}

/// The preparation of each accepted socket: the family's own (`TCP_NODELAY`, keepalive),
/// then the buffer sizes `options` ask for. Each option is tried even when one before it
/// failed; the first failure is reported (and ignored by the loop: the socket still works).
fn accepted_setup(family: Option<SetupFn>, options: &ListenOptions) -> Option<SetupFn> {
    let (send, recv) = (options.send_buffer_size, options.recv_buffer_size);
    if send.is_none() && recv.is_none() {
        return family;
    }
    Some(Arc::new(move |socket: &Socket| {
        let mut result = family.as_ref().map_or(Ok(()), |f| f(socket));
        if let Some(n) = send {
            result = result.and(socket.set_send_buffer_size(n));
        }
        if let Some(n) = recv {
            result = result.and(socket.set_recv_buffer_size(n));
        }
        result
    }))
}

/// The internet address among a family's addresses (handler-error callbacks take one).
fn inet(addr: &dyn Any) -> Option<std::net::SocketAddr> {
    addr.downcast_ref::<std::net::SocketAddr>().copied()
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

/// Closes the listening sockets when `serve` returns or unwinds, then closes the
/// connections accepted but never handed to `new_connect`.
struct Running {
    state: Arc<ListenerState>,
    rx: flume::Receiver<AcceptEvent>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.state.close_now();
        // Kill channels may outlive `serve` and keep the channel's queue alive: empty it,
        // so that queued connections are closed now.
        for event in self.rx.drain() {
            drop(event);
        }
    }
}
