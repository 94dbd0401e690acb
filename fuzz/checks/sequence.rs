//! A socket driven by a sequence of operations chosen by the fuzzer's bytes: readers started,
//! stopped and raced (ports, futures made, awaited and dropped), writes both ways, shutdowns,
//! the socket dropped, the I/O task shut down. After the sequence every byte each side sent
//! must reach the other side, in order, exactly once; no operation may hang (every wait is
//! bounded, and a stuck one panics).
//!
//! Shared by the fuzz target `sequence` and the stable test `tests/sequence_fuzz.rs`.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use iotask::IoTask;
use iotask::tcp::{self, ReadFuture, ReadPort, TcpError, TcpSocket};

/// How long the final drain may wait for the bytes still in flight.
const DRAIN: Duration = Duration::from_secs(10);
/// Bytes each side may send in one sequence.
const VOLUME: u64 = 2 * 1024 * 1024;

/// The byte at `offset` of the stream each side sends: not periodic at any small period, so
/// a lost, repeated or reordered chunk shows.
pub fn pattern_byte(offset: u64) -> u8 {
    (offset.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8 ^ offset as u8
}

fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| pattern_byte(offset + i)).collect()
}

/// Checks that `chunk` continues the pattern at `offset`.
fn check(what: &str, offset: u64, chunk: &[u8]) {
    for (i, &b) in chunk.iter().enumerate() {
        assert_eq!(
            b,
            pattern_byte(offset + i as u64),
            "{what}: wrong byte at offset {}",
            offset + i as u64
        );
    }
}

struct Driver {
    iotask: IoTask,
    sock: Option<TcpSocket>,
    peer: TcpStream,
    port: Option<ReadPort>,
    futures: VecDeque<ReadFuture>,
    /// Bytes the peer sent, and bytes the socket's readers received.
    peer_sent: u64,
    sock_got: u64,
    /// Bytes the socket sent, and bytes the peer read.
    sock_sent: u64,
    peer_got: u64,
    peer_shut: bool,
    sock_shut: bool,
    sock_eof: bool,
    task_down: bool,
    /// The socket's reading half was shut down: bytes still in the kernel are discarded.
    read_shut: bool,
    /// Other handles to the socket; writes go through any of them, in order.
    clones: Vec<TcpSocket>,
}

impl Driver {
    fn new() -> Driver {
        let iotask = IoTask::spawn().expect("an I/O task");
        let listener = TcpListener::bind("127.0.0.1:0").expect("a listener");
        let sock = tcp::connect(listener.local_addr().unwrap(), &iotask).expect("a connection");
        let (peer, _) = listener.accept().expect("the peer");
        peer.set_nonblocking(true).unwrap();
        Driver {
            iotask,
            sock: Some(sock),
            peer,
            port: None,
            futures: VecDeque::new(),
            peer_sent: 0,
            sock_got: 0,
            sock_sent: 0,
            peer_got: 0,
            peer_shut: false,
            sock_shut: false,
            sock_eof: false,
            task_down: false,
            read_shut: false,
            clones: Vec::new(),
        }
    }

    /// Whether the connection may have broken: the task was shut down, or the reading half
    /// was shut (after which the kernel may reset the connection when data arrives). Errors
    /// are then allowed; bytes that do arrive must still be in order.
    fn broken(&self) -> bool {
        self.task_down || self.read_shut
    }

    /// Accounts for one read result on the socket's side. `from_port`: the port yields its
    /// end only after every byte it was given; another reader may hear of the end while a
    /// port that received it still holds bytes.
    fn got(&mut self, result: Result<Vec<u8>, TcpError>, from_port: bool) {
        match result {
            Ok(chunk) => {
                assert!(!chunk.is_empty(), "an empty chunk");
                assert!(!self.sock_eof, "bytes after the end of the stream");
                check("socket read", self.sock_got, &chunk);
                self.sock_got += chunk.len() as u64;
            }
            Err(e) => self.allowed(&e, from_port),
        }
    }

    /// Whether a reader's error is one the state explains.
    fn allowed(&mut self, e: &TcpError, from_port: bool) {
        match e.name() {
            "BUSY" | "ETIMEDOUT" => {}
            "SHUTDOWN" => assert!(self.task_down, "SHUTDOWN from a running task"),
            // Data that reaches a socket whose reading half is shut may be answered with a
            // reset; from then on the connection is broken.
            "ECONNRESET" | "EPIPE" | "CLOSED" if self.read_shut => {}
            "EOF" => {
                assert!(
                    self.peer_shut || self.read_shut,
                    "EOF before the peer closed or reading was shut down"
                );
                if from_port && !self.read_shut {
                    assert_eq!(self.sock_got, self.peer_sent, "EOF before every byte");
                    self.sock_eof = true;
                }
            }
            _ => panic!("unexpected error {e:?}"),
        }
    }

    fn step(&mut self, op: u8, arg: u8) {
        if std::env::var_os("IOTASK_SEQUENCE_TRACE").is_some() {
            eprintln!(
                "op {} arg {arg}: peer_sent {} sock_got {} port {} futures {}",
                op % 15,
                self.peer_sent,
                self.sock_got,
                self.port.is_some(),
                self.futures.len()
            );
        }
        let Some(sock) = &self.sock else { return };
        match op % 15 {
            0 if !self.peer_shut && self.peer_sent < VOLUME => {
                let len = usize::from(arg) * 97 + 1;
                let data = pattern(self.peer_sent, len);
                match self.peer.write(&data) {
                    Ok(n) => self.peer_sent += n as u64,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    // The I/O task closed the connection as it shut down; or the reading half
                    // was shut, and the kernel may answer the peer's data with a reset.
                    Err(_) if self.broken() => {}
                    Err(e) => panic!("peer write: {e}"),
                }
            }
            1 if self.port.is_none() => match sock.read_start() {
                Ok(port) => self.port = Some(port),
                Err(e) => self.allowed(&e, false),
            },
            2 => {
                if let Some(port) = self.port.take() {
                    if let Err(e) = sock.read_stop(port) {
                        assert!(self.broken(), "read_stop failed: {e:?}");
                    }
                }
            }
            3 => {
                for _ in 0..=arg % 8 {
                    let Some(port) = &self.port else { break };
                    match port.try_recv() {
                        Some(result) => self.got(result, true),
                        None => break,
                    }
                }
            }
            4 if self.futures.len() < 4 => {
                let timeout = Duration::from_millis(u64::from(arg % 20) + 1);
                self.futures.push_back(sock.read_future(timeout));
            }
            5 => {
                if let Some(future) = self.futures.pop_front() {
                    self.got(future.get(), false);
                }
            }
            6 if !self.futures.is_empty() => {
                let i = usize::from(arg) % self.futures.len();
                drop(self.futures.remove(i));
            }
            7 if !self.sock_shut && self.sock_sent < VOLUME => {
                let len = usize::from(arg) * 131 + 1;
                // Through the socket or one of its other handles: one queue either way.
                let writer = match usize::from(arg) % (self.clones.len() + 1) {
                    0 => sock,
                    i => &self.clones[i - 1],
                };
                let write = writer.write_future(pattern(self.sock_sent, len));
                self.sock_sent += len as u64;
                if arg % 3 == 0 {
                    if let Err(e) = write.get() {
                        assert!(self.broken(), "write failed: {e:?}");
                    }
                }
            }
            8 => self.peer_read(),
            // Only with little in flight: the shutdown waits for the queue, which must fit
            // in the kernel's buffers while the peer is not reading.
            9 if !self.sock_shut && self.sock_sent - self.peer_got < 64 * 1024 => {
                if let Err(e) = sock.shutdown_write() {
                    assert!(self.broken(), "shutdown_write failed: {e:?}");
                }
                self.sock_shut = true;
            }
            10 if !self.peer_shut => {
                let shut = self.peer.shutdown(Shutdown::Write);
                assert!(shut.is_ok() || self.broken(), "peer shutdown: {shut:?}");
                self.peer_shut = true;
            }
            11 if arg == 0xA5 => {
                self.iotask.shutdown();
                self.task_down = true;
            }
            12 if arg == 0x5A => {
                self.futures.clear();
                self.port = None;
                self.sock = None;
                self.clones.clear();
            }
            13 if arg % 8 == 0 && !self.read_shut => {
                if let Err(e) = sock.shutdown_read() {
                    assert!(self.broken(), "shutdown_read failed: {e:?}");
                }
                self.read_shut = true;
            }
            14 => {
                if arg % 2 == 0 && self.clones.len() < 2 {
                    match sock.try_clone() {
                        Ok(clone) => self.clones.push(clone),
                        Err(e) => assert!(self.broken(), "try_clone failed: {e:?}"),
                    }
                } else if !self.clones.is_empty() {
                    // Dropping a handle leaves the connection open for the others.
                    self.clones.remove(usize::from(arg) % self.clones.len());
                }
            }
            _ => {}
        }
    }

    /// Reads what the peer has, without waiting.
    fn peer_read(&mut self) {
        let mut buf = vec![0; 64 * 1024];
        loop {
            match self.peer.read(&mut buf) {
                Ok(0) => {
                    assert!(
                        self.sock_shut || self.sock.is_none() || self.broken(),
                        "the peer saw EOF the socket never sent"
                    );
                    return;
                }
                Ok(n) => {
                    check("peer read", self.peer_got, &buf[..n]);
                    self.peer_got += n as u64;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if self.broken() => {
                    let _ = e;
                    return;
                }
                Err(e) => panic!("peer read: {e}"),
            }
        }
    }

    /// After the sequence: every byte still in flight arrives, in order.
    fn drain(mut self) {
        if self.sock.is_none() || self.broken() {
            return;
        }
        self.futures.clear();
        let sock = self.sock.take().unwrap();
        let port = match self.port.take() {
            Some(port) => port,
            None => sock
                .read_start()
                .expect("a reader once the futures are gone"),
        };
        let deadline = Instant::now() + DRAIN;
        // After `shutdown_read`, what was still in the kernel is discarded: the port ends
        // early, and what it gave must still be in order (checked as it comes).
        while (self.sock_got < self.peer_sent || self.peer_shut) && !self.sock_eof {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "the socket's reads stalled at {} of {}",
                self.sock_got,
                self.peer_sent
            );
            match port.recv_timeout(left) {
                Ok(chunk) => self.got(Ok(chunk), true),
                Err(e) if e.is_timeout() => {}
                Err(e) => {
                    let ended = e.is_eof();
                    self.got(Err(e), true);
                    if ended {
                        break;
                    }
                }
            }
        }
        while self.peer_got < self.sock_sent {
            assert!(
                Instant::now() < deadline,
                "the peer's reads stalled at {} of {}",
                self.peer_got,
                self.sock_sent
            );
            self.peer_read();
            std::thread::yield_now();
        }
        drop(sock);
        self.iotask.shutdown();
    }
}

/// Runs one sequence: pairs of bytes are (operation, argument).
pub fn run(data: &[u8]) {
    let mut driver = Driver::new();
    for pair in data.chunks(2).take(400) {
        driver.step(pair[0], pair.get(1).copied().unwrap_or(0));
    }
    driver.drain();
}
