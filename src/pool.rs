//! `IoPool`: several I/O tasks, one per core by default.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::stream::{Family, Stream};
use crate::{Builder, IoTask};

/// A fixed set of I/O tasks that share the work of a server.
///
/// [`tcp::bind_pool`](crate::tcp::bind_pool) gives each task its own listening
/// socket on one port (`SO_REUSEPORT`), so the kernel spreads connections over the tasks and
/// no lock or hand-off sits between them; [`next`](IoPool::next) picks a task for a client
/// socket, round robin. Each socket lives on exactly one task for its whole life.
///
/// The pool is a handle like [`IoTask`]: clones share the tasks, and the tasks stop when
/// [`shutdown`](IoPool::shutdown) is called or the last handle to each is dropped.
///
/// # Examples
///
/// ```
/// let pool = iotask::IoPool::spawn(2)?;
/// let server = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let sock = iotask::tcp::connect(server.local_addr()?, pool.next())?;
/// # drop(sock);
/// pool.shutdown();
/// # std::io::Result::Ok(())
/// ```
#[derive(Debug, Clone)]
pub struct IoPool {
    tasks: Arc<[IoTask]>,
    next: Arc<AtomicUsize>,
}

impl IoPool {
    /// Starts `n` I/O tasks (at least one) with default settings.
    ///
    /// # Errors
    ///
    /// As [`IoTask::spawn`]; tasks already started are shut down.
    pub fn spawn(n: usize) -> io::Result<IoPool> {
        IoPool::with_builder(n, IoTask::builder())
    }

    /// Starts one I/O task per available core.
    ///
    /// # Errors
    ///
    /// As [`IoTask::spawn`].
    pub fn per_core() -> io::Result<IoPool> {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        IoPool::spawn(n)
    }

    /// Starts `n` I/O tasks (at least one) with the given settings; threads are named
    /// `iotask-0`, `iotask-1`, ….
    ///
    /// # Errors
    ///
    /// As [`IoTask::spawn`]; tasks already started are shut down.
    pub fn with_builder(n: usize, builder: Builder) -> io::Result<IoPool> {
        let tasks = (0..n.max(1))
            .map(|i| builder.clone().name(format!("iotask-{i}")).spawn())
            .collect::<io::Result<Vec<IoTask>>>()?;
        Ok(IoPool {
            tasks: tasks.into(),
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The tasks of the pool.
    pub fn tasks(&self) -> &[IoTask] {
        &self.tasks
    }

    /// The next task, round robin: where to put a new client socket.
    pub fn next(&self) -> &IoTask {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.tasks.len();
        &self.tasks[i]
    }

    /// The position in [`tasks`](IoPool::tasks) of the task serving `socket`, or `None`
    /// if it belongs to no task of this pool.
    ///
    /// A server that pairs each task with an actor of its own hands each accepted socket to
    /// the actor of its task: the actor's writes then wake one loop, not all of them.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = iotask::IoPool::spawn(2)?;
    /// let server = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let sock = iotask::tcp::connect(server.local_addr()?, &pool.tasks()[1])?;
    /// assert_eq!(pool.index_of(&sock), Some(1));
    ///
    /// let elsewhere = iotask::tcp::connect(server.local_addr()?, &iotask::global())?;
    /// assert_eq!(pool.index_of(&elsewhere), None);
    /// # drop((sock, elsewhere));
    /// pool.shutdown();
    /// # std::io::Result::Ok(())
    /// ```
    pub fn index_of<F: Family>(&self, socket: &Stream<F>) -> Option<usize> {
        self.tasks
            .iter()
            .position(|task| Arc::ptr_eq(task.shared(), socket.task()))
    }

    /// Shuts every task down (see [`IoTask::shutdown`]).
    pub fn shutdown(&self) {
        for task in self.tasks.iter() {
            task.shutdown();
        }
    }
}
