//! A line-based chat room: every line a client sends goes to every other client, prefixed
//! with the sender's address.
//!
//! ```sh
//! cargo run --example chat -- 127.0.0.1:7000
//! socat - TCP:127.0.0.1:7000     # in two or more terminals
//! ```
//!
//! One actor thread owns every client socket. The I/O task hands each connection straight
//! to the actor's [`Mailbox`] (`tcp::listen_into`), and all their reads arrive there too;
//! the actor cuts them into lines, keeping each client's unfinished line until its newline
//! comes, and writes each line to the others. Clients joining and leaving are announced:
//!
//! ```text
//! * 127.0.0.1:5555 joined
//! 127.0.0.1:5555: hello
//! * 127.0.0.1:5555 left
//! ```
//!
//! The first argument is the address to listen on (default `127.0.0.1:7000`; give
//! `127.0.0.1:0` for any free port). The server prints the address it bound and serves
//! until killed.

use std::collections::HashMap;
use std::error::Error;
use std::io::Write;

use iotask::tcp::{self, KillChan, ListenError, ListenOptions, TcpSocket};
use iotask::{Event, IoTask, Mailbox, SocketId};

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

/// Runs a chat room on `addr` until the listener is killed or `iotask` shuts down.
///
/// `on_bound` runs once the port is bound; its [`KillChan`] tells the bound address and
/// stops the server. When the server stops, every connection is closed.
pub fn serve(
    addr: &str,
    iotask: &IoTask,
    on_bound: impl FnOnce(KillChan),
) -> Result<(), ListenError> {
    let mailbox = Mailbox::new();
    let room_mail = mailbox.sender();
    let server = tcp::listen_into(addr, &ListenOptions::new().backlog(128), iotask, &mailbox)?;
    on_bound(server.kill_chan().clone());
    // Started only now, so that a panic in `on_bound` leaves no thread behind; clients who
    // connect meanwhile wait in the mailbox.
    let room = std::thread::spawn(move || chat_room(mailbox));

    let result = server.wait();

    let _ = room_mail.send(Command::Stop);
    let _ = room.join();
    result
}

/// A client in the room.
struct Member {
    sock: TcpSocket,
    name: String,
    /// Bytes received after the last newline.
    unfinished: Vec<u8>,
}

impl Member {
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

/// The room: owns every client socket and passes lines between them, until told to stop.
pub fn chat_room(mut mailbox: Mailbox<Command>) {
    let mut members: HashMap<SocketId, Member> = HashMap::new();
    loop {
        match mailbox.recv() {
            Event::Accepted(sock) => {
                // A client that reset the connection already has no address; dropping its
                // socket closes it.
                let Ok(peer) = sock.peer_addr() else { continue };
                let id = sock.id();
                send_to_others(&mut members, id, format!("* {peer} joined\n").as_bytes());
                let name = peer.to_string();
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
            Event::Data { socket, data } => {
                let Some(member) = members.get_mut(&socket) else {
                    continue;
                };
                for line in member.lines(&data) {
                    send_to_others(&mut members, socket, &line);
                }
            }
            Event::Closed { socket, .. } => {
                // Dropping the member's socket closes the connection.
                if let Some(member) = members.remove(&socket) {
                    let left = format!("* {} left\n", member.name);
                    send_to_others(&mut members, socket, left.as_bytes());
                }
            }
            Event::Message(Command::Stop) => return,
            _ => {}
        }
    }
}

/// Writes `text` to every member except `from`, without waiting for the writes, and drops
/// the members that fell more than [`MAX_BACKLOG`] behind.
fn send_to_others(members: &mut HashMap<SocketId, Member>, from: SocketId, text: &[u8]) {
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
