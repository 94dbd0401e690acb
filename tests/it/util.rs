//! Helpers shared by the `core_*` integration tests.
//!
//! A module of the `it` test binary (`tests/it/main.rs`), also included by
//! `tests/core_fd_leaks.rs` as `#[path = "it/util.rs"] mod util;`. Each test module uses only
//! part of it, hence the `dead_code` allowance. Every helper that waits has a deadline, so a
//! broken library makes a test fail instead of hanging.

#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use iotask::IoTask;
use iotask::tcp::{self, KillChan, ListenError, NewConnection, ReadPort, TcpError, TcpSocket};

/// How long any single wait in a test may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `f` on a new thread and returns its result, panicking if it takes longer than
/// `limit`. A panic inside `f` is re-raised here with its message.
pub fn with_timeout<T, F>(limit: Duration, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let value = f();
        let _ = tx.send(());
        value
    });
    match rx.recv_timeout(limit) {
        Ok(()) => handle
            .join()
            .expect("the timed closure panicked after finishing"),
        Err(RecvTimeoutError::Disconnected) => match handle.join() {
            Ok(_) => unreachable!("the closure finished without signalling"),
            Err(panic) => std::panic::resume_unwind(panic),
        },
        Err(RecvTimeoutError::Timeout) => panic!("operation did not finish within {limit:?}"),
    }
}

/// Polls `cond` until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A running `listen` on its own thread.
pub struct Listener {
    /// The kill channel `on_establish` received.
    pub kill: KillChan,
    /// The thread blocked in `listen`; joins to `listen`'s result.
    pub handle: JoinHandle<Result<(), ListenError>>,
    /// Every `NewConnection` handed to `new_connect`, in order.
    pub conns: Receiver<NewConnection>,
}

/// Starts `listen` on `127.0.0.1:0` on a new thread; see [`try_spawn_listener_on`].
pub fn spawn_listener(
    iotask: &IoTask,
) -> (
    KillChan,
    JoinHandle<Result<(), ListenError>>,
    Receiver<NewConnection>,
) {
    let l = try_spawn_listener_on("127.0.0.1:0", iotask).expect("listen on 127.0.0.1:0");
    (l.kill, l.handle, l.conns)
}

/// Starts `listen` on `addr` on a new thread: `on_establish` hands over the kill channel,
/// `new_connect` forwards each connection on a channel. Returns `listen`'s error when it
/// fails before `on_establish` runs.
pub fn try_spawn_listener_on(addr: &str, iotask: &IoTask) -> Result<Listener, ListenError> {
    let (kill_tx, kill_rx) = mpsc::channel();
    let (conn_tx, conn_rx) = mpsc::channel();
    let iotask = iotask.clone();
    let addr = addr.to_owned();
    let handle = std::thread::spawn(move || {
        tcp::listen(
            addr.as_str(),
            128,
            &iotask,
            move |kill| {
                kill_tx
                    .send(kill)
                    .expect("the test waits for the kill channel")
            },
            move |conn, _kill| {
                // The test may have stopped listening for connections; dropping closes them.
                let _ = conn_tx.send(conn);
            },
        )
    });
    match kill_rx.recv_timeout(TIMEOUT) {
        Ok(kill) => Ok(Listener {
            kill,
            handle,
            conns: conn_rx,
        }),
        Err(RecvTimeoutError::Disconnected) => {
            let result = handle.join().expect("the listen thread panicked");
            Err(result.expect_err("listen returned Ok without calling on_establish"))
        }
        Err(RecvTimeoutError::Timeout) => panic!("listen neither established nor failed"),
    }
}

/// Waits for the next connection of a listener and accepts it.
pub fn accept_next(conns: &Receiver<NewConnection>) -> TcpSocket {
    let conn = conns
        .recv_timeout(TIMEOUT)
        .expect("no connection reached new_connect in time");
    tcp::accept(conn).expect("accept")
}

/// Stops a listener started by [`spawn_listener`] and returns `listen`'s result.
pub fn stop_listener(
    kill: &KillChan,
    handle: JoinHandle<Result<(), ListenError>>,
) -> Result<(), ListenError> {
    kill.send(None).expect("the listener still runs");
    join_within(handle, TIMEOUT)
}

/// Joins a thread, failing the test if it does not finish within `limit`.
pub fn join_within<T: Send + 'static>(handle: JoinHandle<T>, limit: Duration) -> T {
    let deadline = Instant::now() + limit;
    while !handle.is_finished() {
        assert!(
            Instant::now() < deadline,
            "thread did not finish within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    match handle.join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// An iotask client socket connected to a plain std peer (accepted by a std listener).
/// The peer has read and write timeouts of [`TIMEOUT`].
pub fn connected_pair(iotask: &IoTask) -> (TcpSocket, TcpStream) {
    connected_pair_on("127.0.0.1:0", iotask)
}

/// As [`connected_pair`], on a given loopback address.
pub fn connected_pair_on(addr: &str, iotask: &IoTask) -> (TcpSocket, TcpStream) {
    let listener = TcpListener::bind(addr).expect("std bind");
    let sock = tcp::connect(listener.local_addr().unwrap(), iotask).expect("iotask connect");
    let (peer, _) = listener.accept().expect("std accept");
    peer.set_read_timeout(Some(TIMEOUT)).unwrap();
    peer.set_write_timeout(Some(TIMEOUT)).unwrap();
    (sock, peer)
}

/// An iotask socket accepted through `listen`, and the std client connected to it.
pub fn accepted_pair(
    conns: &Receiver<NewConnection>,
    addr: impl ToSocketAddrs,
) -> (TcpSocket, TcpStream) {
    let client = TcpStream::connect(addr).expect("std connect");
    client.set_read_timeout(Some(TIMEOUT)).unwrap();
    client.set_write_timeout(Some(TIMEOUT)).unwrap();
    let sock = accept_next(conns);
    (sock, client)
}

/// The byte at `offset` of the test pattern: not periodic at any small period, so a lost,
/// repeated or reordered chunk shows.
pub fn pattern_byte(offset: u64) -> u8 {
    let x = offset.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 56) as u8 ^ (offset as u8)
}

/// `len` bytes of the test pattern starting at `offset`.
pub fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| pattern_byte(offset + i)).collect()
}

/// Checks that `data` is the pattern from offset 0, naming the first wrong byte.
pub fn assert_pattern(data: &[u8], expected_len: usize) {
    if let Some(i) = data
        .iter()
        .enumerate()
        .position(|(i, &b)| b != pattern_byte(i as u64))
    {
        panic!(
            "pattern mismatch at byte {i} of {} (expected {expected_len} bytes)",
            data.len()
        );
    }
    assert_eq!(data.len(), expected_len, "wrong number of bytes");
}

/// Compares two byte strings, naming the first difference instead of dumping both.
pub fn assert_bytes_eq(got: &[u8], want: &[u8]) {
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "bytes differ at offset {i} (got {} bytes, want {})",
            got.len(),
            want.len()
        );
    }
    assert_eq!(got.len(), want.len(), "lengths differ");
}

/// Receives from `port` until the stream ends; returns the bytes and the ending error.
/// Fails the test if any single wait exceeds [`TIMEOUT`].
pub fn recv_to_end(port: &ReadPort) -> (Vec<u8>, TcpError) {
    let mut got = Vec::new();
    loop {
        match port.recv_timeout(TIMEOUT) {
            Ok(chunk) => {
                assert!(!chunk.is_empty(), "a port delivered an empty chunk");
                got.extend_from_slice(&chunk);
            }
            Err(e) if e.is_timeout() => panic!("port stalled after {} bytes", got.len()),
            Err(e) => return (got, e),
        }
    }
}

/// Receives from `port` until exactly `n` bytes came (failing on an error or a stall).
pub fn recv_exact(port: &ReadPort, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < n {
        match port.recv_timeout(TIMEOUT) {
            Ok(chunk) => got.extend_from_slice(&chunk),
            Err(e) => panic!("after {} of {n} bytes: {e}", got.len()),
        }
    }
    assert_eq!(got.len(), n, "received more than expected");
    got
}

/// Reads from a std stream until EOF; fails on a timeout or error.
pub fn read_to_eof(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = vec![0; 256 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("std read after {} bytes: {e}", got.len()),
        }
    }
}

/// Reads exactly `n` bytes from a std stream; fails on EOF, a timeout or an error.
pub fn read_exact_std(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut got = vec![0; n];
    stream.read_exact(&mut got).expect("std read_exact");
    got
}

/// Writes all of `data` to a std stream.
pub fn write_std(stream: &mut TcpStream, data: &[u8]) {
    stream.write_all(data).expect("std write_all");
}

/// Pushes bytes of the pattern (continuing at `*offset`) into a non-blocking std stream
/// until it accepts nothing for `stall`, or until more than `cap` bytes went in this call.
/// Returns the bytes pushed in this call.
pub fn flood(stream: &mut TcpStream, offset: &mut u64, stall: Duration, cap: usize) -> usize {
    stream.set_nonblocking(true).unwrap();
    let mut pushed = 0;
    let mut last_progress = Instant::now();
    let block = 64 * 1024;
    while pushed <= cap {
        let data = pattern(*offset, block);
        match stream.write(&data) {
            Ok(n) => {
                *offset += n as u64;
                pushed += n;
                last_progress = Instant::now();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if last_progress.elapsed() >= stall {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("flooding client: {e}"),
        }
    }
    stream.set_nonblocking(false).unwrap();
    pushed
}

/// How many descriptors this process has open, from `/proc/self/fd`.
pub fn open_fds() -> usize {
    // The directory handle itself appears in the listing; subtract it.
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
        - 1
}

/// The names of this process's open descriptors, for a leak report.
pub fn fd_listing() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| e.ok())
        .map(|e| {
            let target = std::fs::read_link(e.path())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            format!("{} -> {target}", e.file_name().to_string_lossy())
        })
        // The listing's own directory handle.
        .filter(|entry| !entry.ends_with("/fd"))
        .collect();
    v.sort();
    v
}

/// Whether the process runs as root (uid 0), from `/proc/self/status`.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// Whether the environment says this is CI, where a skipped test must fail instead.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The TCP states (from `/proc/net/tcp` or `/proc/net/tcp6`) of every socket whose local
/// port is `port`; `"06"` is `TIME_WAIT`, `"0A"` is `LISTEN`.
pub fn tcp_states_on_port(port: u16) -> Vec<String> {
    let mut states = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 4 {
                continue;
            }
            let local_port = fields[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                states.push(fields[3].to_owned());
            }
        }
    }
    states
}

/// A loopback address with a port nobody listens on (bound, then released).
pub fn refused_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The kernel's send and receive queues, in bytes, of the IPv4 TCP socket from `local` to
/// `remote`, from `/proc/net/tcp` (`tx_queue`: sent but not acknowledged, or not yet sent;
/// `rx_queue`: received but not read by the application).
pub fn tcp_queues(local: SocketAddr, remote: SocketAddr) -> Option<(usize, usize)> {
    let text = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port_of = |field: &str| {
        field
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 5 {
            continue;
        }
        if port_of(fields[1]) == Some(local.port()) && port_of(fields[2]) == Some(remote.port()) {
            let (tx, rx) = fields[4].split_once(':')?;
            let tx = usize::from_str_radix(tx, 16).ok()?;
            let rx = usize::from_str_radix(rx, 16).ok()?;
            return Some((tx, rx));
        }
    }
    None
}
