//! The demo: the actor echo server (examples/echo_actor.rs) driven for a few seconds by many
//! client connections, all owned by one client actor.
//!
//! ```sh
//! cargo run --release --example demo
//! cargo run --release --example demo -- --connections 50 --seconds 3
//! cargo run --release --example demo -- --server 127.0.0.1:7000   # drive another server
//! ```
//!
//! Each connection sends a 64-byte message, waits for its echo, checks it byte for byte and
//! sends the next. At the end the demo prints how many messages went round and the median
//! and 99th-percentile round trip. It exits with status 1 if an echo differs from what was
//! sent or a connection fails.

/// The echo server the demo drives: examples/echo_actor.rs, included as a module.
#[path = "echo_actor.rs"]
#[allow(dead_code)]
pub mod echo_actor;

use std::collections::HashMap;
use std::error::Error;
use std::fmt;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use iotask::tcp::{self, ListenOptions, TcpSocket};
use iotask::{Event, IoTask, Mailbox};

/// Bytes in each message.
pub const MESSAGE_LEN: usize = 64;

/// How often the progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// How long the clients wait for any echo before they call the run failed.
const STALL_LIMIT: Duration = Duration::from_secs(5);

const USAGE: &str = "usage: demo [--connections N] [--seconds S] [--server ADDR]";

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Client connections, each with one message in flight at a time.
    pub connections: usize,
    /// How long the clients keep sending.
    pub duration: Duration,
    /// The echo server to drive; `None` starts the actor echo server in this process.
    pub server: Option<SocketAddr>,
    /// Whether to draw a progress line on stderr.
    pub progress: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            connections: 50,
            duration: Duration::from_secs(3),
            server: None,
            progress: true,
        }
    }
}

/// What a run did. Every message counted here came back intact.
#[derive(Debug, Clone)]
pub struct Report {
    /// The server that was driven.
    pub server: SocketAddr,
    /// Client connections.
    pub connections: usize,
    /// Messages sent and echoed back intact.
    pub messages: u64,
    /// From the first message sent to the last echo received.
    pub elapsed: Duration,
    /// Median round trip.
    pub p50: Duration,
    /// 99th-percentile round trip.
    pub p99: Duration,
}

impl Report {
    /// Messages per second.
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "server       {}", self.server)?;
        writeln!(f, "connections  {}", self.connections)?;
        writeln!(
            f,
            "messages     {} of {MESSAGE_LEN} bytes in {:.2} s, every echo verified",
            self.messages,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(f, "rate         {:.0} messages/s", self.rate())?;
        write!(
            f,
            "round trip   p50 {} µs, p99 {} µs",
            self.p50.as_micros(),
            self.p99.as_micros()
        )
    }
}

/// Runs the demo: starts the echo server unless `config.server` names one, then drives it.
///
/// # Errors
///
/// When the server cannot start, a connection fails or closes early, an echo differs from
/// the message sent, or no echo comes for five seconds.
pub fn run(config: &Config) -> Result<Report, Box<dyn Error>> {
    if config.connections == 0 {
        return Err("at least one connection is needed".into());
    }
    match config.server {
        Some(addr) => drive(addr, config),
        None => with_echo_server(|addr| drive(addr, config))?,
    }
}

/// Runs the actor echo server on a free loopback port, on its own I/O task, while `f` runs.
fn with_echo_server<T>(f: impl FnOnce(SocketAddr) -> T) -> Result<T, Box<dyn Error>> {
    let iotask = IoTask::spawn()?;
    let listener = tcp::bind("127.0.0.1:0", &ListenOptions::new(), &iotask)?;
    let (bound_tx, bound) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        echo_actor::serve(listener, move |kill| {
            let _ = bound_tx.send(kill);
        })
    });
    let Ok(kill) = bound.recv_timeout(Duration::from_secs(5)) else {
        // The server stopped before it was bound; its error says why.
        return Err(match server.join() {
            Ok(Err(e)) => e.into(),
            _ => "the echo server did not start".into(),
        });
    };
    let result = f(kill.local_addr());
    let _ = kill.send(None);
    match server.join() {
        Ok(Ok(())) => Ok(result),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err("the echo server panicked".into()),
    }
}

/// One client connection with at most one message in flight.
struct Client {
    sock: TcpSocket,
    index: usize,
    seq: u64,
    sent: Vec<u8>,
    sent_at: Instant,
    echoed: Vec<u8>,
}

impl Client {
    fn send_next(&mut self) {
        self.seq += 1;
        self.sent = message(self.index, self.seq);
        self.echoed.clear();
        self.sent_at = Instant::now();
        // The outcome is not awaited: a failed write also ends the socket's reading, which
        // the mailbox reports as `Event::Closed`.
        drop(self.sock.write_future(self.sent.clone()));
    }

    /// Takes echoed bytes; returns the round trip once the whole message came back.
    fn receive(&mut self, data: &[u8]) -> Result<Option<Duration>, String> {
        self.echoed.extend_from_slice(data);
        if self.echoed.len() < MESSAGE_LEN {
            return Ok(None);
        }
        if self.echoed != self.sent {
            return Err(format!(
                "connection {}: echo differs from the message sent\n  sent: {:?}\n  got:  {:?}",
                self.index,
                String::from_utf8_lossy(&self.sent),
                String::from_utf8_lossy(&self.echoed)
            ));
        }
        Ok(Some(self.sent_at.elapsed()))
    }
}

/// A message that names its connection and sequence number, so a mixed-up echo shows.
fn message(index: usize, seq: u64) -> Vec<u8> {
    let mut m = format!("connection {index:05} message {seq:010} ").into_bytes();
    m.resize(MESSAGE_LEN - 1, b'.');
    m.push(b'\n');
    m
}

/// Drives the echo server at `addr` from one client actor owning every connection.
fn drive(addr: SocketAddr, config: &Config) -> Result<Report, Box<dyn Error>> {
    let iotask = IoTask::spawn()?;
    let mut mailbox: Mailbox = Mailbox::new();
    let mut clients = Vec::with_capacity(config.connections);
    let mut by_id = HashMap::new();
    for index in 0..config.connections {
        let sock = tcp::connect(addr, &iotask)?;
        sock.attach(&mailbox)?;
        by_id.insert(sock.id(), index);
        clients.push(Client {
            sock,
            index,
            seq: 0,
            sent: Vec::new(),
            sent_at: Instant::now(),
            echoed: Vec::new(),
        });
    }
    if config.progress {
        eprintln!(
            "driving {addr} with {} connections for {:.1} s…",
            config.connections,
            config.duration.as_secs_f64()
        );
    }

    let start = Instant::now();
    let stop_sending = start + config.duration;
    let mut round_trips = Vec::new();
    let mut in_flight = clients.len();
    let mut next_progress = start + PROGRESS_EVERY;
    let mut last_echo = start;
    clients.iter_mut().for_each(Client::send_next);

    while in_flight > 0 {
        let now = Instant::now();
        if now >= next_progress {
            if config.progress {
                draw_progress(now - start, round_trips.len());
            }
            next_progress = now + PROGRESS_EVERY;
        }
        if now.saturating_duration_since(last_echo) > STALL_LIMIT {
            return Err(format!("no echo for {STALL_LIMIT:?}; {in_flight} messages lost").into());
        }
        let Some(event) = mailbox.recv_timeout(next_progress.saturating_duration_since(now)) else {
            continue;
        };
        match event {
            Event::Data { socket, data } => {
                let client = &mut clients[by_id[&socket]];
                if let Some(round_trip) = client.receive(&data)? {
                    round_trips.push(round_trip);
                    last_echo = Instant::now();
                    if last_echo < stop_sending {
                        client.send_next();
                    } else {
                        in_flight -= 1;
                    }
                }
            }
            Event::Closed { socket, error } => {
                let index = by_id[&socket];
                return Err(format!("connection {index} closed early: {error}").into());
            }
            Event::Message(()) => {}
            _ => unreachable!("no listener feeds the clients' mailbox"),
        }
    }
    let elapsed = start.elapsed();
    if config.progress {
        eprint!("\r{:60}\r", "");
    }

    round_trips.sort_unstable();
    let percentile = |q: f64| round_trips[((round_trips.len() - 1) as f64 * q).round() as usize];
    Ok(Report {
        server: addr,
        connections: clients.len(),
        messages: round_trips.len() as u64,
        elapsed,
        p50: percentile(0.50),
        p99: percentile(0.99),
    })
}

fn draw_progress(elapsed: Duration, messages: usize) {
    let secs = elapsed.as_secs_f64();
    eprint!(
        "\r{secs:5.1} s  {messages:>9} messages  {:>9.0} messages/s",
        messages as f64 / secs
    );
    let _ = std::io::stderr().flush();
}

fn parse_args() -> Result<Config, String> {
    let mut config = Config::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--connections" => {
                config.connections = value()?
                    .parse()
                    .map_err(|e| format!("--connections: {e}"))?;
            }
            "--seconds" => {
                let secs: f64 = value()?.parse().map_err(|e| format!("--seconds: {e}"))?;
                config.duration =
                    Duration::try_from_secs_f64(secs).map_err(|e| format!("--seconds: {e}"))?;
            }
            "--server" => {
                config.server = Some(value()?.parse().map_err(|e| format!("--server: {e}"))?);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {arg:?}\n{USAGE}")),
        }
    }
    Ok(config)
}

fn main() {
    let config = match parse_args() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("demo: {e}");
            std::process::exit(2);
        }
    };
    match run(&config) {
        Ok(report) => println!("{report}"),
        Err(e) => {
            eprintln!("demo failed: {e}");
            std::process::exit(1);
        }
    }
}
