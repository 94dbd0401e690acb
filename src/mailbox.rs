//! `Mailbox`: one queue for the reads of many sockets and an actor's own messages.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::error::{ConnectError, Error};
use crate::io_task::datagram::{Datagram, Received};
use crate::io_task::sink::{Delivery, Inbox, StreamKind, Window};
use crate::stream::{Family, Stream};
use crate::tcp::TcpSocket;
#[cfg(unix)]
use crate::unix::UnixSocket;

/// Default bytes a mailbox may hold unreceived before its sockets stop being read.
const DEFAULT_WINDOW: usize = 4 * 1024 * 1024;

/// The identity of a socket in mailbox events; unique in the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SocketId(pub(crate) u64);

impl fmt::Display for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "socket#{}", self.0)
    }
}

/// What an actor receives from its [`Mailbox`].
///
/// New kinds of events may come with new socket families, so a `match` needs a wildcard
/// arm.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<M> {
    /// Bytes read from an attached socket, in order per socket, never empty.
    Data {
        /// The socket they came from ([`TcpSocket::id`](crate::tcp::TcpSocket::id)).
        socket: SocketId,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Reading from an attached socket ended: `error` is `"EOF"` when the peer closed, the
    /// read error, `"CLOSED"` when the socket was dropped, or `"SHUTDOWN"`. It comes once per
    /// socket, after its last `Data` (or `Datagram`), and the socket is detached.
    Closed {
        /// The socket whose reading ended.
        socket: SocketId,
        /// Why.
        error: Error,
    },
    /// A TCP connection accepted by a listener that feeds this mailbox
    /// ([`Listener::into_mailbox`](crate::server::Listener::into_mailbox)). It is attached
    /// already: its `Data` and `Closed` events come after this one. Dropping it closes the
    /// connection.
    Accepted(TcpSocket),
    /// A Unix-domain connection accepted by a listener that feeds this mailbox; as
    /// [`Accepted`](Event::Accepted).
    #[cfg(unix)]
    AcceptedUnix(UnixSocket),
    /// A connect started with [`tcp::connect_into`](crate::tcp::connect_into) ended: the
    /// socket, already attached to this mailbox (its `Data` and `Closed` events come after
    /// this one), or why it failed. `socket` is the id `connect_into` returned.
    Connected {
        /// The id `connect_into` returned, which the socket keeps.
        socket: SocketId,
        /// The connected socket, or the failure.
        result: Result<TcpSocket, ConnectError>,
    },
    /// A connect started with [`unix::connect_into`](crate::unix::connect_into) ended; as
    /// [`Connected`](Event::Connected).
    #[cfg(unix)]
    ConnectedUnix {
        /// The id `connect_into` returned, which the socket keeps.
        socket: SocketId,
        /// The connected socket, or the failure.
        result: Result<UnixSocket, ConnectError>,
    },
    /// An attached socket's write queue fell to its low watermark after passing its high
    /// one (see [`Stream::set_watermarks`]): an actor that stopped feeding it can go on.
    Drained {
        /// The socket whose queue drained.
        socket: SocketId,
    },
    /// A datagram received by an attached [`UdpSocket`](crate::udp::UdpSocket). Datagrams
    /// that arrive while the mailbox holds more than its window are dropped, and counted in
    /// [`UdpSocket::dropped`](crate::udp::UdpSocket::dropped).
    Datagram {
        /// The socket that received it ([`UdpSocket::id`](crate::udp::UdpSocket::id)).
        socket: SocketId,
        /// The datagram and its sender.
        datagram: Datagram,
    },
    /// An attached UDP socket read an error, such as `"ECONNREFUSED"` on a connected socket
    /// whose peer has no one listening (an ICMP "port unreachable"). The socket stays
    /// attached: more datagrams may follow.
    DatagramError {
        /// The socket that read it.
        socket: SocketId,
        /// The error.
        error: Error,
    },
    /// A message sent through a [`MailboxSender`].
    Message(M),
}

/// The outcome of a connect started with `connect_into`, as
/// [`Event::into_connected`] gives it: the id `connect_into` returned, and the socket or the
/// failure.
pub type Connected<F> = (SocketId, Result<Stream<F>, ConnectError>);

impl<M> Event<M> {
    /// The outcome of a connect of family `F` started with `connect_into`
    /// ([`Connected`](Event::Connected) for TCP, `ConnectedUnix` for Unix-domain): the id
    /// `connect_into` returned and the socket or the failure, for an actor written once for
    /// every family; any other event is given back.
    ///
    /// # Errors
    ///
    /// The event itself, when it is not the outcome of a connect of family `F`.
    pub fn into_connected<F: Family>(self) -> Result<Connected<F>, Event<M>> {
        let unix = <F as crate::stream::sealed::Sealed>::UNIX;
        match self {
            Event::Connected { socket, result } if !unix => {
                Ok((socket, result.map(|s| Stream::from_raw(s.into_raw()))))
            }
            #[cfg(unix)]
            Event::ConnectedUnix { socket, result } if unix => {
                Ok((socket, result.map(|s| Stream::from_raw(s.into_raw()))))
            }
            other => Err(other),
        }
    }

    /// The socket of an accepted connection of family `F` ([`Accepted`](Event::Accepted) for
    /// TCP, `AcceptedUnix` for Unix-domain), for an actor written once for every family;
    /// any other event is given back.
    ///
    /// # Errors
    ///
    /// The event itself, when it is not a connection of family `F`.
    ///
    /// # Examples
    ///
    /// ```
    /// use iotask::{Event, stream::{Family, Stream}};
    ///
    /// fn on_event<F: Family>(event: Event<()>, sockets: &mut Vec<Stream<F>>) {
    ///     match event.into_accepted::<F>() {
    ///         Ok(sock) => sockets.push(sock),
    ///         Err(Event::Data { .. }) => { /* … */ }
    ///         Err(_) => {}
    ///     }
    /// }
    /// ```
    pub fn into_accepted<F: Family>(self) -> Result<Stream<F>, Event<M>> {
        let unix = <F as crate::stream::sealed::Sealed>::UNIX;
        match self {
            Event::Accepted(sock) if !unix => Ok(Stream::from_raw(sock.into_raw())),
            #[cfg(unix)]
            Event::AcceptedUnix(sock) if unix => Ok(Stream::from_raw(sock.into_raw())),
            other => Err(other),
        }
    }
}

/// One queue for an actor: the reads of every socket attached to it, each tagged with its
/// socket, and messages of type `M` from other threads.
///
/// This is how one thread serves many sockets. The I/O task sends the mailbox one batch per
/// loop cycle, holding what it read from every attached socket in that cycle, so a busy
/// actor is woken once per batch rather than once per chunk; `recv` then hands the batch
/// out an event at a time without blocking.
///
/// Flow control covers the mailbox as a whole: when more than its window of received bytes
/// waits unreceived (4 MiB by default), its sockets stop being read until the actor catches
/// up to half of it.
///
/// Dropping the mailbox (or the actor panicking with it) closes every socket it still
/// holds undelivered: connections announced by `Accepted` events it never received, and
/// sockets sent to it as messages. Their peers see the close at once, even while other
/// threads keep a [`MailboxSender`]; sends after the drop give the message back.
///
/// # Examples
///
/// An echo actor that owns every connection:
///
/// ```
/// use std::collections::HashMap;
/// use std::time::Duration;
/// use iotask::{Event, Mailbox, tcp};
///
/// let iotask = iotask::IoTask::spawn()?;
/// let server = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let addr = server.local_addr()?;
///
/// let mut mailbox: Mailbox<tcp::TcpSocket> = Mailbox::new();
/// let sender = mailbox.sender();
///
/// // Two client connections, handed to the actor as messages.
/// let mut clients = Vec::new();
/// for _ in 0..2 {
///     sender.send(tcp::connect(addr, &iotask)?).unwrap();
///     clients.push(server.accept()?.0);
/// }
///
/// let actor = std::thread::spawn(move || {
///     let mut sockets = HashMap::new();
///     let mut echoed = 0;
///     while echoed < 2 {
///         match mailbox.recv_timeout(Duration::from_secs(5)).expect("events") {
///             Event::Message(sock) => {
///                 sock.attach(&mailbox).unwrap();
///                 sockets.insert(sock.id(), sock);
///             }
///             Event::Data { socket, data } => {
///                 drop(sockets[&socket].write_future(data));
///                 echoed += 1;
///             }
///             Event::Closed { socket, .. } => {
///                 sockets.remove(&socket);
///             }
///             // Only a listener feeding the mailbox sends `Accepted`.
///             _ => unreachable!(),
///         }
///     }
/// });
///
/// for (i, client) in clients.iter_mut().enumerate() {
///     use std::io::{Read, Write};
///     client.write_all(&[i as u8])?;
///     let mut b = [0u8];
///     client.read_exact(&mut b)?;
///     assert_eq!(b[0], i as u8);
/// }
/// actor.join().unwrap();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Mailbox<M = ()> {
    rx: flume::Receiver<Envelope<M>>,
    sender: MailboxSender<M>,
    /// The rest of the last batch, handed out before anything new is received.
    batch: VecDeque<Delivery>,
}

/// Sends messages into a [`Mailbox`] from any thread; also attaches sockets to it
/// (see [`TcpSocket::attach`](crate::tcp::TcpSocket::attach)).
pub struct MailboxSender<M> {
    inbox: Arc<MailboxInbox<M>>,
    window: Arc<Window>,
}

enum Envelope<M> {
    Reads(Vec<Delivery>),
    Message(M),
}

/// The loop's view of a mailbox, shared by its senders.
///
/// The mailbox sets `closed` when it is dropped, then empties the queue. A sender that
/// queued something meanwhile checks `closed` after sending and empties the queue itself,
/// through its own receiver: with sequentially consistent atomics one of the two always
/// sees the other, so nothing sent to a dropped mailbox stays queued (a socket there would
/// stay open for as long as any sender lives).
struct MailboxInbox<M> {
    tx: flume::Sender<Envelope<M>>,
    /// Used only to empty the queue after the mailbox was dropped.
    rx: flume::Receiver<Envelope<M>>,
    closed: AtomicBool,
}

impl<M> MailboxInbox<M> {
    fn send(&self, envelope: Envelope<M>) -> Result<(), Envelope<M>> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(envelope);
        }
        // Cannot fail: `self.rx` keeps the channel connected.
        let _ = self.tx.send(envelope);
        if self.closed.load(Ordering::SeqCst) {
            self.discard();
        }
        Ok(())
    }

    /// Drops everything queued: sockets among it close.
    fn discard(&self) {
        for envelope in self.rx.drain() {
            drop(envelope);
        }
    }
}

impl<M: Send + 'static> Inbox for MailboxInbox<M> {
    fn deliver(&self, batch: Vec<Delivery>) -> Result<(), Vec<Delivery>> {
        self.send(Envelope::Reads(batch))
            .map_err(|envelope| match envelope {
                Envelope::Reads(batch) => batch,
                Envelope::Message(_) => Vec::new(),
            })
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

impl<M> Drop for Mailbox<M> {
    fn drop(&mut self) {
        self.sender.inbox.closed.store(true, Ordering::SeqCst);
        self.sender.inbox.discard();
    }
}

impl<M: Send + 'static> Mailbox<M> {
    /// An empty mailbox with the default window (4 MiB).
    pub fn new() -> Mailbox<M> {
        Mailbox::with_window(DEFAULT_WINDOW)
    }

    /// An empty mailbox that holds at most about `bytes` of unreceived socket data.
    pub fn with_window(bytes: usize) -> Mailbox<M> {
        let (tx, rx) = flume::unbounded();
        Mailbox {
            rx: rx.clone(),
            sender: MailboxSender {
                inbox: Arc::new(MailboxInbox {
                    tx,
                    rx,
                    closed: AtomicBool::new(false),
                }),
                window: Arc::new(Window::new(bytes)),
            },
            batch: VecDeque::new(),
        }
    }

    /// A sender for this mailbox, for other threads.
    pub fn sender(&self) -> MailboxSender<M> {
        self.sender.clone()
    }

    /// Blocks until the next event.
    ///
    /// The mailbox holds a sender itself, so this waits forever when nothing is attached
    /// and nobody sends; use [`recv_timeout`](Mailbox::recv_timeout) to bound the wait.
    pub fn recv(&mut self) -> Event<M> {
        loop {
            if let Some(event) = self.next_buffered() {
                return event;
            }
            match self.rx.recv() {
                Ok(envelope) => {
                    if let Some(event) = self.open(envelope) {
                        return event;
                    }
                }
                Err(flume::RecvError::Disconnected) => unreachable!("the mailbox holds a sender"),
            }
        }
    }

    /// Waits at most `timeout` for the next event.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Option<Event<M>> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if let Some(event) = self.next_buffered() {
                return Some(event);
            }
            let envelope = match deadline {
                Some(deadline) => self.rx.recv_deadline(deadline).ok()?,
                None => self.rx.recv().ok()?,
            };
            if let Some(event) = self.open(envelope) {
                return Some(event);
            }
        }
    }

    /// Returns the next event if one is waiting, without blocking.
    pub fn try_recv(&mut self) -> Option<Event<M>> {
        loop {
            if let Some(event) = self.next_buffered() {
                return Some(event);
            }
            let envelope = self.rx.try_recv().ok()?;
            if let Some(event) = self.open(envelope) {
                return Some(event);
            }
        }
    }

    fn open(&mut self, envelope: Envelope<M>) -> Option<Event<M>> {
        match envelope {
            Envelope::Message(m) => Some(Event::Message(m)),
            Envelope::Reads(batch) => {
                self.batch = batch.into();
                self.next_buffered()
            }
        }
    }

    fn next_buffered(&mut self) -> Option<Event<M>> {
        let (key, chunk) = match self.batch.pop_front()? {
            Delivery::Read { key, chunk } => (key, chunk),
            Delivery::Drained(key) => {
                return Some(Event::Drained {
                    socket: SocketId(key.id),
                });
            }
            Delivery::Connected {
                id,
                result,
                kind: StreamKind::Inet,
            } => {
                return Some(Event::Connected {
                    socket: SocketId(id),
                    result: result.map(Stream::from_raw).map_err(ConnectError::from),
                });
            }
            #[cfg(unix)]
            Delivery::Connected {
                id,
                result,
                kind: StreamKind::Unix,
            } => {
                return Some(Event::ConnectedUnix {
                    socket: SocketId(id),
                    result: result.map(Stream::from_raw).map_err(ConnectError::from),
                });
            }
            #[cfg(not(unix))]
            Delivery::Connected { .. } => return self.next_buffered(),
            Delivery::Accepted(raw, StreamKind::Inet) => {
                return Some(Event::Accepted(Stream::from_raw(raw)));
            }
            #[cfg(unix)]
            Delivery::Accepted(raw, StreamKind::Unix) => {
                return Some(Event::AcceptedUnix(Stream::from_raw(raw)));
            }
            // No other family exists on this platform; the stream closes.
            #[cfg(not(unix))]
            Delivery::Accepted(..) => return self.next_buffered(),
            Delivery::Datagram { key, received } => {
                let socket = SocketId(key.id);
                self.sender.window.sub(received.cost());
                return Some(match received {
                    Received::Datagram(datagram) => Event::Datagram { socket, datagram },
                    Received::Error(error) => Event::DatagramError { socket, error },
                    Received::End(error) => Event::Closed { socket, error },
                });
            }
        };
        let socket = SocketId(key.id);
        Some(match chunk {
            Ok(data) => {
                self.sender.window.sub(data.len());
                Event::Data { socket, data }
            }
            Err(error) => Event::Closed { socket, error },
        })
    }
}

impl<M: Send + 'static> Default for Mailbox<M> {
    fn default() -> Mailbox<M> {
        Mailbox::new()
    }
}

impl<M> MailboxSender<M> {
    /// Sends a message; gives it back when the mailbox was dropped.
    pub fn send(&self, message: M) -> Result<(), M> {
        self.inbox
            .send(Envelope::Message(message))
            .map_err(|envelope| match envelope {
                Envelope::Message(m) => m,
                Envelope::Reads(_) => unreachable!("only messages are sent here"),
            })
    }

    pub(crate) fn window(&self) -> Arc<Window> {
        self.window.clone()
    }
}

impl<M: Send + 'static> MailboxSender<M> {
    pub(crate) fn inbox(&self) -> Arc<dyn Inbox> {
        self.inbox.clone()
    }
}

impl<M> Clone for MailboxSender<M> {
    fn clone(&self) -> MailboxSender<M> {
        MailboxSender {
            inbox: self.inbox.clone(),
            window: self.window.clone(),
        }
    }
}

impl<M> AsRef<MailboxSender<M>> for Mailbox<M> {
    fn as_ref(&self) -> &MailboxSender<M> {
        &self.sender
    }
}

impl<M> AsRef<MailboxSender<M>> for MailboxSender<M> {
    fn as_ref(&self) -> &MailboxSender<M> {
        self
    }
}

impl<M> fmt::Debug for Mailbox<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailbox")
            .field("batches", &self.rx.len())
            .field("buffered", &self.batch.len())
            .finish()
    }
}

impl<M> fmt::Debug for MailboxSender<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MailboxSender").finish_non_exhaustive()
    }
}
