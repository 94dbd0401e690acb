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
//! For each chunk a client sends, the actor parses every complete command buffered so far
//! (clients pipeline: redis-benchmark `-P 16` sends sixteen commands at once), runs them,
//! and sends all their replies in one write future, which it does not wait for. A partial
//! command stays in the connection's buffer until the rest arrives.
//!
//! Supported: `PING [msg]`, `ECHO`, `SET key value [EX s | PX ms] [NX | XX]`, `GET`,
//! `DEL`, `EXISTS`, `INCR`, `MGET`, `MSET`, `DBSIZE`, `FLUSHALL`, `FLUSHDB`, `CONFIG GET`,
//! `COMMAND` (an empty table) and `QUIT`, as arrays of bulk strings or inline commands.
//! Keys expire lazily when touched, and a sweep removes the rest a few times a second.
//!
//! Limits: a command's input is bounded (512 MiB per bulk string, 64 KiB per line); its
//! output by the listener's write window (1 MiB by default): a client that sends commands
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

use store::{After, Store};

/// How often the actor removes expired keys nobody touched.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);
/// A connection's input buffer is shrunk back when it holds less than this but has grown
/// far beyond it, so that one large value does not pin its memory for good.
const BUFFER_KEEP: usize = 64 * 1024;

fn main() -> Result<(), Box<dyn Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:6380".to_owned());
    let server = start(&addr, &iotask::global())?;
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
    actor_server::start(addr, iotask, "kv-store", store_actor)
}

/// One client: its socket and the bytes of a command not complete yet.
struct Connection {
    sock: TcpSocket,
    input: Vec<u8>,
}

/// The store actor: owns the data and every client, until told to stop.
fn store_actor(mut mailbox: Mailbox<Message>) {
    let mut store = Store::new();
    let mut clients: HashMap<SocketId, Connection> = HashMap::new();
    let mut next_sweep = Instant::now() + SWEEP_INTERVAL;
    loop {
        let until_sweep = next_sweep.saturating_duration_since(Instant::now());
        match mailbox.recv_timeout(until_sweep) {
            Some(Event::Accepted(sock)) => welcome(&mut clients, sock),
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
fn welcome(clients: &mut HashMap<SocketId, Connection>, sock: TcpSocket) {
    let input = Vec::new();
    clients.insert(sock.id(), Connection { sock, input });
}

impl Connection {
    /// Runs every complete command buffered after `data` arrived and writes their replies
    /// in one go. Returns `After::Close` after `QUIT` or a protocol error.
    fn serve(&mut self, data: Vec<u8>, store: &mut Store) -> After {
        if self.input.is_empty() {
            self.input = data;
        } else {
            self.input.extend_from_slice(&data);
        }
        let mut replies = Vec::new();
        let mut used = 0;
        let mut after = After::KeepOpen;
        while after == After::KeepOpen {
            match resp::parse_command(&self.input[used..]) {
                Ok(Some(command)) => {
                    used += command.len;
                    if !command.args.is_empty() {
                        after = store.execute(&command.args, &mut replies);
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
        self.input.drain(..used);
        if self.input.capacity() > 4 * BUFFER_KEEP && self.input.len() < BUFFER_KEEP {
            self.input.shrink_to(BUFFER_KEEP);
        }
        if !replies.is_empty() {
            // The write happens in order with this client's earlier ones; the actor does not
            // wait for it, so a slow client delays nobody else.
            drop(self.sock.write_future(replies));
        }
        after
    }
}
