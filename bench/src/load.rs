//! The load generator: one thread, non-blocking sockets on an edge-triggered mio poll, a
//! closed loop (a connection sends its next message only when an earlier one came back).
//!
//! Stream loads reach the server over TCP or a Unix-domain socket ([`Target`]); the loop is
//! generic over the two, so each is driven by the same code, compiled for its own type.
//!
//! Every byte sent comes from a fixed pseudo-random pattern at an offset that depends on
//! the connection and on the byte's position in the stream, and every byte echoed is
//! compared with what was sent at that position, so a server that loses, duplicates,
//! reorders or mixes up bytes between connections fails the run.
//!
//! Datagram loads ([`run_datagrams`]) are the same closed loop over UDP sockets, one datagram
//! in flight on each. A datagram carries its socket and sequence number ahead of pattern
//! bytes, and its echo must be the datagram itself; one whose echo does not come back in time
//! is counted lost, and the socket sends the next.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mio::event::Source;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::stats::Latencies;
use crate::sys::{self, ProcSample};

/// Length of the pattern (a prime, so offsets of different connections rarely line up).
const PATTERN_LEN: usize = 65521;
/// Bytes echoed once on each new connection before the load starts (see `connect_primed`).
pub const PRIME_LEN: usize = 16;
/// Connections opened before waiting for their prime echoes.
const CONNECT_BATCH: usize = 100;
/// A run fails when no byte came back for this long.
const STALL: Duration = Duration::from_secs(10);
/// Bytes at the head of each datagram: the socket's id and the sequence number, 8 each.
const DATAGRAM_HEADER: usize = 16;
/// How often a datagram load looks for overdue echoes.
const LOSS_SCAN: Duration = Duration::from_millis(10);

/// The bytes every stream is made of.
#[derive(Debug)]
pub struct Pattern {
    /// The pattern twice over, so that any window of up to `PATTERN_LEN` bytes starting in
    /// the first copy is one contiguous slice.
    bytes: Vec<u8>,
}

impl Pattern {
    /// Builds the pattern (xorshift noise).
    pub fn new() -> Pattern {
        let mut x: u32 = 0x9e37_79b9;
        let mut bytes = Vec::with_capacity(2 * PATTERN_LEN);
        for _ in 0..PATTERN_LEN {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            bytes.push((x >> 24) as u8);
        }
        bytes.extend_from_within(..);
        Pattern { bytes }
    }

    /// The `len` bytes (at most `PATTERN_LEN`) connection `conn` sends from stream position
    /// `pos`.
    pub fn slice(&self, conn: usize, pos: u64, len: usize) -> &[u8] {
        let len = len.min(PATTERN_LEN);
        let offset = ((pos + conn as u64 * 4099) % PATTERN_LEN as u64) as usize;
        &self.bytes[offset..offset + len]
    }

    /// Checks that `data` is what connection `conn` sent from stream position `pos`.
    pub fn verify(&self, conn: usize, pos: u64, data: &[u8]) -> io::Result<()> {
        let mut done = 0;
        while done < data.len() {
            let n = (data.len() - done).min(PATTERN_LEN);
            let expected = self.slice(conn, pos + done as u64, n);
            if data[done..done + n] != *expected {
                let at = data[done..done + n]
                    .iter()
                    .zip(expected)
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                return Err(io::Error::other(format!(
                    "connection {conn}: echoed byte at stream offset {} differs from the byte sent",
                    pos + (done + at) as u64
                )));
            }
            done += n;
        }
        Ok(())
    }
}

/// When a stream load stops.
#[derive(Debug, Clone)]
pub enum Stop {
    /// After measuring for this long (after the warm-up).
    After(Duration),
    /// Once this many bytes came back (counting from the start, no warm-up), or after
    /// `cap`, whichever comes first.
    Bytes {
        /// Bytes to echo.
        total: u64,
        /// The longest the run may take.
        cap: Duration,
    },
    /// When the flag is set (the caller measures its own window through `progress`).
    Flag(Arc<AtomicBool>),
}

/// Where a load generator connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A TCP address.
    Tcp(SocketAddr),
    /// The path of a Unix-domain stream socket.
    Unix(PathBuf),
    /// A UDP echo server's address.
    Udp(SocketAddr),
}

impl Target {
    /// The TCP address, for the loads that only run over TCP (churn, idle connections).
    pub fn tcp(&self) -> io::Result<SocketAddr> {
        match self {
            Target::Tcp(addr) => Ok(*addr),
            other => Err(io::Error::new(
                ErrorKind::Unsupported,
                format!("this load runs over TCP, not to {other:?}"),
            )),
        }
    }

    /// The UDP address, for datagram loads.
    pub fn udp(&self) -> io::Result<SocketAddr> {
        match self {
            Target::Udp(addr) => Ok(*addr),
            other => Err(io::Error::new(
                ErrorKind::Unsupported,
                format!("a datagram load runs over UDP, not to {other:?}"),
            )),
        }
    }
}

/// A closed-loop load of fixed-size messages over a set of connections.
#[derive(Debug, Clone)]
pub struct StreamLoad {
    /// Connections.
    pub conns: usize,
    /// Bytes per message.
    pub msg_size: usize,
    /// Messages each connection keeps in flight.
    pub depth: usize,
    /// Time to run before measuring.
    pub warmup: Duration,
    /// When to stop.
    pub stop: Stop,
    /// Incremented for every message that comes back, warm-up included, when set.
    pub progress: Option<Arc<AtomicU64>>,
}

/// What a stream load measured.
#[derive(Debug, Default)]
pub struct StreamResult {
    /// Messages echoed in the measured window.
    pub msgs: u64,
    /// Bytes echoed in the measured window.
    pub bytes: u64,
    /// Length of the measured window.
    pub elapsed: Duration,
    /// Round-trip time of each message echoed in the window.
    pub latencies: Latencies,
    /// The server's figures at the start and at the end of the window.
    pub server: Option<(ProcSample, ProcSample)>,
    /// CPU time the load generator used in the window.
    pub load_cpu: Duration,
}

struct Conn<S> {
    stream: S,
    id: usize,
    /// Stream bytes the closed loop has asked to send so far.
    queued: u64,
    /// Stream bytes written.
    sent: u64,
    /// Stream bytes echoed and checked.
    received: u64,
    /// Messages whose last byte came back.
    completed: u64,
    /// When each message still in flight was issued, oldest first.
    issued_at: VecDeque<Instant>,
}

/// Opens `n` TCP connections to `addr` and echoes `PRIME_LEN` bytes on each, so that every
/// connection is accepted and served by the time this returns.
///
/// Connections are opened in batches, so that a server with a short listen backlog is not
/// flooded. Connection `i` has id `first_id + i` in the pattern.
pub fn connect_primed(
    addr: SocketAddr,
    n: usize,
    first_id: usize,
    pattern: &Pattern,
) -> io::Result<Vec<std::net::TcpStream>> {
    prime(n, first_id, pattern, |_| {
        let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(STALL))?;
        Ok(stream)
    })
}

/// As [`connect_primed`], to the Unix-domain socket at `path`.
pub fn connect_primed_unix(
    path: &std::path::Path,
    n: usize,
    first_id: usize,
    pattern: &Pattern,
) -> io::Result<Vec<UnixStream>> {
    prime(n, first_id, pattern, |_| {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(STALL))?;
        Ok(stream)
    })
}

/// Opens `n` connections with `connect` (given the connection's index) in batches of
/// `CONNECT_BATCH`, writing each its prime and then reading the batch's echoes.
fn prime<S: Read + Write>(
    n: usize,
    first_id: usize,
    pattern: &Pattern,
    mut connect: impl FnMut(usize) -> io::Result<S>,
) -> io::Result<Vec<S>> {
    let mut all = Vec::with_capacity(n);
    while all.len() < n {
        let batch_start = all.len();
        let batch_end = (batch_start + CONNECT_BATCH).min(n);
        for i in batch_start..batch_end {
            let mut stream = connect(i)
                .map_err(|e| io::Error::new(e.kind(), format!("connection {i}: connect: {e}")))?;
            stream.write_all(pattern.slice(first_id + i, 0, PRIME_LEN))?;
            all.push(stream);
        }
        for (i, stream) in all.iter_mut().enumerate().skip(batch_start) {
            let mut echo = [0u8; PRIME_LEN];
            stream.read_exact(&mut echo).map_err(|e| {
                io::Error::new(e.kind(), format!("connection {i}: waiting for echo: {e}"))
            })?;
            pattern.verify(first_id + i, 0, &echo)?;
        }
    }
    Ok(all)
}

/// Runs a closed-loop stream load against `target`; `server_pid` is sampled at the edges
/// of the measured window.
pub fn run_stream(
    target: &Target,
    load: &StreamLoad,
    server_pid: Option<u32>,
) -> io::Result<StreamResult> {
    let pattern = Pattern::new();
    match target {
        Target::Tcp(addr) => {
            let streams = connect_primed(*addr, load.conns, 0, &pattern)?;
            let streams = streams.into_iter().map(|stream| {
                stream.set_nonblocking(true)?;
                Ok(TcpStream::from_std(stream))
            });
            drive(
                streams.collect::<io::Result<_>>()?,
                load,
                server_pid,
                &pattern,
            )
        }
        Target::Unix(path) => {
            let streams = connect_primed_unix(path, load.conns, 0, &pattern)?;
            let streams = streams.into_iter().map(|stream| {
                stream.set_nonblocking(true)?;
                Ok(mio::net::UnixStream::from_std(stream))
            });
            drive(
                streams.collect::<io::Result<_>>()?,
                load,
                server_pid,
                &pattern,
            )
        }
        Target::Udp(addr) => Err(io::Error::new(
            ErrorKind::Unsupported,
            format!("a stream load needs a stream socket, not UDP ({addr})"),
        )),
    }
}

/// The closed loop of [`run_stream`] over connections already primed and non-blocking.
fn drive<S: Read + Write + Source>(
    streams: Vec<S>,
    load: &StreamLoad,
    server_pid: Option<u32>,
    pattern: &Pattern,
) -> io::Result<StreamResult> {
    let mut poll = Poll::new()?;
    let mut conns = Vec::with_capacity(load.conns);
    for (id, mut stream) in streams.into_iter().enumerate() {
        poll.registry().register(
            &mut stream,
            Token(id),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let prime = PRIME_LEN as u64;
        conns.push(Conn {
            stream,
            id,
            queued: prime,
            sent: prime,
            received: prime,
            completed: 0,
            issued_at: VecDeque::with_capacity(load.depth),
        });
    }

    let mut result = StreamResult::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut events = Events::with_capacity(1024);
    let started = Instant::now();
    let (mut measuring, mut window_start) = (false, started);
    let mut server_before = None;
    let mut last_progress = started;
    let mut cpu_before = Duration::ZERO;

    let start_window = |result: &mut StreamResult| -> Option<ProcSample> {
        result.msgs = 0;
        result.bytes = 0;
        result.latencies.clear();
        server_pid.and_then(|pid| ProcSample::read(pid).ok())
    };
    if load.warmup.is_zero() {
        server_before = start_window(&mut result);
        cpu_before = sys::thread_cpu_time();
        measuring = true;
        window_start = Instant::now();
    }

    let now = Instant::now();
    for conn in &mut conns {
        for _ in 0..load.depth {
            issue(conn, load.msg_size, now);
        }
        flush(conn, pattern)?;
    }

    loop {
        let now = Instant::now();
        if !measuring && now >= started + load.warmup {
            server_before = start_window(&mut result);
            cpu_before = sys::thread_cpu_time();
            measuring = true;
            window_start = Instant::now();
        }
        let done = match &load.stop {
            Stop::After(d) => measuring && now >= window_start + *d,
            Stop::Bytes { total, cap } => result.bytes >= *total || now >= started + *cap,
            Stop::Flag(flag) => flag.load(Ordering::Relaxed),
        };
        if done {
            result.elapsed = now.duration_since(window_start);
            result.load_cpu = sys::thread_cpu_time().saturating_sub(cpu_before);
            break;
        }
        if now.duration_since(last_progress) > STALL {
            return Err(io::Error::new(
                ErrorKind::TimedOut,
                format!("no echo for {STALL:?}: the server stalled"),
            ));
        }

        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(50))) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for event in events.iter() {
            let conn = &mut conns[event.token().0];
            let mut echoed = 0;
            if event.is_readable() {
                echoed = read_echoes(conn, &mut buf, pattern)?;
            }
            if echoed > 0 {
                last_progress = Instant::now();
                let done_now = complete(conn, load.msg_size, last_progress, |latency| {
                    if measuring {
                        result.latencies.record(latency.as_nanos());
                    }
                });
                if measuring {
                    result.msgs += done_now;
                    result.bytes += echoed;
                }
                if let Some(p) = &load.progress {
                    p.fetch_add(done_now, Ordering::Relaxed);
                }
            }
            if echoed > 0 || event.is_writable() {
                flush(conn, pattern)?;
            }
        }
    }
    if let (Some(before), Some(pid)) = (server_before, server_pid) {
        if let Ok(after) = ProcSample::read(pid) {
            result.server = Some((before, after));
        }
    }
    Ok(result)
}

/// Queues one more message on `conn`.
fn issue<S>(conn: &mut Conn<S>, size: usize, now: Instant) {
    conn.queued += size as u64;
    conn.issued_at.push_back(now);
}

/// Accounts for the messages that came back whole, issuing a new one for each; returns
/// how many completed.
fn complete<S>(
    conn: &mut Conn<S>,
    size: usize,
    now: Instant,
    mut record: impl FnMut(Duration),
) -> u64 {
    let mut n = 0;
    while conn.received >= PRIME_LEN as u64 + (conn.completed + 1) * size as u64 {
        conn.completed += 1;
        n += 1;
        if let Some(at) = conn.issued_at.pop_front() {
            record(now.duration_since(at));
        }
        issue(conn, size, now);
    }
    n
}

/// Reads until `WouldBlock`, checking every byte; returns the bytes read.
fn read_echoes<S: Read>(conn: &mut Conn<S>, buf: &mut [u8], pattern: &Pattern) -> io::Result<u64> {
    let mut total = 0;
    loop {
        match conn.stream.read(buf) {
            Ok(0) => {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!("connection {}: the server closed it", conn.id),
                ));
            }
            Ok(n) => {
                if conn.received + n as u64 > conn.sent {
                    return Err(io::Error::other(format!(
                        "connection {}: more bytes came back than were sent",
                        conn.id
                    )));
                }
                pattern.verify(conn.id, conn.received, &buf[..n])?;
                conn.received += n as u64;
                total += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(total),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("connection {}: read: {e}", conn.id),
                ));
            }
        }
    }
}

/// Writes queued bytes until done or `WouldBlock`.
fn flush<S: Write>(conn: &mut Conn<S>, pattern: &Pattern) -> io::Result<()> {
    while conn.sent < conn.queued {
        let len = (conn.queued - conn.sent).min(PATTERN_LEN as u64) as usize;
        match conn.stream.write(pattern.slice(conn.id, conn.sent, len)) {
            Ok(n) => conn.sent += n as u64,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("connection {}: write: {e}", conn.id),
                ));
            }
        }
    }
    Ok(())
}

/// A closed loop of datagrams: each client socket keeps one datagram in flight and sends the
/// next when its echo comes back, or once it gave the datagram up as lost.
#[derive(Debug, Clone)]
pub struct DatagramLoad {
    /// Client sockets, each bound to a port of its own and connected to the server.
    pub sockets: usize,
    /// Bytes per datagram, at least [`DATAGRAM_HEADER`] (16).
    pub size: usize,
    /// Time to run before measuring.
    pub warmup: Duration,
    /// Time to measure.
    pub duration: Duration,
    /// How long a socket waits for an echo before it counts the datagram lost and sends the
    /// next one.
    pub loss_timeout: Duration,
}

/// What a datagram load measured.
#[derive(Debug, Default)]
pub struct DatagramResult {
    /// Datagrams echoed in the measured window.
    pub datagrams: u64,
    /// Datagrams given up as lost in the measured window.
    pub lost: u64,
    /// Echoes that came after their datagram was given up (and were ignored), warm-up
    /// included.
    pub late: u64,
    /// Length of the measured window.
    pub elapsed: Duration,
    /// Round-trip time of each datagram echoed in the window.
    pub latencies: Latencies,
    /// The server's figures at the start and at the end of the window.
    pub server: Option<(ProcSample, ProcSample)>,
    /// CPU time the load generator used in the window.
    pub load_cpu: Duration,
}

/// One client socket of a datagram load.
struct Client {
    socket: mio::net::UdpSocket,
    id: usize,
    /// The sequence number of the datagram in flight.
    seq: u64,
    /// When it was sent.
    sent_at: Instant,
}

/// Writes datagram `seq` of socket `id` into `out` (its length is the datagram's).
fn fill_datagram(out: &mut [u8], pattern: &Pattern, id: usize, seq: u64) {
    out[..8].copy_from_slice(&(id as u64).to_le_bytes());
    out[8..DATAGRAM_HEADER].copy_from_slice(&seq.to_le_bytes());
    let body = out.len() - DATAGRAM_HEADER;
    out[DATAGRAM_HEADER..].copy_from_slice(pattern.slice(id, seq * body as u64, body));
}

/// Sends `client`'s datagram in flight. A datagram the kernel does not take (its send buffer
/// is full) is not retried here: it is lost, and counted so after the loss timeout.
fn send_datagram(client: &mut Client, scratch: &mut [u8], pattern: &Pattern) -> io::Result<()> {
    fill_datagram(scratch, pattern, client.id, client.seq);
    client.sent_at = Instant::now();
    loop {
        match client.socket.send(scratch) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("socket {}: send: {e}", client.id),
                ));
            }
        }
    }
}

/// Runs a closed-loop datagram load against the UDP echo server at `addr`; `server_pid` is
/// sampled at the edges of the measured window.
pub fn run_datagrams(
    addr: SocketAddr,
    load: &DatagramLoad,
    server_pid: Option<u32>,
) -> io::Result<DatagramResult> {
    assert!(
        load.size >= DATAGRAM_HEADER,
        "datagrams carry a 16-byte header"
    );
    let pattern = Pattern::new();
    let mut poll = Poll::new()?;
    let local: SocketAddr = match addr {
        SocketAddr::V4(_) => ([127, 0, 0, 1], 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::LOCALHOST, 0).into(),
    };
    let mut clients = Vec::with_capacity(load.sockets);
    for id in 0..load.sockets {
        let socket = std::net::UdpSocket::bind(local)?;
        // Connected: the socket hears the server only, and learns of its absence
        // (ECONNREFUSED) instead of waiting.
        socket.connect(addr)?;
        socket.set_nonblocking(true)?;
        let mut socket = mio::net::UdpSocket::from_std(socket);
        poll.registry()
            .register(&mut socket, Token(id), Interest::READABLE)?;
        clients.push(Client {
            socket,
            id,
            seq: 0,
            sent_at: Instant::now(),
        });
    }

    let mut result = DatagramResult::default();
    let mut scratch = vec![0u8; load.size];
    let mut buf = vec![0u8; 64 * 1024];
    let mut events = Events::with_capacity(1024);
    let started = Instant::now();
    let (mut measuring, mut window_start) = (false, started);
    let mut server_before = None;
    let mut cpu_before = Duration::ZERO;
    let mut last_progress = started;
    let mut last_scan = started;
    for client in &mut clients {
        send_datagram(client, &mut scratch, &pattern)?;
    }

    loop {
        let now = Instant::now();
        if !measuring && now >= started + load.warmup {
            result.datagrams = 0;
            result.lost = 0;
            result.latencies.clear();
            server_before = server_pid.and_then(|pid| ProcSample::read(pid).ok());
            cpu_before = sys::thread_cpu_time();
            measuring = true;
            window_start = Instant::now();
        }
        if measuring && now >= window_start + load.duration {
            result.elapsed = now.duration_since(window_start);
            result.load_cpu = sys::thread_cpu_time().saturating_sub(cpu_before);
            break;
        }
        if now.duration_since(last_progress) > STALL {
            return Err(io::Error::new(
                ErrorKind::TimedOut,
                format!("no echo for {STALL:?}: the server stalled"),
            ));
        }
        // Give up on the datagrams whose echo is overdue, and send the next ones.
        if now.duration_since(last_scan) >= LOSS_SCAN {
            last_scan = now;
            for client in &mut clients {
                if now.duration_since(client.sent_at) > load.loss_timeout {
                    if measuring {
                        result.lost += 1;
                    }
                    client.seq += 1;
                    send_datagram(client, &mut scratch, &pattern)?;
                }
            }
        }

        if let Err(e) = poll.poll(&mut events, Some(LOSS_SCAN)) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for event in events.iter() {
            let client = &mut clients[event.token().0];
            loop {
                let n = match client.socket.recv(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        return Err(io::Error::new(
                            e.kind(),
                            format!("socket {}: receive: {e}", client.id),
                        ));
                    }
                };
                let echo = &buf[..n];
                fill_datagram(&mut scratch, &pattern, client.id, client.seq);
                if echo == scratch.as_slice() {
                    let done = Instant::now();
                    last_progress = done;
                    if measuring {
                        result.datagrams += 1;
                        result
                            .latencies
                            .record(done.duration_since(client.sent_at).as_nanos());
                    }
                    client.seq += 1;
                    send_datagram(client, &mut scratch, &pattern)?;
                } else if is_late_echo(echo, &mut scratch, &pattern, client) {
                    result.late += 1;
                } else {
                    return Err(io::Error::other(format!(
                        "socket {}: a {n}-byte echo is not datagram {} ({} bytes) nor an \
                         earlier one",
                        client.id, client.seq, load.size
                    )));
                }
            }
        }
    }
    if let (Some(before), Some(pid)) = (server_before, server_pid) {
        if let Ok(after) = ProcSample::read(pid) {
            result.server = Some((before, after));
        }
    }
    Ok(result)
}

/// Whether `echo` is the echo of a datagram `client` sent before the one in flight (and gave
/// up on): `scratch` is overwritten.
fn is_late_echo(echo: &[u8], scratch: &mut [u8], pattern: &Pattern, client: &Client) -> bool {
    if echo.len() != scratch.len() {
        return false;
    }
    let seq = u64::from_le_bytes(echo[8..DATAGRAM_HEADER].try_into().expect("8 bytes"));
    if seq >= client.seq {
        return false;
    }
    fill_datagram(scratch, pattern, client.id, seq);
    echo == &*scratch
}

/// A churn load: connect, echo one message, close, again, on several connections at once.
#[derive(Debug, Clone)]
pub struct ChurnLoad {
    /// Connections being opened, echoed or closed at any moment.
    pub concurrency: usize,
    /// Bytes echoed on each connection.
    pub msg_size: usize,
    /// Time to run before measuring.
    pub warmup: Duration,
    /// Time to measure.
    pub duration: Duration,
}

/// What a churn load measured.
#[derive(Debug, Default)]
pub struct ChurnResult {
    /// Connections that completed connect, echo and close in the window.
    pub conns: u64,
    /// Length of the measured window.
    pub elapsed: Duration,
    /// From the start of `connect` to the last echoed byte, per connection.
    pub latencies: Latencies,
    /// `connect` calls that failed with `EADDRNOTAVAIL` (local ports exhausted) and were
    /// retried.
    pub port_retries: u64,
    /// The server's figures at the start and at the end of the window.
    pub server: Option<(ProcSample, ProcSample)>,
    /// CPU time the load generator used in the window.
    pub load_cpu: Duration,
}

struct ChurnSlot {
    stream: Option<TcpStream>,
    id: usize,
    started: Instant,
    connected: bool,
    received: usize,
}

/// Runs a churn load against `addr`.
pub fn run_churn(
    addr: SocketAddr,
    load: &ChurnLoad,
    server_pid: Option<u32>,
) -> io::Result<ChurnResult> {
    let pattern = Pattern::new();
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut result = ChurnResult::default();
    let mut next_id = 0usize;
    let mut slots: Vec<ChurnSlot> = Vec::with_capacity(load.concurrency);
    for token in 0..load.concurrency {
        let mut slot = ChurnSlot {
            stream: None,
            id: 0,
            started: Instant::now(),
            connected: false,
            received: 0,
        };
        open_slot(
            &mut slot,
            token,
            addr,
            &poll,
            &mut next_id,
            &mut result.port_retries,
        )?;
        slots.push(slot);
    }

    let started = Instant::now();
    let (mut measuring, mut window_start) = (false, started);
    let mut server_before = None;
    let mut last_progress = started;
    let mut cpu_before = Duration::ZERO;
    loop {
        let now = Instant::now();
        if !measuring && now >= started + load.warmup {
            result.conns = 0;
            result.latencies.clear();
            server_before = server_pid.and_then(|pid| ProcSample::read(pid).ok());
            cpu_before = sys::thread_cpu_time();
            measuring = true;
            window_start = Instant::now();
        }
        if measuring && now >= window_start + load.duration {
            result.elapsed = now.duration_since(window_start);
            result.load_cpu = sys::thread_cpu_time().saturating_sub(cpu_before);
            break;
        }
        if now.duration_since(last_progress) > STALL {
            return Err(io::Error::new(
                ErrorKind::TimedOut,
                format!("no connection completed for {STALL:?}: the server stalled"),
            ));
        }
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(50))) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for event in events.iter() {
            let token = event.token().0;
            let slot = &mut slots[token];
            let Some(stream) = slot.stream.as_mut() else {
                continue;
            };
            if !slot.connected {
                if event.is_error() || event.is_write_closed() {
                    let err = stream.take_error()?.unwrap_or_else(|| {
                        io::Error::new(ErrorKind::ConnectionRefused, "connect failed")
                    });
                    return Err(io::Error::new(err.kind(), format!("churn connect: {err}")));
                }
                if !event.is_writable() || stream.peer_addr().is_err() {
                    continue;
                }
                slot.connected = true;
                // A fresh connection's send buffer takes a small message whole.
                let n = stream.write(pattern.slice(slot.id, 0, load.msg_size))?;
                if n != load.msg_size {
                    return Err(io::Error::other("churn: short write on a new connection"));
                }
            }
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => {
                        return Err(io::Error::new(
                            ErrorKind::UnexpectedEof,
                            "churn: the server closed a connection before echoing",
                        ));
                    }
                    Ok(n) => {
                        if slot.received + n > load.msg_size {
                            return Err(io::Error::other("churn: more bytes came back than sent"));
                        }
                        pattern.verify(slot.id, slot.received as u64, &buf[..n])?;
                        slot.received += n;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(io::Error::new(e.kind(), format!("churn read: {e}"))),
                }
            }
            if slot.received == load.msg_size {
                let done = Instant::now();
                last_progress = done;
                if measuring {
                    result.conns += 1;
                    result
                        .latencies
                        .record(done.duration_since(slot.started).as_nanos());
                }
                if let Some(mut stream) = slot.stream.take() {
                    poll.registry().deregister(&mut stream)?;
                }
                open_slot(
                    slot,
                    token,
                    addr,
                    &poll,
                    &mut next_id,
                    &mut result.port_retries,
                )?;
            }
        }
    }
    if let (Some(before), Some(pid)) = (server_before, server_pid) {
        if let Ok(after) = ProcSample::read(pid) {
            result.server = Some((before, after));
        }
    }
    Ok(result)
}

/// Starts a new connection in `slot`, retrying while the local ports are exhausted.
fn open_slot(
    slot: &mut ChurnSlot,
    token: usize,
    addr: SocketAddr,
    poll: &Poll,
    next_id: &mut usize,
    port_retries: &mut u64,
) -> io::Result<()> {
    let deadline = Instant::now() + STALL;
    let mut stream = loop {
        match TcpStream::connect(addr) {
            Ok(stream) => break stream,
            Err(e)
                if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) && Instant::now() < deadline =>
            {
                *port_retries += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("churn connect: {e}"))),
        }
    };
    stream.set_nodelay(true)?;
    poll.registry().register(
        &mut stream,
        Token(token),
        Interest::READABLE | Interest::WRITABLE,
    )?;
    *slot = ChurnSlot {
        stream: Some(stream),
        id: *next_id,
        started: Instant::now(),
        connected: false,
        received: 0,
    };
    *next_id += 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_detects_shifts_and_mixups() {
        let p = Pattern::new();
        let data = p.slice(3, 1000, 64).to_vec();
        assert!(p.verify(3, 1000, &data).is_ok());
        assert!(p.verify(3, 1001, &data).is_err());
        assert!(p.verify(4, 1000, &data).is_err());
        // Windows longer than the pattern are checked piecewise.
        let long: Vec<u8> = (0..3)
            .flat_map(|i| p.slice(0, (i * PATTERN_LEN) as u64, PATTERN_LEN).to_vec())
            .collect();
        assert!(p.verify(0, 0, &long).is_ok());
    }

    /// A tiny blocking echo server thread for tests of the load generator itself.
    fn echo_server() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { return };
                std::thread::spawn(move || {
                    let mut r = s.try_clone().unwrap();
                    let mut w = s;
                    let _ = io::copy(&mut r, &mut w);
                });
            }
        });
        addr
    }

    #[test]
    fn stream_load_counts_and_checks() {
        let addr = echo_server();
        let load = StreamLoad {
            conns: 3,
            msg_size: 1000,
            depth: 2,
            warmup: Duration::from_millis(20),
            stop: Stop::After(Duration::from_millis(100)),
            progress: None,
        };
        let mut r = run_stream(&Target::Tcp(addr), &load, Some(std::process::id())).unwrap();
        assert!(r.msgs > 10, "{r:?}");
        assert_eq!(r.bytes / 1000, r.msgs, "whole messages only at low load");
        assert!(r.latencies.quantile_us(0.5).is_some());
        assert!(r.server.is_some());
    }

    #[test]
    fn stream_load_over_a_unix_socket() {
        let dir = std::env::temp_dir().join(format!("iotask-bench-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("echo.sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { return };
                std::thread::spawn(move || {
                    let mut r = s.try_clone().unwrap();
                    let mut w = s;
                    let _ = io::copy(&mut r, &mut w);
                });
            }
        });
        let load = StreamLoad {
            conns: 3,
            msg_size: 64,
            depth: 1,
            warmup: Duration::ZERO,
            stop: Stop::After(Duration::from_millis(100)),
            progress: None,
        };
        let r = run_stream(&Target::Unix(path), &load, None);
        let _ = std::fs::remove_dir_all(&dir);
        let r = r.unwrap();
        assert!(r.msgs > 10, "{r:?}");
        assert_eq!(r.bytes / 64, r.msgs);
    }

    #[test]
    fn churn_load_counts() {
        let addr = echo_server();
        let load = ChurnLoad {
            concurrency: 2,
            msg_size: 64,
            warmup: Duration::from_millis(10),
            duration: Duration::from_millis(100),
        };
        let r = run_churn(addr, &load, None).unwrap();
        assert!(r.conns > 5, "{r:?}");
    }

    /// A std UDP server thread that sends back each datagram `answer` lets through (it may
    /// change it first); it is given the datagram's number, counting from 0.
    fn udp_server(answer: fn(u64, &mut [u8]) -> bool) -> SocketAddr {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            for i in 0.. {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    return;
                };
                if answer(i, &mut buf[..n]) && socket.send_to(&buf[..n], from).is_err() {
                    return;
                }
            }
        });
        addr
    }

    fn datagram_load(sockets: usize) -> DatagramLoad {
        DatagramLoad {
            sockets,
            size: 64,
            warmup: Duration::from_millis(20),
            duration: Duration::from_millis(150),
            loss_timeout: Duration::from_millis(20),
        }
    }

    #[test]
    fn datagram_load_counts_and_checks() {
        let addr = udp_server(|_, _| true);
        let mut r = run_datagrams(addr, &datagram_load(3), Some(std::process::id())).unwrap();
        assert!(r.datagrams > 10, "{r:?}");
        assert_eq!((r.lost, r.late), (0, 0), "{r:?}");
        assert!(r.latencies.quantile_us(0.5).is_some());
        assert!(r.server.is_some());
    }

    #[test]
    fn datagram_load_counts_losses_and_goes_on() {
        // Every fifth datagram goes unanswered.
        let addr = udp_server(|i, _| i % 5 != 4);
        let r = run_datagrams(addr, &datagram_load(2), None).unwrap();
        assert!(r.lost > 0, "{r:?}");
        assert!(r.datagrams > r.lost, "{r:?}");
    }

    #[test]
    fn a_late_echo_is_counted_and_skipped() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        // Holds the tenth datagram until the next one came, then answers both.
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut held = None;
            for i in 0.. {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    return;
                };
                if i == 9 {
                    held = Some(buf[..n].to_vec());
                    continue;
                }
                if let Some(late) = held.take() {
                    let _ = socket.send_to(&late, from);
                }
                let _ = socket.send_to(&buf[..n], from);
            }
        });
        let r = run_datagrams(addr, &datagram_load(1), None).unwrap();
        assert_eq!(r.late, 1, "{r:?}");
        assert!(r.datagrams > 10, "{r:?}");
    }

    #[test]
    fn a_corrupting_udp_server_fails_the_run() {
        let addr = udp_server(|i, datagram| {
            if i == 20 {
                datagram[40] ^= 1;
            }
            true
        });
        let err = run_datagrams(addr, &datagram_load(1), None).unwrap_err();
        assert!(err.to_string().contains("is not datagram"), "{err}");
    }

    #[test]
    fn a_corrupting_server_fails_the_run() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { return };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            return;
                        }
                        buf[0] ^= 1;
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let load = StreamLoad {
            conns: 1,
            msg_size: 64,
            depth: 1,
            warmup: Duration::ZERO,
            stop: Stop::After(Duration::from_millis(200)),
            progress: None,
        };
        assert!(run_stream(&Target::Tcp(addr), &load, None).is_err());
    }
}
