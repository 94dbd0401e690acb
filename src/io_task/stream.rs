//! A connected stream in the slab, and everything the loop does with one: deliver its reads,
//! flush its writes, close it.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use socket2::Socket;

use crate::error::Error;
use crate::io_task::entry::{Entry, Key, next_id};
use crate::io_task::event_loop::EventLoop;
use crate::io_task::listener::ConnectionGuard;
use crate::io_task::registration::{Interest, Registration};
use crate::io_task::sink::{Chunk, Delivery, Sink};
use crate::io_task::sys::{self, recv_spare};
use crate::io_task::timers::{Timer, deadline_after};
use crate::io_task::writes::{QUEUED_CLOSED, WriteState};
use crate::oneshot::Settled;

/// Reads of a full buffer per stream per cycle before other streams get a turn.
const READS_PER_CYCLE: usize = 4;
/// Queued writes gathered into one `sendmsg`.
const MAX_IOVECS: usize = 64;
/// Bytes of a file one `sendfile` is asked for, so that a large file shares the loop.
const FILE_CHUNK: usize = 1 << 20;

/// A connected stream and everything queued on it.
///
/// Invariants (checked by `update_interest`, the only place interest is chosen):
/// - read interest ⇔ `lingering`, or: not `closing`, not `paused`, not `write_blocked`, no
///   `read_end`, a sink that wants reads, and an empty `stash` (the stash is delivered
///   before anything newer is read);
/// - write interest ⇔ `writes` is not empty and the stream is not `dirty` (a dirty stream
///   is flushed after the command drain; asking epoll as well would only add a wake-up).
#[derive(Debug)]
pub(crate) struct StreamEntry {
    pub(crate) id: u64,
    pub(crate) reg: Registration,
    /// Where reads go; `Sink::None` while nobody reads.
    pub(crate) sink: Sink,
    /// Chunks taken back from a port given to `read_stop`, a dropped future or a dropped
    /// mailbox, in order; handed to the next sink before anything new is read. Holds only
    /// bytes: the end of the stream is `read_end`.
    pub(crate) stash: VecDeque<Chunk>,
    /// Set once EOF or a read error was seen: every later reader gets this error.
    pub(crate) read_end: Option<Box<Error>>,
    /// Set while the sink's window is full: the stream is parked in that window (see
    /// `Window::park`) and not read until the window sends `Resume`.
    pub(crate) paused: bool,
    /// Writes not yet fully accepted by the kernel, oldest first.
    pub(crate) writes: VecDeque<PendingWrite>,
    /// Set after a write failed: every later write fails with it, and `writes` is empty.
    pub(crate) write_error: Option<Box<Error>>,
    /// The user's handles to the stream (`try_clone` makes more); it closes when the last
    /// is dropped. At least 1 while the stream is not closing.
    pub(crate) handles: usize,
    /// The socket's deadline: writes still queued then fail with `ETIMEDOUT`, and every
    /// later write with them (the stream was cut short). A timer is scheduled for it while
    /// set; a write made after it passed is refused on the user's side, without a timer.
    pub(crate) deadline: Option<std::time::Instant>,
    /// Set when a send failed on a broken connection (a reset, a timeout). The failed send
    /// consumed the socket's pending error, after which `recv` reports a plain end; the
    /// reader gets this error instead of `EOF`, which would claim the peer closed cleanly.
    pub(crate) broken: Option<Box<Error>>,
    /// Set when the user dropped the stream: close as soon as `writes` is empty. A closing
    /// stream takes no more commands (`EventLoop::stream` does not return it).
    pub(crate) closing: bool,
    /// Set once a closing stream's output is flushed and its write side shut down: it is
    /// read (and the input discarded) until the peer closes, then closed.
    pub(crate) lingering: bool,
    /// Whether the stream is on the loop's `dirty` list, to be flushed this cycle.
    pub(crate) dirty: bool,
    /// The listener that accepted the stream, which counts it while it is in the slab.
    pub(crate) owner: Option<ConnectionGuard>,
    /// Shared with the `RawStream`: the queued-bytes gauge (the user side adds, the loop
    /// subtracts), and the count of completed writes that resolves `WriteFuture`s. Every
    /// write in `writes` completes or fails through it exactly once, in order.
    pub(crate) write_state: Arc<WriteState>,
    /// The loop's own count of the bytes in `writes`.
    pub(crate) queued_here: usize,
    /// Above this many queued bytes the stream is not read (see `write_blocked`).
    pub(crate) write_window: Option<usize>,
    /// Set while more than `write_window` bytes are queued, until half of them drained.
    pub(crate) write_blocked: bool,
}

/// What a queued write sends.
#[derive(Debug)]
pub(crate) enum Payload {
    Bytes(Vec<u8>),
    /// `len` bytes of `file` from `offset` (`send_file`), sent by `sendfile(2)` where the
    /// system has it.
    File {
        file: std::fs::File,
        offset: u64,
        len: usize,
    },
    /// Shut down the sending side once everything before it was written.
    Shutdown,
}

impl Payload {
    pub(crate) fn len(&self) -> usize {
        match self {
            Payload::Bytes(data) => data.len(),
            Payload::File { len, .. } => *len,
            Payload::Shutdown => 0,
        }
    }
}

/// A write in the queue.
#[derive(Debug)]
pub(crate) struct PendingWrite {
    pub(crate) data: Payload,
    /// Bytes of `data` already written.
    pub(crate) written: usize,
    /// When it was queued, for a stream with a write age limit (else `None`).
    pub(crate) queued_at: Option<std::time::Instant>,
}

impl EventLoop {
    pub(super) fn insert_stream(
        &mut self,
        socket: Arc<Socket>,
        owner: Option<ConnectionGuard>,
        write_state: Arc<WriteState>,
        write_window: Option<usize>,
    ) -> Key {
        self.insert_stream_as(None, socket, owner, write_state, write_window)
    }

    /// As `insert_stream`, with the id promised to its user beforehand (`connect_into`).
    pub(super) fn insert_stream_as(
        &mut self,
        id: Option<u64>,
        socket: Arc<Socket>,
        owner: Option<ConnectionGuard>,
        write_state: Arc<WriteState>,
        write_window: Option<usize>,
    ) -> Key {
        let vacant = self.entries.vacant_entry();
        let key = Key {
            index: vacant.key(),
            id: id.unwrap_or_else(next_id),
        };
        let reg = Registration::new(socket, self.shared.poller.clone(), key.index);
        self.stats.streams += 1;
        vacant.insert(Entry::Stream(StreamEntry::new(
            key.id,
            reg,
            owner,
            write_state,
            write_window,
        )));
        key
    }

    /// The stream named by `key`, unless it is gone or closing.
    pub(super) fn stream(&mut self, key: Key) -> Option<&mut StreamEntry> {
        match self.get(key) {
            Some(Entry::Stream(s)) if !s.closing => Some(s),
            _ => None,
        }
    }

    /// The stream named by `key`, closing or not.
    pub(super) fn any_stream(&mut self, key: Key) -> Option<&mut StreamEntry> {
        match self.get(key) {
            Some(Entry::Stream(s)) => Some(s),
            _ => None,
        }
    }

    /// Attaches a new reader, after handing it the stash (and the end of the stream, if it
    /// was seen). A reader already attached and still alive makes this fail with `BUSY`.
    pub(super) fn read_start(&mut self, key: Key, sink: Sink) -> Result<(), Error> {
        let Some(s) = self.stream(key) else {
            refuse(key, sink, Error::closed());
            return Err(Error::closed());
        };
        s.reclaim();
        if let (Sink::Mailbox { inbox: old, .. }, Sink::Mailbox { inbox: new, .. }) =
            (&s.sink, &sink)
        {
            if Arc::ptr_eq(old, new) {
                // Attaching to the mailbox it is attached to already changes nothing.
                return Ok(());
            }
        }
        if !s.sink.is_abandoned() {
            refuse(key, sink, Error::busy());
            return Err(Error::busy());
        }
        s.sink = sink;
        // A pause belonged to the previous reader's window; the new reader has its own.
        s.paused = false;
        // Hand over the stash from its front; a chunk the reader cannot take goes back to
        // the front, so the next reader gets the stash in order.
        while let Some(s) = self.stream(key) {
            if !s.sink.wants_reads() {
                break;
            }
            let Some(chunk) = s.stash.pop_front() else {
                break;
            };
            if let Err(chunk) = self.offer(key, chunk) {
                if let Some(s) = self.stream(key) {
                    s.stash.push_front(chunk);
                }
                break;
            }
        }
        if let Some(s) = self.stream(key) {
            if let (Some(end), true, true) = (&s.read_end, s.stash.is_empty(), s.sink.wants_reads())
            {
                let end = (**end).clone();
                self.deliver(key, Err(end));
            }
        }
        self.update_interest(key);
        Ok(())
    }

    /// Hands one read result to the stream's sink. Bytes the reader cannot take wait in the
    /// stash for the next one; an error nobody takes is dropped (the end of the stream is
    /// kept in `read_end` and repeated to every later reader).
    pub(super) fn deliver(&mut self, key: Key, chunk: Chunk) {
        if let Err(Ok(data)) = self.offer(key, chunk) {
            if let Some(s) = self.any_stream(key) {
                s.stash.push_back(Ok(data));
            }
        }
    }

    /// Offers one read result to the stream's sink, parking the stream when the reader's
    /// window is full; gives the chunk back when nobody took it.
    fn offer(&mut self, key: Key, chunk: Chunk) -> Result<(), Chunk> {
        // Borrow only the slab, so that the outbox stays usable below.
        let Some(Entry::Stream(s)) = self.entries.get_mut(key.index).filter(|e| e.id() == key.id)
        else {
            return Err(chunk);
        };
        let len = chunk.as_ref().map_or(0, Vec::len);
        let end = chunk.is_err();
        match std::mem::replace(&mut s.sink, Sink::None) {
            Sink::Port { tx, window } => {
                let full = window.add(len);
                match tx.send(chunk) {
                    Ok(()) if end => Ok(()),
                    Ok(()) => {
                        if full {
                            s.paused = true;
                            window.park(self.shared.clone(), key);
                        }
                        s.sink = Sink::Port { tx, window };
                        Ok(())
                    }
                    Err(flume::SendError(chunk)) => {
                        window.sub(len);
                        Err(chunk)
                    }
                }
            }
            Sink::Mailbox { inbox, window } => {
                let full = window.add(len);
                self.outbox.post(&inbox, Delivery::Read { key, chunk });
                if !end {
                    if full {
                        s.paused = true;
                        window.park(self.shared.clone(), key);
                    }
                    s.sink = Sink::Mailbox { inbox, window };
                }
                Ok(())
            }
            Sink::Once { tx, .. } => match tx.send_reclaimable(chunk) {
                Ok(reclaim) => {
                    s.sink = Sink::Delivered(reclaim);
                    Ok(())
                }
                Err(chunk) => Err(chunk),
            },
            other @ (Sink::None | Sink::Delivered(_)) => {
                s.sink = other;
                Err(chunk)
            }
        }
    }

    /// Keeps a chunk whose reader went away for the next reader: in the stash while nobody
    /// reads (in front of it when `front`), or straight to a reader that already took over
    /// (so that a stash never sits behind a live reader).
    pub(super) fn take_back(&mut self, key: Key, chunk: Chunk, front: bool) {
        let Some(s) = self.stream(key) else {
            return;
        };
        s.reclaim();
        if chunk.is_err() {
            // Only bytes are kept; the end of the stream lives in `read_end`.
        } else if s.sink.is_abandoned() {
            s.sink = Sink::None;
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

    /// Stops delivering to a port and takes back, in order, what it still holds.
    pub(super) fn read_stop(
        &mut self,
        key: Key,
        port: flume::Receiver<Chunk>,
        window: &Arc<crate::io_task::sink::Window>,
    ) -> Result<(), Error> {
        let Some(s) = self.stream(key) else {
            return Err(Error::closed());
        };
        if matches!(&s.sink, Sink::Port { window: w, .. } if Arc::ptr_eq(w, window)) {
            s.sink = Sink::None;
        }
        // Nothing can be sent to the port any more: take back what it holds, in order,
        // ahead of anything read later.
        let mut taken = 0;
        let mut back: VecDeque<Chunk> = port.drain().filter(Result::is_ok).collect();
        for chunk in &back {
            taken += chunk.as_ref().map_or(0, Vec::len);
        }
        back.append(&mut s.stash);
        s.stash = back;
        window.sub(taken);
        self.update_interest(key);
        Ok(())
    }

    /// Registers exactly the interest the stream's state calls for.
    pub(super) fn update_interest(&mut self, key: Key) {
        let Some(s) = self.any_stream(key) else {
            return;
        };
        let want = Interest {
            read: s.lingering
                || !s.closing
                    && !s.paused
                    && !s.write_blocked
                    && s.read_end.is_none()
                    && s.sink.wants_reads()
                    && s.stash.is_empty(),
            write: !s.writes.is_empty() && !s.dirty,
            exclusive: false,
        };
        if let Err(e) = s.reg.set_interest(want) {
            log!(warn, "the poller refused a socket: {e}");
            // The kernel refused the registration (ENOMEM, ENOSPC): the stream can no longer
            // be served, so it fails loudly instead of hanging.
            self.fail_stream(key, Error::from(e));
        }
    }

    /// The stream is readable or writable.
    pub(super) fn stream_ready(&mut self, key: Key, readable: bool, writable: bool) {
        let Some(s) = self.any_stream(key) else {
            return;
        };
        let interest = s.reg.interest();
        if writable && interest.write {
            self.flush(key);
        }
        if readable && interest.read {
            self.read(key);
        }
    }

    fn read(&mut self, key: Key) {
        if matches!(self.any_stream(key), Some(s) if s.lingering) {
            self.linger(key);
            return;
        }
        for _ in 0..READS_PER_CYCLE {
            let Some(Entry::Stream(s)) =
                self.entries.get_mut(key.index).filter(|e| e.id() == key.id)
            else {
                return;
            };
            match recv_spare(s.reg.socket(), &mut self.buf) {
                Ok(0) => {
                    let end = s.broken.take().map_or_else(Error::eof, |e| *e);
                    self.end_reading(key, end);
                    break;
                }
                Ok(n) => {
                    self.stats.reads += 1;
                    self.stats.bytes_read += n as u64;
                    let drained = n < self.buf.capacity();
                    let chunk = self.take_chunk();
                    self.deliver(key, Ok(chunk));
                    let Some(s) = self.any_stream(key) else {
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
                    self.end_reading(key, Error::from(e));
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

    fn end_reading(&mut self, key: Key, error: Error) {
        if error.kind() == io::ErrorKind::ConnectionReset {
            self.stats.resets += 1;
        }
        if let Some(s) = self.any_stream(key) {
            s.read_end = Some(Box::new(error.clone()));
            self.deliver(key, Err(error));
        }
    }

    pub(super) fn queue_write(&mut self, key: Key, data: Payload) {
        let len = data.len();
        let Some(s) = self.stream(key) else {
            // The stream is gone: its `WriteState` recorded the failure that this write,
            // numbered after it, reports.
            return;
        };
        if s.write_error.is_some() {
            // Failed earlier: the failure recorded then covers this write too.
            s.write_state.queued.fetch_sub(len, Ordering::SeqCst);
            return;
        }
        if len == 0 && s.writes.is_empty() {
            if let Payload::Shutdown = data {
                // Nothing before it: shut down now.
                match s.reg.socket().shutdown(std::net::Shutdown::Write) {
                    Ok(()) => s.write_state.complete_one(),
                    Err(e) => self.fail_writes(key, Error::from(e)),
                }
                return;
            }
            s.write_state.complete_one();
            return;
        }
        let age_limit = s
            .write_state
            .controls()
            .map_or(0, |c| c.age_limit_ms.load(Ordering::Relaxed));
        let queued_at = (age_limit > 0).then(std::time::Instant::now);
        let first = s.writes.is_empty();
        s.writes.push_back(PendingWrite {
            data,
            written: 0,
            queued_at,
        });
        s.queued_here += len;
        if let (true, Some(at)) = (first, queued_at) {
            let due = at.checked_add(std::time::Duration::from_millis(age_limit));
            self.push_timer(due, Timer::WriteAge(key));
        }
        let Some(s) = self.stream(key) else {
            return;
        };
        if !s.write_blocked && s.write_window.is_some_and(|w| s.queued_here > w) {
            // A peer that sends without reading must not make us queue without bound:
            // stop reading it (flow control then slows it) until half has drained.
            s.write_blocked = true;
            if s.reg.interest().write {
                self.update_interest(key);
                return;
            }
        }
        // Unless the stream already waits for writability, flush after the command drain,
        // so that every write queued in this batch goes out in one call.
        if !s.dirty && !s.reg.interest().write {
            s.dirty = true;
            self.dirty.push(key);
        }
    }

    pub(super) fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            if let Some(s) = self.any_stream(key) {
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
            // Borrow only the slab, so that the receive buffer is free for a file's copy.
            let Some(Entry::Stream(s)) =
                self.entries.get_mut(key.index).filter(|e| e.id() == key.id)
            else {
                return;
            };
            if s.writes.is_empty() {
                break;
            }
            let socket = s.reg.socket();
            if let Some(PendingWrite {
                data: Payload::Shutdown,
                ..
            }) = s.writes.front()
            {
                // Everything before it is written: shut the sending side down now.
                match socket.shutdown(std::net::Shutdown::Write) {
                    Ok(()) => {
                        s.writes.pop_front();
                        s.write_state.complete_one();
                        // Completing it may complete empty writes queued after it.
                        s.wrote(0);
                        continue;
                    }
                    Err(e) => {
                        self.fail_writes(key, Error::from(e));
                        break;
                    }
                }
            }
            let result = if let Some(PendingWrite {
                data: Payload::File { file, offset, len },
                written,
                ..
            }) = s.writes.front()
            {
                let at = offset + *written as u64;
                sys::send_file(
                    socket,
                    file,
                    at,
                    (len - written).min(FILE_CHUNK),
                    &mut self.buf,
                )
            } else {
                // Bytes up to the next file, gathered.
                let mut slices: [IoSlice<'_>; MAX_IOVECS] = [IoSlice::new(&[]); MAX_IOVECS];
                let mut count = 0;
                for w in s.writes.iter().take(MAX_IOVECS) {
                    let Payload::Bytes(data) = &w.data else {
                        break;
                    };
                    slices[count] = IoSlice::new(&data[w.written..]);
                    count += 1;
                }
                // One buffer (the common case of a reply per request) goes out with `send`,
                // which skips the kernel's copy-in of a message header and an iovec array.
                if count == 1 {
                    sys::send(socket, &slices[0])
                } else {
                    sys::send_vectored(socket, &slices[..count])
                }
            };
            match result {
                Ok(n) => {
                    s.wrote(n);
                    self.stats.writes += 1;
                    self.stats.bytes_written += n as u64;
                    self.drained(key);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let error = Error::from(e);
                    if error.kind() == io::ErrorKind::ConnectionReset {
                        self.stats.resets += 1;
                    }
                    // `EPIPE` is left out: it also follows a write after our own
                    // `shutdown_write`, when the connection is not broken at all.
                    let broken = matches!(
                        error.kind(),
                        io::ErrorKind::ConnectionReset
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::HostUnreachable
                            | io::ErrorKind::NetworkUnreachable
                            | io::ErrorKind::NetworkDown
                    );
                    if let Some(s) = self.any_stream(key).filter(|_| broken) {
                        s.broken = Some(Box::new(error.clone()));
                    }
                    self.fail_writes(key, error);
                    break;
                }
            }
        }
        if matches!(self.any_stream(key), Some(s) if s.closing) {
            self.finish_close(key);
        } else {
            self.update_interest(key);
        }
    }

    pub(super) fn fail_writes(&mut self, key: Key, error: Error) {
        if let Some(s) = self.any_stream(key) {
            s.write_state
                .queued
                .fetch_sub(s.queued_here, Ordering::SeqCst);
            s.queued_here = 0;
            s.write_blocked = false;
            s.writes.clear();
            s.write_state.fail(error.clone());
            s.write_error = Some(Box::new(error));
        }
        self.drained(key);
    }

    /// Tells the stream's mailbox when its queue fell to the low watermark after passing the
    /// high one: an actor that stopped feeding it can go on.
    pub(super) fn drained(&mut self, key: Key) {
        let Some(s) = self.any_stream(key) else {
            return;
        };
        let Some(controls) = s.write_state.controls() else {
            return;
        };
        if !controls.above_high.load(Ordering::SeqCst) {
            return;
        }
        let queued = s.write_state.queued.load(Ordering::SeqCst) & !QUEUED_CLOSED;
        if queued > controls.low.load(Ordering::Relaxed)
            || !controls.above_high.swap(false, Ordering::SeqCst)
        {
            return;
        }
        if let Sink::Mailbox { inbox, .. } = &s.sink {
            let inbox = inbox.clone();
            self.outbox.post(&inbox, Delivery::Drained(key));
        }
    }

    /// The age-limit timer of a stream: fails its writes if the oldest waited too long,
    /// else waits for the oldest's turn.
    pub(super) fn write_age(&mut self, key: Key) {
        let Some(s) = self.stream(key) else {
            return;
        };
        let limit = s
            .write_state
            .controls()
            .map_or(0, |c| c.age_limit_ms.load(Ordering::Relaxed));
        let Some(oldest) = s.writes.front().and_then(|w| w.queued_at) else {
            return;
        };
        if limit == 0 {
            return;
        }
        let due = oldest.checked_add(std::time::Duration::from_millis(limit));
        if due.is_some_and(|due| due <= std::time::Instant::now()) {
            self.fail_writes(key, Error::stalled());
            self.update_interest(key);
        } else {
            self.push_timer(due, Timer::WriteAge(key));
        }
    }

    /// Fails everything queued on a stream the loop can no longer serve.
    fn fail_stream(&mut self, key: Key, error: Error) {
        self.fail_writes(key, error.clone());
        if matches!(self.any_stream(key), Some(s) if s.read_end.is_none()) {
            self.end_reading(key, error);
        }
        self.remove(key, Error::closed());
    }

    /// Sets the stream's deadline for its queued writes.
    pub(super) fn set_deadline(&mut self, key: Key, deadline: Option<std::time::Instant>) {
        let Some(s) = self.stream(key) else {
            return;
        };
        s.deadline = deadline;
        self.push_timer(deadline, Timer::WriteDeadline(key));
    }

    /// The deadline `at` passed: writes still queued fail, and report how far the oldest
    /// got.
    pub(super) fn write_deadline(&mut self, key: Key, at: std::time::Instant) {
        let Some(s) = self.stream(key) else {
            return;
        };
        if s.deadline != Some(at) || s.writes.is_empty() {
            return;
        }
        let written = s.writes.front().map_or(0, |w| w.written);
        self.fail_writes(key, Error::write_timeout(written));
        self.update_interest(key);
    }

    /// Shuts down the receiving side: the reader gets `EOF` after what it was already
    /// given (the stash included); what the kernel still holds is discarded.
    pub(super) fn shutdown_read(&mut self, key: Key) -> Result<(), Error> {
        let Some(s) = self.stream(key) else {
            return Err(Error::closed());
        };
        // `ENOTCONN` means the connection is gone already: reading is over either way.
        let _ = s.reg.socket().shutdown(std::net::Shutdown::Read);
        if s.read_end.is_none() {
            s.reclaim();
            if s.stash.is_empty() {
                self.end_reading(key, Error::eof());
            } else if let Some(s) = self.stream(key) {
                // The stash comes first; the next reader gets the end after it.
                s.read_end = Some(Box::new(Error::eof()));
            }
        }
        self.update_interest(key);
        Ok(())
    }

    /// Lets a stream go, unregistered and open, if that loses nothing: one handle, no
    /// reader, nothing stashed or queued.
    pub(super) fn release(&mut self, key: Key) -> Result<(), Error> {
        let Some(s) = self.stream(key) else {
            return Err(Error::closed());
        };
        s.reclaim();
        let busy =
            s.handles > 1 || !s.sink.is_abandoned() || !s.stash.is_empty() || !s.writes.is_empty();
        if busy {
            return Err(Error::new(
                "BUSY",
                "other handles, a reader, or bytes still waiting would be lost",
                io::ErrorKind::ResourceBusy,
            ));
        }
        // Dropping the entry deletes the registration; the user's handle keeps the socket.
        self.take(key);
        Ok(())
    }

    /// Resets the connection now: queued writes fail and the reader ends with `ABORTED`.
    pub(super) fn abort(&mut self, key: Key) -> Result<(), Error> {
        let Some(s) = self.stream(key) else {
            return Err(Error::closed());
        };
        sys::reset(s.reg.socket());
        self.remove(key, Error::aborted());
        Ok(())
    }

    /// The user dropped the stream: stop reading, flush the queue (bounded by the drain
    /// timeout), then close; or, when the user asked for it (`SO_LINGER` 0), reset it now.
    pub(super) fn close_stream(&mut self, key: Key) {
        let drain_timeout = self.config.drain_timeout;
        let Some(s) = self.stream(key) else {
            return;
        };
        let reset = s.write_state.controls();
        if reset.is_some_and(|c| c.reset_on_close.load(Ordering::SeqCst)) {
            sys::reset(s.reg.socket());
            self.remove(key, Error::closed());
            return;
        }
        s.reclaim();
        if s.sink.is_abandoned() || s.read_end.is_some() {
            s.sink = Sink::None;
        } else {
            self.deliver(key, Err(Error::closed()));
        }
        let Some(s) = self.stream(key) else {
            return;
        };
        s.closing = true;
        s.stash.clear();
        self.push_timer(deadline_after(drain_timeout), Timer::DrainDeadline(key));
        self.finish_close(key);
    }

    /// Closes a stream the user dropped once its queue is flushed. Unless the peer already
    /// closed its side, the stream first half-closes and reads (discarding) until the peer
    /// closes: closing with unread input would make the kernel reset the connection and
    /// throw away output still in the send buffer. The drain deadline bounds both waits.
    fn finish_close(&mut self, key: Key) {
        let linger_timeout = self.config.linger_timeout;
        let Some(s) = self.any_stream(key) else {
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
            self.remove(key, Error::closed());
            return;
        }
        s.lingering = true;
        // The user closed it: it no longer counts against its listener's limit.
        s.owner = None;
        self.push_timer(deadline_after(linger_timeout), Timer::DrainDeadline(key));
        self.update_interest(key);
    }

    /// Reads and discards what a half-closed stream still receives; closes it at the end.
    fn linger(&mut self, key: Key) {
        for _ in 0..READS_PER_CYCLE {
            let Some(Entry::Stream(s)) =
                self.entries.get_mut(key.index).filter(|e| e.id() == key.id)
            else {
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
                    self.remove(key, Error::closed());
                    return;
                }
            }
        }
    }

    /// Takes a stream out of service before its slot is freed: writers see it closed, its
    /// queue fails with `error`, its reader gets `error`, and both directions are shut down
    /// so the peer sees the close even while a user still holds the handle.
    pub(super) fn retire_stream(&mut self, key: Key, error: &Error) {
        let Some(s) = self.any_stream(key) else {
            return;
        };
        // Before anyone hears of the close: from here on, writers see the stream closed,
        // and every write not yet completed fails with `error`.
        s.write_state.queued.store(QUEUED_CLOSED, Ordering::SeqCst);
        s.queued_here = 0;
        s.writes.clear();
        s.write_state.fail(error.clone());
        let _ = s.reg.socket().shutdown(std::net::Shutdown::Both);
        if matches!(self.any_stream(key), Some(s) if !matches!(s.sink, Sink::None)) {
            self.deliver(key, Err(error.clone()));
        }
    }
}

impl StreamEntry {
    fn new(
        id: u64,
        reg: Registration,
        owner: Option<ConnectionGuard>,
        write_state: Arc<WriteState>,
        write_window: Option<usize>,
    ) -> StreamEntry {
        StreamEntry {
            id,
            reg,
            sink: Sink::None,
            stash: VecDeque::new(),
            read_end: None,
            paused: false,
            writes: VecDeque::new(),
            write_error: None,
            handles: 1,
            deadline: None,
            broken: None,
            closing: false,
            lingering: false,
            dirty: false,
            owner,
            write_state,
            queued_here: 0,
            write_window,
            write_blocked: false,
        }
    }

    /// Settles a `Delivered` sink: a chunk its future never took goes back in front of the
    /// stash, and the sink is free once the chunk was taken or given back.
    fn reclaim(&mut self) {
        let Sink::Delivered(reclaim) = &self.sink else {
            return;
        };
        match reclaim.settle() {
            Settled::Pending => {}
            Settled::Taken => self.sink = Sink::None,
            Settled::Returned(chunk) => {
                if let Ok(data) = chunk {
                    self.stash.push_front(Ok(data));
                }
                self.sink = Sink::None;
            }
        }
    }

    /// Accounts for `n` bytes the kernel took, resolving the writes they complete.
    fn wrote(&mut self, mut n: usize) {
        self.queued_here -= n;
        self.write_state.queued.fetch_sub(n, Ordering::SeqCst);
        if self.write_blocked && self.write_window.is_none_or(|w| self.queued_here <= w / 2) {
            self.write_blocked = false;
        }
        while n > 0
            || self
                .writes
                .front()
                .is_some_and(|w| w.written == w.data.len() && !matches!(w.data, Payload::Shutdown))
        {
            let Some(front) = self.writes.front_mut() else {
                break;
            };
            let take = n.min(front.data.len() - front.written);
            front.written += take;
            n -= take;
            if front.written < front.data.len() {
                break;
            }
            self.writes.pop_front();
            self.write_state.complete_one();
        }
    }
}

impl Drop for StreamEntry {
    fn drop(&mut self) {
        // However the entry goes (even without `retire_stream`, should the loop die), no
        // writer waits on it forever. A failure recorded earlier is kept.
        self.write_state
            .queued
            .store(QUEUED_CLOSED, Ordering::SeqCst);
        self.write_state.fail(Error::shutdown());
    }
}

/// Tells a refused reader why: a future resolves with the error, a mailbox gets it as the
/// stream's `Closed` event (a port's caller hears it through the command's reply).
fn refuse(key: Key, sink: Sink, error: Error) {
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
        Sink::Port { .. } | Sink::None | Sink::Delivered(_) => {}
    }
}
