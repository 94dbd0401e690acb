//! The `udp_echo` example, run in a child process as from the command line: socat and `std`
//! clients get back every datagram they send, byte for byte, whatever its size.
//!
//! The child is this test binary run again with [`CHILD_ENV`] set, which makes
//! [`udp_echo_child`] call the example's `run`: everything `main` does but read its argument.
//! Running the example's own binary instead would need `cargo test` to have built it, which
//! `cargo test --test it` and nextest do not do.

#[path = "../../examples/udp_echo.rs"]
#[allow(dead_code)]
mod udp_echo;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::examples_support::{ChildGuard, TIMEOUT, have_tool, join_within};

/// Set in the child's environment: [`udp_echo_child`] then runs the example.
const CHILD_ENV: &str = "IOTASK_UDP_ECHO_CHILD";

/// The largest datagram the tests send: 60 KiB, under IPv4's 65,507 bytes of payload.
const LARGEST: usize = 60 * 1024;

/// How long a client waits for an echo before it sends its datagram again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// How many times a client sends one datagram before the test fails.
const ATTEMPTS: usize = 5;

/// The example serving on `127.0.0.1:0` in a child process; killed when dropped.
struct EchoChild {
    /// Where it listens, as it printed.
    addr: SocketAddr,
    _child: ChildGuard,
}

impl EchoChild {
    /// Starts the child and reads the address from its `listening on` line.
    fn start() -> EchoChild {
        let mut child = ChildGuard(
            Command::new(std::env::current_exe().expect("the test binary"))
                .args(["--exact", "examples_udp_echo::udp_echo_child"])
                .args(["--nocapture", "--quiet", "--test-threads=1"])
                .env(CHILD_ENV, "127.0.0.1:0")
                // The child exits when this pipe closes, should the test die before it.
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("start the example"),
        );
        let stdout = child.0.stdout.take().expect("piped stdout");
        let lines = lines(stdout);
        let deadline = Instant::now() + TIMEOUT;
        let addr = loop {
            let line = recv_by(&lines, deadline)
                .expect("the example prints `listening on ADDRESS` in time");
            if let Some(addr) = line.strip_prefix("listening on ") {
                break addr.parse().expect("an address after `listening on`");
            }
        };
        EchoChild {
            addr,
            _child: child,
        }
    }
}

/// Not a test of its own: the child process of the tests below, which serves until they kill
/// it or close its input.
#[test]
fn udp_echo_child() {
    let Ok(addr) = std::env::var(CHILD_ENV) else {
        return;
    };
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    udp_echo::run(&addr).expect("the example serves");
}

/// The lines read from `reader`, on a channel, so that waiting for one can time out.
fn lines(reader: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The next value on `rx`, waiting until `deadline` at most.
fn recv_by<T>(rx: &Receiver<T>, deadline: Instant) -> Result<T, RecvTimeoutError> {
    rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
}

/// `len` bytes of xorshift noise that depend on `seed`, so that no two datagrams of a test
/// look alike.
fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// A `std` client connected to `server`, so that it hears nobody else.
fn udp_client(server: SocketAddr) -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a client");
    socket.connect(server).expect("connect the client");
    socket
        .set_read_timeout(Some(RETRY_AFTER))
        .expect("read timeout");
    socket
}

/// Sends datagram `i` of each of `sizes` (seeded with `seed + i`) from `socket` and checks that
/// the next datagram back is the same, byte for byte, sending it again when no echo comes in
/// [`RETRY_AFTER`]. An echo of an earlier datagram that was sent twice is skipped.
fn echo_all(socket: &UdpSocket, seed: u64, sizes: &[usize]) {
    let mut buf = vec![0u8; 65536];
    // Datagrams sent more than once, whose late echoes may still come.
    let mut resent: Vec<Vec<u8>> = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let sent = payload(seed + i as u64, size);
        let mut attempts = 0;
        'sending: loop {
            attempts += 1;
            assert!(
                attempts <= ATTEMPTS,
                "datagram {i} ({size} B): no echo after {ATTEMPTS} tries"
            );
            assert_eq!(socket.send(&sent).expect("send"), size);
            loop {
                let n = match socket.recv(&mut buf) {
                    Ok(n) => n,
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        resent.push(sent.clone());
                        continue 'sending;
                    }
                    Err(e) => panic!("datagram {i} ({size} B): receive: {e}"),
                };
                let echo = &buf[..n];
                if echo == sent.as_slice() {
                    break 'sending;
                }
                assert!(
                    resent.iter().any(|earlier| earlier.as_slice() == echo),
                    "datagram {i} ({size} B): the echo ({n} B) differs from what was sent"
                );
            }
        }
    }
}

/// Datagrams from empty to [`LARGEST`] bytes, each echoed whole: sizes spread over the
/// range, with the smallest and largest among them.
#[test]
fn a_std_client_gets_a_thousand_datagrams_of_every_size_back() {
    let server = EchoChild::start();
    let mut sizes: Vec<usize> = (0..1000).map(|i| i * 7919 % (LARGEST + 1)).collect();
    sizes[1] = 1;
    sizes[2] = LARGEST;
    assert_eq!(sizes[0], 0, "an empty datagram is a datagram");
    echo_all(&udp_client(server.addr), 0, &sizes);
}

/// Two clients ping-pong at once, with datagrams of their own: each gets its own back and
/// none of the other's.
#[test]
fn two_clients_at_once_get_only_their_own_echoes() {
    let server = EchoChild::start();
    let clients: Vec<_> = (0..2u64)
        .map(|c| {
            let socket = udp_client(server.addr);
            std::thread::spawn(move || {
                let sizes: Vec<usize> = (0..300).map(|i| 1 + (i * 211) % 2000).collect();
                echo_all(&socket, c << 32, &sizes);
            })
        })
        .collect();
    for client in clients {
        join_within(client, TIMEOUT * 3);
    }
}

/// `socat - UDP:HOST:PORT` sends each read of its input as one datagram and writes each
/// datagram it receives to its output. With `-b 65536` a read takes up to 64 KiB (the default
/// is 8 KiB), and a write of up to 64 KiB into an empty pipe is read whole, so each payload
/// below goes out as one datagram. socat's log (`-d -d -d`) says how many bytes each datagram
/// carried, both ways; the test checks that too.
#[test]
fn socat_gets_each_datagram_back_whole() {
    if !have_tool("socat", "socat") {
        return;
    }
    let server = EchoChild::start();
    let mut socat = ChildGuard(
        Command::new("socat")
            .args(["-d", "-d", "-d", "-b", "65536", "-"])
            .arg(format!("UDP:{}", server.addr))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start socat"),
    );
    let mut input = socat.0.stdin.take().expect("piped stdin");
    let mut output = socat.0.stdout.take().expect("piped stdout");
    let log = lines(socat.0.stderr.take().expect("piped stderr"));
    // socat's output through a channel, so that waiting for it can time out.
    let (chunks_tx, chunks) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok(n @ 1..) = output.read(&mut buf) {
            if chunks_tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });

    for (i, size) in [1, 2, 100, 1400, 9000, 32 * 1024, LARGEST]
        .into_iter()
        .enumerate()
    {
        let sent = payload(1000 + i as u64, size);
        input.write_all(&sent).expect("write to socat");
        input.flush().expect("flush");

        let deadline = Instant::now() + TIMEOUT;
        let mut echo = Vec::new();
        while echo.len() < size {
            match recv_by(&chunks, deadline) {
                Ok(chunk) => echo.extend(chunk),
                Err(RecvTimeoutError::Timeout) => {
                    panic!("{size} B: {} of the echo came in {TIMEOUT:?}", echo.len())
                }
                Err(RecvTimeoutError::Disconnected) => panic!("{size} B: socat exited"),
            }
        }
        assert!(
            echo == sent,
            "{size} B: the echo differs from what was sent"
        );

        // "I transferred N bytes from 0 to 5" (input to socket), then "… from 5 to 1".
        let mut transfers = Vec::new();
        while transfers.len() < 2 {
            let line = recv_by(&log, deadline)
                .unwrap_or_else(|_| panic!("{size} B: socat logged {transfers:?} in time"));
            if let Some(rest) = line.split_once(" transferred ").map(|(_, rest)| rest) {
                transfers.push(rest.to_owned());
            }
        }
        for transfer in &transfers {
            assert!(
                transfer.starts_with(&format!("{size} bytes from ")),
                "{size} B went as more than one datagram: {transfers:?}"
            );
        }
    }

    // socat exits half a second (its -t) after its input closes.
    drop(input);
    let status = socat.wait_within(TIMEOUT);
    assert!(status.success(), "socat exited with {status}");
}
