//! A datagram socket in the slab, and everything the loop does with one: receive datagrams
//! into a port, a future or a mailbox (dropping what a full one cannot take), send queued
//! datagrams in order, close it. `RawDatagram` is the user's handle, where every datagram
//! command is built.
//!
//! Datagrams differ from a stream in three ways that shape this file. A reader that falls
//! behind makes the loop drop datagrams, counted, instead of pausing the socket (UDP has no
//! flow control to push back with). An error read from the socket (an ICMP "port
//! unreachable" on a connected socket) is reported and reading goes on. And every send has
//! its own outcome, so each carries its own reply.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use socket2::Socket;

use crate::error::Error;
use crate::io_task::Shared;
use crate::io_task::command::{Command, Reply};
use crate::io_task::entry::{Entry, Key, next_id};
use crate::io_task::event_loop::EventLoop;
use crate::io_task::handle::request;
use crate::io_task::registration::{Interest, Registration};
use crate::io_task::sink::{Delivery, Inbox, Window};
use crate::io_task::sys::{recv_datagrams, send_datagrams, slots};
use crate::io_task::timers::Timer;
use crate::oneshot::{self, Settled};

/// What one datagram is charged against its reader's window besides its bytes: the `Vec`,
/// the address and the channel slot it travels in. It also makes empty datagrams count.
pub(crate) const DATAGRAM_OVERHEAD: usize = 64;

/// The default largest datagram received whole: more than any IPv4 or IPv6 datagram
/// without jumbo payloads carries (65,507 and 65,527 bytes).
pub(crate) const DEFAULT_MAX_DATAGRAM: usize = 65_536;

/// Datagrams received from one socket per readiness, before the loop serves the others
/// (level-triggered: the rest is reported again at once).
const RECVS_PER_READY: usize = 64;

/// One datagram received by a [`UdpSocket`](crate::udp::UdpSocket).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Datagram {
    /// The payload: the whole datagram, or its first
    /// [`max_datagram`](crate::udp::UdpSocket::set_max_datagram) bytes when `truncated`.
    /// It may be empty: an empty datagram is a datagram.
    pub data: Vec<u8>,
    /// The sender.
    pub from: SocketAddr,
    /// Whether the datagram was longer than the socket's
    /// [`max_datagram`](crate::udp::UdpSocket::set_max_datagram) and was cut to it
    /// (`MSG_TRUNC`); the rest is lost.
    pub truncated: bool,
}

/// What the loop hands a datagram socket's reader.
#[derive(Debug)]
pub(crate) enum Received {
    Datagram(Datagram),
    /// An error read from the socket (an ICMP error on a connected socket); reading goes on.
    Error(Error),
    /// Reading ended: the socket was closed, the I/O task stopped, or the reader was refused.
    End(Error),
}

impl Received {
    /// What the datagram costs its reader's window (errors cost nothing).
    pub(crate) fn cost(&self) -> usize {
        match self {
            Received::Datagram(d) => datagram_cost(d),
            Received::Error(_) | Received::End(_) => 0,
        }
    }
}

/// What a datagram costs its reader's window.
pub(crate) fn datagram_cost(datagram: &Datagram) -> usize {
    datagram.data.len() + DATAGRAM_OVERHEAD
}

/// Where a datagram socket's receptions go.
pub(crate) enum DatagramSink {
    None,
    /// A `DatagramPort`: each datagram as soon as it is received.
    Port {
        tx: flume::Sender<Received>,
        window: Arc<Window>,
    },
    /// A `Mailbox`: the datagrams of one cycle in its batch.
    Mailbox {
        inbox: Arc<dyn Inbox>,
        window: Arc<Window>,
    },
    /// A `RecvFuture`: one datagram or error, or a timeout at `deadline`.
    Once {
        tx: oneshot::Sender<Received>,
        deadline: Option<Instant>,
    },
    /// A `RecvFuture` handed its datagram that has not taken it yet: if it is dropped
    /// without taking it, the datagram goes back in front of the stash.
    Delivered(oneshot::Reclaim<Received>),
}

impl DatagramSink {
    fn is_abandoned(&self) -> bool {
        match self {
            DatagramSink::None => true,
            DatagramSink::Port { tx, .. } => tx.is_disconnected(),
            DatagramSink::Mailbox { inbox, .. } => inbox.is_closed(),
            DatagramSink::Once { tx, .. } => tx.is_canceled(),
            DatagramSink::Delivered(_) => false,
        }
    }

    fn wants(&self) -> bool {
        matches!(
            self,
            DatagramSink::Port { .. } | DatagramSink::Mailbox { .. } | DatagramSink::Once { .. }
        )
    }
}

impl std::fmt::Debug for DatagramSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DatagramSink::None => "None",
            DatagramSink::Port { .. } => "Port",
            DatagramSink::Mailbox { .. } => "Mailbox",
            DatagramSink::Once { .. } => "Once",
            DatagramSink::Delivered(_) => "Delivered",
        })
    }
}

/// The outcome of one send: the bytes sent (all of them: a datagram is never cut).
pub(crate) type SendReply = oneshot::Sender<Result<usize, Error>>;

/// What a datagram socket's handles share with its entry.
#[derive(Debug)]
pub(crate) struct DatagramState {
    /// Datagrams the loop received and dropped because the reader's window was full.
    pub(crate) dropped: AtomicU64,
    /// The largest datagram received whole.
    pub(crate) max_datagram: AtomicUsize,
    /// Datagrams sent and not yet taken by the kernel (or refused).
    pub(crate) queued: AtomicUsize,
    /// Their bytes.
    pub(crate) queued_bytes: AtomicUsize,
    /// The most bytes that may be queued; a send beyond it fails at once with `ENOBUFS`.
    pub(crate) queue_limit: AtomicUsize,
}

/// The default of `DatagramState::queue_limit`: as much as a mailbox's window.
pub(crate) const DEFAULT_SEND_QUEUE_LIMIT: usize = 4 << 20;

impl DatagramState {
    /// A send of `len` bytes left the queue.
    fn dequeued(&self, len: usize) {
        self.queued.fetch_sub(1, Ordering::Relaxed);
        self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
    }
}

/// A send waiting for the socket to be writable.
#[derive(Debug)]
struct PendingSend {
    data: Vec<u8>,
    to: Option<SocketAddr>,
    reply: SendReply,
}

#[derive(Debug)]
pub(crate) struct DatagramEntry {
    pub(crate) id: u64,
    reg: Registration,
    sink: DatagramSink,
    /// Datagrams a reader gave back (`recv_stop`, a future dropped with its datagram), for
    /// the next reader; while it holds any, the socket is not read.
    stash: VecDeque<Datagram>,
    /// Sends the kernel could not take yet, in order.
    sends: VecDeque<PendingSend>,
    state: Arc<DatagramState>,
    handles: usize,
    /// The last handle is gone; queued sends still go out until `linger_timeout`.
    closing: bool,
    /// On the loop's `dirty_datagrams` list: sends were queued this cycle.
    dirty: bool,
}

impl DatagramEntry {
    /// Settles a `Delivered` sink: a datagram its future never took goes back in front of
    /// the stash.
    fn reclaim(&mut self) {
        let DatagramSink::Delivered(reclaim) = &self.sink else {
            return;
        };
        match reclaim.settle() {
            Settled::Pending => {}
            Settled::Taken => self.sink = DatagramSink::None,
            Settled::Returned(received) => {
                if let Received::Datagram(d) = received {
                    self.stash.push_front(d);
                }
                self.sink = DatagramSink::None;
            }
        }
    }
}

impl EventLoop {
    pub(super) fn add_datagram(&mut self, socket: Arc<Socket>, state: Arc<DatagramState>) -> Key {
        let vacant = self.entries.vacant_entry();
        let key = Key {
            index: vacant.key(),
            id: next_id(),
        };
        let reg = Registration::new(socket, self.shared.poller.clone(), key.index);
        self.stats.datagram_sockets += 1;
        vacant.insert(Entry::Datagram(DatagramEntry {
            id: key.id,
            reg,
            sink: DatagramSink::None,
            stash: VecDeque::new(),
            sends: VecDeque::new(),
            state,
            handles: 1,
            closing: false,
            dirty: false,
        }));
        key
    }

    /// The datagram socket named by `key`, unless it is gone or closing.
    pub(super) fn datagram(&mut self, key: Key) -> Option<&mut DatagramEntry> {
        match self.get(key) {
            Some(Entry::Datagram(d)) if !d.closing => Some(d),
            _ => None,
        }
    }

    /// Attaches a new reader after handing it the stash. A reader already attached and
    /// still alive makes this fail with `BUSY`.
    pub(super) fn recv_start(&mut self, key: Key, sink: DatagramSink) -> Result<(), Error> {
        let Some(d) = self.datagram(key) else {
            refuse(key, sink, Error::closed());
            return Err(Error::closed());
        };
        d.reclaim();
        if let (
            DatagramSink::Mailbox { inbox: old, .. },
            DatagramSink::Mailbox { inbox: new, .. },
        ) = (&d.sink, &sink)
        {
            if Arc::ptr_eq(old, new) {
                return Ok(());
            }
        }
        if !d.sink.is_abandoned() {
            refuse(key, sink, Error::busy());
            return Err(Error::busy());
        }
        d.sink = sink;
        while let Some(d) = self.datagram(key) {
            if !d.sink.wants() {
                break;
            }
            let Some(datagram) = d.stash.pop_front() else {
                break;
            };
            if let Err(Received::Datagram(datagram)) =
                self.offer_datagram(key, Received::Datagram(datagram))
            {
                if let Some(d) = self.datagram(key) {
                    d.stash.push_front(datagram);
                }
                break;
            }
        }
        self.datagram_interest(key);
        Ok(())
    }

    /// Stops delivering to a port and takes back, in order, the datagrams it still holds.
    pub(super) fn recv_stop(
        &mut self,
        key: Key,
        port: flume::Receiver<Received>,
        window: &Arc<Window>,
    ) -> Result<(), Error> {
        let Some(d) = self.datagram(key) else {
            return Err(Error::closed());
        };
        if matches!(&d.sink, DatagramSink::Port { window: w, .. } if Arc::ptr_eq(w, window)) {
            d.sink = DatagramSink::None;
        }
        let mut taken = 0;
        let mut back = VecDeque::new();
        for received in port.drain() {
            taken += received.cost();
            if let Received::Datagram(datagram) = received {
                back.push_back(datagram);
            }
        }
        back.append(&mut d.stash);
        d.stash = back;
        window.sub(taken);
        self.datagram_interest(key);
        Ok(())
    }

    /// Stops delivering to a mailbox (what it holds stays there).
    pub(super) fn detach_datagram(&mut self, key: Key) {
        if let Some(d) = self.datagram(key) {
            if matches!(d.sink, DatagramSink::Mailbox { .. }) {
                d.sink = DatagramSink::None;
            }
            self.datagram_interest(key);
        }
    }

    /// Hands a reception to the reader. A datagram nobody takes waits in the stash; one a
    /// full window cannot take is dropped and counted.
    fn deliver_datagram(&mut self, key: Key, received: Received) {
        if let Err(Received::Datagram(datagram)) = self.offer_datagram(key, received) {
            if let Some(Entry::Datagram(d)) = self.get(key) {
                d.stash.push_back(datagram);
            }
        }
    }

    /// Offers one reception to the reader; gives it back when nobody took it. A datagram
    /// beyond a port's or mailbox's window is dropped (and counted), which is taking it.
    fn offer_datagram(&mut self, key: Key, received: Received) -> Result<(), Received> {
        let Some(Entry::Datagram(d)) = self.entries.get_mut(key.index).filter(|e| e.id() == key.id)
        else {
            return Err(received);
        };
        let cost = received.cost();
        let end = matches!(received, Received::End(_));
        match std::mem::replace(&mut d.sink, DatagramSink::None) {
            DatagramSink::Port { tx, window } => {
                if !window.try_add(cost) {
                    d.state.dropped.fetch_add(1, Ordering::Relaxed);
                    self.stats.datagrams_dropped += 1;
                    d.sink = DatagramSink::Port { tx, window };
                    return Ok(());
                }
                match tx.send(received) {
                    Ok(()) => {
                        if !end {
                            d.sink = DatagramSink::Port { tx, window };
                        }
                        Ok(())
                    }
                    Err(flume::SendError(received)) => {
                        window.sub(cost);
                        Err(received)
                    }
                }
            }
            DatagramSink::Mailbox { inbox, window } => {
                if !window.try_add(cost) {
                    d.state.dropped.fetch_add(1, Ordering::Relaxed);
                    self.stats.datagrams_dropped += 1;
                    d.sink = DatagramSink::Mailbox { inbox, window };
                    return Ok(());
                }
                if !end {
                    d.sink = DatagramSink::Mailbox {
                        inbox: inbox.clone(),
                        window,
                    };
                }
                self.outbox
                    .post(&inbox, Delivery::Datagram { key, received });
                Ok(())
            }
            DatagramSink::Once { tx, .. } => match tx.send_reclaimable(received) {
                Ok(reclaim) => {
                    d.sink = DatagramSink::Delivered(reclaim);
                    Ok(())
                }
                Err(received) => Err(received),
            },
            other @ (DatagramSink::None | DatagramSink::Delivered(_)) => {
                d.sink = other;
                Err(received)
            }
        }
    }

    /// Registers exactly the interest the socket's state calls for.
    pub(super) fn datagram_interest(&mut self, key: Key) {
        let Some(Entry::Datagram(d)) = self.get(key) else {
            return;
        };
        let want = Interest {
            read: !d.closing && d.sink.wants() && d.stash.is_empty(),
            write: !d.sends.is_empty() && !d.dirty,
            exclusive: false,
        };
        if let Err(e) = d.reg.set_interest(want) {
            log!(warn, "the poller refused a datagram socket: {e}");
            self.remove(key, Error::from(e));
        }
    }

    pub(super) fn datagram_ready(&mut self, key: Key, readable: bool, writable: bool) {
        let Some(Entry::Datagram(d)) = self.get(key) else {
            return;
        };
        let interest = d.reg.interest();
        if writable && interest.write {
            self.flush_sends(key);
        }
        if readable && interest.read {
            self.receive(key);
        }
    }

    /// Receives what the socket holds, in batches, up to `RECVS_PER_READY` datagrams.
    fn receive(&mut self, key: Key) {
        let mut budget = RECVS_PER_READY;
        while budget > 0 {
            let Some(Entry::Datagram(d)) =
                self.entries.get_mut(key.index).filter(|e| e.id() == key.id)
            else {
                return;
            };
            let slot = d.state.max_datagram.load(Ordering::Relaxed);
            // A future takes one datagram: receive no more than that for it.
            let want = match d.sink {
                DatagramSink::Once { .. } => 1,
                _ => budget.min(slots(slot)),
            };
            let mut incoming = std::mem::take(&mut self.incoming);
            let result = recv_datagrams(
                d.reg.socket(),
                &mut self.datagram_buf,
                slot,
                want,
                &mut incoming,
            );
            for datagram in incoming.drain(..) {
                self.stats.datagrams_received += 1;
                self.stats.bytes_read += datagram.data.len() as u64;
                // An IP socket's datagrams always have an IP sender.
                let Some(from) = datagram.from else { continue };
                let datagram = Datagram {
                    data: datagram.data,
                    from,
                    truncated: datagram.truncated,
                };
                self.deliver_datagram(key, Received::Datagram(datagram));
            }
            self.incoming = incoming;
            match result {
                // Fewer than asked for: the kernel has no more now.
                Ok(n) if n < want => break,
                Ok(n) => budget -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => budget -= 1,
                Err(e) => {
                    // The socket's pending error (an ICMP error), cleared by reading it.
                    self.deliver_datagram(key, Received::Error(Error::from(e)));
                    break;
                }
            }
            if !matches!(self.datagram(key), Some(d) if d.sink.wants() && d.stash.is_empty()) {
                break;
            }
        }
        self.datagram_interest(key);
    }

    /// Queues a datagram behind those sent before it; the queue goes out after this
    /// cycle's commands, in batches.
    pub(super) fn send_datagram(
        &mut self,
        key: Key,
        data: Vec<u8>,
        to: Option<SocketAddr>,
        reply: SendReply,
    ) {
        let Some(d) = open_datagram(&mut self.entries, key) else {
            let _ = reply.send(Err(Error::closed()));
            return;
        };
        d.sends.push_back(PendingSend { data, to, reply });
        if !d.dirty && !d.reg.interest().write {
            d.dirty = true;
            self.dirty_datagrams.push(key);
        }
    }

    /// Flushes the datagram sockets that got sends this cycle.
    pub(super) fn flush_dirty_datagrams(&mut self) {
        let dirty = std::mem::take(&mut self.dirty_datagrams);
        for &key in &dirty {
            if let Some(Entry::Datagram(d)) = self.get(key) {
                d.dirty = false;
                self.flush_sends(key);
            }
        }
        self.dirty_datagrams = dirty;
        self.dirty_datagrams.clear();
    }

    /// Sends queued datagrams until the kernel takes no more; a datagram it refuses fails
    /// alone, and the next one is tried.
    fn flush_sends(&mut self, key: Key) {
        let Some(Entry::Datagram(d)) = self.entries.get_mut(key.index).filter(|e| e.id() == key.id)
        else {
            return;
        };
        while !d.sends.is_empty() {
            let batch = d.sends.iter().map(|s| (s.data.as_slice(), s.to));
            match send_datagrams(d.reg.socket(), batch) {
                // Never for a queue that is not empty; stopping keeps a broken platform
                // call from spinning the loop.
                Ok(0) => break,
                Ok(n) => {
                    for send in d.sends.drain(..n) {
                        self.stats.datagrams_sent += 1;
                        self.stats.bytes_written += send.data.len() as u64;
                        d.state.dequeued(send.data.len());
                        let _ = send.reply.send(Ok(send.data.len()));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    if let Some(send) = d.sends.pop_front() {
                        d.state.dequeued(send.data.len());
                        let _ = send.reply.send(Err(Error::from(e)));
                    }
                }
            }
        }
        if d.closing && d.sends.is_empty() {
            self.remove(key, Error::closed());
            return;
        }
        self.datagram_interest(key);
    }

    pub(super) fn add_datagram_handle(&mut self, key: Key) {
        if let Some(d) = self.datagram(key) {
            d.handles += 1;
        }
    }

    /// A handle was dropped. After the last, the reader hears `CLOSED`; datagrams still
    /// queued go out first, for at most the linger timeout.
    pub(super) fn close_datagram(&mut self, key: Key) {
        let Some(d) = self.datagram(key) else {
            return;
        };
        d.handles -= 1;
        if d.handles > 0 {
            return;
        }
        if d.sends.is_empty() {
            self.remove(key, Error::closed());
            return;
        }
        self.end_reading_datagrams(key, &Error::closed());
        if let Some(Entry::Datagram(d)) = self.get(key) {
            d.closing = true;
        }
        let until = Instant::now().checked_add(self.config.linger_timeout);
        self.push_timer(until, Timer::DatagramLinger(key));
        self.datagram_interest(key);
    }

    /// The reader hears `error` as the end of reading, and the queued sends fail with it
    /// (before the entry leaves the slab).
    pub(super) fn retire_datagram(&mut self, key: Key, error: &Error) {
        self.end_reading_datagrams(key, error);
        if let Some(Entry::Datagram(d)) = self.get(key) {
            for send in d.sends.drain(..) {
                d.state.dequeued(send.data.len());
                let _ = send.reply.send(Err(error.clone()));
            }
        }
    }

    /// The reader hears `error` as the end of reading; nobody reads after it.
    fn end_reading_datagrams(&mut self, key: Key, error: &Error) {
        if let Some(Entry::Datagram(d)) = self.get(key) {
            d.reclaim();
        }
        // A reader that cannot hear it (gone already, or a future holding its datagram)
        // needs no end.
        let _ = self.offer_datagram(key, Received::End(error.clone()));
        if let Some(Entry::Datagram(d)) = self.get(key) {
            d.sink = DatagramSink::None;
        }
    }

    /// A `RecvFuture`'s timeout.
    pub(super) fn datagram_recv_deadline(&mut self, key: Key, at: Instant) {
        if let Some(d) = self.datagram(key) {
            if matches!(d.sink, DatagramSink::Once { deadline: Some(t), .. } if t == at) {
                self.deliver_datagram(key, Received::Error(Error::timeout()));
                self.datagram_interest(key);
            }
        }
    }

    /// A `RecvFuture`'s timeout, as the timer heap's sweep sees it.
    pub(super) fn datagram_deadline_is_live(entry: Option<&Entry>, at: Instant) -> bool {
        matches!(
            entry,
            Some(Entry::Datagram(d))
                if matches!(d.sink, DatagramSink::Once { deadline: Some(t), .. } if t == at)
        )
    }

    pub(super) fn datagram_is_closing(entry: Option<&Entry>) -> bool {
        matches!(entry, Some(Entry::Datagram(d)) if d.closing)
    }
}

/// The open datagram socket named by `key`, borrowing only the slab.
fn open_datagram(entries: &mut slab::Slab<Entry>, key: Key) -> Option<&mut DatagramEntry> {
    match entries.get_mut(key.index).filter(|e| e.id() == key.id) {
        Some(Entry::Datagram(d)) if !d.closing => Some(d),
        _ => None,
    }
}

/// Tells a refused reader why: a future resolves with the error, a mailbox gets it as the
/// socket's `Closed` event (a port's caller hears it through the command's reply).
fn refuse(key: Key, sink: DatagramSink, error: Error) {
    match sink {
        DatagramSink::Once { tx, .. } => {
            let _ = tx.send(Received::End(error));
        }
        DatagramSink::Mailbox { inbox, .. } => {
            let _ = inbox.deliver(vec![Delivery::Datagram {
                key,
                received: Received::End(error),
            }]);
        }
        DatagramSink::Port { .. } | DatagramSink::None | DatagramSink::Delivered(_) => {}
    }
}

/// A user's handle to a datagram socket served by an I/O task. The socket closes when the
/// last handle is dropped.
#[derive(Debug)]
pub(crate) struct RawDatagram {
    key: Key,
    task: Arc<Shared>,
    socket: Arc<Socket>,
    state: Arc<DatagramState>,
}

/// The receiving end of a datagram port, with its window.
#[derive(Debug)]
pub(crate) struct DatagramPortParts {
    pub(crate) rx: flume::Receiver<Received>,
    pub(crate) window: Arc<Window>,
}

impl RawDatagram {
    /// Serves a bound socket (made non-blocking here).
    pub(crate) fn adopt(task: &Arc<Shared>, socket: Socket) -> Result<RawDatagram, Error> {
        socket.set_nonblocking(true)?;
        let socket = Arc::new(socket);
        let state = Arc::new(DatagramState {
            dropped: AtomicU64::new(0),
            max_datagram: AtomicUsize::new(DEFAULT_MAX_DATAGRAM),
            queued: AtomicUsize::new(0),
            queued_bytes: AtomicUsize::new(0),
            queue_limit: AtomicUsize::new(DEFAULT_SEND_QUEUE_LIMIT),
        });
        let key = request(task, |reply: Reply<Key>| Command::AddDatagram {
            socket: socket.clone(),
            state: state.clone(),
            reply,
        })?;
        Ok(RawDatagram {
            key,
            task: task.clone(),
            socket,
            state,
        })
    }

    pub(crate) fn key(&self) -> Key {
        self.key
    }

    pub(crate) fn socket(&self) -> &Socket {
        &self.socket
    }

    pub(crate) fn state(&self) -> &DatagramState {
        &self.state
    }

    pub(crate) fn try_clone(&self) -> Result<RawDatagram, Error> {
        self.task.send(Command::AddHandle(self.key))?;
        Ok(RawDatagram {
            key: self.key,
            task: self.task.clone(),
            socket: self.socket.clone(),
            state: self.state.clone(),
        })
    }

    pub(crate) fn recv_start(&self) -> Result<DatagramPortParts, Error> {
        let window = Arc::new(Window::new(self.task.read_window));
        let (tx, rx) = flume::unbounded();
        let sink = DatagramSink::Port {
            tx,
            window: window.clone(),
        };
        request(&self.task, |reply| Command::RecvStart {
            key: self.key,
            sink,
            reply: Some(reply),
        })?;
        Ok(DatagramPortParts { rx, window })
    }

    pub(crate) fn recv_stop(&self, port: DatagramPortParts) -> Result<(), Error> {
        request(&self.task, |reply| Command::RecvStop {
            key: self.key,
            port: port.rx,
            window: port.window,
            reply,
        })
    }

    pub(crate) fn recv_once(
        &self,
        deadline: Option<Instant>,
    ) -> Result<oneshot::Receiver<Received>, Error> {
        let (reply, rx) = oneshot::channel();
        self.task.send(Command::RecvOnce {
            key: self.key,
            deadline,
            reply,
        })?;
        Ok(rx)
    }

    pub(crate) fn send(
        &self,
        data: Vec<u8>,
        to: Option<SocketAddr>,
    ) -> Result<oneshot::Receiver<Result<usize, Error>>, Error> {
        let len = data.len();
        let before = self.state.queued_bytes.fetch_add(len, Ordering::Relaxed);
        let limit = self.state.queue_limit.load(Ordering::Relaxed);
        // An empty queue takes any one datagram, so that a limit below a datagram's size
        // cannot stop the socket sending.
        if before > 0 && before + len > limit {
            self.state.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            return Err(Error::new(
                "ENOBUFS",
                "the socket's send queue is full",
                std::io::ErrorKind::WouldBlock,
            ));
        }
        self.state.queued.fetch_add(1, Ordering::Relaxed);
        let (reply, rx) = oneshot::channel();
        let sent = self.task.send(Command::SendTo {
            key: self.key,
            data,
            to,
            reply,
        });
        if let Err(e) = sent {
            self.state.dequeued(len);
            return Err(e);
        }
        Ok(rx)
    }

    pub(crate) fn attach(&self, inbox: Arc<dyn Inbox>, window: Arc<Window>) -> Result<(), Error> {
        self.task.send(Command::RecvStart {
            key: self.key,
            sink: DatagramSink::Mailbox { inbox, window },
            reply: None,
        })
    }

    pub(crate) fn detach(&self) -> Result<(), Error> {
        self.task.send(Command::Detach(self.key))
    }
}

impl Drop for RawDatagram {
    fn drop(&mut self) {
        // A stopped task has closed the socket already.
        let _ = self.task.send(Command::Close(self.key));
    }
}

impl EventLoop {
    /// The mailbox behind `inbox` is gone: the socket attached to it stops being read.
    pub(super) fn detach_datagram_from(&mut self, key: Key, inbox: &Arc<dyn Inbox>) {
        if let Some(d) = self.datagram(key) {
            if matches!(&d.sink, DatagramSink::Mailbox { inbox: i, .. } if Arc::ptr_eq(i, inbox)) {
                d.sink = DatagramSink::None;
            }
            self.datagram_interest(key);
        }
    }
}
