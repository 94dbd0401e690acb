//! `RawStream`: the engine's user-side handle to a stream it serves. Every command about a
//! stream is built here; the public socket types wrap a `RawStream` and add the family's
//! addresses and options.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use socket2::{SockAddr, Socket};

use crate::error::Error;
use crate::io_task::Shared;
use crate::io_task::command::{Command, SetupFn};
use crate::io_task::connect::ConnectReply;
use crate::io_task::entry::Key;
use crate::io_task::sink::{Chunk, Inbox, Sink, StreamKind, Window};
use crate::io_task::writes::{QUEUED_CLOSED, WriteState};
use crate::oneshot;

/// A stream served by an I/O task, as a user thread holds it. Dropping it asks the loop to
/// flush the stream's queued writes and close it.
#[derive(Debug)]
pub(crate) struct RawStream {
    key: Key,
    task: Arc<Shared>,
    socket: Arc<Socket>,
    /// Numbers writes, counts queued bytes, and tells waiters when writes complete.
    writes: Arc<WriteState>,
    /// Set once the loop gave the socket up (`release`): dropping the handle then sends no
    /// `Close`.
    released: bool,
}

/// The receiving half of a port: what `read_start` gives the public `ReadPort`.
pub(crate) struct PortParts {
    pub(crate) rx: flume::Receiver<Chunk>,
    pub(crate) window: Arc<Window>,
}

impl RawStream {
    pub(crate) fn new(
        key: Key,
        task: Arc<Shared>,
        socket: Arc<Socket>,
        writes: Arc<WriteState>,
    ) -> RawStream {
        RawStream {
            key,
            task,
            socket,
            writes,
            released: false,
        }
    }

    /// Takes the socket out of the I/O task, unregistered and open, for a `std` stream.
    /// Refused (`"BUSY"`) while other handles exist, a reader is attached, or bytes wait
    /// to be read or written: handing the socket out then would lose or reorder them.
    /// On failure the handle comes back, unless the socket was let go and could not be
    /// taken (which the loop's checks rule out).
    pub(crate) fn release(mut self) -> Result<Socket, Box<(Error, Option<RawStream>)>> {
        if let Err(e) = self.request(|reply| Command::Release {
            key: self.key,
            reply,
        }) {
            return Err(Box::new((e, Some(self))));
        }
        self.released = true;
        let socket = self.socket.clone();
        drop(self);
        // The loop dropped its reference when it let the socket go, and this handle is gone,
        // so this is the last one; were it not, a duplicate descriptor serves as well.
        Arc::try_unwrap(socket)
            .or_else(|shared| shared.try_clone())
            .map_err(|e| Box::new((Error::from(e), None)))
    }

    /// Another handle to the same stream: the stream closes when the last handle is dropped.
    pub(crate) fn try_clone(&self) -> Result<RawStream, Error> {
        self.task.send(Command::AddHandle(self.key))?;
        Ok(RawStream {
            key: self.key,
            task: self.task.clone(),
            socket: self.socket.clone(),
            writes: self.writes.clone(),
            released: false,
        })
    }

    pub(crate) fn writes(&self) -> &Arc<WriteState> {
        &self.writes
    }

    pub(crate) fn key(&self) -> Key {
        self.key
    }

    pub(crate) fn task(&self) -> &Arc<Shared> {
        &self.task
    }

    pub(crate) fn socket(&self) -> &Socket {
        &self.socket
    }

    /// Whether the I/O task serving the stream has stopped.
    pub(crate) fn task_stopped(&self) -> bool {
        self.task.is_stopped()
    }

    /// Delivers reads to a new port from now on.
    pub(crate) fn read_start(&self) -> Result<PortParts, Error> {
        let window = Arc::new(Window::new(self.task.read_window));
        let (tx, rx) = flume::unbounded();
        let sink = Sink::Port {
            tx,
            window: window.clone(),
        };
        self.request(|reply| Command::ReadStart {
            key: self.key,
            sink,
            reply: Some(reply),
        })?;
        Ok(PortParts { rx, window })
    }

    /// Stops delivering to the port and takes back what it holds.
    pub(crate) fn read_stop(&self, port: PortParts) -> Result<(), Error> {
        self.request(|reply| Command::ReadStop {
            key: self.key,
            port: port.rx,
            window: port.window,
            reply,
        })
    }

    /// Asks for one chunk, or a timeout at `deadline`.
    pub(crate) fn read_once(
        &self,
        deadline: Option<Instant>,
    ) -> Result<oneshot::Receiver<Chunk>, Error> {
        let (reply, rx) = oneshot::channel();
        self.task.send(Command::ReadOnce {
            key: self.key,
            deadline,
            reply,
        })?;
        Ok(rx)
    }

    /// Queues `data` after every earlier write; returns the write's number, with which
    /// `WriteState` tells when it completed.
    pub(crate) fn write(&self, data: Vec<u8>) -> Result<u64, Error> {
        let len = data.len();
        self.count_queued(len);
        let key = self.key;
        let queued = self
            .writes
            .queue(|| self.task.send(Command::Write { key, data }));
        if queued.is_err() {
            self.writes.queued.fetch_sub(len, Ordering::SeqCst);
        }
        queued
    }

    /// Queues `len` bytes of `file` from `offset` after every earlier write; returns the
    /// write's number, as `write` does.
    pub(crate) fn send_file(
        &self,
        file: std::fs::File,
        offset: u64,
        len: usize,
    ) -> Result<u64, Error> {
        self.count_queued(len);
        let key = self.key;
        let queued = self.writes.queue(|| {
            self.task.send(Command::SendFile {
                key,
                file,
                offset,
                len,
            })
        });
        if queued.is_err() {
            self.writes.queued.fetch_sub(len, Ordering::SeqCst);
        }
        queued
    }

    /// Counts `len` more bytes queued, noting when they take the queue past the high mark.
    fn count_queued(&self, len: usize) {
        let total = self.writes.queued.fetch_add(len, Ordering::SeqCst) + len;
        if let Some(controls) = self.writes.controls() {
            let high = controls.high.load(Ordering::Relaxed);
            if high > 0 && total > high {
                controls.above_high.store(true, Ordering::SeqCst);
            }
        }
    }

    /// Bytes queued and not yet in the kernel; zero once the stream is closed.
    pub(crate) fn queued_bytes(&self) -> usize {
        let queued = self.writes.queued.load(Ordering::SeqCst);
        if queued & QUEUED_CLOSED != 0 {
            0
        } else {
            queued
        }
    }

    /// Delivers reads to a mailbox; a refusal reaches the mailbox as the stream's end.
    pub(crate) fn attach(&self, inbox: Arc<dyn Inbox>, window: Arc<Window>) -> Result<(), Error> {
        self.task.send(Command::ReadStart {
            key: self.key,
            sink: Sink::Mailbox { inbox, window },
            reply: None,
        })
    }

    /// Stops delivering to a mailbox; does not wait for the loop.
    pub(crate) fn detach(&self) -> Result<(), Error> {
        self.task.send(Command::Detach(self.key))
    }

    pub(crate) fn set_write_window(&self, window: Option<usize>) -> Result<(), Error> {
        self.request(|reply| Command::SetWriteWindow {
            key: self.key,
            window,
            reply,
        })
    }

    /// Sets (or clears) the socket's deadline.
    pub(crate) fn set_deadline(&self, deadline: Option<Instant>) -> Result<(), Error> {
        let controls = self.writes.controls_or_init();
        *controls.deadline.lock().unwrap_or_else(|p| p.into_inner()) = deadline;
        controls
            .has_deadline
            .store(deadline.is_some(), Ordering::SeqCst);
        self.task.send(Command::SetDeadline {
            key: self.key,
            deadline,
        })
    }

    /// The socket's deadline.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let controls = self.writes.controls()?;
        if !controls.has_deadline.load(Ordering::Relaxed) {
            return None;
        }
        *controls.deadline.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Shuts down the receiving side (see `EventLoop::shutdown_read`).
    pub(crate) fn shutdown_read(&self) -> Result<(), Error> {
        self.request(|reply| Command::ShutdownRead {
            key: self.key,
            reply,
        })
    }

    /// Resets the connection now.
    pub(crate) fn abort(&self) -> Result<(), Error> {
        self.request(|reply| Command::Abort {
            key: self.key,
            reply,
        })
    }

    /// Sets the write queue's watermarks (`high` 0: none).
    pub(crate) fn set_watermarks(&self, high: usize, low: usize) {
        let controls = self.writes.controls_or_init();
        controls.low.store(low, Ordering::SeqCst);
        controls.high.store(high, Ordering::SeqCst);
        if high > 0 && self.queued_bytes() > high {
            // Already past it: the mailbox hears when the queue drains. The loop checks
            // after its next flush; a nudge makes sure one comes.
            controls.above_high.store(true, Ordering::SeqCst);
            let _ = self.task.send(Command::CheckDrained(self.key));
        }
    }

    /// Sets how long queued bytes may wait (`None`: for ever).
    pub(crate) fn set_write_age_limit(&self, limit: Option<Duration>) {
        let ms = limit.map_or(0, |l| {
            u64::try_from(l.as_millis()).unwrap_or(u64::MAX).max(1)
        });
        self.writes
            .controls_or_init()
            .age_limit_ms
            .store(ms, Ordering::SeqCst);
    }

    /// Whether closing the stream resets it (`SO_LINGER` 0) instead of flushing it.
    pub(crate) fn set_reset_on_close(&self, reset: bool) {
        self.writes
            .controls_or_init()
            .reset_on_close
            .store(reset, Ordering::SeqCst);
    }

    /// Puts bytes back in front of everything not yet delivered.
    pub(crate) fn unread(&self, data: Vec<u8>) {
        let _ = self.task.send(Command::Unread {
            key: self.key,
            data,
        });
    }

    /// Queues the shutdown of the sending side after every write queued before it; returns
    /// its number, as `write` does.
    pub(crate) fn shutdown_write(&self) -> Result<u64, Error> {
        let key = self.key;
        self.writes
            .queue(|| self.task.send(Command::ShutdownWrite(key)))
    }

    /// Sends a command carrying a reply, and waits for the reply.
    fn request<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, Error>>) -> Command,
    ) -> Result<T, Error> {
        request(&self.task, command)
    }
}

impl Drop for RawStream {
    fn drop(&mut self) {
        if !self.released {
            // A stopped task has closed the stream already.
            let _ = self.task.send(Command::Close(self.key));
        }
    }
}

/// Sends a command carrying a reply to `task`, and waits for the reply; a command the loop
/// never answered (it stopped) reads as `SHUTDOWN`.
pub(crate) fn request<T>(
    task: &Shared,
    command: impl FnOnce(oneshot::Sender<Result<T, Error>>) -> Command,
) -> Result<T, Error> {
    let (reply, rx) = oneshot::channel();
    task.send(command(reply))?;
    rx.recv().unwrap_or_else(|_| Err(Error::shutdown()))
}

/// Starts connecting to each of `addrs` in turn from the I/O task, without blocking: the
/// receiver resolves with the connected stream, or with the last address's error.
///
/// `setup` runs on each connected socket before it is served (a family's options);
/// `timeout` bounds each address's attempt.
pub(crate) fn connect(
    task: &Arc<Shared>,
    addrs: Vec<SockAddr>,
    setup: Option<SetupFn>,
    timeout: Option<Duration>,
) -> oneshot::Receiver<Result<RawStream, Error>> {
    let (reply, rx) = oneshot::channel();
    if let Err(e) = task.send(Command::Connect {
        addrs: addrs.into(),
        setup,
        timeout,
        reply: ConnectReply::Future(reply),
    }) {
        // The command, and the reply it carried, were dropped: answer with the reason.
        let (reply, rx) = oneshot::channel();
        let _ = reply.send(Err(e));
        return rx;
    }
    rx
}

/// Starts connecting to each of `addrs` in turn; the outcome reaches the mailbox behind
/// `inbox` as a `Delivery::Connected` with the returned id, which the stream keeps.
pub(crate) fn connect_into(
    task: &Arc<Shared>,
    addrs: Vec<SockAddr>,
    setup: Option<SetupFn>,
    timeout: Option<Duration>,
    inbox: Arc<dyn Inbox>,
    window: Arc<Window>,
    kind: StreamKind,
) -> Result<u64, Error> {
    let id = crate::io_task::entry::next_id();
    task.send(Command::Connect {
        addrs: addrs.into(),
        setup,
        timeout,
        reply: ConnectReply::Mailbox {
            inbox,
            window,
            id,
            kind,
        },
    })?;
    Ok(id)
}

/// Serves an already connected, non-blocking socket.
pub(crate) fn adopt(task: &Arc<Shared>, socket: Socket) -> Result<RawStream, Error> {
    let socket = Arc::new(socket);
    let writes = Arc::new(WriteState::new());
    let key = request(task, |reply| Command::AddStream {
        socket: socket.clone(),
        writes: writes.clone(),
        reply,
    })?;
    Ok(RawStream::new(key, task.clone(), socket, writes))
}
