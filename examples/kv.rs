//! A key-value server that speaks the Redis protocol (RESP2), served by one actor thread.
//!
//! ```sh
//! cargo run --release --example kv -- 127.0.0.1:6380
//! redis-cli -p 6380 SET greeting hello
//! redis-cli -p 6380 GET greeting
//! redis-benchmark -p 6380 -t ping,set,get -n 100000 -c 50 -P 16 -q
//! ```
//!
//! The first argument is the address to listen on (default `127.0.0.1:6380`; give
//! `127.0.0.1:0` for any free port). The server prints the address it bound
//! (`listening on 127.0.0.1:6380`) and serves until killed.
//!
//! # Design
//!
//! The I/O task accepts each connection and hands it straight to the store actor's
//! [`Mailbox`] (`tcp::listen_into`), already attached, so the reads of every client arrive
//! on that one queue, tagged with their socket. The actor owns the data and every client
//! socket. Nothing is shared, so nothing is locked, and commands run one at a time, in
//! arrival order, as in Redis.
//!
//! Each connection has a [`resp::Parser`] that keeps its place between chunks: it takes
//! each chunk a client sends once, moving the arguments it completes out of the input, and
//! yields every command whose last byte has arrived (clients pipeline: redis-benchmark
//! `-P 16` sends sixteen commands at once). The actor runs them and sends all their replies
//! in one write future, which it does not wait for. So a command costs time in proportion to
//! its size however finely it is split, and a client streaming a huge one in small pieces
//! holds the actor for a moment per piece, not for a re-parse of everything so far.
//!
//! Supported: `PING [msg]`, `ECHO`, `SET key value [EX s | PX ms] [NX | XX]`, `GET`,
//! `DEL`, `EXISTS`, `INCR`, `MGET`, `MSET`, `DBSIZE`, `FLUSHALL`, `FLUSHDB`, `CONFIG GET`,
//! `COMMAND` (an empty table) and `QUIT`, as arrays of bulk strings or inline commands.
//! Keys expire lazily when touched, and a sweep removes the rest a few times a second.
//!
//! Limits, Redis's by default ([`resp::Limits`]): a bulk string of at most 512 MiB
//! (`--proto-max-bulk-len BYTES`), at most 1,048,576 arguments, lines (inline commands and
//! `*`/`$` headers) of at most 64 KiB, and at most 1 GiB of arguments in one command
//! (`--client-query-buffer-limit BYTES`). That last default is Redis's too: the query limit
//! has to leave room for one bulk string of the largest allowed length, or that length
//! could never be sent; lower both on a small machine. A client that crosses a limit or
//! breaks the protocol gets redis-server's error (`-ERR Protocol error: invalid bulk
//! length`, …) and is disconnected; the others are not affected. A command's output is
//! bounded by the listener's write window (1 MiB by default): a client that sends commands
//! but never reads the replies stops being read until it does.

#[path = "support/actor_server.rs"]
mod actor_server;
#[path = "kv/resp.rs"]
pub mod resp;
#[path = "kv/store.rs"]
pub mod store;

use std::collections::HashMap;
use std::error::Error;
use std::io::{self, Write};
use std::time::{Duration, Instant};

use iotask::tcp::TcpSocket;
use iotask::{Event, IoTask, Mailbox, SocketId};

pub use actor_server::{Message, Server};

use resp::{Limits, Parser};
use store::{After, Store};

/// Input bytes the actor's mailbox holds before every client stops being read until it
/// catches up. A client's command waits behind at most about this much of the others'
/// input, so it bounds how long one client streaming a huge command can delay the rest:
/// at the parser's slowest (one-byte arguments) 256 KiB take a few milliseconds. The
/// library's default, 4 MiB, let a PING wait 57 ms behind a 1,048,576-argument command.
const MAILBOX_WINDOW: usize = 256 * 1024;
/// How often the actor removes expired keys nobody touched.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let mut addr = "127.0.0.1:6380".to_owned();
    let mut limits = Limits::default();
    while let Some(arg) = args.next() {
        let mut value = || -> Result<usize, Box<dyn Error>> {
            let value = args.next().ok_or(format!("{arg} needs a value"))?;
            Ok(value.parse().map_err(|e| format!("{arg} {value}: {e}"))?)
        };
        match arg.as_str() {
            "--proto-max-bulk-len" => limits.max_bulk_len = value()?,
            "--client-query-buffer-limit" => limits.max_query = value()?,
            _ if arg.starts_with("--") => return Err(format!("unknown option {arg}").into()),
            _ => addr = arg,
        }
    }
    let server = start_with(&addr, &iotask::global(), limits)?;
    println!("listening on {}", server.local_addr());
    io::stdout().flush()?;
    server.wait()?;
    Ok(())
}

/// Starts a key-value server on `addr`, served by `iotask`; returns once the port is bound.
///
/// # Errors
///
/// The bind or listen error (`AddrInUse`, …), or a failure to spawn a thread.
pub fn start(addr: &str, iotask: &IoTask) -> io::Result<Server> {
    start_with(addr, iotask, Limits::default())
}

/// [`start`] with the limits every client's commands must keep.
///
/// # Errors
///
/// As [`start`].
pub fn start_with(addr: &str, iotask: &IoTask, limits: Limits) -> io::Result<Server> {
    let mailbox = Mailbox::with_window(MAILBOX_WINDOW);
    actor_server::start(addr, iotask, "kv-store", mailbox, move |mailbox| {
        store_actor(mailbox, limits)
    })
}

/// One client: its socket and where its parser stands in the command in progress.
struct Connection {
    sock: TcpSocket,
    parser: Parser,
}

/// The store actor: owns the data and every client, until told to stop.
fn store_actor(mut mailbox: Mailbox<Message>, limits: Limits) {
    let mut store = Store::new();
    let mut clients: HashMap<SocketId, Connection> = HashMap::new();
    let mut next_sweep = Instant::now() + SWEEP_INTERVAL;
    loop {
        let until_sweep = next_sweep.saturating_duration_since(Instant::now());
        match mailbox.recv_timeout(until_sweep) {
            Some(Event::Accepted(sock)) => welcome(&mut clients, sock, limits),
            Some(Event::Data { socket, data }) => {
                if let Some(client) = clients.get_mut(&socket) {
                    if client.serve(data, &mut store) == After::Close {
                        // Dropping the socket writes the last replies, then closes it.
                        clients.remove(&socket);
                    }
                }
            }
            Some(Event::Closed { socket, .. }) => {
                clients.remove(&socket);
            }
            Some(Event::Message(Message::Stop)) => return,
            Some(_) | None => {}
        }
        let now = Instant::now();
        if now >= next_sweep {
            let done = store.sweep(now);
            // More keys are due: sweep again right after the next event.
            next_sweep = if done { now + SWEEP_INTERVAL } else { now };
        }
    }
}

/// Starts serving a new client, whose reads already come to the actor's mailbox.
fn welcome(clients: &mut HashMap<SocketId, Connection>, sock: TcpSocket, limits: Limits) {
    let parser = Parser::new(limits);
    clients.insert(sock.id(), Connection { sock, parser });
}

impl Connection {
    /// Runs every command `data` completes and writes their replies in one go. Returns
    /// `After::Close` after `QUIT` or a protocol error.
    fn serve(&mut self, data: Vec<u8>, store: &mut Store) -> After {
        let mut input = data.as_slice();
        let mut replies = Vec::new();
        let mut after = After::KeepOpen;
        while after == After::KeepOpen {
            match self.parser.parse(&mut input) {
                Ok(Some(args)) => {
                    if !args.is_empty() {
                        after = store.execute(&args, &mut replies);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    // Where the next command starts is unknown: answer, then hang up, as
                    // Redis does.
                    resp::error_reply(&mut replies, &format!("ERR Protocol error: {e}"));
                    after = After::Close;
                }
            }
        }
        if !replies.is_empty() {
            // The write happens in order with this client's earlier ones; the actor does not
            // wait for it, so a slow client delays nobody else.
            drop(self.sock.write_future(replies));
        }
        after
    }
}
