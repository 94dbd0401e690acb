//! `ListenOptions`: how a server binds, accepts and treats its handler's failures.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The write window of accepted sockets unless set otherwise.
const DEFAULT_WRITE_WINDOW: usize = 1024 * 1024;

/// Settings of a listener, for every family's `bind` ([`tcp::bind`](crate::tcp::bind),
/// [`unix::bind`](crate::unix::bind)) and pool.
///
/// Settings that do not apply to a family are ignored by it: a Unix-domain listener has no
/// `SO_REUSEADDR`, `SO_REUSEPORT`, `IPV6_V6ONLY` or `TCP_NODELAY`, and a TCP listener no
/// file mode.
///
/// The defaults are those of plain [`tcp::listen`](crate::tcp::listen) with a backlog of 128:
/// `SO_REUSEADDR` on, `SO_REUSEPORT` off, the system's `IPV6_V6ONLY`, `TCP_NODELAY` on every
/// accepted socket, no connection limit, 64 accepts per loop cycle, a 1 MiB write window on
/// accepted sockets, and a panicking `new_connect` stops the server
/// ([`OnHandlerError::Raise`]).
///
/// # Examples
///
/// ```
/// use iotask::server::{ListenOptions, OnHandlerError};
///
/// let options = ListenOptions::new()
///     .backlog(1024)
///     .max_connections(10_000)
///     .max_accepts_per_batch(16)
///     .on_handler_error(OnHandlerError::Ignore);
/// assert_eq!(options.get_backlog(), 1024);
/// ```
#[derive(Clone, Debug)]
pub struct ListenOptions {
    pub(crate) backlog: u32,
    pub(crate) reuse_address: bool,
    pub(crate) reuse_port: bool,
    pub(crate) only_v6: Option<bool>,
    pub(crate) nodelay: bool,
    pub(crate) max_connections: Option<usize>,
    pub(crate) max_accepts_per_batch: usize,
    pub(crate) write_window: Option<usize>,
    pub(crate) on_handler_error: OnHandlerError,
    pub(crate) pool_listener: PoolListener,
    pub(crate) unix_mode: Option<u32>,
    pub(crate) keepalive: Option<Keepalive>,
    pub(crate) send_buffer_size: Option<usize>,
    pub(crate) recv_buffer_size: Option<usize>,
}

/// TCP keepalive: after `idle` without traffic the kernel probes the peer every `interval`,
/// and gives the connection up (`ETIMEDOUT`) after `retries` unanswered probes. `None`
/// keeps the system's default for that setting (on Linux 75 s and 9 probes). The interval
/// and the retries are set where the system lets a program set them (Linux, Android, the
/// BSDs, macOS); elsewhere only `idle`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use iotask::server::{Keepalive, ListenOptions};
///
/// let keepalive = Keepalive::new(Duration::from_secs(60))
///     .interval(Duration::from_secs(10))
///     .retries(3);
/// let options = ListenOptions::new().keepalive(keepalive);
/// # let _ = options;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    /// Time without traffic before the first probe.
    pub idle: Duration,
    /// Time between probes.
    pub interval: Option<Duration>,
    /// Unanswered probes before the connection is given up.
    pub retries: Option<u32>,
}

impl Keepalive {
    /// Probes after `idle` without traffic, at the system's interval and count.
    pub fn new(idle: Duration) -> Keepalive {
        Keepalive {
            idle,
            interval: None,
            retries: None,
        }
    }

    /// Time between probes.
    pub fn interval(mut self, interval: Duration) -> Keepalive {
        self.interval = Some(interval);
        self
    }

    /// Unanswered probes before the connection is given up.
    pub fn retries(mut self, retries: u32) -> Keepalive {
        self.retries = Some(retries);
        self
    }

    /// The socket2 form, with what this system lets a program set.
    pub(crate) fn to_socket2(self) -> socket2::TcpKeepalive {
        let keepalive = socket2::TcpKeepalive::new().with_time(self.idle);
        #[cfg(any(
            target_os = "linux",
            target_os = "android",
            target_os = "freebsd",
            target_os = "netbsd",
            target_os = "dragonfly",
            target_vendor = "apple"
        ))]
        let keepalive = {
            let mut keepalive = keepalive;
            if let Some(interval) = self.interval {
                keepalive = keepalive.with_interval(interval);
            }
            if let Some(retries) = self.retries {
                keepalive = keepalive.with_retries(retries);
            }
            keepalive
        };
        keepalive
    }
}

/// How a listener bound on a pool ([`tcp::bind_pool`](crate::tcp::bind_pool)) spreads one address over the I/O tasks of
/// a pool. Each accepted connection lives on the task that accepted it, in both modes.
///
/// `PerTask` is the default because it spreads connections evenly and `Shared` does not:
/// epoll wakes the task that started waiting last, so whichever task is idle most takes
/// most clients. Measured on a pool of two tasks, 1,000 connections opened at once went
/// 497 / 503 with `PerTask` and 964 / 36 with `Shared`; opened one after another, 491 /
/// 509 and 785 / 215. Throughput in the benchmark was the same within noise (ARCHITECTURE.md,
/// "Pool listeners"). `Shared` suits a server whose tasks are mostly idle and whose clients
/// should never queue behind a busy task while another is free.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolListener {
    /// One listening socket per task, all bound to the address with `SO_REUSEPORT`; the
    /// kernel hashes each incoming connection (by its addresses and ports) to one socket.
    /// A connection waits in its socket's queue even while another task is idle.
    #[default]
    PerTask,
    /// One listening socket, registered with every task's epoll with `EPOLLEXCLUSIVE`:
    /// a new connection wakes one waiting task (not all of them), and whichever task
    /// accepts first takes it. No `SO_REUSEPORT` is needed.
    Shared,
}

/// A function told about a panic in `new_connect`: the client's internet address (when
/// still known; `None` for Unix-domain clients) and the panic's message.
pub type HandlerErrorFn = Arc<dyn Fn(Option<SocketAddr>, &str) + Send + Sync>;

/// What happens when `new_connect` panics (OCaml Async's `on_handler_error`).
///
/// The I/O task is never affected: `new_connect` runs on the thread that called `listen`.
#[derive(Clone, Default)]
pub enum OnHandlerError {
    /// Stop the listener: `listen` returns `ListenError::Generic` named `"PANIC"`, whose
    /// message is the panic's message. The default.
    #[default]
    Raise,
    /// Go on accepting; the panic is reported through the `log` facade (feature `log`,
    /// level warn) and otherwise dropped.
    Ignore,
    /// Call the function with the client's address (when it was still known; always `None`
    /// on a Unix-domain listener, whose clients are usually unnamed) and the panic's
    /// message, then go on accepting. If the function itself panics, the listener stops as
    /// with `Raise`.
    Call(HandlerErrorFn),
}

impl fmt::Debug for OnHandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OnHandlerError::Raise => "Raise",
            OnHandlerError::Ignore => "Ignore",
            OnHandlerError::Call(_) => "Call(..)",
        })
    }
}

impl Default for ListenOptions {
    fn default() -> ListenOptions {
        ListenOptions::new()
    }
}

impl ListenOptions {
    /// The defaults (see the type's documentation).
    pub fn new() -> ListenOptions {
        ListenOptions {
            backlog: 128,
            reuse_address: true,
            reuse_port: false,
            only_v6: None,
            nodelay: true,
            max_connections: None,
            max_accepts_per_batch: 64,
            write_window: Some(DEFAULT_WRITE_WINDOW),
            on_handler_error: OnHandlerError::Raise,
            pool_listener: PoolListener::PerTask,
            unix_mode: None,
            keepalive: None,
            send_buffer_size: None,
            recv_buffer_size: None,
        }
    }

    /// The length of the kernel's queue of completed connections not yet accepted
    /// (`listen(2)`'s backlog; Linux caps it at `net.core.somaxconn`). Default 128.
    pub fn backlog(mut self, backlog: u32) -> ListenOptions {
        self.backlog = backlog;
        self
    }

    /// Sets `SO_REUSEADDR` before binding (default true), so that a restarted server can
    /// bind its port while old connections linger in `TIME_WAIT`.
    pub fn reuse_address(mut self, on: bool) -> ListenOptions {
        self.reuse_address = on;
        self
    }

    /// Sets `SO_REUSEPORT` before binding (default false): several sockets, in this process
    /// or others of the same user, may listen on the port, and the kernel spreads incoming
    /// connections between them.
    pub fn reuse_port(mut self, on: bool) -> ListenOptions {
        self.reuse_port = on;
        self
    }

    /// Sets `IPV6_V6ONLY` on an IPv6 listener: `true` accepts IPv6 only, `false` also
    /// IPv4-mapped connections. Unset, the system default applies (on Linux,
    /// `net.ipv6.bindv6only`, normally false). Ignored for IPv4 addresses.
    pub fn only_v6(mut self, on: bool) -> ListenOptions {
        self.only_v6 = Some(on);
        self
    }

    /// Sets `TCP_NODELAY` on every accepted socket (default true).
    pub fn nodelay(mut self, on: bool) -> ListenOptions {
        self.nodelay = on;
        self
    }

    /// A hard limit on the connections accepted from this listener and still open.
    ///
    /// At the limit the I/O task stops calling `accept(2)` on the listener (its read
    /// interest is removed) and resumes as soon as one of its connections closes. While
    /// stopped, the kernel still completes handshakes up to the backlog: such clients see an
    /// established connection that is served only once room frees up, and clients beyond the
    /// backlog see their SYNs go unanswered (and retry). To refuse clients outright instead,
    /// use [`KillChan::set_drop_incoming_connections`](super::KillChan::set_drop_incoming_connections).
    pub fn max_connections(mut self, max: usize) -> ListenOptions {
        self.max_connections = Some(max);
        self
    }

    /// How many connections one wake-up accepts before other sockets get a turn
    /// (default 64, at least 1).
    pub fn max_accepts_per_batch(mut self, n: usize) -> ListenOptions {
        self.max_accepts_per_batch = n.max(1);
        self
    }

    /// The write window of every accepted socket (default 1 MiB; see
    /// [`Stream::set_write_window`](crate::stream::Stream::set_write_window)). `None` lets
    /// writes queue without bound.
    pub fn write_window(mut self, window: Option<usize>) -> ListenOptions {
        self.write_window = window;
        self
    }

    /// What a panic in `new_connect` does (default [`OnHandlerError::Raise`]).
    pub fn on_handler_error(mut self, policy: OnHandlerError) -> ListenOptions {
        self.on_handler_error = policy;
        self
    }

    /// How a listen on a pool shares the address between its tasks (default
    /// [`PoolListener::PerTask`]). Ignored by a listen on one task.
    pub fn pool_listener(mut self, mode: PoolListener) -> ListenOptions {
        self.pool_listener = mode;
        self
    }

    /// The permission bits of a Unix-domain listener's socket file (`0o660` lets only its
    /// owner and group connect), set before it listens. Unset, the process's umask decides.
    /// Ignored by TCP listeners and by abstract names.
    pub fn unix_mode(mut self, mode: u32) -> ListenOptions {
        self.unix_mode = Some(mode & 0o7777);
        self
    }

    /// Turns TCP keepalive on for every accepted socket (default off). Ignored by
    /// Unix-domain listeners.
    pub fn keepalive(mut self, keepalive: Keepalive) -> ListenOptions {
        self.keepalive = Some(keepalive);
        self
    }

    /// `SO_SNDBUF` of every accepted socket (default: the system's, which Linux sizes
    /// itself as the connection goes). The kernel may round or double it.
    pub fn send_buffer_size(mut self, bytes: usize) -> ListenOptions {
        self.send_buffer_size = Some(bytes);
        self
    }

    /// `SO_RCVBUF` of every accepted socket (default: the system's). The kernel may round
    /// or double it.
    pub fn recv_buffer_size(mut self, bytes: usize) -> ListenOptions {
        self.recv_buffer_size = Some(bytes);
        self
    }

    /// The configured backlog.
    pub fn get_backlog(&self) -> u32 {
        self.backlog
    }
}
