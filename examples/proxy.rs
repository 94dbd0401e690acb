//! A TCP and Unix-domain proxy: one actor thread owns both sides of every connection.
//!
//! ```sh
//! cargo run --release --example http -- 127.0.0.1:8080
//! cargo run --release --example proxy -- 127.0.0.1:8000 127.0.0.1:8080
//! curl http://127.0.0.1:8000/hello
//!
//! cargo run --release --example proxy -- unix:/tmp/proxy.sock 127.0.0.1:8080 --idle 30
//! curl --unix-socket /tmp/proxy.sock http://localhost/hello
//! ```
//!
//! `proxy LISTEN UPSTREAM [--idle SECONDS]`: both addresses are `HOST:PORT` or `unix:PATH`
//! (`unix:@NAME` for a Linux abstract name), in any combination. The proxy prints the
//! address it bound (`listening on 127.0.0.1:8000`), then for each client it accepts opens
//! a connection to UPSTREAM and copies bytes both ways until both are done. A connection on
//! which neither side sent anything for `--idle` seconds (default 60) is closed.
//!
//! # What it promises
//!
//! - **Bounded memory, whatever the two sides' speeds.** Each socket's write queue has
//!   watermarks ([`HIGH_WATER`], [`LOW_WATER`]). When the bytes queued for one side pass
//!   the high mark, the other side is detached: its bytes wait in the kernel, and TCP's
//!   flow control slows its sender. When the queue falls to the low mark the mailbox gets
//!   `Event::Drained`, and the other side is attached again.
//! - **Half-closes are passed on.** When one side ends its sending (EOF), the other side's
//!   writing half is shut down once every byte queued for it went out
//!   (`shutdown_write_future`, which does not wait); the other direction keeps flowing
//!   until it ends too (`socat -t 5`, `shutdown(SHUT_WR)` clients).
//! - **Resets are passed on.** When one side fails (a reset, or any other read error), the
//!   other is reset at once (`abort`), so neither peer mistakes a failure for a clean end.
//!   A client whose upstream cannot be reached is reset too.
//! - **Idle connections close**, gracefully (what is queued is still written).
//!
//! # Design
//!
//! The listener hands each client to the actor's [`Mailbox`], already attached. The actor
//! detaches it at once, starts the upstream connect with `connect_into` (which does not
//! block: the outcome comes to the same mailbox as `Event::Connected`), and attaches the
//! client again once the upstream is there, so nothing is read that has nowhere to go (bytes
//! read before the detach took effect are kept and sent first). Thereafter every `Data`
//! event is written to the other side with `write_future`, never waited on: one slow
//! peer delays nobody else.
//!
//! The actor is written once for every combination of families: `F` is the listener's,
//! `U: Connect` the upstream's (a small trait of this file, implemented for TCP and
//! Unix-domain sockets).

#[path = "support/actor_server.rs"]
mod actor_server;
#[path = "support/listen_addr.rs"]
mod listen_addr;

use std::collections::HashMap;
use std::error::Error;
use std::io::{self, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use iotask::server::{ListenOptions, Listener};
use iotask::stream::{Family, Stream};
use iotask::tcp::{self, Tcp};
use iotask::unix::{self, Unix};
use iotask::{ConnectError, Event, IoTask, Mailbox, SocketId};

pub use actor_server::{Message, Server};

use listen_addr::{Bound, ListenAddr};

/// Above this many bytes queued for one side, the other side is no longer read.
///
/// 1 MiB keeps a fast link busy (at 10 Gbit/s it is about a millisecond of data, several
/// round trips on a LAN) while bounding a connection's memory to a few MiB: this mark in
/// each direction, plus what was already in the mailbox when the reading stopped (the
/// mailbox's window, 4 MiB, shared by every connection).
pub const HIGH_WATER: usize = 1 << 20;

/// Once no more than this many bytes are queued, the other side is read again.
///
/// A quarter of [`HIGH_WATER`]: far enough below it that a reader is not detached and
/// attached again for every chunk, near enough that the kernel's buffers never run dry
/// while the reading resumes.
pub const LOW_WATER: usize = 256 << 10;

/// How the proxy treats its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// A connection on which neither side sent anything for this long is closed.
    pub idle: Duration,
}

impl Default for Config {
    /// An idle limit of 60 s.
    fn default() -> Config {
        Config {
            idle: Duration::from_secs(60),
        }
    }
}

/// The listen options of the proxy: those of the other actor servers, without a write
/// window. The window stops reading a client while its *own* replies queue up, which suits
/// a request/response server; here it would stop one direction for the other's sake, and
/// the watermarks bound the queues instead.
pub fn listen_options() -> ListenOptions {
    actor_server::listen_options().write_window(None)
}

/// A socket family the proxy connects upstream with: [`Tcp`] or [`Unix`].
pub trait Connect: Family {
    /// Where to connect: resolved already, as an actor must not block on a name lookup.
    type Target: Clone + Send + 'static;

    /// Starts connecting to `target`; `mailbox` hears the outcome.
    ///
    /// # Errors
    ///
    /// `"SHUTDOWN"` when the I/O task stopped; everything else comes through the event.
    fn connect_into(
        target: &Self::Target,
        iotask: &IoTask,
        mailbox: &Mailbox<Message>,
    ) -> Result<SocketId, iotask::Error>;
}

impl Connect for Tcp {
    type Target = Vec<SocketAddr>;

    fn connect_into(
        target: &Vec<SocketAddr>,
        iotask: &IoTask,
        mailbox: &Mailbox<Message>,
    ) -> Result<SocketId, iotask::Error> {
        tcp::connect_into(target.as_slice(), iotask, mailbox)
    }
}

impl Connect for Unix {
    type Target = unix::SocketAddr;

    fn connect_into(
        target: &unix::SocketAddr,
        iotask: &IoTask,
        mailbox: &Mailbox<Message>,
    ) -> Result<SocketId, iotask::Error> {
        unix::connect_into(target, iotask, mailbox)
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    const USAGE: &str = "usage: proxy LISTEN UPSTREAM [--idle SECONDS]";
    let mut args = std::env::args().skip(1);
    let mut addrs = Vec::new();
    let mut config = Config::default();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--idle" => {
                let value = args.next().ok_or("--idle needs a value")?;
                let seconds: f64 = value.trim_end_matches('s').parse()?;
                config.idle = Duration::try_from_secs_f64(seconds)?;
            }
            _ if arg.starts_with("--") => return Err(format!("unknown option {arg}").into()),
            _ => addrs.push(arg.parse::<ListenAddr>()?),
        }
    }
    let [listen, upstream] = <[ListenAddr; 2]>::try_from(addrs).map_err(|_| USAGE)?;
    let iotask = iotask::global();
    let listener = listen
        .bind(&listen_options(), &iotask)
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    println!("listening on {listener}");
    io::stdout().flush()?;
    let server = match (listener, upstream) {
        (Bound::Tcp(l), ListenAddr::Tcp(to)) => {
            start::<_, Tcp>(l, resolve(&to)?, config, &iotask)?.wait()
        }
        (Bound::Tcp(l), ListenAddr::Unix(to)) => start::<_, Unix>(l, to, config, &iotask)?.wait(),
        (Bound::Unix(l), ListenAddr::Tcp(to)) => {
            start::<_, Tcp>(l, resolve(&to)?, config, &iotask)?.wait()
        }
        (Bound::Unix(l), ListenAddr::Unix(to)) => start::<_, Unix>(l, to, config, &iotask)?.wait(),
    };
    Ok(server?)
}

/// Resolves `HOST:PORT` once, at start, so the actor never waits for a name lookup.
///
/// # Errors
///
/// The lookup's error, or `NotFound` when the name has no address.
pub fn resolve(addr: &str) -> io::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{addr} has no address"),
        ));
    }
    Ok(addrs)
}

/// Starts proxying the clients of `listener` (bound with [`listen_options`], of family
/// `F`) to `upstream` (of family `U`), connecting from `iotask`.
///
/// # Errors
///
/// `SHUTDOWN` when the listener's I/O task stopped, or a failure to spawn a thread.
pub fn start<F: Family, U: Connect>(
    listener: Listener<F>,
    upstream: U::Target,
    config: Config,
    iotask: &IoTask,
) -> io::Result<Server<F>> {
    let iotask = iotask.clone();
    actor_server::start(listener, "proxy-actor", Mailbox::new(), move |mailbox| {
        let proxy = Proxy::<F, U>::new(upstream, iotask, config);
        proxy.run(mailbox);
    })
}

/// How one side's reads stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// Attached: its reads come to the mailbox.
    Flowing,
    /// Detached, its bytes waiting in the kernel: the other side has no upstream yet, or
    /// more than [`HIGH_WATER`] bytes queued.
    Paused,
    /// It sent EOF or failed; its `Closed` event came.
    Ended,
}

/// One end of a proxied connection.
struct Side<F: Family> {
    sock: Stream<F>,
    reading: Reading,
}

impl<F: Family> Side<F> {
    fn new(sock: Stream<F>, reading: Reading) -> Side<F> {
        // Cannot fail: the low mark is below the high one.
        let _ = sock.set_watermarks(HIGH_WATER, LOW_WATER);
        Side { sock, reading }
    }

    fn pause(&mut self) {
        if self.reading == Reading::Flowing {
            // Chunks already in the mailbox still come; nothing more is read.
            let _ = self.sock.detach();
            self.reading = Reading::Paused;
        }
    }

    fn resume(&mut self, mailbox: &Mailbox<Message>) {
        if self.reading == Reading::Paused {
            let _ = self.sock.attach(mailbox);
            self.reading = Reading::Flowing;
        }
    }

    /// Passes a half-close on: the writing half is shut down once every byte queued for
    /// this side went out, without waiting here. It fails only when the peer is gone, which
    /// its `Closed` event tells.
    fn shut_writing(&self) {
        drop(self.sock.shutdown_write_future());
    }
}

/// Writes `data`, read from `from`, to `to`; stops reading `from` if `to` is flooded.
fn forward<A: Family, B: Family>(data: Vec<u8>, from: &mut Side<A>, to: &Side<B>) {
    drop(to.sock.write_future(data));
    if to.sock.queued_bytes() > HIGH_WATER {
        from.pause();
    }
}

/// `from` can be read again if `to`'s queue is down to the low mark.
fn resume_if_drained<A: Family, B: Family>(
    from: &mut Side<A>,
    to: &Side<B>,
    mailbox: &Mailbox<Message>,
) {
    if to.sock.queued_bytes() <= LOW_WATER {
        from.resume(mailbox);
    }
}

/// A client and its upstream connection.
struct Pair<F: Family, U: Family> {
    client: Side<F>,
    /// The upstream socket's id, known as soon as its connect starts.
    upstream_id: SocketId,
    /// `None` until the connect succeeded.
    upstream: Option<Side<U>>,
    /// What the client sent before the upstream was connected (at most what was read
    /// before its detach took effect).
    early: Vec<Vec<u8>>,
    /// When either side last sent something, or a queue drained.
    last_active: Instant,
}

impl<F: Family, U: Family> Pair<F, U> {
    fn ended(&self) -> bool {
        self.client.reading == Reading::Ended
            && self
                .upstream
                .as_ref()
                .is_some_and(|up| up.reading == Reading::Ended)
    }
}

/// Which side of a pair a socket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Client,
    Upstream,
}

/// The actor's state: every pair, keyed by its client's id.
struct Proxy<F: Family, U: Connect> {
    pairs: HashMap<SocketId, Pair<F, U>>,
    /// The client id of each upstream socket (connecting or connected).
    upstreams: HashMap<SocketId, SocketId>,
    target: U::Target,
    iotask: IoTask,
    config: Config,
}

impl<F: Family, U: Connect> Proxy<F, U> {
    fn new(target: U::Target, iotask: IoTask, config: Config) -> Proxy<F, U> {
        Proxy {
            pairs: HashMap::new(),
            upstreams: HashMap::new(),
            target,
            iotask,
            config,
        }
    }

    /// Serves until told to stop; then every connection is closed.
    fn run(mut self, mut mailbox: Mailbox<Message>) {
        // The idle limit is noticed at most a quarter of it late.
        let sweep_interval =
            (self.config.idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut next_sweep = Instant::now() + sweep_interval;
        loop {
            let wait = next_sweep.saturating_duration_since(Instant::now());
            // `into_accepted` takes a new client out of the event, `into_connected` the
            // outcome of an upstream connect.
            match mailbox.recv_timeout(wait).map(Event::into_accepted::<F>) {
                Some(Ok(client)) => self.accept(client, &mailbox),
                Some(Err(Event::Message(Message::Stop))) => return,
                Some(Err(event)) => match event.into_connected::<U>() {
                    Ok((socket, result)) => self.connected(socket, result, &mailbox),
                    Err(Event::Data { socket, data }) => self.data(socket, data),
                    Err(Event::Closed { socket, error }) => self.closed(socket, &error),
                    Err(Event::Drained { socket }) => self.drained(socket, &mailbox),
                    Err(_) => {}
                },
                None => {}
            }
            let now = Instant::now();
            if now >= next_sweep {
                self.sweep(now, &mailbox);
                next_sweep = now + sweep_interval;
            }
        }
    }

    fn accept(&mut self, client: Stream<F>, mailbox: &Mailbox<Message>) {
        let id = client.id();
        // Nothing more is read from the client until there is somewhere to send it.
        let _ = client.detach();
        let upstream = match U::connect_into(&self.target, &self.iotask, mailbox) {
            Ok(upstream) => upstream,
            // The I/O task stopped; the listener stops with it.
            Err(_) => return,
        };
        self.upstreams.insert(upstream, id);
        let pair = Pair {
            client: Side::new(client, Reading::Paused),
            upstream_id: upstream,
            upstream: None,
            early: Vec::new(),
            last_active: Instant::now(),
        };
        self.pairs.insert(id, pair);
    }

    fn connected(
        &mut self,
        socket: SocketId,
        result: Result<Stream<U>, ConnectError>,
        mailbox: &Mailbox<Message>,
    ) {
        let Some(&id) = self.upstreams.get(&socket) else {
            // Its client is gone already: a connected socket closes when dropped.
            return;
        };
        let pair = self.pairs.get_mut(&id).expect("every upstream has a pair");
        let upstream = match result {
            Ok(upstream) => pair.upstream.insert(Side::new(upstream, Reading::Flowing)),
            Err(e) => {
                eprintln!("proxy: {id}: cannot connect upstream: {e}");
                let _ = pair.client.sock.abort();
                self.remove(id);
                return;
            }
        };
        pair.last_active = Instant::now();
        for data in pair.early.drain(..) {
            drop(upstream.sock.write_future(data));
        }
        if pair.client.reading == Reading::Ended {
            // The client sent EOF before the upstream was there.
            upstream.shut_writing();
        } else {
            resume_if_drained(&mut pair.client, upstream, mailbox);
        }
    }

    /// The pair a socket belongs to, its key, and the socket's role in it.
    fn find(&mut self, socket: SocketId) -> Option<(SocketId, Role, &mut Pair<F, U>)> {
        let (id, role) = match self.upstreams.get(&socket) {
            Some(&id) => (id, Role::Upstream),
            None => (socket, Role::Client),
        };
        self.pairs.get_mut(&id).map(|pair| (id, role, pair))
    }

    fn data(&mut self, socket: SocketId, data: Vec<u8>) {
        let Some((_, role, pair)) = self.find(socket) else {
            return;
        };
        pair.last_active = Instant::now();
        match (role, &mut pair.upstream) {
            (Role::Client, Some(upstream)) => forward(data, &mut pair.client, upstream),
            // Read before the client's detach took effect.
            (Role::Client, None) => pair.early.push(data),
            (Role::Upstream, Some(upstream)) => forward(data, upstream, &pair.client),
            (Role::Upstream, None) => unreachable!("an upstream's data follows its connect"),
        }
    }

    fn closed(&mut self, socket: SocketId, error: &iotask::Error) {
        let Some((id, role, pair)) = self.find(socket) else {
            return;
        };
        if !error.is_eof() {
            // A reset (or any failure) is passed on as a reset.
            let _ = pair.client.sock.abort();
            if let Some(upstream) = &pair.upstream {
                let _ = upstream.sock.abort();
            }
            self.remove(id);
            return;
        }
        // A clean end: the other side's writing half is shut down after what is queued.
        match (role, &mut pair.upstream) {
            (Role::Client, upstream) => {
                pair.client.reading = Reading::Ended;
                if let Some(upstream) = upstream {
                    upstream.shut_writing();
                }
            }
            (Role::Upstream, Some(upstream)) => {
                upstream.reading = Reading::Ended;
                pair.client.shut_writing();
            }
            (Role::Upstream, None) => unreachable!("an upstream's end follows its connect"),
        }
        if pair.ended() {
            // Both sides are done: dropping the sockets writes what is still queued, then
            // closes them.
            self.remove(id);
        }
    }

    fn drained(&mut self, socket: SocketId, mailbox: &Mailbox<Message>) {
        let Some((_, role, pair)) = self.find(socket) else {
            return;
        };
        pair.last_active = Instant::now();
        let Some(upstream) = &mut pair.upstream else {
            return;
        };
        match role {
            Role::Client => resume_if_drained(upstream, &pair.client, mailbox),
            Role::Upstream => resume_if_drained(&mut pair.client, upstream, mailbox),
        }
    }

    /// Closes idle pairs. (It also resumes a side whose peer's queue is down to the low
    /// mark: a cheap guard, as the library marks the high mark on the writer's side and
    /// cannot miss a `Drained`.)
    fn sweep(&mut self, now: Instant, mailbox: &Mailbox<Message>) {
        let idle = self.config.idle;
        let mut expired = Vec::new();
        for (&id, pair) in &mut self.pairs {
            if now.duration_since(pair.last_active) >= idle {
                expired.push(id);
            } else if let Some(upstream) = &mut pair.upstream {
                resume_if_drained(&mut pair.client, upstream, mailbox);
                resume_if_drained(upstream, &pair.client, mailbox);
            }
        }
        for id in expired {
            // Closed gracefully: what is queued is still written.
            self.remove(id);
        }
    }

    fn remove(&mut self, id: SocketId) {
        if let Some(pair) = self.pairs.remove(&id) {
            self.upstreams.remove(&pair.upstream_id);
        }
    }
}
