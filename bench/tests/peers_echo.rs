//! Every peer's server, started the way the harness starts it (`iotask-bench serve PEER
//! 127.0.0.1:0`), echoes exactly what it receives: small ping-pongs, and megabytes written
//! while the echo is read on another thread (which makes the servers' writes partial).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const PEERS: [&str; 8] = [
    "iotask-ports",
    "iotask-actor",
    "iotask-actor-spin",
    "iotask-pool",
    "tokio-ct",
    "tokio-mt",
    "mio",
    "std-threads",
];
const TIMEOUT: Duration = Duration::from_secs(20);

/// The server process, killed when the test ends (passing or not).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(peer: &str) -> (Server, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_iotask-bench"))
        .args(["serve", peer, "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the server");
    let stdout = child.stdout.take().expect("piped stdout");
    let server = Server(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(TIMEOUT)
        .unwrap_or_else(|_| panic!("{peer}: no address printed"));
    let addr = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{peer}: printed {line:?}, not an address"));
    (server, addr)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.set_write_timeout(Some(TIMEOUT)).unwrap();
    s
}

fn bytes(seed: u32, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn check_peer(peer: &str) {
    let (_server, addr) = start(peer);

    // Ping-pong on two connections at once: the replies are not mixed up.
    let mut a = connect(addr);
    let mut b = connect(addr);
    for i in 0..50u32 {
        let (ma, mb) = (bytes(i, 64), bytes(i + 1000, 100));
        a.write_all(&ma).unwrap();
        b.write_all(&mb).unwrap();
        let mut ra = vec![0; ma.len()];
        let mut rb = vec![0; mb.len()];
        a.read_exact(&mut ra).unwrap();
        b.read_exact(&mut rb).unwrap();
        assert_eq!(ra, ma, "{peer}: ping-pong on connection a");
        assert_eq!(rb, mb, "{peer}: ping-pong on connection b");
    }

    // A 4 MiB stream written in odd-sized pieces while another thread reads the echo.
    let data = bytes(7, 4 << 20);
    let writer = connect(addr);
    let mut reader = writer.try_clone().unwrap();
    let expected = data.clone();
    let read_side = std::thread::spawn(move || {
        let mut got = vec![0; expected.len()];
        reader.read_exact(&mut got).map(|_| got == expected)
    });
    let mut w = &writer;
    for chunk in data.chunks(37_001) {
        w.write_all(chunk).unwrap();
    }
    let same = read_side.join().unwrap().expect("read the whole echo");
    assert!(same, "{peer}: the 4 MiB echo differs from what was sent");

    // A closed connection does not disturb the others.
    drop(a);
    b.write_all(b"still here").unwrap();
    let mut r = [0u8; 10];
    b.read_exact(&mut r).unwrap();
    assert_eq!(&r, b"still here", "{peer}: after another connection closed");
}

#[test]
fn every_peer_echoes_exactly() {
    for peer in PEERS {
        check_peer(peer);
    }
}

#[test]
fn unknown_peer_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_iotask-bench"))
        .args(["serve", "no-such-peer", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .output()
        .expect("run the binary");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown peer"));
}
