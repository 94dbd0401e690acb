//! The I/O thread: one poller, one slab, commands drained in batches.
//!
//! A cycle is: drain every queued command, flush the streams that got new writes and the
//! datagram sockets that got new sends, send the mailbox batches, wait on the poller,
//! dispatch its events, fire due timers. Only this thread reads, writes, accepts or
//! connects on a registered socket, and no user code runs here. What each kind of slot does
//! lives beside its entry: `stream.rs`, `listener.rs`, `connect.rs`, `datagram.rs`; timers
//! in `timers.rs`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use slab::Slab;

use crate::error::Error;
use crate::io_task::command::Command;
use crate::io_task::connect::ConnectJob;
use crate::io_task::entry::{Entry, Key};
use crate::io_task::sink::{Delivery, Inbox, Sink};
use crate::io_task::stats::Stats;
use crate::io_task::stream::Payload;
use crate::io_task::sys::Events;
use crate::io_task::timers::{Timer, Timers};
use crate::io_task::{Config, Shared};

pub(crate) struct EventLoop {
    /// Command queue, poller and wake-up flag, shared with every handle.
    pub(super) shared: Arc<Shared>,
    pub(super) config: Config,
    /// Every listener, stream and connect in progress this task serves. A slot's index is
    /// its poller key; its entry's id tells a reused slot from the one a key named.
    pub(super) entries: Slab<Entry>,
    /// Receive buffer of every `recv`; empty between reads (see `take_chunk`).
    pub(super) buf: Vec<u8>,
    /// Receive buffer of every batch of datagrams (`sys::slots` slots of the socket's
    /// largest datagram); each datagram is copied out at its length.
    pub(super) datagram_buf: Vec<u8>,
    /// The datagrams of the last batch received, before they are delivered.
    pub(super) incoming: Vec<crate::io_task::sys::Incoming>,
    /// Datagram sockets with sends queued this cycle (each with `dirty` set), flushed
    /// after the command drain in batches.
    pub(super) dirty_datagrams: Vec<Key>,
    /// Streams with writes queued this cycle (each with `dirty` set), flushed once after
    /// the command drain.
    pub(super) dirty: Vec<Key>,
    /// This cycle's mailbox batches, sent after the command drain and after dispatch.
    pub(super) outbox: Outbox,
    /// Read, drain and connect deadlines, accept and connect retries.
    pub(super) timers: Timers,
    /// Set by `Command::Shutdown`.
    stopping: bool,
    /// What the loop has done; sent to whoever asks (`Command::Stats`), and left in
    /// `Shared::stats` when the loop ends.
    pub(super) stats: Stats,
}

/// This cycle's deliveries, one batch per mailbox.
#[derive(Default)]
pub(crate) struct Outbox {
    batches: Vec<(Arc<dyn Inbox>, Vec<Delivery>)>,
    /// The batch posted to last: a cycle's deliveries mostly go to one mailbox, so looking
    /// there first finds the batch without a search.
    last: usize,
}

impl Outbox {
    /// Adds a delivery to this cycle's batch for `inbox`.
    pub(crate) fn post(&mut self, inbox: &Arc<dyn Inbox>, delivery: Delivery) {
        let same = |(i, _): &(Arc<dyn Inbox>, Vec<Delivery>)| Arc::ptr_eq(i, inbox);
        let index = match self.batches.get(self.last) {
            Some(batch) if same(batch) => self.last,
            _ => match self.batches.iter().position(same) {
                Some(index) => index,
                None => {
                    self.batches.push((inbox.clone(), Vec::new()));
                    self.batches.len() - 1
                }
            },
        };
        self.last = index;
        self.batches[index].1.push(delivery);
    }

    fn take(&mut self) -> Vec<(Arc<dyn Inbox>, Vec<Delivery>)> {
        self.last = 0;
        std::mem::take(&mut self.batches)
    }
}

impl EventLoop {
    pub(crate) fn new(shared: Arc<Shared>, config: Config) -> EventLoop {
        EventLoop {
            shared,
            buf: Vec::with_capacity(config.read_buffer),
            datagram_buf: Vec::new(),
            incoming: Vec::new(),
            dirty_datagrams: Vec::new(),
            config,
            entries: Slab::new(),
            dirty: Vec::new(),
            outbox: Outbox::default(),
            timers: Timers::new(),
            stopping: false,
            stats: Stats::default(),
        }
    }

    /// Runs until shut down. Should the loop ever panic (a bug in iotask), it still closes
    /// everything it serves with `SHUTDOWN` and marks the task stopped, so that every
    /// pending and later call fails at once instead of hanging.
    pub(crate) fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let served = catch_unwind(AssertUnwindSafe(|| self.serve(&mut events)));
        // From here on every call fails at once; then everyone still waiting hears it.
        self.shared.mark_stopped();
        if served.is_err() {
            log!(
                error,
                "the I/O loop panicked (a bug in iotask); closing everything"
            );
            // Whatever this cannot close is dropped below, which resolves its waiters too.
            let _ = catch_unwind(AssertUnwindSafe(|| self.close_all()));
        } else {
            self.close_all();
        }
        // Commands queued while closing are dropped, resolving their replies.
        self.shared.mark_stopped();
        *self.shared.stats.lock().unwrap_or_else(|p| p.into_inner()) = self.stats;
    }

    fn serve(&mut self, events: &mut Events) {
        while !self.stopping {
            self.drain_commands();
            if self.stopping {
                break;
            }
            self.flush_dirty();
            self.flush_dirty_datagrams();
            self.send_outbox();
            self.stats.waits += 1;

            let timeout = self.timers.next_timeout();
            self.wait(events, timeout);
            for event in events.iter() {
                self.dispatch(event.key, event.readable, event.writable);
            }
            self.fire_timers();
        }
    }

    /// Waits on the poller, spinning first when configured, and sleeps only after telling
    /// command senders (through `sleeping`) that a notification is needed.
    fn wait(&mut self, events: &mut Events, timeout: Option<Duration>) {
        let shared = &*self.shared;
        // Returning early (commands waiting) must not dispatch the last cycle's events again.
        events.clear();
        if timeout != Some(Duration::ZERO) && !self.config.spin.is_zero() {
            let until = Instant::now().checked_add(self.config.spin);
            loop {
                if !shared.commands_rx.is_empty() {
                    return;
                }
                let _ = shared.poller.wait(events, Some(Duration::ZERO));
                if !events.is_empty() || until.is_some_and(|until| Instant::now() >= until) {
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
        if let Err(_e) = shared.poller.wait(events, timeout) {
            log!(error, "the poller failed: {_e}");
            // A signal ends the wait without an error; anything else is a broken poller.
            // Sleep briefly so that a persistent failure cannot turn into a busy loop.
            std::thread::sleep(Duration::from_millis(1));
        }
        shared.sleeping.store(false, Ordering::SeqCst);
    }

    /// Handles every command queued now, taken from the channel under one lock. Commands
    /// sent meanwhile wait for the next cycle, so a flood cannot starve the sockets.
    fn drain_commands(&mut self) {
        let shared = self.shared.clone();
        for command in shared.commands_rx.drain() {
            self.stats.commands += 1;
            if self.stopping {
                // Dropped: whoever waits on its reply reads `SHUTDOWN`.
                drop(command);
                continue;
            }
            self.handle(command);
        }
    }

    /// Every way into the loop.
    pub(super) fn handle(&mut self, command: Command) {
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
                self.close_listener(key, close_connections, drain);
                let _ = reply.send(());
            }
            Command::RecheckListener(key) => self.recheck_listener(key),
            Command::AddStream {
                socket,
                writes,
                reply,
            } => {
                let key = self.insert_stream(socket, None, writes, None);
                let _ = reply.send(Ok(key));
            }
            Command::Connect {
                addrs,
                setup,
                timeout,
                reply,
            } => self.connect_next(ConnectJob {
                addrs,
                setup,
                timeout,
                reply,
                last_error: None,
            }),
            Command::SetWriteWindow { key, window, reply } => {
                let result = match self.stream(key) {
                    Some(s) => {
                        s.write_window = window;
                        s.write_blocked = window.is_some_and(|w| s.queued_here > w);
                        self.update_interest(key);
                        Ok(())
                    }
                    None => Err(Error::closed()),
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
                let _ = reply.send(self.read_stop(key, port, &window));
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
                    self.push_timer(deadline, Timer::ReadDeadline(key));
                }
            }
            Command::Detach(key) if matches!(self.get(key), Some(Entry::Datagram(_))) => {
                self.detach_datagram(key);
            }
            Command::Detach(key) => {
                if let Some(s) = self.stream(key) {
                    if matches!(s.sink, Sink::Mailbox { .. }) {
                        s.sink = Sink::None;
                    }
                    self.update_interest(key);
                }
            }
            Command::Unread { key, data } => {
                if !data.is_empty() {
                    self.take_back(key, Ok(data), true);
                }
            }
            Command::Write { key, data } => self.queue_write(key, Payload::Bytes(data)),
            Command::ShutdownWrite(key) => self.queue_write(key, Payload::Shutdown),
            Command::CheckDrained(key) => self.drained(key),
            Command::SendFile {
                key,
                file,
                offset,
                len,
            } => self.queue_write(key, Payload::File { file, offset, len }),
            Command::Resume(key) => {
                if let Some(s) = self.stream(key) {
                    s.paused = false;
                    self.update_interest(key);
                }
            }
            Command::SetDeadline { key, deadline } => self.set_deadline(key, deadline),
            Command::ShutdownRead { key, reply } => {
                let _ = reply.send(self.shutdown_read(key));
            }
            Command::Abort { key, reply } => {
                let _ = reply.send(self.abort(key));
            }
            Command::AddDatagram {
                socket,
                state,
                reply,
            } => {
                let _ = reply.send(Ok(self.add_datagram(socket, state)));
            }
            Command::RecvStart { key, sink, reply } => {
                let result = self.recv_start(key, sink);
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            Command::RecvStop {
                key,
                port,
                window,
                reply,
            } => {
                let _ = reply.send(self.recv_stop(key, port, &window));
            }
            Command::RecvOnce {
                key,
                deadline,
                reply,
            } => {
                let sink = crate::io_task::datagram::DatagramSink::Once {
                    tx: reply,
                    deadline,
                };
                if self.recv_start(key, sink).is_ok() {
                    self.push_timer(deadline, Timer::RecvDeadline(key));
                }
            }
            Command::SendTo {
                key,
                data,
                to,
                reply,
            } => self.send_datagram(key, data, to, reply),
            Command::Stats(reply) => {
                let _ = reply.send(self.stats);
            }
            Command::Release { key, reply } => {
                let _ = reply.send(self.release(key));
            }
            Command::AddHandle(key) => {
                if let Some(s) = self.stream(key) {
                    s.handles += 1;
                } else {
                    self.add_datagram_handle(key);
                }
            }
            Command::Close(key) if matches!(self.get(key), Some(Entry::Datagram(_))) => {
                self.close_datagram(key);
            }
            Command::Close(key) => {
                if let Some(s) = self.stream(key) {
                    s.handles -= 1;
                    if s.handles > 0 {
                        return;
                    }
                }
                self.close_stream(key);
            }
            Command::Shutdown => self.stopping = true,
            #[cfg(test)]
            Command::Panic => panic!("a test made the loop panic"),
        }
    }

    /// The entry a key names, if the slot still holds it.
    pub(super) fn get(&mut self, key: Key) -> Option<&mut Entry> {
        self.entries.get_mut(key.index).filter(|e| e.id() == key.id)
    }

    /// Takes the entry a key names out of the slab.
    pub(super) fn take(&mut self, key: Key) -> Option<Entry> {
        self.get(key)?;
        let entry = self.entries.remove(key.index);
        match &entry {
            Entry::Stream(_) => self.stats.streams -= 1,
            Entry::Listener(_) => self.stats.listeners -= 1,
            Entry::Connecting(_) => self.stats.connecting -= 1,
            Entry::Datagram(_) => self.stats.datagram_sockets -= 1,
        }
        Some(entry)
    }

    /// Hands a ready event to its slot's owner.
    ///
    /// The poller reports the bare slab index, not the key's id. An event for a slot that
    /// was freed and reused within this wait reaches the new entry; that is harmless: in
    /// level mode a spurious readiness only costs one `recv`, `send` or `accept` answering
    /// `EAGAIN`, and each handler acts only on the interest the new entry registered.
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
            Entry::Stream(_) => self.stream_ready(key, readable, writable),
            Entry::Datagram(_) => self.datagram_ready(key, readable, writable),
            Entry::Connecting(c) => {
                if c.reg.interest().write && (readable || writable) {
                    self.connect_ready(key);
                }
            }
        }
    }

    fn send_outbox(&mut self) {
        for (inbox, batch) in self.outbox.take() {
            if let Err(batch) = inbox.deliver(batch) {
                // The mailbox was dropped: keep its chunks for whoever reads next. Accepted
                // connections nobody will own are dropped, which closes them.
                for delivery in batch {
                    let (key, chunk) = match delivery {
                        Delivery::Read { key, chunk } => (key, chunk),
                        Delivery::Datagram { key, .. } => {
                            // Datagrams for a mailbox that is gone are dropped with it.
                            self.detach_datagram_from(key, &inbox);
                            continue;
                        }
                        _ => continue,
                    };
                    if let Some(s) = self.stream(key) {
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

    /// Schedules a timer (`None`: never fires).
    pub(super) fn push_timer(&mut self, at: Option<Instant>, timer: Timer) {
        let entries = &self.entries;
        self.timers
            .push(at, timer, |at, timer| timer_is_live(entries, at, timer));
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some((at, timer)) = self.timers.pop_due(now) {
            match timer {
                Timer::ReadDeadline(key) => {
                    if let Some(s) = self.stream(key) {
                        if matches!(s.sink, Sink::Once { deadline: Some(d), .. } if d == at) {
                            self.deliver(key, Err(Error::timeout()));
                            self.update_interest(key);
                        }
                    }
                }
                Timer::DrainDeadline(key) => {
                    if matches!(self.get(key), Some(Entry::Stream(s)) if s.closing) {
                        self.remove(key, Error::timeout());
                    }
                }
                Timer::WriteDeadline(key) => self.write_deadline(key, at),
                Timer::WriteAge(key) => self.write_age(key),
                Timer::AcceptRetry(key) => self.accept_retry(key),
                Timer::ConnectDeadline(key) => {
                    if matches!(self.get(key), Some(Entry::Connecting(c)) if c.deadline == Some(at))
                    {
                        self.connect_failed(key, Error::timeout());
                    }
                }
                Timer::ConnectRetry(key) => self.connect_retry(key),
                Timer::DrainListener(id) => self.close_connections_of(id),
                Timer::RecvDeadline(key) => self.datagram_recv_deadline(key, at),
                Timer::DatagramLinger(key) => {
                    if Self::datagram_is_closing(self.get(key).as_deref()) {
                        self.remove(key, Error::closed());
                    }
                }
            }
        }
    }

    /// Takes an entry out of the slab: a stream's reader and writers get `error`, a
    /// listener's server hears it stopped, a connect in progress fails with it. Its
    /// registration is deleted before its descriptor can close.
    pub(super) fn remove(&mut self, key: Key, error: Error) {
        match self.get(key) {
            Some(Entry::Stream(_)) => self.retire_stream(key, &error),
            Some(Entry::Datagram(_)) => self.retire_datagram(key, &error),
            _ => {}
        }
        match self.take(key) {
            Some(Entry::Stream(s)) => drop(s),
            Some(Entry::Listener(l)) => Self::retire_listener(l, error),
            Some(Entry::Connecting(c)) => self.connect_refused(c.job.reply, error),
            Some(Entry::Datagram(d)) => drop(d),
            None => {}
        }
    }

    /// Ends the loop: every reader, writer, connect and listener gets `SHUTDOWN`, every
    /// descriptor is deleted from the poller and closed, and the mailboxes get their last
    /// batch.
    fn close_all(&mut self) {
        let keys: Vec<Key> = self
            .entries
            .iter()
            .map(|(index, e)| Key { index, id: e.id() })
            .collect();
        for key in keys {
            self.remove(key, Error::shutdown());
        }
        self.send_outbox();
    }
}

/// Whether firing the timer would still do something.
fn timer_is_live(entries: &Slab<Entry>, at: Instant, timer: Timer) -> bool {
    let entry = |key: Key| entries.get(key.index).filter(|e| e.id() == key.id);
    match timer {
        Timer::ReadDeadline(key) => matches!(
            entry(key),
            Some(Entry::Stream(s)) if matches!(s.sink, Sink::Once { deadline: Some(d), .. } if d == at)
        ),
        Timer::DrainDeadline(key) => matches!(entry(key), Some(Entry::Stream(s)) if s.closing),
        Timer::WriteDeadline(key) => {
            matches!(entry(key), Some(Entry::Stream(s)) if s.deadline == Some(at))
        }
        Timer::WriteAge(key) => {
            matches!(entry(key), Some(Entry::Stream(s)) if !s.writes.is_empty())
        }
        Timer::AcceptRetry(key) => {
            matches!(entry(key), Some(Entry::Listener(l)) if l.backing_off)
        }
        Timer::ConnectDeadline(key) | Timer::ConnectRetry(key) => {
            matches!(entry(key), Some(Entry::Connecting(_)))
        }
        Timer::DrainListener(_) => true,
        Timer::RecvDeadline(key) => EventLoop::datagram_deadline_is_live(entry(key), at),
        Timer::DatagramLinger(key) => EventLoop::datagram_is_closing(entry(key)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io_task::IoTask;
    use crate::oneshot;
    use socket2::Socket;

    #[test]
    fn reads_resolved_before_their_deadline_do_not_pile_up_timers() {
        let config = IoTask::builder().config;
        let mut event_loop = EventLoop::new(Shared::detached(), config);
        let socket = Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let writes = Arc::new(crate::io_task::writes::WriteState::new());
        let key = event_loop.insert_stream(Arc::new(socket), None, writes, None);
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
