//! What the kv and http examples share: a listener whose I/O task hands every connection
//! straight to one actor thread's mailbox, and the way to stop both together.
//!
//! Both are written once for every socket family (`F: Family`): the actor takes its
//! connections with `Event::into_accepted::<F>()`, and the rest of the library is the same
//! for TCP and Unix-domain sockets.

use std::io;
use std::thread::{self, JoinHandle};

use iotask::server::{self, ListenOptions, Listener};
use iotask::stream::Family;
use iotask::tcp::Tcp;
use iotask::{ListenError, Mailbox, MailboxSender};

/// What the server tells the actor; its connections come as accepted-connection events.
#[derive(Debug)]
pub enum Message {
    /// The listener stopped: close every connection and return.
    Stop,
}

/// A running server: its address, and the way to stop it.
#[derive(Debug)]
pub struct Server<F: Family = Tcp> {
    listener: server::Server<F>,
    to_actor: MailboxSender<Message>,
    actor: JoinHandle<()>,
}

/// The listen options of these servers: a backlog of 1024, so that a benchmark opening
/// many connections at once is not held back by the default 128.
pub fn listen_options() -> ListenOptions {
    ListenOptions::new().backlog(1024)
}

impl<F: Family> Server<F> {
    /// The bound address (a requested port 0 resolved).
    pub fn local_addr(&self) -> F::Addr {
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
    stopped: Result<(), ListenError>,
    to_actor: MailboxSender<Message>,
    actor: JoinHandle<()>,
) -> io::Result<()> {
    let _ = to_actor.send(Message::Stop);
    let _ = actor.join();
    Ok(stopped?)
}

/// Serves `listener` (bound with [`listen_options`], of either family) by starting the
/// actor on a thread named `name`, its `mailbox` fed with every connection.
///
/// The mailbox's window (`Mailbox::with_window`) bounds how long one client can make the
/// others wait: their input queues behind at most about that many bytes of its input.
///
/// # Errors
///
/// `SHUTDOWN` when the listener's I/O task stopped, or a failure to spawn a thread.
pub fn start<F: Family>(
    listener: Listener<F>,
    name: &str,
    mailbox: Mailbox<Message>,
    actor: impl FnOnce(Mailbox<Message>) + Send + 'static,
) -> io::Result<Server<F>> {
    let to_actor = mailbox.sender();
    // Connections accepted before the actor runs wait in its mailbox. Should the thread not
    // start, dropping the listener stops it and dropping the mailbox closes them.
    let listener = listener.into_mailbox(&to_actor)?;
    let actor = thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || actor(mailbox))?;
    Ok(Server {
        listener,
        to_actor,
        actor,
    })
}
