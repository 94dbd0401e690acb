//! Write windows: a peer that sends without reading cannot make a server queue without
//! bound, and `queued_bytes` shows what waits.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use iotask::IoTask;
use iotask::tcp::{self, ListenOptions, TcpSocket};

const WAIT: Duration = Duration::from_secs(10);

/// Starts an echo server whose handler never waits for its writes, as an actor would.
fn echo_server(iotask: &IoTask, options: ListenOptions) -> (tcp::KillChan, mpsc::Receiver<()>) {
    let (kill_tx, kill_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let iotask = iotask.clone();
    std::thread::spawn(move || {
        tcp::bind("127.0.0.1:0", &options, &iotask).and_then(|l| {
            l.serve(
                |kill| kill_tx.send(kill).unwrap(),
                move |conn, _| {
                    let done = done_tx.clone();
                    std::thread::spawn(move || {
                        let sock = tcp::accept(conn).unwrap();
                        let port = sock.read_start().unwrap();
                        while let Ok(chunk) = port.recv() {
                            drop(sock.write_future(chunk));
                        }
                        let _ = done.send(());
                    });
                },
            )
        })
    });
    (kill_rx.recv_timeout(WAIT).unwrap(), done_rx)
}

/// Pushes bytes from a non-blocking client that never reads, until the kernel stops taking
/// them for a while; returns how many it took.
fn flood(client: &mut TcpStream, limit: usize) -> usize {
    client.set_nonblocking(true).unwrap();
    let block = vec![7u8; 64 * 1024];
    let mut sent = 0;
    let mut idle_since = Instant::now();
    while sent < limit && idle_since.elapsed() < Duration::from_millis(500) {
        match client.write(&block) {
            Ok(n) => {
                sent += n;
                idle_since = Instant::now();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("flood failed: {e}"),
        }
    }
    sent
}

#[test]
fn a_client_that_never_reads_is_throttled_by_the_write_window() {
    let iotask = IoTask::spawn().unwrap();
    let (kill, _done) = echo_server(&iotask, ListenOptions::new());
    let mut client = TcpStream::connect(kill.local_addr()).unwrap();
    let limit = 256 * 1024 * 1024;
    let sent = flood(&mut client, limit);
    // Kernel buffers on both sides plus one read window and one write window: far below
    // what an unbounded queue would take.
    assert!(
        sent < 48 * 1024 * 1024,
        "the server queued {sent} bytes for a peer that never reads"
    );

    // Reading the echoes lets the flood go on.
    client.set_nonblocking(false).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = vec![0u8; 1024 * 1024];
    let mut got = 0;
    while got < 8 * 1024 * 1024 {
        got += client.read(&mut buf).unwrap();
    }
    let more = flood(&mut client, 4 * 1024 * 1024);
    assert!(more > 0, "the server never read again");
}

#[test]
fn without_a_window_the_queue_grows_and_queued_bytes_shows_it() {
    let iotask = IoTask::spawn().unwrap();
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sock: TcpSocket = tcp::connect(server.local_addr().unwrap(), &iotask).unwrap();
    let (mut peer, _) = server.accept().unwrap();
    assert_eq!(sock.queued_bytes(), 0);

    // Connected sockets have no window: reading goes on while 32 MiB wait to be written.
    let port = sock.read_start().unwrap();
    let writes: Vec<_> = (0..32)
        .map(|_| sock.write_future(vec![1u8; 1024 * 1024]))
        .collect();
    let deadline = Instant::now() + WAIT;
    while sock.queued_bytes() < 16 * 1024 * 1024 {
        assert!(
            Instant::now() < deadline,
            "queued_bytes stayed at {}",
            sock.queued_bytes()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    peer.write_all(b"still reading").unwrap();
    assert_eq!(port.recv_timeout(WAIT).unwrap(), b"still reading");

    // With a window, the socket stops being read until the queue drains to half of it.
    sock.set_write_window(Some(1024 * 1024)).unwrap();
    peer.write_all(b"held back").unwrap();
    assert!(
        port.recv_timeout(Duration::from_millis(300))
            .unwrap_err()
            .is_timeout()
    );
    let reader = std::thread::spawn(move || {
        let mut sink = vec![0u8; 1024 * 1024];
        let mut total = 0;
        while total < 32 * 1024 * 1024 {
            total += peer.read(&mut sink).unwrap();
        }
        peer
    });
    assert_eq!(port.recv_timeout(WAIT).unwrap(), b"held back");
    for w in writes {
        w.get().unwrap();
    }
    assert_eq!(sock.queued_bytes(), 0);
    let _peer = reader.join().unwrap();
    drop(port);
    drop(sock);
}

#[test]
fn queued_bytes_is_zero_after_close() {
    let iotask = IoTask::spawn().unwrap();
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sock = tcp::connect(server.local_addr().unwrap(), &iotask).unwrap();
    let (_peer, _) = server.accept().unwrap();
    drop(sock.write_future(vec![0u8; 64 * 1024 * 1024]));
    let deadline = Instant::now() + WAIT;
    while sock.queued_bytes() == 0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
    iotask.shutdown();
    assert_eq!(sock.queued_bytes(), 0);
}
