//! A line-based chat room: every line a client sends goes to every other client, prefixed
//! with the sender's name.
//!
//! ```sh
//! cargo run --example chat -- 127.0.0.1:7000
//! socat - TCP:127.0.0.1:7000              # in two or more terminals
//!
//! cargo run --example chat -- unix:/tmp/chat.sock
//! socat - UNIX-CONNECT:/tmp/chat.sock     # in two or more terminals
//! ```
//!
//! One actor thread owns every client socket. The I/O task hands each connection straight
//! to the actor's [`Mailbox`] (`Listener::into_mailbox`), and all their reads arrive there
//! too; the actor cuts them into lines, keeping each client's unfinished line until its
//! newline comes, and writes each line to the others. Clients joining and leaving are
//! announced:
//!
//! ```text
//! * 127.0.0.1:5555 joined
//! 127.0.0.1:5555: hello
//! * 127.0.0.1:5555 left
//! ```
//!
//! A TCP client is named by its address. A Unix-domain client usually has no address (only
//! the server's socket is bound to a path), so it is named by its socket and, where the
//! kernel tells it, the process at the other end: `socket#7 (pid 4242)` ([`Name`]).
//!
//! The first argument is the address to listen on: `HOST:PORT` (default `127.0.0.1:7000`;
//! give `127.0.0.1:0` for any free port) or `unix:PATH` for a Unix-domain socket. The
//! server prints the address it bound and serves until killed.

#[path = "support/listen_addr.rs"]
mod listen_addr;

use std::collections::HashMap;
use std::error::Error;
use std::io::{self, Write};

use iotask::server::{KillChan, ListenOptions, Listener};
use iotask::stream::{Family, Stream};
use iotask::tcp::Tcp;
use iotask::unix::Unix;
use iotask::{Event, IoTask, ListenError, Mailbox, SocketId};

use listen_addr::{Bound, ListenAddr};

/// How many bytes of one client's unfinished line the room holds. Once that many wait, they
/// are passed on without waiting for the newline, so a client that never sends one cannot
/// grow the room's memory.
pub const MAX_LINE: usize = 4096;

/// A member with more than this many bytes waiting to be written to it is dropped: it does
/// not read, and the room must not queue lines for it without bound. It is well above what
/// one turn of the room can queue for a member that does read (the room's mailbox holds at
/// most 4 MiB of input), so only a member that stopped reading reaches it.
pub const MAX_BACKLOG: usize = 16 * 1024 * 1024;

/// What [`serve`] tells the room.
#[derive(Debug)]
pub enum Command {
    /// The listener stopped: close every connection and return.
    Stop,
}

/// How the room names a member of a socket family, in announcements and before its lines.
pub trait Name: Family {
    /// The member's name.
    ///
    /// # Errors
    ///
    /// When the connection is already gone (the client reset it).
    fn name(sock: &Stream<Self>) -> io::Result<String>;
}

impl Name for Tcp {
    /// The client's address: `127.0.0.1:5555`.
    fn name(sock: &Stream<Tcp>) -> io::Result<String> {
        Ok(sock.peer_addr()?.to_string())
    }
}

impl Name for Unix {
    /// The socket, and the client's process where the kernel tells it: `socket#7 (pid 4242)`.
    /// The socket tells apart two clients of one process.
    fn name(sock: &Stream<Unix>) -> io::Result<String> {
        Ok(match sock.peer_cred()?.pid {
            Some(pid) => format!("{} (pid {pid})", sock.id()),
            None => sock.id().to_string(),
        })
    }
}

/// Runs a chat room on `listener`, of either family, until it is killed or its I/O task
/// shuts down.
///
/// `on_bound` runs once connections are accepted; its [`KillChan`] tells the bound address
/// and stops the server. When the server stops, every connection is closed.
pub fn serve<F: Name>(
    listener: Listener<F>,
    on_bound: impl FnOnce(KillChan<F>),
) -> Result<(), ListenError> {
    let mailbox = Mailbox::new();
    let room_mail = mailbox.sender();
    let server = listener.into_mailbox(&mailbox)?;
    on_bound(server.kill_chan().clone());
    // Started only now, so that a panic in `on_bound` leaves no thread behind; clients who
    // connect meanwhile wait in the mailbox.
    let room = std::thread::spawn(move || chat_room::<F>(mailbox));

    let result = server.wait();

    let _ = room_mail.send(Command::Stop);
    let _ = room.join();
    result
}

/// A client in the room.
struct Member<F: Family> {
    sock: Stream<F>,
    name: String,
    /// Bytes received after the last newline.
    unfinished: Vec<u8>,
}

impl<F: Family> Member<F> {
    /// Adds bytes the client sent; returns the lines they completed, ready to broadcast.
    fn lines(&mut self, data: &[u8]) -> Vec<Vec<u8>> {
        self.unfinished.extend_from_slice(data);
        let mut lines = Vec::new();
        let mut start = 0;
        while let Some(len) = self.unfinished[start..].iter().position(|&b| b == b'\n') {
            lines.push(self.said(&self.unfinished[start..start + len]));
            start += len + 1;
        }
        self.unfinished.drain(..start);
        if self.unfinished.len() >= MAX_LINE {
            lines.push(self.said(&self.unfinished));
            self.unfinished.clear();
        }
        lines
    }

    /// The line as the others see it: `name: text\n` (a trailing `\r` is dropped).
    fn said(&self, text: &[u8]) -> Vec<u8> {
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        let mut line = format!("{}: ", self.name).into_bytes();
        line.extend_from_slice(text);
        line.push(b'\n');
        line
    }
}

/// The room: owns every client socket of family `F` and passes lines between them, until
/// told to stop.
pub fn chat_room<F: Name>(mut mailbox: Mailbox<Command>) {
    let mut members: HashMap<SocketId, Member<F>> = HashMap::new();
    loop {
        // `into_accepted` takes a new connection of the room's family out of the event.
        match mailbox.recv().into_accepted::<F>() {
            Ok(sock) => {
                // A client that reset the connection already cannot be named; dropping its
                // socket closes it.
                let Ok(name) = F::name(&sock) else { continue };
                let id = sock.id();
                send_to_others(&mut members, id, format!("* {name} joined\n").as_bytes());
                let unfinished = Vec::new();
                members.insert(
                    id,
                    Member {
                        sock,
                        name,
                        unfinished,
                    },
                );
            }
            Err(Event::Data { socket, data }) => {
                let Some(member) = members.get_mut(&socket) else {
                    continue;
                };
                for line in member.lines(&data) {
                    send_to_others(&mut members, socket, &line);
                }
            }
            Err(Event::Closed { socket, .. }) => {
                // Dropping the member's socket closes the connection.
                if let Some(member) = members.remove(&socket) {
                    let left = format!("* {} left\n", member.name);
                    send_to_others(&mut members, socket, left.as_bytes());
                }
            }
            Err(Event::Message(Command::Stop)) => return,
            Err(_) => {}
        }
    }
}

/// Writes `text` to every member except `from`, without waiting for the writes, and drops
/// the members that fell more than [`MAX_BACKLOG`] behind.
fn send_to_others<F: Family>(
    members: &mut HashMap<SocketId, Member<F>>,
    from: SocketId,
    text: &[u8],
) {
    let mut too_slow = Vec::new();
    for (&id, member) in members.iter() {
        if id != from {
            drop(member.sock.write_future(text));
            if member.sock.queued_bytes() > MAX_BACKLOG {
                too_slow.push(id);
            }
        }
    }
    for id in too_slow {
        // Dropping the socket writes what is queued if the client reads it in time (the
        // I/O task's drain timeout), then closes the connection.
        members.remove(&id);
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
    io::stdout().flush()?;
    match listener {
        Bound::Tcp(listener) => serve(listener, |_kill| {})?,
        Bound::Unix(listener) => serve(listener, |_kill| {})?,
    }
    Ok(())
}
