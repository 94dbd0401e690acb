//! Every peer's server, started the way the harness starts it (`iotask-bench serve PEER
//! 127.0.0.1:0`, or `unix:PATH` for the peers with a Unix-domain server), echoes exactly
//! what it receives: small ping-pongs, and megabytes written while the echo is read on
//! another thread (which makes the servers' writes partial). A short run of S2U shows that
//! the peers without a Unix-domain server are skipped, not failed. The proxy peers, started
//! with `--upstream` in front of tokio-ct's echo server, pass the same checks, and a short
//! run of S2P measures them and skips the echo servers. The UDP echo servers (`udp:127.0.0.1:0`)
//! send every datagram back whole, to its sender, and a short run of U1 and U1x50 measures
//! them and skips the peers without one.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
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
/// The peers with a Unix-domain server (the ones S2U measures).
const UNIX_PEERS: [&str; 2] = ["iotask-actor", "tokio-ct"];
/// The peers with a UDP echo server (the ones U1 and U1x50 measure).
const UDP_PEERS: [&str; 2] = ["iotask-actor", "tokio-ct"];
const TIMEOUT: Duration = Duration::from_secs(20);

/// The server process, killed when the test ends (passing or not).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A connection the checks can read, write and split across two threads.
trait Conn: Read + Write + Send + Sized + 'static {
    fn split(&self) -> Self;
}

impl Conn for TcpStream {
    fn split(&self) -> Self {
        self.try_clone().unwrap()
    }
}

impl Conn for UnixStream {
    fn split(&self) -> Self {
        self.try_clone().unwrap()
    }
}

/// A folder of its own for one test's socket, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("iotask-bench-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The proxy peers (the ones S2P measures).
const PROXY_PEERS: [&str; 2] = ["iotask-proxy", "tokio-proxy"];

/// Starts `peer`'s server on `addr` and returns the line it printed.
fn start(peer: &str, addr: &str) -> (Server, String) {
    start_with(peer, &[addr])
}

/// Starts `iotask-bench serve PEER ARGS...` and returns the line it printed.
fn start_with(peer: &str, args: &[&str]) -> (Server, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_iotask-bench"))
        .args(["serve", peer])
        .args(args)
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
    (server, line.trim().to_owned())
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.set_write_timeout(Some(TIMEOUT)).unwrap();
    s
}

fn connect_unix(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).expect("connect");
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
    let (_server, line) = start(peer, "127.0.0.1:0");
    let addr: SocketAddr = line
        .parse()
        .unwrap_or_else(|_| panic!("{peer}: printed {line:?}, not an address"));
    check_echo(peer, || connect(addr));
}

fn check_unix_peer(peer: &str) {
    let dir = TempDir::new(peer);
    let path = dir.0.join("echo.sock");
    let (server, line) = start(peer, &format!("unix:{}", path.display()));
    assert_eq!(
        line,
        format!("unix:{}", path.display()),
        "{peer}: announced"
    );
    check_echo(peer, || connect_unix(&path));
    drop(server);
}

fn check_echo<C: Conn>(peer: &str, connect: impl Fn() -> C) {
    // Ping-pong on two connections at once: the replies are not mixed up.
    let mut a = connect();
    let mut b = connect();
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
    let mut writer = connect();
    let mut reader = writer.split();
    let expected = data.clone();
    let read_side = std::thread::spawn(move || {
        let mut got = vec![0; expected.len()];
        reader.read_exact(&mut got).map(|_| got == expected)
    });
    for chunk in data.chunks(37_001) {
        writer.write_all(chunk).unwrap();
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
fn unix_peers_echo_exactly() {
    for peer in UNIX_PEERS {
        check_unix_peer(peer);
    }
}

#[test]
fn a_peer_without_a_unix_server_refuses_a_unix_address() {
    let dir = TempDir::new("refused");
    let addr = format!("unix:{}", dir.0.join("echo.sock").display());
    let out = Command::new(env!("CARGO_BIN_EXE_iotask-bench"))
        .args(["serve", "mio", &addr])
        .stdin(Stdio::null())
        .output()
        .expect("run the binary");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no Unix-domain server"), "{stderr}");
}

/// A short S2U run with a peer that has no Unix-domain server: it is skipped with a note,
/// the two that have one are measured, and the run succeeds.
#[test]
fn s2u_skips_peers_without_a_unix_server() {
    let dir = TempDir::new("s2u-run");
    let (md, svg) = (dir.0.join("run.md"), dir.0.join("run.svg"));
    let out = Command::new(env!("CARGO_BIN_EXE_iotask-bench"))
        .args(["--scenarios", "S2U", "--peers", "iotask-actor,tokio-ct,mio"])
        .args(["--layout", "unpinned", "--rounds", "1", "--duration", "0.2"])
        .arg("--no-syscalls")
        .arg("--out-md")
        .arg(&md)
        .arg("--out-svg")
        .arg(&svg)
        .stdin(Stdio::null())
        .output()
        .expect("run the harness");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("FAILED"), "{stderr}");
    let report = std::fs::read_to_string(&md).unwrap();
    assert!(
        report.contains("> S2U: no server of mio for this transport; skipped."),
        "{report}"
    );
    let row = report
        .lines()
        .find(|l| l.starts_with("| S2U | msg/s | unpinned |"))
        .unwrap_or_else(|| panic!("no S2U summary row:\n{report}"));
    assert!(row.contains("(ref)") && row.ends_with("| – |"), "{row}");
}

#[test]
fn proxy_peers_pass_every_byte_on_to_the_echo_server_and_back() {
    let (_upstream, line) = start("tokio-ct", "127.0.0.1:0");
    for peer in PROXY_PEERS {
        let (_proxy, proxy_line) = start_with(peer, &["127.0.0.1:0", "--upstream", &line]);
        let addr: SocketAddr = proxy_line
            .parse()
            .unwrap_or_else(|_| panic!("{peer}: printed {proxy_line:?}, not an address"));
        check_echo(peer, || connect(addr));
    }
}

#[test]
fn a_proxy_peer_without_an_upstream_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_iotask-bench"))
        .args(["serve", "iotask-proxy", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .output()
        .expect("run the binary");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--upstream"), "{stderr}");
}

/// A short S2P run: the two proxies are measured, an echo server given with them is
/// skipped with a note, and the run succeeds.
#[test]
fn s2p_measures_the_proxies_and_skips_the_echo_servers() {
    let dir = TempDir::new("s2p-run");
    let (md, svg) = (dir.0.join("run.md"), dir.0.join("run.svg"));
    let out = Command::new(env!("CARGO_BIN_EXE_iotask-bench"))
        .args([
            "--scenarios",
            "S2P",
            "--peers",
            "iotask-proxy,tokio-proxy,mio",
        ])
        .args(["--layout", "unpinned", "--rounds", "1", "--duration", "0.2"])
        .arg("--no-syscalls")
        .arg("--out-md")
        .arg(&md)
        .arg("--out-svg")
        .arg(&svg)
        .stdin(Stdio::null())
        .output()
        .expect("run the harness");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("FAILED"), "{stderr}");
    let report = std::fs::read_to_string(&md).unwrap();
    assert!(
        report.contains("> S2P: no server of mio for this transport; skipped."),
        "{report}"
    );
    let row = report
        .lines()
        .find(|l| l.starts_with("| S2P | msg/s | unpinned |"))
        .unwrap_or_else(|| panic!("no S2P summary row:\n{report}"));
    assert!(row.contains("(ref)"), "{row}");
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

/// A UDP client connected to `server`, whose receives time out.
fn udp_client(server: SocketAddr) -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(server).unwrap();
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    socket
}

#[test]
fn udp_peers_echo_every_datagram_whole_to_its_sender() {
    for peer in UDP_PEERS {
        let (_server, line) = start(peer, "udp:127.0.0.1:0");
        let addr: SocketAddr = line
            .strip_prefix("udp:")
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("{peer}: printed {line:?}, not udp:ADDRESS"));
        // Two clients take turns; each datagram must come back whole to the one that sent it.
        let clients = [udp_client(addr), udp_client(addr)];
        let mut buf = vec![0u8; 65536];
        // From empty to the largest IPv4 datagram.
        for (i, size) in [0, 1, 64, 1400, 9000, 65507].into_iter().enumerate() {
            for (c, client) in clients.iter().enumerate() {
                let sent = bytes((i * 2 + c) as u32, size);
                client.send(&sent).unwrap();
                let n = client
                    .recv(&mut buf)
                    .unwrap_or_else(|e| panic!("{peer}: {size} B datagram: no echo: {e}"));
                assert!(buf[..n] == sent, "{peer}: the {size} B echo differs");
            }
        }
    }
}

#[test]
fn a_peer_without_a_udp_server_refuses_a_udp_address() {
    let out = Command::new(env!("CARGO_BIN_EXE_iotask-bench"))
        .args(["serve", "mio", "udp:127.0.0.1:0"])
        .stdin(Stdio::null())
        .output()
        .expect("run the binary");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no UDP server"), "{stderr}");
}

/// A short run of U1 and U1x50: the two UDP servers are measured (datagrams per second,
/// ratio to tokio-ct, CPU per datagram, losses), mio is skipped with a note, and the run
/// succeeds.
#[test]
fn u1_measures_the_udp_peers_and_skips_the_others() {
    let dir = TempDir::new("u1-run");
    let (md, svg) = (dir.0.join("run.md"), dir.0.join("run.svg"));
    let out = Command::new(env!("CARGO_BIN_EXE_iotask-bench"))
        .args([
            "--scenarios",
            "U1,U1x50",
            "--peers",
            "iotask-actor,tokio-ct,mio",
        ])
        .args(["--layout", "unpinned", "--rounds", "1", "--duration", "0.2"])
        .arg("--no-syscalls")
        .arg("--out-md")
        .arg(&md)
        .arg("--out-svg")
        .arg(&svg)
        .stdin(Stdio::null())
        .output()
        .expect("run the harness");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("FAILED"), "{stderr}");
    let report = std::fs::read_to_string(&md).unwrap();
    for scenario in ["U1", "U1x50"] {
        assert!(
            report.contains(&format!(
                "> {scenario}: no server of mio for this transport; skipped."
            )),
            "{report}"
        );
        // | U1 | msg/s | unpinned | 12,345 (1.02×) | 12,100 (ref) | – |
        let row = report
            .lines()
            .find(|l| l.starts_with(&format!("| {scenario} | msg/s | unpinned |")))
            .unwrap_or_else(|| panic!("no {scenario} summary row:\n{report}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert!(
            cells[4].ends_with("×)"),
            "iotask-actor's figure and ratio: {row}"
        );
        assert!(cells[5].ends_with("(ref)"), "tokio-ct's figure: {row}");
        assert_eq!(cells[6], "–", "mio is not measured: {row}");
        // | iotask-actor | unpinned | datagrams/s | p50 µs | … | lost % | server CPU % | CPU µs/datagram | …
        let detail = report
            .split(&format!("### {scenario}: "))
            .nth(1)
            .unwrap_or_else(|| panic!("no {scenario} section:\n{report}"));
        assert!(detail.contains("CPU µs/datagram"), "{detail}");
        for peer in UDP_PEERS {
            let row = detail
                .lines()
                .find(|l| l.starts_with(&format!("| {peer} | unpinned |")))
                .unwrap_or_else(|| panic!("no {peer} row in {scenario}:\n{detail}"));
            let figures: Vec<&str> = row.split('|').map(str::trim).collect();
            let rate: f64 = figures[3].replace(',', "").parse().unwrap_or(0.0);
            assert!(rate > 0.0, "{peer} in {scenario}: no datagrams/s: {row}");
            assert!(
                figures.iter().skip(3).all(|f| *f != "–"),
                "{peer} in {scenario}: a figure is missing: {row}"
            );
        }
    }
}
