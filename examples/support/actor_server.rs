//! What the kv and http examples share: a listener whose I/O task hands every connection
//! straight to one actor thread's mailbox, and the way to stop both together.

use std::io;
use std::net::SocketAddr;
use std::thread::{self, JoinHandle};

use iotask::tcp::{self, ListenOptions};
use iotask::{IoTask, Mailbox, MailboxSender};

/// What the server tells the actor; its connections come as `Event::Accepted`.
#[derive(Debug)]
pub enum Message {
    /// The listener stopped: close every connection and return.
    Stop,
}

/// A running server: its address, and the way to stop it.
#[derive(Debug)]
pub struct Server {
    listener: tcp::Server,
    to_actor: MailboxSender<Message>,
    actor: JoinHandle<()>,
}

impl Server {
    /// The bound address (a requested port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// Stops listening, closes every client connection, and returns once the actor's
    /// thread has ended.
    ///
    /// # Errors
    ///
    /// As [`wait`](Server::wait).
    pub fn stop(self) -> io::Result<()> {
        let Server {
            listener,
            to_actor,
            actor,
        } = self;
        finish(listener.stop(), to_actor, actor)
    }

    /// Blocks until the server stops (it is killed, or its I/O task shuts down), then
    /// closes every client connection.
    ///
    /// # Errors
    ///
    /// The listener's error, for example `SHUTDOWN` when the I/O task stopped.
    pub fn wait(self) -> io::Result<()> {
        let Server {
            listener,
            to_actor,
            actor,
        } = self;
        finish(listener.wait(), to_actor, actor)
    }
}

/// The actor ends with the listener, closing every connection.
fn finish(
    stopped: Result<(), tcp::ListenError>,
    to_actor: MailboxSender<Message>,
    actor: JoinHandle<()>,
) -> io::Result<()> {
    let _ = to_actor.send(Message::Stop);
    let _ = actor.join();
    Ok(stopped?)
}

/// Listens on `addr` and starts the actor on a thread named `name`, its `mailbox` fed with
/// every connection; returns once the port is bound.
///
/// The mailbox's window (`Mailbox::with_window`) bounds how long one client can make the
/// others wait: their input queues behind at most about that many bytes of its input.
///
/// # Errors
///
/// The bind or listen error (`AddrInUse`, …), or a failure to spawn a thread.
pub fn start(
    addr: &str,
    iotask: &IoTask,
    name: &str,
    mailbox: Mailbox<Message>,
    actor: impl FnOnce(Mailbox<Message>) + Send + 'static,
) -> io::Result<Server> {
    let to_actor = mailbox.sender();
    let options = ListenOptions::new().backlog(1024);
    // Connections accepted before the actor runs wait in its mailbox. Should the thread not
    // start, dropping the listener stops it and dropping the mailbox closes them.
    let listener = tcp::listen_into(addr, &options, iotask, &to_actor)?;
    let actor = thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || actor(mailbox))?;
    Ok(Server {
        listener,
        to_actor,
        actor,
    })
}
