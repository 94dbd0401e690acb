//! The I/O thread: one poller, one slab, commands drained in batches.
//!
//! A cycle is: wait on the poller, dispatch its events, drain every queued command, flush
//! the sockets that got new writes, send the mailbox batches, fire due timers. Only this
//! thread reads, writes or accepts on a registered socket, and no user code runs here.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use slab::Slab;
use socket2::Socket;

use crate::io_task::command::Command;
use crate::io_task::entry::{
    AcceptTarget, Chunk, Delivery, Entry, Inbox, Key, ListenerClosed, ListenerEntry, PendingWrite,
    QUEUED_CLOSED, Sink, SocketEntry, next_id,
};
use crate::io_task::registration::{Interest, Registration};
use crate::io_task::sys::{Events, accept_nonblocking, recv_spare};
use crate::io_task::{Config, Shared};
use crate::tcp::server::{ConnectionGuard, ListenerState};
use crate::tcp::{ListenEvent, NewConnection, TcpError, TcpSocket};

/// Reads of a full buffer per socket per cycle before other sockets get a turn.
const READS_PER_CYCLE: usize = 4;
/// Queued writes gathered into one `sendmsg`.
const MAX_IOVECS: usize = 64;
/// Timers are swept when the heap reaches this size, or twice its size after the last sweep.
const MIN_PRUNE: usize = 1024;
/// How long accepting pauses after the process ran out of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

pub(crate) struct EventLoop {
    /// Command queue, poller and wake-up flag, shared with every handle.
    shared: Arc<Shared>,
    config: Config,
    /// Every listener and socket this task serves. A slot's index is its poller key.
    entries: Slab<Entry>,
    /// Receive buffer of every `recv` (empty between reads; see `take_chunk`).
    buf: Vec<u8>,
    /// Sockets with writes queued this cycle, flushed once after the command drain.
    dirty: Vec<Key>,
    /// This cycle's mailbox batches; `outbox_index` finds a mailbox's batch by address.
    outbox: Vec<(Arc<dyn Inbox>, Vec<Delivery>)>,
    outbox_index: HashMap<usize, usize>,
    /// Read deadlines, drain deadlines and accept retries, soonest first.
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    /// The heap size at which timers that can no longer fire are swept out.
    prune_at: usize,
    /// Set by `Command::Shutdown`.
    stopping: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    ReadDeadline(usize, u64),
    DrainDeadline(usize, u64),
    AcceptRetry(usize, u64),
    /// Close what is left of a draining listener's connections (by listener state id).
    DrainListener(u64),
}

impl EventLoop {
    pub(crate) fn new(shared: Arc<Shared>, config: Config) -> EventLoop {
        EventLoop {
            shared,
            buf: Vec::with_capacity(config.read_buffer),
            config,
            entries: Slab::new(),
            dirty: Vec::new(),
            outbox: Vec::new(),
            outbox_index: HashMap::new(),
            timers: BinaryHeap::new(),
            prune_at: MIN_PRUNE,
            stopping: false,
        }
    }

    pub(crate) fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        while !self.stopping {
            self.drain_commands();
            if self.stopping {
                break;
            }
            self.flush_dirty();
            self.send_outbox();

            let timeout = self.next_timeout();
            self.wait(&mut events, timeout);
            for event in events.iter() {
                self.dispatch(event.key, event.readable, event.writable);
            }
            self.fire_timers();
        }
        self.close_all();
    }

    /// Waits on the poller, spinning first when configured, and sleeps only after telling
    /// command senders (through `sleeping`) that a notification is needed.
    fn wait(&mut self, events: &mut Events, timeout: Option<Duration>) {
        let shared = &*self.shared;
        // Returning early (commands waiting) must not dispatch the last cycle's events again.
        events.clear();
        if timeout != Some(Duration::ZERO) && !self.config.spin.is_zero() {
            let until = Instant::now() + self.config.spin;
            loop {
                if !shared.commands_rx.is_empty() {
                    return;
                }
                let _ = shared.poller.wait(events, Some(Duration::ZERO));
                if !events.is_empty() || Instant::now() >= until {
                    break;
                }
                std::hint::spin_loop();
            }
            if !events.is_empty() {
                return;
            }
        }
        shared.sleeping.store(true, Ordering::SeqCst);
        let timeout = if shared.commands_rx.is_empty() {
            timeout
        } else {
            Some(Duration::ZERO)
        };
        if shared.poller.wait(events, timeout).is_err() {
            // A signal ends the wait without an error; anything else is a broken poller.
            // Sleep briefly so that a persistent failure cannot turn into a busy loop.
            std::thread::sleep(Duration::from_millis(1));
        }
        shared.sleeping.store(false, Ordering::SeqCst);
    }

    fn next_timeout(&self) -> Option<Duration> {
        self.timers
            .peek()
            .map(|Reverse((at, _))| at.saturating_duration_since(Instant::now()))
    }

    fn drain_commands(&mut self) {
        // Bounded, so that a flood of commands cannot starve the sockets.
        for _ in 0..4096 {
            match self.shared.commands_rx.try_recv() {
                Ok(command) => self.handle(command),
                Err(_) => break,
            }
            if self.stopping {
                break;
            }
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::AddListener {
                socket,
                target,
                state,
                reply,
            } => {
                let _ = reply.send(self.add_listener(socket, target, state));
            }
            Command::CloseListener {
                key,
                close_connections,
                drain,
                reply,
            } => {
                if let Some(Entry::Listener(l)) = self.get(key) {
                    let id = l.state.id;
                    self.entries.remove(key.index);
                    if close_connections {
                        self.close_connections_of(id);
                    } else if let Some(at) = drain {
                        self.push_timer(at, Timer::DrainListener(id));
                    }
                }
                let _ = reply.send(());
            }
            Command::RecheckListener(key) => {
                if let Some(Entry::Listener(l)) = self.get(key) {
                    l.at_limit = false;
                }
                self.update_listener_interest(key);
            }
            Command::AddSocket {
                socket,
                queued,
                reply,
            } => {
                let key = self.insert_socket(socket, None, queued, None);
                let _ = reply.send(Ok(key));
            }
            Command::SetWriteWindow { key, window, reply } => {
                let result = match self.socket(key) {
                    Some(s) => {
                        s.write_window = window;
                        s.write_blocked = window.is_some_and(|w| s.queued_here > w);
                        self.update_interest(key);
                        Ok(())
                    }
                    None => Err(TcpError::closed()),
                };
                let _ = reply.send(result);
            }
            Command::ReadStart { key, sink, reply } => {
                let result = self.read_start(key, sink);
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            Command::ReadStop {
                key,
                port,
                window,
                reply,
            } => {
                let result = match self.socket(key) {
                    Some(s) => {
                        if matches!(&s.sink, Sink::Port { window: w, .. } if Arc::ptr_eq(w, &window))
                        {
                            s.sink = Sink::None;
                        }
                        // Nothing can be sent to the port any more: take back what it holds,
                        // in order, ahead of anything read later.
                        let mut taken = 0;
                        let mut back: VecDeque<Chunk> = port.drain().collect();
                        for chunk in &back {
                            taken += chunk.as_ref().map_or(0, Vec::len);
                        }
                        back.append(&mut s.stash);
                        s.stash = back;
                        window.sub(taken);
                        self.update_interest(key);
                        Ok(())
                    }
                    None => Err(TcpError::closed()),
                };
                let _ = reply.send(result);
            }
            Command::ReadOnce {
                key,
                deadline,
                reply,
            } => {
                let sink = Sink::Once {
                    tx: reply,
                    deadline,
                };
                // On failure `read_start` already resolved the reply with the error.
                if self.read_start(key, sink).is_ok() {
                    if let Some(at) = deadline {
                        self.push_timer(at, Timer::ReadDeadline(key.index, key.id));
                    }
                }
            }
            Command::Detach { key, reply } => {
                let result = match self.socket(key) {
                    Some(s) => {
                        if matches!(s.sink, Sink::Mailbox { .. }) {
                            s.sink = Sink::None;
                        }
                        self.update_interest(key);
                        Ok(())
                    }
                    None => Err(TcpError::closed()),
                };
                let _ = reply.send(result);
            }
            Command::Unread { key, data } => {
                if !data.is_empty() {
                    self.take_back(key, Ok(data), true);
                }
            }
            Command::Write { key, data, done } => self.queue_write(key, data, done),
            Command::Resume(key) => {
                if let Some(s) = self.socket(key) {
                    s.paused = false;
                    self.update_interest(key);
                }
            }
            Command::Close(key) => self.close_socket(key),
            Command::Shutdown => self.stopping = true,
        }
    }

    fn add_listener(
        &mut self,
        socket: Socket,
        target: AcceptTarget,
        state: Arc<ListenerState>,
    ) -> Result<Key, TcpError> {
        let id = next_id();
        let vacant = self.entries.vacant_entry();
        let key = Key {
            index: vacant.key(),
            id,
        };
        let mut reg = Registration::new(Arc::new(socket), self.shared.poller.clone(), key.index);
        reg.set_interest(Interest {
            read: !state.paused.load(Ordering::SeqCst),
            write: false,
            exclusive: state.shared_socket,
        })?;
        vacant.insert(Entry::Listener(ListenerEntry {
            id,
            reg,
            target,
            _closed: ListenerClosed::new(state.clone()),
            state,
            backing_off: false,
            at_limit: false,
        }));
        Ok(key)
    }

    /// Accepts while not paused, not backing off after `EMFILE` and not at the limit.
    fn update_listener_interest(&mut self, key: Key) {
        let Some(Entry::Listener(l)) = self.get(key) else {
            return;
        };
        let read = !l.backing_off && !l.at_limit && !l.state.paused.load(Ordering::SeqCst);
        let exclusive = l.state.shared_socket;
        let Err(e) = l.reg.set_interest(Interest {
            read,
            write: false,
            exclusive,
        }) else {
            return;
        };
        match &l.target {
            // The `listen` thread returns with the error and closes the listener.
            AcceptTarget::Thread(events) => {
                let _ = events.send(ListenEvent::Stopped(TcpError::from(e)));
            }
            // Nobody else would: close it here, its handle reporting the error.
            AcceptTarget::Mailbox { .. } => self.remove(key, TcpError::from(e)),
        }
    }

    /// Closes every connection accepted by the listener with state `id`; their readers
    /// and writers get `CLOSED`.
    fn close_connections_of(&mut self, id: u64) {
        let keys: Vec<Key> = self
            .entries
            .iter()
            .filter_map(|(index, e)| match e {
                Entry::Socket(s) if s.owner.as_ref().is_some_and(|o| o.listener.id == id) => {
                    Some(Key { index, id: s.id })
                }
                _ => None,
            })
            .collect();
        for key in keys {
            self.remove(key, TcpError::closed());
        }
    }

    fn insert_socket(
        &mut self,
        socket: Arc<Socket>,
        owner: Option<ConnectionGuard>,
        queued: Arc<AtomicUsize>,
        write_window: Option<usize>,
    ) -> Key {
        let id = next_id();
        let vacant = self.entries.vacant_entry();
        let key = Key {
            index: vacant.key(),
            id,
        };
        let reg = Registration::new(socket, self.shared.poller.clone(), key.index);
        vacant.insert(Entry::Socket(SocketEntry {
            id,
            reg,
            sink: Sink::None,
            stash: VecDeque::new(),
            read_end: None,
            paused: false,
            writes: VecDeque::new(),
            write_error: None,
            closing: false,
            dirty: false,
            owner,
            queued,
            queued_here: 0,
            write_window,
            write_blocked: false,
            lingering: false,
        }));
        key
    }

    fn get(&mut self, key: Key) -> Option<&mut Entry> {
        self.entries.get_mut(key.index).filter(|e| e.id() == key.id)
    }

    fn socket(&mut self, key: Key) -> Option<&mut SocketEntry> {
        match self.get(key) {
            Some(Entry::Socket(s)) if !s.closing => Some(s),
            _ => None,
        }
    }

    /// Attaches a new reader, after handing it the stash (and the end of the stream, if it
    /// was seen). A reader already attached and still alive makes this fail with `BUSY`.
    fn read_start(&mut self, key: Key, sink: Sink) -> Result<(), TcpError> {
        let Some(s) = self.socket(key) else {
            refuse(key, sink, TcpError::closed());
            return Err(TcpError::closed());
        };
        if let (Sink::Mailbox { inbox: old, .. }, Sink::Mailbox { inbox: new, .. }) =
            (&s.sink, &sink)
        {
            if Arc::ptr_eq(old, new) {
                // Attaching to the mailbox it is attached to already changes nothing.
                return Ok(());
            }
        }
        if !s.sink.is_abandoned() {
            refuse(key, sink, TcpError::busy());
            return Err(TcpError::busy());
        }
        s.sink = sink;
        // A pause belonged to the previous reader's window; the new reader has its own.
        s.paused = false;
        // A dropped port or future may have left chunks behind only on its way out; the
        // stash holds everything taken back, in order.
        let mut stash = std::mem::take(&mut s.stash);
        while let Some(chunk) = stash.pop_front() {
            self.deliver(key, chunk);
            if matches!(self.socket(key), Some(s) if matches!(s.sink, Sink::None)) {
                break;
            }
        }
        if let Some(s) = self.socket(key) {
            // A one-chunk reader leaves the rest for the next one, ahead of anything newer.
            stash.append(&mut s.stash);
            s.stash = stash;
        }
        if let Some(s) = self.socket(key) {
            if let (Some(end), false) = (&s.read_end, matches!(s.sink, Sink::None)) {
                let end = end.clone();
                self.deliver(key, Err(end));
            }
        }
        self.update_interest(key);
        Ok(())
    }

    /// Hands one read result to the socket's sink, taking it back into the stash when the
    /// reader is gone, and parking the socket when the reader's window is full.
    fn deliver(&mut self, key: Key, chunk: Chunk) {
        // Borrow only the slab, so that the outbox fields stay usable below.
        let Some(Entry::Socket(s)) = self.entries.get_mut(key.index).filter(|e| e.id() == key.id)
        else {
            return;
        };
        let len = chunk.as_ref().map_or(0, Vec::len);
        let end = chunk.is_err();
        match std::mem::replace(&mut s.sink, Sink::None) {
            Sink::None => s.stash.push_back(chunk),
            Sink::Port { tx, window } => {
                let full = window.add(len);
                match tx.send(chunk) {
                    Ok(()) if end => {}
                    Ok(()) => {
                        if full {
                            s.paused = true;
                            window.park(self.shared.clone(), key);
                        }
                        s.sink = Sink::Port { tx, window };
                    }
                    Err(flume::SendError(chunk)) => {
                        window.sub(len);
                        s.stash.push_back(chunk);
                    }
                }
            }
            Sink::Mailbox { inbox, window } => {
                let full = window.add(len);
                Self::post(
                    &mut self.outbox,
                    &mut self.outbox_index,
                    &inbox,
                    Delivery::Read { key, chunk },
                );
                if !end {
                    if full {
                        s.paused = true;
                        window.park(self.shared.clone(), key);
                    }
                    s.sink = Sink::Mailbox { inbox, window };
                }
            }
            Sink::Once { tx, .. } => {
                if let Err(chunk) = tx.send(chunk) {
                    s.stash.push_back(chunk);
                }
            }
        }
    }

    /// Keeps a chunk whose reader went away for the next reader: in the stash while nobody
    /// reads (in front of it when `front`), or straight to a reader that already took over
    /// (so that a stash never sits behind a live reader).
    fn take_back(&mut self, key: Key, chunk: Chunk, front: bool) {
        let Some(s) = self.socket(key) else {
            return;
        };
        if matches!(s.sink, Sink::None) {
            if front {
                s.stash.push_front(chunk);
            } else {
                s.stash.push_back(chunk);
            }
        } else {
            self.deliver(key, chunk);
        }
        self.update_interest(key);
    }

    /// Adds a delivery to this cycle's batch for `inbox`.
    fn post(
        outbox: &mut Vec<(Arc<dyn Inbox>, Vec<Delivery>)>,
        outbox_index: &mut HashMap<usize, usize>,
        inbox: &Arc<dyn Inbox>,
        delivery: Delivery,
    ) {
        let slot = Arc::as_ptr(inbox) as *const () as usize;
        let index = *outbox_index.entry(slot).or_insert_with(|| {
            outbox.push((inbox.clone(), Vec::new()));
            outbox.len() - 1
        });
        outbox[index].1.push(delivery);
    }

    fn send_outbox(&mut self) {
        self.outbox_index.clear();
        let outbox = std::mem::take(&mut self.outbox);
        for (inbox, batch) in outbox {
            if let Err(batch) = inbox.deliver(batch) {
                // The mailbox was dropped: keep its chunks for whoever reads next. Accepted
                // connections nobody will own are dropped, which closes them.
                for delivery in batch {
                    let Delivery::Read { key, chunk } = delivery else {
                        continue;
                    };
                    if let Some(Entry::Socket(s)) = self.get(key) {
                        if matches!(&s.sink, Sink::Mailbox { inbox: i, .. } if Arc::ptr_eq(i, &inbox))
                        {
                            s.sink = Sink::None;
                        }
                        self.take_back(key, chunk, false);
                    }
                }
            }
        }
    }

    /// Registers exactly the interest the socket's state calls for.
    fn update_interest(&mut self, key: Key) {
        let Some(entry) = self.get(key) else {
            return;
        };
        let Entry::Socket(s) = entry else {
            return;
        };
        let want = Interest {
            read: s.lingering
                || !s.closing
                    && !s.paused
                    && !s.write_blocked
                    && s.read_end.is_none()
                    && !matches!(s.sink, Sink::None)
                    && s.stash.is_empty(),
            write: !s.writes.is_empty() && !s.dirty,
            exclusive: false,
        };
        if let Err(e) = s.reg.set_interest(want) {
            // The kernel refused the registration (ENOMEM, ENOSPC): the socket can no longer
            // be served, so it fails loudly instead of hanging.
            self.fail_socket(key, TcpError::from(e));
        }
    }

    fn dispatch(&mut self, index: usize, readable: bool, writable: bool) {
        let Some(entry) = self.entries.get(index) else {
            return;
        };
        let key = Key {
            index,
            id: entry.id(),
        };
        match entry {
            Entry::Listener(_) => self.accept(key),
            Entry::Socket(s) => {
                let interest = s.reg.interest();
                if writable && interest.write {
                    self.flush(key);
                }
                if readable && interest.read {
                    self.read(key);
                }
            }
        }
    }

    fn read(&mut self, key: Key) {
        if matches!(self.get(key), Some(Entry::Socket(s)) if s.lingering) {
            self.linger(key);
            return;
        }
        for _ in 0..READS_PER_CYCLE {
            let entry = self.entries.get_mut(key.index).filter(|e| e.id() == key.id);
            let Some(Entry::Socket(s)) = entry else {
                return;
            };
            let result = recv_spare(s.reg.socket(), &mut self.buf);
            match result {
                Ok(0) => {
                    self.end_reading(key, TcpError::eof());
                    break;
                }
                Ok(n) => {
                    let drained = n < self.buf.capacity();
                    let chunk = self.take_chunk();
                    self.deliver(key, Ok(chunk));
                    let Some(Entry::Socket(s)) = self.get(key) else {
                        return;
                    };
                    // A short read emptied the kernel buffer; level mode reports more later.
                    if drained
                        || s.paused
                        || !matches!(s.sink, Sink::Port { .. } | Sink::Mailbox { .. })
                    {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.end_reading(key, TcpError::from(e));
                    break;
                }
            }
        }
        self.update_interest(key);
    }

    /// Takes what the last `recv` put in the receive buffer. A large read hands over the
    /// buffer itself (at most half of its capacity is then unused) and a new one is
    /// allocated, uninitialised; a small one is copied out at its exact length, so that small
    /// chunks waiting in a port do not each hold a whole buffer.
    fn take_chunk(&mut self) -> Vec<u8> {
        let capacity = self.config.read_buffer;
        if self.buf.len() >= capacity / 2 {
            std::mem::replace(&mut self.buf, Vec::with_capacity(capacity))
        } else {
            let chunk = self.buf.clone();
            self.buf.clear();
            chunk
        }
    }

    fn end_reading(&mut self, key: Key, error: TcpError) {
        if let Some(Entry::Socket(s)) = self.get(key) {
            s.read_end = Some(error.clone());
            self.deliver(key, Err(error));
        }
    }

    fn queue_write(
        &mut self,
        key: Key,
        data: Vec<u8>,
        done: crate::oneshot::Sender<Result<(), TcpError>>,
    ) {
        let len = data.len();
        let Some(s) = self.socket(key) else {
            if let Some(Entry::Socket(s)) = self.get(key) {
                s.queued.fetch_sub(len, Ordering::SeqCst);
            }
            let _ = done.send(Err(TcpError::closed()));
            return;
        };
        if let Some(e) = &s.write_error {
            s.queued.fetch_sub(len, Ordering::SeqCst);
            let _ = done.send(Err(e.clone()));
            return;
        }
        if data.is_empty() && s.writes.is_empty() {
            let _ = done.send(Ok(()));
            return;
        }
        s.writes.push_back(PendingWrite {
            data,
            written: 0,
            done: Some(done),
        });
        s.queued_here += len;
        if !s.write_blocked && s.write_window.is_some_and(|w| s.queued_here > w) {
            // A peer that sends without reading must not make us queue without bound:
            // stop reading it (TCP flow control then slows it) until half has drained.
            s.write_blocked = true;
            if s.reg.interest().write {
                self.update_interest(key);
                return;
            }
        }
        // Unless the socket already waits for writability, flush after the command drain,
        // so that every write queued in this batch goes out in one call.
        if !s.dirty && !s.reg.interest().write {
            s.dirty = true;
            self.dirty.push(key);
        }
    }

    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            if let Some(Entry::Socket(s)) = self.get(key) {
                s.dirty = false;
                self.flush(key);
            }
        }
        self.dirty = dirty;
        self.dirty.clear();
    }

    /// Writes as much of the queue as the kernel takes, one gathered `sendmsg` (or plain
    /// `send`, for a single buffer) at a time.
    fn flush(&mut self, key: Key) {
        loop {
            let Some(Entry::Socket(s)) = self.get(key) else {
                return;
            };
            if s.writes.is_empty() {
                break;
            }
            let mut slices: [IoSlice<'_>; MAX_IOVECS] = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            for w in s.writes.iter().take(MAX_IOVECS) {
                slices[count] = IoSlice::new(&w.data[w.written..]);
                count += 1;
            }
            let socket = s.reg.socket();
            // One buffer (the common case of a reply per request) goes out with `send`,
            // which skips the kernel's copy-in of a message header and an iovec array.
            let result = if count == 1 {
                crate::io_task::sys::send(socket, &slices[0])
            } else {
                crate::io_task::sys::send_vectored(socket, &slices[..count])
            };
            match result {
                Ok(mut n) => {
                    s.queued_here -= n;
                    s.queued.fetch_sub(n, Ordering::SeqCst);
                    if s.write_blocked && s.write_window.is_none_or(|w| s.queued_here <= w / 2) {
                        s.write_blocked = false;
                    }
                    while n > 0 || s.writes.front().is_some_and(|w| w.written == w.data.len()) {
                        let Some(front) = s.writes.front_mut() else {
                            break;
                        };
                        let take = n.min(front.data.len() - front.written);
                        front.written += take;
                        n -= take;
                        if front.written < front.data.len() {
                            break;
                        }
                        if let Some(done) = s.writes.pop_front().and_then(|w| w.done) {
                            let _ = done.send(Ok(()));
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.fail_writes(key, TcpError::from(e));
                    break;
                }
            }
        }
        if matches!(self.get(key), Some(Entry::Socket(s)) if s.closing) {
            self.finish_close(key);
        } else {
            self.update_interest(key);
        }
    }

    fn fail_writes(&mut self, key: Key, error: TcpError) {
        if let Some(Entry::Socket(s)) = self.get(key) {
            s.write_error = Some(error.clone());
            s.queued.fetch_sub(s.queued_here, Ordering::SeqCst);
            s.queued_here = 0;
            s.write_blocked = false;
            for w in s.writes.drain(..) {
                if let Some(done) = w.done {
                    let _ = done.send(Err(error.clone()));
                }
            }
        }
    }

    /// Fails everything queued on a socket the loop can no longer serve.
    fn fail_socket(&mut self, key: Key, error: TcpError) {
        self.fail_writes(key, error.clone());
        if let Some(Entry::Socket(s)) = self.get(key) {
            if s.read_end.is_none() {
                self.end_reading(key, error);
            }
        }
        self.remove(key, TcpError::closed());
    }

    /// The user dropped the socket: stop reading, flush the queue (bounded by the drain
    /// timeout), then close.
    fn close_socket(&mut self, key: Key) {
        let drain_timeout = self.config.drain_timeout;
        let Some(s) = self.socket(key) else {
            return;
        };
        if s.sink.is_abandoned() || s.read_end.is_some() {
            s.sink = Sink::None;
        } else {
            self.deliver(key, Err(TcpError::closed()));
        }
        let Some(s) = self.socket(key) else {
            return;
        };
        s.closing = true;
        s.stash.clear();
        self.push_timer(
            Instant::now() + drain_timeout,
            Timer::DrainDeadline(key.index, key.id),
        );
        self.finish_close(key);
    }

    /// Closes a socket the user dropped once its queue is flushed. Unless the peer already
    /// closed its side, the socket first half-closes and reads (discarding) until the peer
    /// closes: closing with unread input would make the kernel reset the connection and
    /// throw away output still in the send buffer. The drain deadline bounds both waits.
    fn finish_close(&mut self, key: Key) {
        let linger_timeout = self.config.linger_timeout;
        let Some(Entry::Socket(s)) = self.get(key) else {
            return;
        };
        if !s.writes.is_empty() || s.lingering {
            self.update_interest(key);
            return;
        }
        if s.read_end.is_some()
            || s.write_error.is_some()
            || s.reg.socket().shutdown(std::net::Shutdown::Write).is_err()
        {
            self.remove(key, TcpError::closed());
            return;
        }
        s.lingering = true;
        // The user closed it: it no longer counts against its listener's limit.
        s.owner = None;
        self.push_timer(
            Instant::now() + linger_timeout,
            Timer::DrainDeadline(key.index, key.id),
        );
        self.update_interest(key);
    }

    /// Reads and discards what a half-closed socket still receives; closes it at the end.
    fn linger(&mut self, key: Key) {
        for _ in 0..READS_PER_CYCLE {
            let entry = self.entries.get_mut(key.index).filter(|e| e.id() == key.id);
            let Some(Entry::Socket(s)) = entry else {
                return;
            };
            let result = recv_spare(s.reg.socket(), &mut self.buf);
            self.buf.clear();
            match result {
                Ok(n) if n > 0 => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // EOF, or the peer reset: nothing more can be delivered either way.
                _ => {
                    self.remove(key, TcpError::closed());
                    return;
                }
            }
        }
    }

    /// Takes a socket out of the slab: its reader and writers get `error`, its registration
    /// is deleted, and both directions are shut down so the peer sees the close even while a
    /// user still holds the `TcpSocket`.
    fn remove(&mut self, key: Key, error: TcpError) {
        if self.get(key).is_none() {
            return;
        }
        if let Some(Entry::Socket(s)) = self.get(key) {
            // Before anyone hears of the close: from here on, writers see the socket closed
            // instead of writing to it directly.
            s.queued.store(QUEUED_CLOSED, Ordering::SeqCst);
            s.queued_here = 0;
            let _ = s.reg.socket().shutdown(std::net::Shutdown::Both);
            if !s.writes.is_empty() {
                self.fail_writes(key, error.clone());
            }
        }
        if let Some(Entry::Socket(s)) = self.get(key) {
            if !matches!(s.sink, Sink::None) {
                self.deliver(key, Err(error.clone()));
            }
        }
        match self.entries.remove(key.index) {
            Entry::Socket(s) => drop(s),
            Entry::Listener(l) => match l.target {
                AcceptTarget::Thread(events) => {
                    let _ = events.send(ListenEvent::Stopped(error));
                }
                AcceptTarget::Mailbox { .. } => {
                    // As `listen` returns when any of its sockets stops, the listener stops
                    // as a whole: the sockets on other tasks close too.
                    l.state.stopped(error);
                    drop(l.state.close_sockets(false, None));
                }
            },
        }
    }

    fn accept(&mut self, key: Key) {
        let Some(Entry::Listener(l)) = self.get(key) else {
            return;
        };
        let state = l.state.clone();
        for _ in 0..state.max_accepts_per_batch {
            if state.paused.load(Ordering::SeqCst) {
                break;
            }
            if !state.has_room() {
                // At the limit: stop asking (the kernel backlog holds the rest) until one of
                // this listener's connections closes.
                if let Some(Entry::Listener(l)) = self.get(key) {
                    l.at_limit = true;
                }
                self.update_listener_interest(key);
                state.mark_limited();
                return;
            }
            let Some(Entry::Listener(l)) = self.get(key) else {
                return;
            };
            if let AcceptTarget::Mailbox { inbox, .. } = &l.target {
                if inbox.is_closed() {
                    // Its actor is gone: refuse the connections waiting and free the port.
                    let gone = TcpError::new(
                        "CLOSED",
                        "the listener's mailbox was dropped",
                        io::ErrorKind::NotConnected,
                    );
                    self.remove(key, gone);
                    return;
                }
            }
            let result = accept_nonblocking(l.reg.socket());
            match result {
                Ok(socket) => {
                    if state.drop_incoming.load(Ordering::SeqCst) {
                        // Accept and close at once: the client sees the connection end.
                        drop(socket);
                        continue;
                    }
                    if state.nodelay {
                        // A failure leaves Nagle on; the socket still works, so go on.
                        let _ = socket.set_tcp_nodelay(true);
                    }
                    state.connection_opened();
                    let guard = ConnectionGuard {
                        listener: state.clone(),
                    };
                    let socket = Arc::new(socket);
                    let queued = Arc::new(AtomicUsize::new(0));
                    let socket_key = self.insert_socket(
                        socket.clone(),
                        Some(guard),
                        queued.clone(),
                        state.write_window,
                    );
                    self.hand_over(key, socket_key, socket, queued);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if crate::io_task::sys::accept_error_is_transient(&e) => {}
                Err(e) if crate::io_task::sys::accept_error_is_out_of_resources(&e) => {
                    // Out of descriptors or memory: in level mode the pending connection would
                    // be reported again at once, a busy loop. Stop asking until a timer fires;
                    // existing connections are served meanwhile.
                    l.backing_off = true;
                    self.update_listener_interest(key);
                    self.push_timer(
                        Instant::now() + ACCEPT_BACKOFF,
                        Timer::AcceptRetry(key.index, key.id),
                    );
                    return;
                }
                Err(_) => return,
            }
        }
    }

    /// Gives a connection accepted by listener `key` to the listener's target.
    fn hand_over(
        &mut self,
        key: Key,
        socket_key: Key,
        socket: Arc<Socket>,
        queued: Arc<AtomicUsize>,
    ) {
        let shared = self.shared.clone();
        let Some(Entry::Listener(l)) = self.get(key) else {
            return;
        };
        match &l.target {
            AcceptTarget::Thread(events) => {
                let conn = NewConnection::new(socket_key, shared, socket, queued);
                // If `listen` already returned, dropping the connection closes it.
                let _ = events.send(ListenEvent::Connection(conn));
            }
            AcceptTarget::Mailbox { inbox, window } => {
                let (inbox, window) = (inbox.clone(), window.clone());
                let sock = TcpSocket::new(socket_key, shared, socket, queued);
                // Announced before anything it reads: its reads are posted later in the batch.
                Self::post(
                    &mut self.outbox,
                    &mut self.outbox_index,
                    &inbox,
                    Delivery::Accepted(sock),
                );
                if let Some(s) = self.socket(socket_key) {
                    s.sink = Sink::Mailbox { inbox, window };
                }
                self.update_interest(socket_key);
            }
        }
    }

    /// Schedules a timer. A read that resolves before its deadline leaves its timer behind
    /// (a heap cannot remove from the middle), so once the heap has doubled since the last
    /// sweep, the timers that can no longer fire are dropped: many reads with long timeouts
    /// cannot make the heap grow without bound.
    fn push_timer(&mut self, at: Instant, timer: Timer) {
        self.timers.push(Reverse((at, timer)));
        if self.timers.len() >= self.prune_at {
            let timers = std::mem::take(&mut self.timers);
            self.timers = timers
                .into_iter()
                .filter(|Reverse((at, timer))| self.timer_is_live(*at, *timer))
                .collect();
            self.prune_at = (self.timers.len() * 2).max(MIN_PRUNE);
        }
    }

    /// Whether firing the timer would still do something.
    fn timer_is_live(&self, at: Instant, timer: Timer) -> bool {
        let entry = |index: usize, id: u64| self.entries.get(index).filter(|e| e.id() == id);
        match timer {
            Timer::ReadDeadline(index, id) => matches!(
                entry(index, id),
                Some(Entry::Socket(s)) if matches!(s.sink, Sink::Once { deadline: Some(d), .. } if d == at)
            ),
            Timer::DrainDeadline(index, id) => {
                matches!(entry(index, id), Some(Entry::Socket(s)) if s.closing)
            }
            Timer::AcceptRetry(index, id) => {
                matches!(entry(index, id), Some(Entry::Listener(l)) if l.backing_off)
            }
            Timer::DrainListener(_) => true,
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, timer))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::ReadDeadline(index, id) => {
                    let key = Key { index, id };
                    if let Some(s) = self.socket(key) {
                        if matches!(s.sink, Sink::Once { deadline: Some(d), .. } if d == at) {
                            self.deliver(key, Err(TcpError::timeout()));
                            self.update_interest(key);
                        }
                    }
                }
                Timer::DrainDeadline(index, id) => {
                    let key = Key { index, id };
                    if matches!(self.get(key), Some(Entry::Socket(s)) if s.closing) {
                        self.remove(key, TcpError::timeout());
                    }
                }
                Timer::AcceptRetry(index, id) => {
                    let key = Key { index, id };
                    if let Some(Entry::Listener(l)) = self.get(key) {
                        l.backing_off = false;
                    }
                    self.update_listener_interest(key);
                }
                Timer::DrainListener(id) => self.close_connections_of(id),
            }
        }
    }

    /// Ends the loop: every reader, writer and listener gets `SHUTDOWN`, every descriptor is
    /// deleted from the poller and closed, and commands still queued are dropped (their
    /// waiters see `SHUTDOWN`).
    fn close_all(&mut self) {
        let keys: Vec<Key> = self
            .entries
            .iter()
            .map(|(index, e)| Key { index, id: e.id() })
            .collect();
        for key in keys {
            self.remove(key, TcpError::shutdown());
        }
        self.send_outbox();
        self.shared.stopped.store(true, Ordering::SeqCst);
        while let Ok(command) = self.shared.commands_rx.try_recv() {
            drop(command);
        }
    }
}

/// Tells a refused reader why: a future resolves with the error, a mailbox gets it as the
/// socket's `Closed` event (a port's caller hears it through the command's reply).
fn refuse(key: Key, sink: Sink, error: TcpError) {
    match sink {
        Sink::Once { tx, .. } => {
            let _ = tx.send(Err(error));
        }
        Sink::Mailbox { inbox, .. } => {
            let _ = inbox.deliver(vec![Delivery::Read {
                key,
                chunk: Err(error),
            }]);
        }
        Sink::Port { .. } | Sink::None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io_task::IoTask;
    use crate::oneshot;

    #[test]
    fn reads_resolved_before_their_deadline_do_not_pile_up_timers() {
        let config = IoTask::builder().config;
        let mut event_loop = EventLoop::new(Shared::detached(), config);
        let socket = Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let queued = Arc::new(AtomicUsize::new(0));
        let key = event_loop.insert_socket(Arc::new(socket), None, queued, None);
        let far = Instant::now() + Duration::from_secs(3600);
        for i in 0..10_000 {
            let (reply, rx) = oneshot::channel();
            let deadline = Some(far + Duration::from_nanos(i));
            event_loop.handle(Command::ReadOnce {
                key,
                deadline,
                reply,
            });
            event_loop.deliver(key, Ok(vec![7]));
            assert_eq!(rx.recv(), Ok(Ok(vec![7])));
        }
        let left = event_loop.timers.len();
        assert!(left <= 1024, "{left} timers left for 0 pending reads");
    }
}
