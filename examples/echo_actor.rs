//! An echo server in which one actor thread owns every connection.
//!
//! ```sh
//! cargo run --example echo_actor -- 127.0.0.1:7000
//! socat - TCP:127.0.0.1:7000
//!
//! cargo run --example echo_actor -- unix:/tmp/echo.sock
//! socat - UNIX-CONNECT:/tmp/echo.sock
//! ```
//!
//! The I/O task accepts each connection and hands it straight to the actor's [`Mailbox`]
//! (`Listener::into_mailbox`): the actor receives the socket, already attached, followed by
//! its reads. So the reads of all clients arrive on one queue, tagged with their socket, and
//! one thread serves them all, with no listener thread in between. The actor is written
//! once for every socket family (`F: Family`), so the same code serves TCP and Unix-domain
//! clients.
//!
//! The first argument is the address to listen on: `HOST:PORT` (default `127.0.0.1:7000`;
//! give `127.0.0.1:0` for any free port) or `unix:PATH` for a Unix-domain socket. The
//! server prints the address it bound and serves until killed.

#[path = "support/listen_addr.rs"]
mod listen_addr;

use std::collections::HashMap;
use std::error::Error;
use std::io::Write;

use iotask::server::{KillChan, ListenOptions, Listener};
use iotask::stream::Family;
use iotask::{Event, IoTask, ListenError, Mailbox};

use listen_addr::{Bound, ListenAddr};

/// What [`serve`] tells the actor.
#[derive(Debug)]
pub enum Command {
    /// The listener stopped: close every connection and return.
    Stop,
}

/// Serves echo on `listener`, of either family, until it is killed or its I/O task shuts
/// down.
///
/// `on_bound` runs once connections are accepted; its [`KillChan`] tells the bound address
/// and stops the server. When the server stops, every connection is closed.
pub fn serve<F: Family>(
    listener: Listener<F>,
    on_bound: impl FnOnce(KillChan<F>),
) -> Result<(), ListenError> {
    let mailbox = Mailbox::new();
    let actor_mail = mailbox.sender();
    let server = listener.into_mailbox(&mailbox)?;
    on_bound(server.kill_chan().clone());
    // Started only now, so that a panic in `on_bound` leaves no thread behind; connections
    // accepted meanwhile wait in the mailbox.
    let actor = std::thread::spawn(move || echo_actor::<F>(mailbox));

    let result = server.wait();

    let _ = actor_mail.send(Command::Stop);
    let _ = actor.join();
    result
}

/// Echoes every chunk any of its sockets of family `F` reads, until told to stop.
pub fn echo_actor<F: Family>(mut mailbox: Mailbox<Command>) {
    let mut sockets = HashMap::new();
    loop {
        // `into_accepted` takes a new connection of this actor's family out of the event.
        match mailbox.recv().into_accepted::<F>() {
            Ok(sock) => {
                sockets.insert(sock.id(), sock);
            }
            Err(Event::Data { socket, data }) => {
                if let Some(sock) = sockets.get(&socket) {
                    // The write is queued in order with the socket's other writes; the
                    // actor does not wait for it, so one slow client delays nobody. A client
                    // that never reads its echoes stops being read once 1 MiB of them wait
                    // (the listener's write window), so the queue stays bounded.
                    drop(sock.write_future(data));
                }
            }
            Err(Event::Closed { socket, .. }) => {
                // The client closed (or reset) the connection. Dropping the socket
                // flushes the echoes still queued, then closes it.
                sockets.remove(&socket);
            }
            Err(Event::Message(Command::Stop)) => return,
            Err(_) => {}
        }
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let arg = std::env::args().nth(1);
    let addr: ListenAddr = arg.as_deref().unwrap_or("127.0.0.1:7000").parse()?;
    let iotask = IoTask::spawn()?;
    let listener = addr
        .bind(&ListenOptions::new(), &iotask)
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    println!("listening on {listener}");
    std::io::stdout().flush()?;
    match listener {
        Bound::Tcp(listener) => serve(listener, |_kill| {})?,
        Bound::Unix(listener) => serve(listener, |_kill| {})?,
    }
    Ok(())
}
