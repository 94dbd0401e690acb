//! `spawn_listen`: a listener on a thread of its own, for servers that hand their connections
//! to actors and need the calling thread back.

use std::fmt;
use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::IoTask;
use crate::tcp::listen::serve;
use crate::tcp::{KillChan, ListenError, ListenOptions, NewConnection, TcpError, ToListenAddrs};

/// A running listener that does not need the caller's thread: one on a thread of its own
/// ([`spawn_listen`]), or one that feeds a mailbox ([`listen_into`](super::listen_into)).
///
/// Dropping it stops the listener (as `kill.send(None)`) and waits until it stopped: its
/// thread ended, its listening sockets closed.
pub struct Server {
    kill: KillChan,
    /// The `listen` thread; `None` for a listener feeding a mailbox.
    thread: Option<JoinHandle<Result<(), ListenError>>>,
    /// Cleared once stopped or waited for.
    running: bool,
}

/// Binds `addr` and runs [`listen_with`](super::listen_with) on a new thread, returning once
/// the listener is bound (or failed to bind). `new_connect` runs on that thread.
///
/// # Errors
///
/// As [`listen`](super::listen) for binding; `Generic` when the thread cannot be spawned.
///
/// # Examples
///
/// ```
/// use iotask::tcp::{self, ListenOptions};
///
/// let iotask = iotask::IoTask::spawn()?;
/// let server = tcp::spawn_listen("127.0.0.1:0", &ListenOptions::new(), &iotask, |conn, _| {
///     let sock = tcp::accept(conn).unwrap();
///     drop(sock.write_future(b"hello".to_vec()));
/// })?;
/// let sock = tcp::connect(server.local_addr(), &iotask)?;
/// assert_eq!(sock.read(std::time::Duration::from_secs(5))?, b"hello");
/// server.stop()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn spawn_listen<A, C>(
    addr: A,
    options: &ListenOptions,
    iotask: &IoTask,
    new_connect: C,
) -> Result<Server, ListenError>
where
    A: ToListenAddrs,
    C: FnMut(NewConnection, &KillChan) + Send + 'static,
{
    let addrs = addr.to_listen_addrs().map_err(super::resolve_error)?;
    let options = options.clone();
    let iotask = iotask.clone();
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let failed_tx = ready_tx.clone();
    let thread = std::thread::Builder::new()
        .name("iotask-listen".to_owned())
        .spawn(move || {
            let tasks = std::slice::from_ref(&iotask);
            let established = move |kill| {
                let _ = ready_tx.send(Ok(kill));
            };
            let result = serve(&addrs, &options, tasks, established, new_connect);
            if let Err(e) = &result {
                // Heard only if binding failed; afterwards nobody waits on this channel.
                let _ = failed_tx.send(Err(e.clone()));
            }
            result
        })
        .map_err(TcpError::from)?;
    match ready.recv() {
        Ok(Ok(kill)) => Ok(Server {
            kill,
            thread: Some(thread),
            running: true,
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        // `serve` catches panics in the callbacks, so the thread ends without a word only
        // if it died some other way.
        Err(_) => match thread.join() {
            Ok(Err(e)) => Err(e),
            _ => Err(TcpError::other("PANIC", "the listener thread ended before listening").into()),
        },
    }
}

impl Server {
    /// A listener the I/O tasks run by themselves, stopped through `kill`.
    pub(crate) fn without_thread(kill: KillChan) -> Server {
        Server {
            kill,
            thread: None,
            running: true,
        }
    }

    /// The bound address, with a requested port 0 resolved.
    pub fn local_addr(&self) -> SocketAddr {
        self.kill.local_addr()
    }

    /// The listener's handle: connection counts, pause, drop-incoming, close modes.
    pub fn kill_chan(&self) -> &KillChan {
        &self.kill
    }

    /// Stops the listener and waits until it stopped; the port is free when this returns.
    /// Connections already accepted are left alone.
    ///
    /// # Errors
    ///
    /// Why the listener stopped, if it stopped for another reason first: `SHUTDOWN`, a
    /// panicking handler, an error sent through the kill channel, or `CLOSED` for a mailbox
    /// that was dropped.
    pub fn stop(mut self) -> Result<(), ListenError> {
        let _ = self.kill.send(None);
        self.join()
    }

    /// Waits until the listener stops (killed or closed through its [`KillChan`], its I/O
    /// task shut down, or its mailbox dropped).
    ///
    /// # Errors
    ///
    /// As [`stop`](Server::stop).
    pub fn wait(mut self) -> Result<(), ListenError> {
        self.join()
    }

    fn join(&mut self) -> Result<(), ListenError> {
        if !std::mem::replace(&mut self.running, false) {
            return Ok(());
        }
        match self.thread.take() {
            Some(thread) => thread.join().unwrap_or_else(|_| {
                Err(TcpError::other("PANIC", "the listener thread panicked").into())
            }),
            None => {
                self.kill.wait_closed(Duration::MAX);
                match self.kill.stop_reason() {
                    Some(e) => Err(e.into()),
                    None => Ok(()),
                }
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.running {
            let _ = self.kill.send(None);
            let _ = self.join();
        }
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr())
            .field("running", &self.running)
            .finish()
    }
}
