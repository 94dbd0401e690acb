//! An echo server in which one actor thread owns every connection.
//!
//! ```sh
//! cargo run --example echo_actor -- 127.0.0.1:7000
//! socat - TCP:127.0.0.1:7000
//! ```
//!
//! The I/O task accepts each connection and hands it straight to the actor's [`Mailbox`]
//! (`tcp::listen_into`): the actor receives the socket, already attached, followed by its
//! reads. So the reads of all clients arrive on one queue, tagged with their socket, and
//! one thread serves them all, with no listener thread in between.
//!
//! The first argument is the address to listen on (default `127.0.0.1:7000`; give
//! `127.0.0.1:0` for any free port). The server prints the address it bound and serves
//! until killed.

use std::collections::HashMap;
use std::error::Error;
use std::io::Write;

use iotask::tcp::{self, KillChan, ListenError, ListenOptions};
use iotask::{Event, IoTask, Mailbox};

/// What [`serve`] tells the actor.
#[derive(Debug)]
pub enum Command {
    /// The listener stopped: close every connection and return.
    Stop,
}

/// Serves echo on `addr` until the listener is killed or `iotask` shuts down.
///
/// `on_bound` runs once the port is bound; its [`KillChan`] tells the bound address and
/// stops the server. When the server stops, every connection is closed.
pub fn serve(
    addr: &str,
    iotask: &IoTask,
    on_bound: impl FnOnce(KillChan),
) -> Result<(), ListenError> {
    let mailbox = Mailbox::new();
    let actor_mail = mailbox.sender();
    let server = tcp::listen_into(addr, &ListenOptions::new().backlog(128), iotask, &mailbox)?;
    on_bound(server.kill_chan().clone());
    // Started only now, so that a panic in `on_bound` leaves no thread behind; connections
    // accepted meanwhile wait in the mailbox.
    let actor = std::thread::spawn(move || echo_actor(mailbox));

    let result = server.wait();

    let _ = actor_mail.send(Command::Stop);
    let _ = actor.join();
    result
}

/// Echoes every chunk any of its sockets reads, until told to stop.
pub fn echo_actor(mut mailbox: Mailbox<Command>) {
    let mut sockets = HashMap::new();
    loop {
        match mailbox.recv() {
            Event::Accepted(sock) => {
                sockets.insert(sock.id(), sock);
            }
            Event::Data { socket, data } => {
                if let Some(sock) = sockets.get(&socket) {
                    // The write is queued in order with the socket's other writes; the
                    // actor does not wait for it, so one slow client delays nobody. A client
                    // that never reads its echoes stops being read once 1 MiB of them wait
                    // (the listener's write window), so the queue stays bounded.
                    drop(sock.write_future(data));
                }
            }
            Event::Closed { socket, .. } => {
                // The client closed (or reset) the connection. Dropping the socket
                // flushes the echoes still queued, then closes it.
                sockets.remove(&socket);
            }
            Event::Message(Command::Stop) => return,
            _ => {}
        }
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7000".to_owned());
    let iotask = IoTask::spawn()?;
    serve(&addr, &iotask, |kill| {
        println!("listening on {}", kill.local_addr());
        let _ = std::io::stdout().flush();
    })
    .map_err(|e| format!("cannot serve on {addr}: {e}"))?;
    Ok(())
}
