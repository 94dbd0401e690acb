//! A key-value server that speaks the Redis protocol (RESP2), served by one actor thread.
//!
//! ```sh
//! cargo run --release --example kv -- 127.0.0.1:6380
//! redis-cli -p 6380 SET greeting hello
//! redis-cli -p 6380 GET greeting
//! redis-benchmark -p 6380 -t ping,set,get -n 100000 -c 50 -P 16 -q
//!
//! cargo run --release --example kv -- unix:/tmp/kv.sock
//! redis-cli -s /tmp/kv.sock SET greeting hello
//! redis-benchmark -s /tmp/kv.sock -t ping,set,get -n 100000 -c 50 -P 16 -q
//! ```
//!
//! The first argument is the address to listen on: `HOST:PORT` (default `127.0.0.1:6380`;
//! give `127.0.0.1:0` for any free port) or `unix:PATH` for a Unix-domain socket. The
//! server prints the address it bound (`listening on 127.0.0.1:6380`,
//! `listening on unix:/tmp/kv.sock`) and serves until killed.
//!
//! # Design
//!
//! The I/O task accepts each connection and hands it straight to the store actor's
//! [`Mailbox`] (`Listener::into_mailbox`), already attached, so the reads of every client
//! arrive on that one queue, tagged with their socket. The actor owns the data and every
//! client socket. Nothing is shared, so nothing is locked, and commands run one at a time,
//! in arrival order, as in Redis. It is written once for every socket family
//! (`F: Family`), so TCP and Unix-domain clients run the same code.
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
#[path = "support/listen_addr.rs"]
mod listen_addr;
#[path = "kv/resp.rs"]
pub mod resp;
#[path = "kv/store.rs"]
pub mod store;

use std::collections::HashMap;
use std::error::Error;
use std::io::{self, Write};
use std::time::{Duration, Instant};

use iotask::server::Listener;
use iotask::stream::{Family, Stream};
use iotask::{Event, Mailbox, SocketId};

pub use actor_server::{Message, Server, listen_options};

use listen_addr::{Bound, ListenAddr};

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
    let mut addr: ListenAddr = "127.0.0.1:6380".parse()?;
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
            _ => addr = arg.parse()?,
        }
    }
    let listener = addr
        .bind(&listen_options(), &iotask::global())
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    println!("listening on {listener}");
    io::stdout().flush()?;
    match listener {
        Bound::Tcp(listener) => start_with(listener, limits)?.wait()?,
        Bound::Unix(listener) => start_with(listener, limits)?.wait()?,
    }
    Ok(())
}

/// Starts a key-value server on `listener` (bound with [`listen_options`], of either
/// family).
///
/// # Errors
///
/// `SHUTDOWN` when the listener's I/O task stopped, or a failure to spawn a thread.
pub fn start<F: Family>(listener: Listener<F>) -> io::Result<Server<F>> {
    start_with(listener, Limits::default())
}

/// [`start`] with the limits every client's commands must keep.
///
/// # Errors
///
/// As [`start`].
pub fn start_with<F: Family>(listener: Listener<F>, limits: Limits) -> io::Result<Server<F>> {
    let mailbox = Mailbox::with_window(MAILBOX_WINDOW);
    actor_server::start(listener, "kv-store", mailbox, move |mailbox| {
        store_actor::<F>(mailbox, limits)
    })
}

/// One client: its socket and where its parser stands in the command in progress.
struct Connection<F: Family> {
    sock: Stream<F>,
    parser: Parser,
}

/// The store actor: owns the data and every client of family `F`, until told to stop.
fn store_actor<F: Family>(mut mailbox: Mailbox<Message>, limits: Limits) {
    let mut store = Store::new();
    let mut clients: HashMap<SocketId, Connection<F>> = HashMap::new();
    let mut next_sweep = Instant::now() + SWEEP_INTERVAL;
    loop {
        let until_sweep = next_sweep.saturating_duration_since(Instant::now());
        // `into_accepted` takes a new connection of the actor's family out of the event.
        let event = mailbox.recv_timeout(until_sweep);
        match event.map(Event::into_accepted::<F>) {
            Some(Ok(sock)) => welcome(&mut clients, sock, limits),
            Some(Err(Event::Data { socket, data })) => {
                if let Some(client) = clients.get_mut(&socket) {
                    if client.serve(data, &mut store) == After::Close {
                        // Dropping the socket writes the last replies, then closes it.
                        clients.remove(&socket);
                    }
                }
            }
            Some(Err(Event::Closed { socket, .. })) => {
                clients.remove(&socket);
            }
            Some(Err(Event::Message(Message::Stop))) => return,
            Some(Err(_)) | None => {}
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
fn welcome<F: Family>(
    clients: &mut HashMap<SocketId, Connection<F>>,
    sock: Stream<F>,
    limits: Limits,
) {
    let parser = Parser::new(limits);
    clients.insert(sock.id(), Connection { sock, parser });
}

impl<F: Family> Connection<F> {
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
