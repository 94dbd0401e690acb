//! What the kv and http examples share: a listener on a thread of its own that hands every
//! connection to one actor thread, and stops that actor when it stops.

use std::io;
use std::net::SocketAddr;
use std::thread::{self, JoinHandle};

use iotask::tcp::{self, ListenOptions, TcpSocket};
use iotask::{IoTask, Mailbox, MailboxSender};

/// What the listener tells the actor.
#[derive(Debug)]
pub enum Message {
    /// A new client to serve.
    Connection(TcpSocket),
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

    /// Stops listening, closes every client connection, and returns once the server's
    /// threads have ended.
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

/// Starts the actor on a thread named `name` and a listener on `addr` that hands it every
/// connection; returns once the port is bound.
///
/// # Errors
///
/// The bind or listen error (`AddrInUse`, …), or a failure to spawn a thread.
pub fn start(
    addr: &str,
    iotask: &IoTask,
    name: &str,
    actor: fn(Mailbox<Message>),
) -> io::Result<Server> {
    let mailbox = Mailbox::new();
    let to_actor = mailbox.sender();
    let actor = thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || actor(mailbox))?;
    let options = ListenOptions::new().backlog(1024);
    let listener = tcp::spawn_listen(addr, &options, iotask, {
        let to_actor = to_actor.clone();
        move |new_conn, _kill| {
            if let Ok(sock) = tcp::accept(new_conn) {
                // The actor lives until told to stop, so this cannot fail.
                let _ = to_actor.send(Message::Connection(sock));
            }
        }
    });
    match listener {
        Ok(listener) => Ok(Server {
            listener,
            to_actor,
            actor,
        }),
        Err(e) => {
            let _ = to_actor.send(Message::Stop);
            let _ = actor.join();
            Err(e.into())
        }
    }
}
