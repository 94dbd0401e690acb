//! UDP sockets served by the same I/O task as the TCP and Unix-domain ones.
//!
//! A [`UdpSocket`] is bound with [`UdpSocket::bind`] and then used like a stream socket:
//! datagrams arrive on a [`DatagramPort`] ([`recv_start`](UdpSocket::recv_start)), one at a
//! time through a [`RecvFuture`] ([`recv_from`](UdpSocket::recv_from)), or in a
//! [`Mailbox`](crate::Mailbox) next to the events of TCP sockets
//! ([`attach`](UdpSocket::attach)); [`send_to`](UdpSocket::send_to) returns a
//! [`SendFuture`].
//!
//! What UDP is, iotask keeps: every datagram arrives whole or not at all, with its sender;
//! one longer than [`max_datagram`](UdpSocket::set_max_datagram) is cut to it and flagged
//! [`truncated`](Datagram::truncated). A reader that falls behind by more than its window
//! makes the I/O task drop datagrams, never queue without bound; the count is
//! [`dropped`](UdpSocket::dropped). Datagrams sent while the kernel cannot take them wait in
//! the I/O task and go out in order.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use iotask::udp::UdpSocket;
//!
//! let iotask = iotask::IoTask::spawn()?;
//! let server = UdpSocket::bind("127.0.0.1:0", &iotask)?;
//! let client = UdpSocket::bind("127.0.0.1:0", &iotask)?;
//!
//! client.send_to(b"ping".to_vec(), server.local_addr()?).get()?;
//! let ping = server.recv_from(Duration::from_secs(5))?;
//! assert_eq!(ping.data, b"ping");
//! server.send_to(b"pong".to_vec(), ping.from).get()?;
//! assert_eq!(client.recv_from(Duration::from_secs(5))?.data, b"pong");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::error::Error;
use crate::io_task::IoTask;
use crate::io_task::datagram::{DatagramPortParts, RawDatagram, Received, datagram_cost};
use crate::io_task::entry::Key;
use crate::io_task::timers::deadline_after;
use crate::mailbox::{MailboxSender, SocketId};
use crate::oneshot;

pub use crate::io_task::datagram::Datagram;
pub use crate::tcp::ToListenAddrs;

/// A UDP socket served by an I/O task.
///
/// The socket is `Send + Sync`; [`try_clone`](UdpSocket::try_clone) gives another handle,
/// and it closes when the last is dropped. As with stream sockets, one reader at a time
/// receives its datagrams (a port, a future or a mailbox; another gets `"BUSY"`), while
/// any handle sends.
pub struct UdpSocket {
    raw: RawDatagram,
}

/// How [`UdpSocket::bind_with`] prepares a socket before binding it.
///
/// # Examples
///
/// Two sockets on one port, as multicast receivers (or several receivers of one port's
/// unicast traffic, which Linux spreads between them) are:
///
/// ```
/// use iotask::udp::{UdpOptions, UdpSocket};
///
/// let iotask = iotask::IoTask::spawn()?;
/// let options = UdpOptions::new().reuse_address(true).reuse_port(true);
/// let a = UdpSocket::bind_with("127.0.0.1:0", &options, &iotask)?;
/// let b = UdpSocket::bind_with(a.local_addr()?, &options, &iotask)?;
/// assert_eq!(a.local_addr()?, b.local_addr()?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct UdpOptions {
    reuse_address: bool,
    reuse_port: bool,
    only_v6: Option<bool>,
    broadcast: bool,
    recv_buffer_size: Option<usize>,
    send_buffer_size: Option<usize>,
    /// `bind_pool`'s sockets: the system's port sharing that spreads datagrams.
    spread: bool,
}

impl UdpOptions {
    /// The defaults: no address or port sharing, no broadcast, the system's buffer sizes.
    pub fn new() -> UdpOptions {
        UdpOptions::default()
    }

    /// Sets `SO_REUSEADDR` before binding (default false): on Linux, sockets that all set
    /// it may bind one address; on the BSDs and macOS, sockets may bind one multicast
    /// address and port.
    pub fn reuse_address(mut self, on: bool) -> UdpOptions {
        self.reuse_address = on;
        self
    }

    /// Sets `SO_REUSEPORT` before binding (default false): sockets of the same user that
    /// all set it may bind one address and port. Each gets a copy of a multicast or
    /// broadcast datagram; unicast datagrams are spread between them on Linux, and go to
    /// one of them elsewhere.
    ///
    /// On Linux, keep the sockets of one port alike in their multicast memberships: when
    /// only some are members of a group, the kernel has been seen (6.18, with
    /// `net.ipv4.udp_early_demux` on, the default) to hand the group's datagram to a
    /// socket of the port chosen by hash, member or not (`tests/udp_multicast.rs`).
    pub fn reuse_port(mut self, on: bool) -> UdpOptions {
        self.reuse_port = on;
        self
    }

    /// Sets `IPV6_V6ONLY` on an IPv6 socket: true receives IPv6 only, false IPv4 too.
    /// Unset, the system default applies (on Linux, normally false). Ignored for IPv4.
    pub fn only_v6(mut self, on: bool) -> UdpOptions {
        self.only_v6 = Some(on);
        self
    }

    /// Sets `SO_BROADCAST` (default false), without which sending to a broadcast address
    /// fails with `"EACCES"`.
    pub fn broadcast(mut self, on: bool) -> UdpOptions {
        self.broadcast = on;
        self
    }

    /// Sets `SO_RCVBUF`: how many bytes of datagrams the kernel holds for the socket before
    /// it drops new ones (the kernel may double or cap it).
    pub fn recv_buffer_size(mut self, bytes: usize) -> UdpOptions {
        self.recv_buffer_size = Some(bytes);
        self
    }

    /// Sets `SO_SNDBUF`.
    pub fn send_buffer_size(mut self, bytes: usize) -> UdpOptions {
        self.send_buffer_size = Some(bytes);
        self
    }

    /// A socket for `addr`, prepared and bound.
    fn bind(&self, addr: SocketAddr) -> std::io::Result<Socket> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if self.reuse_address {
            socket.set_reuse_address(true)?;
        }
        if self.spread {
            // Where plain `SO_REUSEPORT` does not spread datagrams but a variant does.
            crate::io_task::sys::set_reuse_port(&socket)?;
        } else if self.reuse_port {
            socket.set_reuse_port(true)?;
        }
        if let (Some(only), SocketAddr::V6(_)) = (self.only_v6, addr) {
            socket.set_only_v6(only)?;
        }
        if self.broadcast {
            socket.set_broadcast(true)?;
        }
        if let Some(bytes) = self.recv_buffer_size {
            socket.set_recv_buffer_size(bytes)?;
        }
        if let Some(bytes) = self.send_buffer_size {
            socket.set_send_buffer_size(bytes)?;
        }
        socket.bind(&addr.into())?;
        Ok(socket)
    }
}

impl UdpSocket {
    /// Binds a UDP socket to `addr` and serves it on `iotask`.
    ///
    /// `addr` takes the forms servers take ([`ToListenAddrs`]): `"127.0.0.1:5353"`,
    /// `"[::1]:0"`, `"localhost:5353"`, or a bare port (`"5353"`, `5353u16`) for every
    /// interface, IPv6 and IPv4 where the system has IPv6. Each address is tried in turn
    /// until one binds.
    ///
    /// # Errors
    ///
    /// The last address's error: `"EADDRINUSE"` when another socket has the port,
    /// `"EADDRNOTAVAIL"` for an address this machine does not have, `"EINVAL"` for an
    /// address that parses to nothing; `"SHUTDOWN"` when the I/O task stopped.
    pub fn bind<A: ToListenAddrs>(addr: A, iotask: &IoTask) -> Result<UdpSocket, Error> {
        UdpSocket::bind_with(addr, &UdpOptions::default(), iotask)
    }

    /// As [`bind`](UdpSocket::bind), preparing the socket with `options` first.
    ///
    /// # Errors
    ///
    /// As [`bind`](UdpSocket::bind), and an option the system refuses.
    pub fn bind_with<A: ToListenAddrs>(
        addr: A,
        options: &UdpOptions,
        iotask: &IoTask,
    ) -> Result<UdpSocket, Error> {
        let addrs = addr.to_listen_addrs()?;
        let mut last = Error::new(
            "EINVAL",
            "the address resolved to nothing",
            std::io::ErrorKind::InvalidInput,
        );
        for addr in addrs {
            match options.bind(addr) {
                Ok(socket) => return UdpSocket::adopt(socket, iotask),
                Err(e) => last = Error::from(e),
            }
        }
        Err(last)
    }

    /// One socket on every I/O task of `pool`, all bound to the same address with
    /// `SO_REUSEPORT` (set whatever `options` say): the kernel spreads incoming datagrams
    /// over them by their sender's address and port, so each task serves its share and a
    /// sender's datagrams all reach one socket. The `i`-th socket is served by the pool's
    /// `i`-th task; give each to an actor of its own.
    ///
    /// Linux and FreeBSD (with `SO_REUSEPORT_LB`) spread unicast datagrams; on macOS,
    /// NetBSD and OpenBSD the last socket bound receives them all, so a pool there serves
    /// no more than one task would.
    ///
    /// # Errors
    ///
    /// As [`bind`](UdpSocket::bind); the sockets bound before a failure are closed.
    ///
    /// # Examples
    ///
    /// ```
    /// use iotask::{IoPool, udp::{UdpOptions, UdpSocket}};
    ///
    /// let pool = IoPool::spawn(2)?;
    /// let sockets = UdpSocket::bind_pool("127.0.0.1:0", &UdpOptions::new(), &pool)?;
    /// assert_eq!(sockets.len(), 2);
    /// assert_eq!(sockets[0].local_addr()?, sockets[1].local_addr()?);
    /// # pool.shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn bind_pool<A: ToListenAddrs>(
        addr: A,
        options: &UdpOptions,
        pool: &crate::IoPool,
    ) -> Result<Vec<UdpSocket>, Error> {
        let options = UdpOptions {
            spread: true,
            ..options.clone()
        };
        let mut sockets: Vec<UdpSocket> = Vec::with_capacity(pool.tasks().len());
        for task in pool.tasks() {
            let socket = match sockets.first() {
                None => UdpSocket::bind_with(&addr, &options, task)?,
                // The others bind where the first did, port 0 resolved.
                Some(first) => UdpSocket::bind_with(first.local_addr()?, &options, task)?,
            };
            sockets.push(socket);
        }
        Ok(sockets)
    }

    /// Serves a socket bound with the standard library (its options are kept).
    ///
    /// # Errors
    ///
    /// `"SHUTDOWN"` when the I/O task stopped.
    pub fn from_std(socket: std::net::UdpSocket, iotask: &IoTask) -> Result<UdpSocket, Error> {
        UdpSocket::adopt(Socket::from(socket), iotask)
    }

    fn adopt(socket: Socket, iotask: &IoTask) -> Result<UdpSocket, Error> {
        Ok(UdpSocket {
            raw: RawDatagram::adopt(iotask.shared(), socket)?,
        })
    }

    /// The address the socket is bound to (with the port the system chose for port 0).
    ///
    /// # Errors
    ///
    /// The system's error, which does not happen for a bound socket.
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        inet(self.raw.socket().local_addr()?)
    }

    /// The peer given to [`connect`](UdpSocket::connect).
    ///
    /// # Errors
    ///
    /// `"ENOTCONN"` when the socket is not connected.
    pub fn peer_addr(&self) -> Result<SocketAddr, Error> {
        inet(self.raw.socket().peer_addr()?)
    }

    /// Connects the socket to `addr`: [`send`](UdpSocket::send) then sends there, only
    /// datagrams from `addr` are received, and an ICMP error from it (nobody listening) is
    /// reported as `"ECONNREFUSED"`: to the reader (a port's or future's `Err`, a mailbox's
    /// [`DatagramError`](crate::Event::DatagramError)), or else to the next send. Connecting
    /// again changes the peer. Nothing is sent: UDP has no handshake.
    ///
    /// # Errors
    ///
    /// `"EAFNOSUPPORT"` or `"EINVAL"` for an address of the other IP version (an IPv6
    /// socket reaches IPv4 peers through IPv4-mapped addresses), `"ENETUNREACH"` without a
    /// route.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use iotask::udp::UdpSocket;
    /// # let iotask = iotask::IoTask::spawn()?;
    /// let sock = UdpSocket::bind("127.0.0.1:0", &iotask)?;
    /// // A port nobody listens on: the host answers with an ICMP "port unreachable".
    /// let nobody = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
    /// sock.connect(nobody)?;
    /// let port = sock.recv_start()?;
    /// sock.send(b"anyone there?".to_vec()).get()?;
    /// let error = port.recv_timeout(Duration::from_secs(5)).unwrap_err();
    /// assert_eq!(error.name(), "ECONNREFUSED");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn connect(&self, addr: SocketAddr) -> Result<(), Error> {
        Ok(self.raw.socket().connect(&addr.into())?)
    }

    /// This socket's identity, as mailbox events carry it. Unique in the process, and
    /// shared with the TCP and Unix-domain sockets' ids.
    pub fn id(&self) -> SocketId {
        SocketId(self.raw.key().id)
    }

    /// Starts delivering datagrams to a new port. Datagrams given back by an earlier
    /// [`recv_stop`](UdpSocket::recv_stop) come first.
    ///
    /// The port holds at most about one read window of datagrams (see
    /// [`Builder::read_window`](crate::Builder::read_window); each datagram counts its
    /// length plus 64 bytes): datagrams that arrive while it is full are dropped and
    /// counted in [`dropped`](UdpSocket::dropped).
    ///
    /// # Errors
    ///
    /// `"BUSY"` when another port, future or mailbox receives the datagrams; `"CLOSED"` or
    /// `"SHUTDOWN"` when the socket or the I/O task is gone.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use iotask::udp::UdpSocket;
    /// # let iotask = iotask::IoTask::spawn()?;
    /// let sock = UdpSocket::bind("127.0.0.1:0", &iotask)?;
    /// let port = sock.recv_start()?;
    /// let peer = std::net::UdpSocket::bind("127.0.0.1:0")?;
    /// for word in ["one", "two"] {
    ///     peer.send_to(word.as_bytes(), sock.local_addr()?)?;
    /// }
    /// assert_eq!(port.recv_timeout(Duration::from_secs(5))?.data, b"one");
    /// assert_eq!(port.recv_timeout(Duration::from_secs(5))?.data, b"two");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv_start(&self) -> Result<DatagramPort, Error> {
        let parts = self.raw.recv_start()?;
        Ok(DatagramPort {
            key: self.raw.key(),
            parts,
            end: OnceLock::new(),
        })
    }

    /// Stops delivering datagrams to `port` without losing any: those still in the port
    /// go, in order, to the next reader; datagrams arriving meanwhile wait in the kernel's
    /// receive buffer (which drops what does not fit).
    ///
    /// # Errors
    ///
    /// `"EINVAL"` when the port belongs to another socket (it is dropped); `"CLOSED"` or
    /// `"SHUTDOWN"` when the socket or the I/O task is gone.
    pub fn recv_stop(&self, port: DatagramPort) -> Result<(), Error> {
        if port.key != self.raw.key() {
            return Err(Error::new(
                "EINVAL",
                "the port belongs to another socket",
                std::io::ErrorKind::InvalidInput,
            ));
        }
        self.raw.recv_stop(port.parts)
    }

    /// Receives one datagram, waiting at most `timeout`: `recv_from_future(timeout).get()`.
    ///
    /// # Errors
    ///
    /// As [`RecvFuture::get`].
    pub fn recv_from(&self, timeout: Duration) -> Result<Datagram, Error> {
        self.recv_from_future(timeout).get()
    }

    /// Receives one datagram from the connected peer, waiting at most `timeout`. The same
    /// as [`recv_from`](UdpSocket::recv_from): on a connected socket every datagram comes
    /// from the peer.
    ///
    /// # Errors
    ///
    /// As [`RecvFuture::get`]; `"ECONNREFUSED"` when the peer's host answered an earlier
    /// datagram with "port unreachable".
    pub fn recv(&self, timeout: Duration) -> Result<Datagram, Error> {
        self.recv_from(timeout)
    }

    /// Starts receiving one datagram and returns at once; the future resolves with the
    /// datagram, an error read from the socket, or `"ETIMEDOUT"` after `timeout`
    /// (`Duration::MAX`: never). Dropping it unresolved loses nothing: a datagram that
    /// reached it goes to the next reader.
    pub fn recv_from_future(&self, timeout: Duration) -> RecvFuture {
        match self.raw.recv_once(deadline_after(timeout)) {
            Ok(rx) => RecvFuture {
                state: RecvState::Waiting(rx),
            },
            Err(e) => RecvFuture {
                state: RecvState::Ready(Some(Err(e))),
            },
        }
    }

    /// Sends `data` as one datagram to `addr`, after every datagram sent before it through
    /// any handle; returns at once. The future resolves with the bytes sent (all of them)
    /// once the kernel has the datagram, or with why it refused it. Dropping the future
    /// does not cancel the send.
    ///
    /// Datagrams the kernel cannot take yet (its send buffer is full) wait in the I/O task,
    /// up to the [send queue limit](UdpSocket::set_send_queue_limit);
    /// [`queued`](UdpSocket::queued) counts them.
    ///
    /// # Errors (of the future)
    ///
    /// `"EMSGSIZE"` for a datagram larger than the protocol allows (65,507 bytes of IPv4
    /// payload) or, with path MTU discovery forced, than the path; `"EACCES"` for a
    /// broadcast address without [`set_broadcast`](UdpSocket::set_broadcast);
    /// `"ENETUNREACH"`, `"EHOSTUNREACH"`; `"ECONNREFUSED"` on a connected socket whose
    /// peer refused an earlier datagram (this datagram was not sent); `"ENOBUFS"` when the
    /// send queue is at its limit (not sent); `"CLOSED"` or
    /// `"SHUTDOWN"` when the socket or the I/O task went away first.
    pub fn send_to(&self, data: impl Into<Vec<u8>>, addr: SocketAddr) -> SendFuture {
        self.send_inner(data.into(), Some(addr))
    }

    /// Sends `data` as one datagram to the connected peer; as [`send_to`](UdpSocket::send_to).
    /// On a socket that is not connected the future fails with `"EDESTADDRREQ"` (or
    /// `"ENOTCONN"`).
    pub fn send(&self, data: impl Into<Vec<u8>>) -> SendFuture {
        self.send_inner(data.into(), None)
    }

    /// Sends `data` to `addr` and blocks until the kernel has it: `send_to(..).get()`.
    ///
    /// # Errors
    ///
    /// As [`send_to`](UdpSocket::send_to).
    pub fn send_to_blocking(
        &self,
        data: impl Into<Vec<u8>>,
        addr: SocketAddr,
    ) -> Result<usize, Error> {
        self.send_to(data, addr).get()
    }

    fn send_inner(&self, data: Vec<u8>, to: Option<SocketAddr>) -> SendFuture {
        match self.raw.send(data, to) {
            Ok(rx) => SendFuture {
                state: SendState::Waiting(rx),
            },
            Err(e) => SendFuture {
                state: SendState::Ready(Some(Err(e))),
            },
        }
    }

    /// Delivers this socket's datagrams to `mailbox` as
    /// [`Event::Datagram`](crate::Event::Datagram), in the I/O task's batches together with
    /// the events of every other socket attached to it; errors read from the socket come as
    /// [`Event::DatagramError`](crate::Event::DatagramError), and
    /// [`Event::Closed`](crate::Event::Closed) when the socket is dropped or the I/O task
    /// stops. It does not wait for the I/O task: a refusal (`"BUSY"` while another reader
    /// has the socket) reaches the mailbox as `Closed`.
    ///
    /// Datagrams that arrive while the mailbox holds more than its window are dropped and
    /// counted in [`dropped`](UdpSocket::dropped).
    ///
    /// # Errors
    ///
    /// `"SHUTDOWN"` when the I/O task stopped.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// use iotask::{Event, Mailbox, udp::UdpSocket};
    ///
    /// # let iotask = iotask::IoTask::spawn()?;
    /// let sock = UdpSocket::bind("127.0.0.1:0", &iotask)?;
    /// let mut mailbox: Mailbox = Mailbox::new();
    /// sock.attach(&mailbox)?;
    /// let peer = std::net::UdpSocket::bind("127.0.0.1:0")?;
    /// peer.send_to(b"hi", sock.local_addr()?)?;
    /// match mailbox.recv_timeout(Duration::from_secs(5)) {
    ///     Some(Event::Datagram { socket, datagram }) => {
    ///         assert_eq!(socket, sock.id());
    ///         assert_eq!(datagram.data, b"hi");
    ///         assert_eq!(datagram.from, peer.local_addr()?);
    ///     }
    ///     other => panic!("{other:?}"),
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn attach<M: Send + 'static>(
        &self,
        mailbox: &impl AsRef<MailboxSender<M>>,
    ) -> Result<(), Error> {
        let sender = mailbox.as_ref();
        self.raw.attach(sender.inbox(), sender.window())
    }

    /// Stops delivering datagrams to the mailbox this socket is attached to; what it
    /// already received stays there, and later datagrams wait in the kernel for the next
    /// reader. It takes effect when the I/O task gets to it.
    ///
    /// # Errors
    ///
    /// `"SHUTDOWN"` when the I/O task stopped.
    pub fn detach(&self) -> Result<(), Error> {
        self.raw.detach()
    }

    /// Another handle to the same socket; the socket closes when the last is dropped.
    ///
    /// # Errors
    ///
    /// `"SHUTDOWN"` when the I/O task stopped.
    pub fn try_clone(&self) -> Result<UdpSocket, Error> {
        Ok(UdpSocket {
            raw: self.raw.try_clone()?,
        })
    }

    /// Datagrams received and dropped because the reader (port or mailbox) held more than
    /// its window: how far behind the reader fell. Datagrams the kernel dropped because
    /// nobody read its buffer in time are not seen by iotask and not counted.
    pub fn dropped(&self) -> u64 {
        self.raw.state().dropped.load(Ordering::Relaxed)
    }

    /// Datagrams sent and not yet taken by the kernel.
    pub fn queued(&self) -> usize {
        self.raw.state().queued.load(Ordering::Relaxed)
    }

    /// Bytes of the datagrams sent and not yet taken by the kernel.
    pub fn queued_bytes(&self) -> usize {
        self.raw.state().queued_bytes.load(Ordering::Relaxed)
    }

    /// Bounds the bytes of datagrams waiting for the kernel (default 4 MiB; `None`: no
    /// bound). A send that would pass the bound fails at once with `"ENOBUFS"` and is not
    /// sent, as the kernel itself does when its queue is full: an actor that sends faster
    /// than the network takes loses datagrams instead of memory. An empty queue takes any
    /// one datagram. Applies to the sends made after it.
    pub fn set_send_queue_limit(&self, bytes: Option<usize>) {
        self.raw
            .state()
            .queue_limit
            .store(bytes.unwrap_or(usize::MAX), Ordering::Relaxed);
    }

    /// The bound on bytes waiting for the kernel (`None`: none).
    pub fn send_queue_limit(&self) -> Option<usize> {
        match self.raw.state().queue_limit.load(Ordering::Relaxed) {
            usize::MAX => None,
            bytes => Some(bytes),
        }
    }

    /// Sets the largest datagram received whole (default 65,536 bytes, more than any
    /// IPv4 or non-jumbo IPv6 datagram); a longer one is cut to it and flagged
    /// [`truncated`](Datagram::truncated). Applies from the next datagram received.
    ///
    /// # Errors
    ///
    /// `"EINVAL"` for 0 or more than 16 MiB.
    pub fn set_max_datagram(&self, bytes: usize) -> Result<(), Error> {
        if bytes == 0 || bytes > 16 << 20 {
            return Err(Error::new(
                "EINVAL",
                "max_datagram must be between 1 byte and 16 MiB",
                std::io::ErrorKind::InvalidInput,
            ));
        }
        self.raw
            .state()
            .max_datagram
            .store(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// The largest datagram received whole.
    pub fn max_datagram(&self) -> usize {
        self.raw.state().max_datagram.load(Ordering::Relaxed)
    }

    /// Whether sending to broadcast addresses is allowed (`SO_BROADCAST`).
    ///
    /// # Errors
    ///
    /// The system's error.
    pub fn broadcast(&self) -> Result<bool, Error> {
        Ok(self.raw.socket().broadcast()?)
    }

    /// Allows or forbids sending to broadcast addresses (`SO_BROADCAST`).
    ///
    /// # Errors
    ///
    /// The system's error.
    pub fn set_broadcast(&self, on: bool) -> Result<(), Error> {
        Ok(self.raw.socket().set_broadcast(on)?)
    }

    /// The time-to-live of unicast datagrams sent (IPv4 `IP_TTL`; IPv6 unicast hops).
    ///
    /// # Errors
    ///
    /// The system's error.
    pub fn ttl(&self) -> Result<u32, Error> {
        let socket = self.raw.socket();
        Ok(match self.is_v6()? {
            true => socket.unicast_hops_v6()?,
            false => socket.ttl_v4()?,
        })
    }

    /// Sets the time-to-live (IPv4) or hop limit (IPv6) of unicast datagrams sent.
    ///
    /// # Errors
    ///
    /// `"EINVAL"` for 0 or more than 255.
    pub fn set_ttl(&self, ttl: u32) -> Result<(), Error> {
        check_hops(ttl)?;
        let socket = self.raw.socket();
        match self.is_v6()? {
            true => socket.set_unicast_hops_v6(ttl)?,
            false => socket.set_ttl_v4(ttl)?,
        }
        Ok(())
    }

    /// Joins the IPv4 multicast `group` on the interface with address `interface`
    /// (`Ipv4Addr::UNSPECIFIED`: the system chooses). The socket must be bound to the
    /// group's port (or to the group's address and port), and receives the group's
    /// datagrams until it leaves or closes.
    ///
    /// On Linux a socket bound to the wildcard address also receives the datagrams of
    /// every group that *another* socket of the host has joined on its port, before it
    /// joins and after it leaves, unless it turns that off with
    /// [`set_multicast_all`](UdpSocket::set_multicast_all).
    ///
    /// # Errors
    ///
    /// `"EINVAL"` for an address that is not multicast, `"EADDRINUSE"` when already a
    /// member, `"ENODEV"` or `"EADDRNOTAVAIL"` for an unknown interface.
    pub fn join_multicast_v4(&self, group: Ipv4Addr, interface: Ipv4Addr) -> Result<(), Error> {
        Ok(self.raw.socket().join_multicast_v4(&group, &interface)?)
    }

    /// Leaves an IPv4 multicast group joined with
    /// [`join_multicast_v4`](UdpSocket::join_multicast_v4).
    ///
    /// # Errors
    ///
    /// `"EADDRNOTAVAIL"` when not a member.
    pub fn leave_multicast_v4(&self, group: Ipv4Addr, interface: Ipv4Addr) -> Result<(), Error> {
        Ok(self.raw.socket().leave_multicast_v4(&group, &interface)?)
    }

    /// Joins the IPv6 multicast `group` on the interface with index `interface` (0: the
    /// system chooses).
    ///
    /// # Errors
    ///
    /// As [`join_multicast_v4`](UdpSocket::join_multicast_v4).
    pub fn join_multicast_v6(&self, group: Ipv6Addr, interface: u32) -> Result<(), Error> {
        Ok(self.raw.socket().join_multicast_v6(&group, interface)?)
    }

    /// Leaves an IPv6 multicast group.
    ///
    /// # Errors
    ///
    /// `"EADDRNOTAVAIL"` when not a member.
    pub fn leave_multicast_v6(&self, group: Ipv6Addr, interface: u32) -> Result<(), Error> {
        Ok(self.raw.socket().leave_multicast_v6(&group, interface)?)
    }

    /// The time-to-live of multicast datagrams sent (default 1: the local network).
    /// IPv4 `IP_MULTICAST_TTL`; IPv6 `IPV6_MULTICAST_HOPS`.
    ///
    /// # Errors
    ///
    /// The system's error.
    pub fn multicast_ttl(&self) -> Result<u32, Error> {
        let socket = self.raw.socket();
        Ok(match self.is_v6()? {
            true => socket.multicast_hops_v6()?,
            false => socket.multicast_ttl_v4()?,
        })
    }

    /// Sets the time-to-live of multicast datagrams sent.
    ///
    /// # Errors
    ///
    /// `"EINVAL"` for more than 255.
    pub fn set_multicast_ttl(&self, ttl: u32) -> Result<(), Error> {
        if ttl > 255 {
            return Err(Error::new(
                "EINVAL",
                "a multicast time-to-live is at most 255",
                std::io::ErrorKind::InvalidInput,
            ));
        }
        let socket = self.raw.socket();
        match self.is_v6()? {
            true => socket.set_multicast_hops_v6(ttl)?,
            false => socket.set_multicast_ttl_v4(ttl)?,
        }
        Ok(())
    }

    /// Whether multicast datagrams sent come back to this host's members of the group
    /// (default true). IPv4 `IP_MULTICAST_LOOP`; IPv6 `IPV6_MULTICAST_LOOP`.
    ///
    /// # Errors
    ///
    /// The system's error.
    pub fn multicast_loop(&self) -> Result<bool, Error> {
        let socket = self.raw.socket();
        Ok(match self.is_v6()? {
            true => socket.multicast_loop_v6()?,
            false => socket.multicast_loop_v4()?,
        })
    }

    /// Sets whether multicast datagrams sent come back to this host's members.
    ///
    /// # Errors
    ///
    /// The system's error.
    pub fn set_multicast_loop(&self, on: bool) -> Result<(), Error> {
        let socket = self.raw.socket();
        match self.is_v6()? {
            true => socket.set_multicast_loop_v6(on)?,
            false => socket.set_multicast_loop_v4(on)?,
        }
        Ok(())
    }

    /// Whether the socket receives the datagrams of groups it has not joined itself
    /// (Linux's `IP_MULTICAST_ALL` / `IPV6_MULTICAST_ALL`, on by default; see
    /// [`join_multicast_v4`](UdpSocket::join_multicast_v4)). Turn it off on a wildcard-bound
    /// socket that must receive exactly its own groups.
    ///
    /// # Errors
    ///
    /// The system's error.
    #[cfg(target_os = "linux")]
    pub fn set_multicast_all(&self, on: bool) -> Result<(), Error> {
        let socket = self.raw.socket();
        match self.is_v6()? {
            true => socket.set_multicast_all_v6(on)?,
            false => socket.set_multicast_all_v4(on)?,
        }
        Ok(())
    }

    /// Whether the socket receives the datagrams of groups it has not joined itself.
    ///
    /// # Errors
    ///
    /// The system's error.
    #[cfg(target_os = "linux")]
    pub fn multicast_all(&self) -> Result<bool, Error> {
        let socket = self.raw.socket();
        Ok(match self.is_v6()? {
            true => socket.multicast_all_v6()?,
            false => socket.multicast_all_v4()?,
        })
    }

    /// Sends IPv4 multicast datagrams through the interface with address `interface`.
    ///
    /// # Errors
    ///
    /// `"EADDRNOTAVAIL"` for an address this host does not have.
    pub fn set_multicast_if_v4(&self, interface: Ipv4Addr) -> Result<(), Error> {
        Ok(self.raw.socket().set_multicast_if_v4(&interface)?)
    }

    /// Sends IPv6 multicast datagrams through the interface with index `interface`.
    ///
    /// # Errors
    ///
    /// `"ENXIO"` or `"EINVAL"` for an unknown interface.
    pub fn set_multicast_if_v6(&self, interface: u32) -> Result<(), Error> {
        Ok(self.raw.socket().set_multicast_if_v6(interface)?)
    }

    /// The kernel's receive buffer size (`SO_RCVBUF`).
    ///
    /// # Errors
    ///
    /// The system's error.
    pub fn recv_buffer_size(&self) -> Result<usize, Error> {
        Ok(self.raw.socket().recv_buffer_size()?)
    }

    /// Sets the kernel's receive buffer size (the kernel may double or cap it).
    ///
    /// # Errors
    ///
    /// The system's error.
    pub fn set_recv_buffer_size(&self, bytes: usize) -> Result<(), Error> {
        Ok(self.raw.socket().set_recv_buffer_size(bytes)?)
    }

    /// The kernel's send buffer size (`SO_SNDBUF`).
    ///
    /// # Errors
    ///
    /// The system's error.
    pub fn send_buffer_size(&self) -> Result<usize, Error> {
        Ok(self.raw.socket().send_buffer_size()?)
    }

    /// Sets the kernel's send buffer size (the kernel may double or cap it).
    ///
    /// # Errors
    ///
    /// The system's error.
    pub fn set_send_buffer_size(&self, bytes: usize) -> Result<(), Error> {
        Ok(self.raw.socket().set_send_buffer_size(bytes)?)
    }

    fn is_v6(&self) -> Result<bool, Error> {
        Ok(self.local_addr()?.is_ipv6())
    }
}

#[cfg(unix)]
impl std::os::fd::AsFd for UdpSocket {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.raw.socket().as_fd()
    }
}

#[cfg(unix)]
impl std::os::fd::AsRawFd for UdpSocket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.raw.socket().as_raw_fd()
    }
}

impl fmt::Debug for UdpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdpSocket")
            .field("id", &self.id())
            .field("local_addr", &self.local_addr().ok())
            .finish()
    }
}

fn inet(addr: socket2::SockAddr) -> Result<SocketAddr, Error> {
    addr.as_socket().ok_or_else(|| {
        Error::new(
            "EAFNOSUPPORT",
            "not an IP address",
            std::io::ErrorKind::InvalidInput,
        )
    })
}

fn check_hops(ttl: u32) -> Result<(), Error> {
    if ttl == 0 || ttl > 255 {
        return Err(Error::new(
            "EINVAL",
            "a time-to-live is between 1 and 255",
            std::io::ErrorKind::InvalidInput,
        ));
    }
    Ok(())
}

/// Receives the datagrams of one [`UdpSocket`], in the order the kernel gave them; made by
/// [`recv_start`](UdpSocket::recv_start).
///
/// `recv` returns `Ok(datagram)`, or `Err` for an error read from the socket (such as
/// `"ECONNREFUSED"` on a connected socket), after which datagrams go on arriving. When the
/// socket is dropped or the I/O task stops the port ends: it returns `"CLOSED"` or
/// `"SHUTDOWN"` then, and on every later call ([`is_ended`](DatagramPort::is_ended) tells).
///
/// Give the port back with [`recv_stop`](UdpSocket::recv_stop) to stop receiving without
/// losing what it holds; dropping it discards those datagrams.
pub struct DatagramPort {
    key: Key,
    parts: DatagramPortParts,
    /// The error that ended the port, repeated to every later call.
    end: OnceLock<Error>,
}

impl DatagramPort {
    /// Blocks until the next datagram or error.
    ///
    /// # Errors
    ///
    /// An error read from the socket (the port goes on); `"CLOSED"` or `"SHUTDOWN"` when
    /// the port ended.
    pub fn recv(&self) -> Result<Datagram, Error> {
        if let Some(end) = self.end.get() {
            return Err(end.clone());
        }
        self.take(self.parts.rx.recv().ok())
    }

    /// Like [`recv`](DatagramPort::recv), but gives up after `timeout`.
    ///
    /// # Errors
    ///
    /// `"ETIMEDOUT"` ([`is_timeout`](Error::is_timeout)) when nothing came in time; this
    /// does not end the port. Otherwise as `recv`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Datagram, Error> {
        if let Some(end) = self.end.get() {
            return Err(end.clone());
        }
        match self.parts.rx.recv_timeout(timeout) {
            Ok(received) => self.take(Some(received)),
            Err(flume::RecvTimeoutError::Timeout) => Err(Error::timeout()),
            Err(flume::RecvTimeoutError::Disconnected) => self.take(None),
        }
    }

    /// Returns the next datagram or error if one is waiting, without blocking.
    pub fn try_recv(&self) -> Option<Result<Datagram, Error>> {
        if let Some(end) = self.end.get() {
            return Some(Err(end.clone()));
        }
        match self.parts.rx.try_recv() {
            Ok(received) => Some(self.take(Some(received))),
            Err(flume::TryRecvError::Empty) => None,
            Err(flume::TryRecvError::Disconnected) => Some(self.take(None)),
        }
    }

    /// How many datagrams (and errors) wait in the port, received by the I/O task and not
    /// yet by you.
    pub fn len(&self) -> usize {
        self.parts.rx.len()
    }

    /// Whether nothing waits in the port.
    pub fn is_empty(&self) -> bool {
        self.parts.rx.is_empty()
    }

    /// Whether the port ended: its socket closed or its I/O task stopped.
    pub fn is_ended(&self) -> bool {
        self.end.get().is_some()
    }

    fn take(&self, received: Option<Received>) -> Result<Datagram, Error> {
        match received {
            Some(Received::Datagram(datagram)) => {
                self.parts.window.sub(datagram_cost(&datagram));
                Ok(datagram)
            }
            Some(Received::Error(error)) => Err(error),
            Some(Received::End(error)) => Err(self.end.get_or_init(|| error).clone()),
            None => Err(self.end.get_or_init(Error::shutdown).clone()),
        }
    }
}

impl fmt::Debug for DatagramPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatagramPort")
            .field("queued", &self.parts.rx.len())
            .field("ended", &self.is_ended())
            .finish()
    }
}

/// One send in progress, made by [`send_to`](UdpSocket::send_to) or
/// [`send`](UdpSocket::send): resolves with the bytes sent once the kernel has the
/// datagram. Wait with [`get`](SendFuture::get) or `.await`; dropping it does not cancel
/// the send.
#[must_use = "the datagram is sent anyway; call `get` or `.await` to learn whether it was"]
pub struct SendFuture {
    state: SendState,
}

enum SendState {
    Waiting(oneshot::Receiver<Result<usize, Error>>),
    Ready(Option<Result<usize, Error>>),
}

impl SendFuture {
    /// Blocks until the kernel took the datagram or refused it.
    ///
    /// # Errors
    ///
    /// As [`send_to`](UdpSocket::send_to).
    pub fn get(self) -> Result<usize, Error> {
        match self.state {
            SendState::Waiting(rx) => rx.recv().unwrap_or_else(|_| Err(Error::shutdown())),
            SendState::Ready(result) => result.unwrap_or_else(|| Err(Error::shutdown())),
        }
    }

    /// Blocks until the kernel took the datagram or refused it, at most `timeout`; the
    /// datagram stays queued either way and the future can be waited on again.
    ///
    /// # Errors
    ///
    /// `"ETIMEDOUT"` when it was not sent in time; otherwise as
    /// [`send_to`](UdpSocket::send_to).
    pub fn get_timeout(&mut self, timeout: Duration) -> Result<usize, Error> {
        let deadline = Instant::now().checked_add(timeout);
        let result = match &mut self.state {
            SendState::Waiting(rx) => match rx.recv_deadline(deadline) {
                Ok(result) => result,
                Err(oneshot::RecvTimeoutError::Timeout) => return Err(Error::timeout()),
                Err(oneshot::RecvTimeoutError::Canceled) => Err(Error::shutdown()),
            },
            SendState::Ready(result) => result.take().unwrap_or_else(|| Err(Error::shutdown())),
        };
        self.state = SendState::Ready(Some(result.clone()));
        result
    }

    /// The outcome if the kernel has already taken or refused the datagram, without
    /// waiting; `None` while it is queued. Once it returned the outcome, later calls
    /// return it again.
    ///
    /// # Examples
    ///
    /// An actor that sends without waiting and counts the failures later:
    ///
    /// ```
    /// # use iotask::udp::UdpSocket;
    /// # let iotask = iotask::IoTask::spawn()?;
    /// # let sock = UdpSocket::bind("127.0.0.1:0", &iotask)?;
    /// # let peer = std::net::UdpSocket::bind("127.0.0.1:0")?;
    /// let mut pending = vec![sock.send_to(b"one".to_vec(), peer.local_addr()?)];
    /// pending.push(sock.send_to(vec![0; 70_000], peer.local_addr()?)); // too large
    /// let mut failed = 0;
    /// while !pending.is_empty() {
    ///     pending.retain_mut(|send| match send.try_get() {
    ///         Some(Ok(_)) => false,
    ///         Some(Err(_)) => {
    ///             failed += 1;
    ///             false
    ///         }
    ///         None => true,
    ///     });
    /// }
    /// assert_eq!(failed, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_get(&mut self) -> Option<Result<usize, Error>> {
        let result = match &mut self.state {
            SendState::Waiting(rx) => match rx.try_recv() {
                Ok(Some(result)) => result,
                Ok(None) => return None,
                Err(oneshot::Canceled) => Err(Error::shutdown()),
            },
            SendState::Ready(result) => {
                return Some(result.clone().unwrap_or_else(|| Err(Error::shutdown())));
            }
        };
        self.state = SendState::Ready(Some(result.clone()));
        Some(result)
    }
}

impl Future for SendFuture {
    type Output = Result<usize, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().state {
            SendState::Waiting(rx) => rx
                .poll_recv(cx)
                .map(|result| result.unwrap_or_else(|_| Err(Error::shutdown()))),
            SendState::Ready(result) => {
                Poll::Ready(result.take().unwrap_or_else(|| Err(Error::shutdown())))
            }
        }
    }
}

impl fmt::Debug for SendFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendFuture").finish_non_exhaustive()
    }
}

/// One receive in progress, made by [`recv_from_future`](UdpSocket::recv_from_future).
/// Until it resolves and its datagram is taken (or it is dropped), it is the socket's
/// reader.
#[must_use = "a receive future does nothing useful unless waited on"]
pub struct RecvFuture {
    state: RecvState,
}

enum RecvState {
    Waiting(oneshot::Receiver<Received>),
    Ready(Option<Result<Datagram, Error>>),
}

fn received(result: Result<Received, oneshot::Canceled>) -> Result<Datagram, Error> {
    match result {
        Ok(Received::Datagram(datagram)) => Ok(datagram),
        Ok(Received::Error(error) | Received::End(error)) => Err(error),
        Err(oneshot::Canceled) => Err(Error::shutdown()),
    }
}

impl RecvFuture {
    /// Blocks until a datagram or error arrives, or the timeout passes.
    ///
    /// # Errors
    ///
    /// `"ETIMEDOUT"` when nothing came in time; an error read from the socket
    /// (`"ECONNREFUSED"`); `"BUSY"` when a port, future or mailbox already receives this
    /// socket's datagrams; `"CLOSED"` or `"SHUTDOWN"`.
    pub fn get(self) -> Result<Datagram, Error> {
        match self.state {
            RecvState::Waiting(rx) => received(rx.recv()),
            RecvState::Ready(result) => result.unwrap_or_else(|| Err(Error::shutdown())),
        }
    }
}

impl Future for RecvFuture {
    type Output = Result<Datagram, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().state {
            RecvState::Waiting(rx) => rx.poll_recv(cx).map(received),
            RecvState::Ready(result) => {
                Poll::Ready(result.take().unwrap_or_else(|| Err(Error::shutdown())))
            }
        }
    }
}

impl fmt::Debug for RecvFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvFuture").finish_non_exhaustive()
    }
}
