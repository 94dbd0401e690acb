//! A UDP echo server: one actor thread sends every datagram back to whoever sent it.
//!
//! ```sh
//! cargo run --example udp_echo -- 127.0.0.1:7000
//! socat - UDP:127.0.0.1:7000
//! ```
//!
//! The socket is attached to the actor's [`Mailbox`], so its datagrams arrive as
//! [`Event::Datagram`]s, each whole and with its sender's address, next to any other event the
//! actor might have. The actor echoes each one with [`UdpSocket::send_to`] and goes straight on
//! to the next: the send is queued in order behind the earlier ones, and its [`SendFuture`] is
//! kept only to count the sends the kernel refused, checked without waiting
//! ([`SendFuture::try_get`]).
//! A datagram arriving while the actor is more than the mailbox's window (4 MiB) behind is
//! dropped by the I/O task, as a UDP server may drop it, instead of piling up.
//!
//! The first argument is the address to bind: `HOST:PORT` (default `127.0.0.1:0`, any free
//! port). The server prints `listening on ADDRESS` once it is bound, then serves until killed.

use std::collections::VecDeque;
use std::error::Error;
use std::io::Write;
use std::net::SocketAddr;

use iotask::udp::{SendFuture, UdpSocket};
use iotask::{Event, IoTask, Mailbox};

/// What [`serve`] did by the time its socket closed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Datagrams received and sent back.
    pub echoed: u64,
    /// Echoes the kernel refused (also printed to stderr as they happen).
    pub failed: u64,
}

/// Echoes every datagram `socket` receives to its sender, on the calling thread, until the
/// socket's I/O task stops.
///
/// # Errors
///
/// `"SHUTDOWN"` when the I/O task had already stopped.
pub fn serve(socket: UdpSocket) -> Result<Tally, iotask::Error> {
    let mut mailbox: Mailbox = Mailbox::new();
    socket.attach(&mailbox)?;
    let mut tally = Tally::default();
    // Echoes the kernel may not have taken yet, oldest first: they resolve in this order.
    let mut sending: VecDeque<(SocketAddr, SendFuture)> = VecDeque::new();
    loop {
        match mailbox.recv() {
            Event::Datagram { datagram, .. } => {
                let to = datagram.from;
                sending.push_back((to, socket.send_to(datagram.data, to)));
                tally.echoed += 1;
                while let Some(result) = sending.front_mut().and_then(|(_, send)| send.try_get()) {
                    let (to, _) = sending.pop_front().expect("the front resolved");
                    if let Err(e) = result {
                        tally.failed += 1;
                        eprintln!("udp_echo: echo to {to} failed: {e}");
                    }
                }
            }
            // An ICMP error for an earlier echo, say; the socket goes on receiving.
            Event::DatagramError { error, .. } => eprintln!("udp_echo: {error}"),
            // The I/O task stopped.
            Event::Closed { .. } => return Ok(tally),
            _ => {}
        }
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let addr = std::env::args().nth(1);
    run(addr.as_deref().unwrap_or("127.0.0.1:0"))
}

/// Binds `addr` on an I/O task of its own, prints `listening on ADDRESS`, and serves on an
/// actor thread until the process is killed.
pub fn run(addr: &str) -> Result<(), Box<dyn Error>> {
    let iotask = IoTask::spawn()?;
    let socket = UdpSocket::bind(addr, &iotask).map_err(|e| format!("cannot bind {addr}: {e}"))?;
    println!("listening on {}", socket.local_addr()?);
    std::io::stdout().flush()?;
    let actor = std::thread::Builder::new()
        .name("echo-actor".into())
        .spawn(move || serve(socket))?;
    let tally = actor.join().map_err(|_| "the echo actor panicked")??;
    eprintln!(
        "udp_echo: {} datagrams echoed, {} echoes failed",
        tally.echoed, tally.failed
    );
    Ok(())
}
