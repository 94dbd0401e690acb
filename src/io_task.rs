//! The I/O task: a thread that owns a poller and every socket it serves.
//!
//! The engine: everything below the public socket types. It knows sockets and their
//! readiness, never a protocol: nothing here names `tcp` or `unix`.

pub(crate) mod command;
pub(crate) mod connect;
pub(crate) mod datagram;
pub(crate) mod entry;
pub(crate) mod event_loop;
pub(crate) mod handle;
pub(crate) mod listener;
#[allow(unsafe_code)]
pub(crate) mod registration;
pub(crate) mod sink;
pub(crate) mod stats;
pub(crate) mod stream;
#[allow(unsafe_code)]
pub(crate) mod sys;
pub(crate) mod timers;
pub(crate) mod writes;

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, ThreadId};
use std::time::Duration;

use crate::error::Error;
use crate::io_task::command::Command;
use crate::io_task::event_loop::EventLoop;
use crate::io_task::stats::Stats;
use crate::io_task::sys::Poller;

/// A handle to an I/O task: one thread that owns an event loop and every socket and
/// listener created on it.
///
/// Handles are cheap to clone and can be shared between threads. The task stops when
/// [`shutdown`](IoTask::shutdown) is called or when the last `IoTask` handle is dropped.
/// Sockets, listeners, ports and futures do **not** keep the task alive: once it stops, every
/// operation on them fails with an error named `"SHUTDOWN"`. Keep a handle (or use
/// [`global`](crate::global)) for as long as you use its sockets.
///
/// # Examples
///
/// ```
/// let iotask = iotask::IoTask::spawn()?;
/// // … connect and listen through `&iotask` …
/// iotask.shutdown();
/// # std::io::Result::Ok(())
/// ```
#[derive(Clone)]
pub struct IoTask {
    owner: Arc<Owner>,
}

/// Settings of an I/O task, made with [`IoTask::builder`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// let iotask = iotask::IoTask::builder()
///     .read_window(256 * 1024)
///     .spin(Duration::from_micros(50))
///     .spawn()?;
/// # std::io::Result::Ok(())
/// ```
#[derive(Debug, Clone)]
pub struct Builder {
    config: Config,
    name: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) read_buffer: usize,
    pub(crate) read_window: usize,
    pub(crate) spin: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) linger_timeout: Duration,
}

/// The part of an I/O task every socket, port and future holds: the way to send it commands.
pub(crate) struct Shared {
    /// Commands for the loop. Both ends live here, so the channel never disconnects;
    /// `stopped` says whether anyone still drains it.
    commands_tx: flume::Sender<Command>,
    pub(crate) commands_rx: flume::Receiver<Command>,
    /// Woken by `notify` when a command arrives while the loop sleeps.
    pub(crate) poller: Arc<Poller>,
    /// True while the loop is (about to be) blocked in `Poller::wait`. Senders swap it to
    /// false and notify only when it was true, so a busy loop costs them no system call.
    pub(crate) sleeping: AtomicBool,
    /// Set by the loop after its last command drain; commands sent later are dropped by
    /// their sender, which makes every reply they carry resolve as `SHUTDOWN`.
    pub(crate) stopped: AtomicBool,
    /// The I/O thread, joined by `shutdown`.
    thread: Mutex<Option<JoinHandle<()>>>,
    thread_id: Mutex<Option<ThreadId>>,
    pub(crate) read_window: usize,
    /// The loop's counters when it ended (`IoTask::stats` asks the loop while it runs).
    pub(crate) stats: Mutex<Stats>,
}

/// Shuts the task down when the last user handle goes.
struct Owner {
    shared: Arc<Shared>,
}

impl IoTask {
    /// Starts an I/O task on a new thread, with default settings.
    ///
    /// # Errors
    ///
    /// Fails when the poller cannot be created (out of descriptors) or the thread cannot be
    /// spawned.
    pub fn spawn() -> io::Result<IoTask> {
        IoTask::builder().spawn()
    }

    /// Starts configuring an I/O task.
    pub fn builder() -> Builder {
        Builder {
            config: Config {
                read_buffer: 64 * 1024,
                read_window: 1024 * 1024,
                spin: Duration::ZERO,
                drain_timeout: Duration::from_secs(60),
                linger_timeout: Duration::from_secs(2),
            },
            name: "iotask".to_owned(),
        }
    }

    /// Closes every socket and listener the task serves and stops its thread.
    ///
    /// Pending reads end with an error named `"SHUTDOWN"` (a port yields it once, then its
    /// end), pending writes resolve with it, running [`listen`](crate::tcp::listen) calls
    /// return `ListenError::Generic` with that name, and every later operation fails the
    /// same way. Returns after the thread has closed everything, unless called from the I/O
    /// thread itself. Calling it again does nothing.
    ///
    /// # Panics
    ///
    /// Never.
    pub fn shutdown(&self) {
        self.owner.shared.shutdown();
    }

    /// What the task has done so far: sockets open, bytes moved, waits, commands (see
    /// [`Stats`]). Asks the loop, which answers between two cycles (a round trip through
    /// the I/O thread; counting costs it nothing per message). Once the task stopped, its
    /// final counts.
    pub fn stats(&self) -> Stats {
        let shared = &self.owner.shared;
        let (reply, rx) = crate::oneshot::channel();
        if shared.send(Command::Stats(reply)).is_ok() {
            if let Ok(stats) = rx.recv() {
                return stats;
            }
        }
        *lock(&shared.stats)
    }

    /// Whether the task still runs (it was not shut down).
    pub fn is_running(&self) -> bool {
        !self.owner.shared.stopped.load(Ordering::SeqCst)
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.owner.shared
    }
}

impl fmt::Debug for IoTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoTask")
            .field("running", &self.is_running())
            .finish()
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.shared.shutdown();
    }
}

impl Builder {
    /// Bytes a port or mailbox may hold unreceived before its sockets stop being read
    /// (default 1 MiB). Unread data then waits in the kernel, where TCP flow control slows
    /// the sender, so memory per connection stays bounded by about this plus one read.
    pub fn read_window(mut self, bytes: usize) -> Builder {
        self.config.read_window = bytes.max(1);
        self
    }

    /// Size of the buffer each `recv` reads into, and so the largest chunk a port delivers
    /// (default 64 KiB).
    pub fn read_buffer(mut self, bytes: usize) -> Builder {
        self.config.read_buffer = bytes.max(512);
        self
    }

    /// How long the loop polls without sleeping before it blocks (default zero: never spin).
    ///
    /// Spinning trades CPU for latency: a command or a packet that arrives within the spin
    /// is served without a thread wake-up. Each spin turn is one non-blocking poll.
    pub fn spin(mut self, spin: Duration) -> Builder {
        self.config.spin = spin;
        self
    }

    /// How long a dropped socket may take to flush its queued writes before it is closed
    /// anyway (default 60 s), so that a peer that never reads cannot pin a descriptor.
    pub fn drain_timeout(mut self, timeout: Duration) -> Builder {
        self.config.drain_timeout = timeout;
        self
    }

    /// How long a dropped socket, once its writes are flushed and its sending side shut
    /// down, waits for the peer to close before it is closed anyway (default 2 s).
    ///
    /// Meanwhile whatever the peer still sends is read and discarded: closing with unread
    /// input would make the kernel reset the connection and drop the last replies still in
    /// the send buffer. A lingering socket no longer counts as a listener's connection.
    pub fn linger_timeout(mut self, timeout: Duration) -> Builder {
        self.config.linger_timeout = timeout;
        self
    }

    /// The I/O thread's name (default `"iotask"`).
    pub fn name(mut self, name: impl Into<String>) -> Builder {
        self.name = name.into();
        self
    }

    /// Starts the I/O task.
    ///
    /// # Errors
    ///
    /// Fails when the poller cannot be created or the thread cannot be spawned.
    pub fn spawn(self) -> io::Result<IoTask> {
        let (commands_tx, commands_rx) = flume::unbounded();
        let shared = Arc::new(Shared {
            commands_tx,
            commands_rx,
            poller: Arc::new(Poller::new()?),
            sleeping: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            thread: Mutex::new(None),
            thread_id: Mutex::new(None),
            read_window: self.config.read_window,
            stats: Mutex::new(Stats::default()),
        });
        let event_loop = EventLoop::new(shared.clone(), self.config);
        let thread = std::thread::Builder::new()
            .name(self.name)
            .spawn(move || event_loop.run())?;
        *lock(&shared.thread_id) = Some(thread.thread().id());
        *lock(&shared.thread) = Some(thread);
        Ok(IoTask {
            owner: Arc::new(Owner { shared }),
        })
    }
}

impl Shared {
    /// Queues a command and wakes the loop if it sleeps.
    ///
    /// # Errors
    ///
    /// `SHUTDOWN` when the loop has stopped; the command is dropped.
    pub(crate) fn send(&self, command: Command) -> Result<(), Error> {
        if self.is_stopped() {
            return Err(Error::shutdown());
        }
        // The channel cannot disconnect: `self` holds the receiver.
        let _ = self.commands_tx.send(command);
        if self.stopped.load(Ordering::SeqCst) {
            // The loop may have finished its last drain before this command arrived; drop
            // whatever is left so that no reply waits forever.
            while let Ok(command) = self.commands_rx.try_recv() {
                drop(command);
            }
            return Err(Error::shutdown());
        }
        if self.sleeping.swap(false, Ordering::SeqCst) {
            // A failed notify means the poller is broken; the loop reports that itself.
            let _ = self.poller.notify();
        }
        Ok(())
    }

    /// Whether the loop has stopped (shut down, or died).
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Called by the loop as it ends, however it ends: from here on every command is refused
    /// with `SHUTDOWN`, and those still queued are dropped, which resolves their replies.
    pub(crate) fn mark_stopped(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        for command in self.commands_rx.drain() {
            drop(command);
        }
    }

    fn shutdown(&self) {
        if self.send(Command::Shutdown).is_err() {
            return;
        }
        let on_io_thread = *lock(&self.thread_id) == Some(std::thread::current().id());
        if !on_io_thread {
            if let Some(thread) = lock(&self.thread).take() {
                // The loop never runs user code, so it cannot have panicked on the user's
                // behalf; a join error would be a bug in iotask and is not re-raised here.
                let _ = thread.join();
            }
        }
    }
}

#[cfg(test)]
impl Shared {
    /// A `Shared` with no loop thread, for unit tests of the loop's parts.
    pub(crate) fn detached() -> Arc<Shared> {
        let (commands_tx, commands_rx) = flume::unbounded();
        Arc::new(Shared {
            commands_tx,
            commands_rx,
            poller: Arc::new(Poller::new().expect("an epoll instance")),
            sleeping: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            thread: Mutex::new(None),
            thread_id: Mutex::new(None),
            read_window: 1024 * 1024,
            stats: Mutex::new(Stats::default()),
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}

/// The process-wide I/O task, started on first use.
///
/// If it was shut down, the next call starts a new one.
///
/// # Panics
///
/// Panics if the I/O task cannot be started (no descriptors or threads left), as
/// `std::thread::spawn` does.
///
/// # Examples
///
/// ```
/// let a = iotask::global();
/// let b = iotask::global();
/// assert!(a.is_running() && b.is_running());
/// ```
pub fn global() -> IoTask {
    static GLOBAL: Mutex<Option<IoTask>> = Mutex::new(None);
    let mut global = lock(&GLOBAL);
    match &*global {
        Some(task) if task.is_running() => task.clone(),
        _ => {
            let task = IoTask::spawn().expect("iotask: cannot start the global I/O task");
            *global = Some(task.clone());
            task
        }
    }
}
