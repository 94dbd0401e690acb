//! Backpressure: a reader that does not receive stops its socket being read, so a flooding
//! peer is slowed by TCP flow control; receiving lets it go on. Nothing is lost on the way.

use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use iotask::tcp::TcpSocket;
use iotask::{Event, IoTask, Mailbox};

use crate::util::*;

const MIB: usize = 1024 * 1024;
/// The most a flooding client may push into a reader that receives nothing: the read window
/// plus the kernel's buffers on both sides, with a wide margin.
const BOUND: usize = 32 * MIB;
/// What the client pushes once the reader receives: more than `BOUND`, so it cannot all sit
/// in buffers.
const MORE: usize = 40 * MIB;
/// How long the client must make no progress to count as blocked.
const STALL: Duration = Duration::from_millis(300);

/// The size of one read, the most a reader can be handed beyond its window per socket.
const READ_BUFFER: usize = 64 * 1024;

/// How many of the `pushed` bytes the I/O task has taken out of the kernel: what neither the
/// client's send queue nor each server socket's receive queue still holds.
fn taken_by_iotask(pushed: usize, pairs: &[(&TcpSocket, &TcpStream)]) -> usize {
    let mut in_kernel = 0;
    for (sock, client) in pairs {
        let (_, server_rx) = tcp_queues(sock.local_addr().unwrap(), sock.peer_addr().unwrap())
            .expect("the server socket in /proc/net/tcp");
        let (client_tx, _) = tcp_queues(client.local_addr().unwrap(), client.peer_addr().unwrap())
            .expect("the client socket in /proc/net/tcp");
        in_kernel += server_rx + client_tx;
    }
    pushed.saturating_sub(in_kernel)
}

/// Floods `client` into `sock`'s port without receiving, checks the push stays bounded and
/// the port holds about one window, then receives on another thread and checks the client
/// can push more than any buffer holds; finally checks every byte.
fn port_backpressure(window: usize, sock: TcpSocket, mut client: TcpStream, label: &str) {
    let port = sock.read_start().unwrap();
    let mut offset = 0u64;
    let first = flood(&mut client, &mut offset, STALL, BOUND);
    eprintln!("{label}: client pushed {first} bytes into a port nobody receives from");
    assert!(
        first < BOUND,
        "{label}: the client pushed {first} bytes: the socket is read without bound"
    );
    let held = taken_by_iotask(first, &[(&sock, &client)]);
    eprintln!("{label}: the port holds {held} bytes (window {window})");
    assert!(
        held <= window + READ_BUFFER,
        "{label}: the port holds {held} bytes, more than its {window} byte window plus one read"
    );

    // Once somebody receives, the client can push far more than any buffer holds.
    let receiver = std::thread::spawn(move || recv_to_end(&port));
    write_std(&mut client, &pattern(offset, MORE));
    offset += MORE as u64;
    client.shutdown(Shutdown::Write).unwrap();
    let (got, end) = join_within(receiver, Duration::from_secs(60));
    assert!(end.is_eof(), "{label}: ended with {end:?}");
    assert_pattern(&got, offset as usize);
}

#[test]
fn a_port_never_received_from_bounds_what_the_peer_can_push() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, client) = connected_pair(&iotask);
    port_backpressure(MIB, sock, client, "default window, connected socket");
}

#[test]
fn an_accepted_socket_is_bounded_too() {
    let iotask = IoTask::spawn().unwrap();
    let (kill, handle, conns) = spawn_listener(&iotask);
    let (sock, client) = accepted_pair(&conns, kill.local_addr());
    port_backpressure(MIB, sock, client, "default window, accepted socket");
    assert_eq!(stop_listener(&kill, handle), Ok(()));
}

#[test]
fn a_small_read_window_bounds_what_the_peer_can_push() {
    let iotask = IoTask::builder().read_window(64 * 1024).spawn().unwrap();
    let (sock, client) = connected_pair(&iotask);
    port_backpressure(64 * 1024, sock, client, "64 KiB window");
}

#[test]
fn a_mailbox_never_received_from_bounds_what_its_sockets_peers_can_push() {
    let iotask = IoTask::spawn().unwrap();
    let mut mailbox: Mailbox<()> = Mailbox::with_window(64 * 1024);
    let mut pairs: Vec<(TcpSocket, TcpStream)> = (0..2).map(|_| connected_pair(&iotask)).collect();
    for (sock, _) in &pairs {
        sock.attach(&mailbox).unwrap();
    }
    let ids: Vec<_> = pairs.iter().map(|(s, _)| s.id()).collect();
    let mut offsets = [0u64; 2];
    let mut first = 0;
    for (i, (_, client)) in pairs.iter_mut().enumerate() {
        first += flood(client, &mut offsets[i], STALL, BOUND);
    }
    eprintln!("mailbox: clients pushed {first} bytes into a mailbox nobody receives from");
    assert!(
        first < BOUND,
        "clients pushed {first} bytes: the mailbox's sockets are read without bound"
    );
    let refs: Vec<_> = pairs.iter().map(|(s, c)| (s, c)).collect();
    let held = taken_by_iotask(first, &refs);
    eprintln!("mailbox: holds {held} bytes (window 64 KiB, 2 sockets)");
    assert!(
        held <= 64 * 1024 + 2 * READ_BUFFER,
        "the mailbox holds {held} bytes, more than its window plus one read per socket"
    );

    // Once the actor receives, the clients can push far more than any buffer holds.
    let actor = std::thread::spawn(move || {
        let mut got: Vec<Vec<u8>> = vec![Vec::new(); 2];
        let mut closed = 0;
        while closed < 2 {
            match mailbox.recv_timeout(TIMEOUT).expect("mailbox stalled") {
                Event::Data { socket, data } => {
                    let i = ids.iter().position(|&id| id == socket).expect("known id");
                    got[i].extend(data);
                }
                Event::Closed { error, .. } => {
                    assert!(error.is_eof(), "closed with {error:?}");
                    closed += 1;
                }
                Event::Message(()) => panic!("no messages were sent"),
                other => panic!("unexpected event: {other:?}"),
            }
        }
        got
    });
    let (socks, clients): (Vec<_>, Vec<_>) = pairs.into_iter().unzip();
    let writers: Vec<_> = clients
        .into_iter()
        .zip(offsets)
        .map(|(mut client, offset)| {
            std::thread::spawn(move || {
                write_std(&mut client, &pattern(offset, MORE / 2));
                client.shutdown(Shutdown::Write).unwrap();
                offset + (MORE / 2) as u64
            })
        })
        .collect();
    let ends: Vec<u64> = writers
        .into_iter()
        .map(|w| join_within(w, Duration::from_secs(60)))
        .collect();
    let got = join_within(actor, TIMEOUT);
    drop(socks);
    for i in 0..2 {
        assert_pattern(&got[i], ends[i] as usize);
    }
}

/// Starts a peer thread writing `total` pattern bytes then closing, and waits until the
/// I/O task has stopped reading `sock`: the kernel then holds a lot of the stream (in the
/// client's send queue and the socket's receive queue), which it never does for a socket
/// being read.
fn fill_until_paused(
    sock: &TcpSocket,
    client: TcpStream,
    total: usize,
) -> std::thread::JoinHandle<()> {
    let client_addrs = (client.local_addr().unwrap(), client.peer_addr().unwrap());
    let writer = std::thread::spawn(move || {
        let mut client = client;
        // A test that drops the socket early makes this fail; the tests that read
        // everything check the bytes themselves.
        let _ = std::io::Write::write_all(&mut client, &pattern(0, total));
    });
    let server_addrs = (sock.local_addr().unwrap(), sock.peer_addr().unwrap());
    let in_kernel = || {
        let (client_tx, _) = tcp_queues(client_addrs.0, client_addrs.1).unwrap_or_default();
        let (_, server_rx) = tcp_queues(server_addrs.0, server_addrs.1).unwrap_or_default();
        client_tx + server_rx
    };
    assert!(
        wait_until(TIMEOUT, || in_kernel() >= MIB),
        "the socket was never paused: the kernel holds only {} bytes",
        in_kernel()
    );
    writer
}

#[test]
fn read_stop_of_a_full_port_then_read_start_reads_everything() {
    let iotask = IoTask::builder().read_window(64 * 1024).spawn().unwrap();
    let (sock, client) = connected_pair(&iotask);
    let port = sock.read_start().unwrap();
    let total = 4 * MIB;
    let writer = fill_until_paused(&sock, client, total);
    sock.read_stop(port).unwrap();
    let port = sock.read_start().unwrap();
    let (got, end) = recv_to_end(&port);
    assert!(end.is_eof(), "ended with {end:?}");
    assert_pattern(&got, total);
    join_within(writer, TIMEOUT);
}

#[test]
fn a_dropped_full_port_does_not_stop_the_next_reader() {
    let iotask = IoTask::builder().read_window(64 * 1024).spawn().unwrap();
    let (sock, client) = connected_pair(&iotask);
    let port = sock.read_start().unwrap();
    let writer = fill_until_paused(&sock, client, 4 * MIB);
    // Dropping the port discards what it holds; the socket must still be readable.
    drop(port);
    let port = sock.read_start().unwrap();
    match port.recv_timeout(TIMEOUT) {
        Ok(chunk) => assert!(!chunk.is_empty()),
        Err(e) => panic!(
            "after a full port was dropped, a new port gets nothing ({e}): the socket stays \
             paused for the dropped port's window"
        ),
    }
    let (_, end) = recv_to_end(&port);
    assert!(end.is_eof());
    join_within(writer, TIMEOUT);
}

#[test]
fn a_dropped_full_port_does_not_stop_a_later_read() {
    let iotask = IoTask::builder().read_window(64 * 1024).spawn().unwrap();
    let (sock, client) = connected_pair(&iotask);
    let port = sock.read_start().unwrap();
    let writer = fill_until_paused(&sock, client, 4 * MIB);
    drop(port);
    match sock.read(TIMEOUT) {
        Ok(chunk) => assert!(!chunk.is_empty()),
        Err(e) => panic!("after a full port was dropped, read() gets nothing: {e}"),
    }
    drop(sock);
    join_within(writer, TIMEOUT);
}

#[test]
fn detaching_from_a_full_mailbox_lets_a_port_read_on() {
    let iotask = IoTask::spawn().unwrap();
    let mut mailbox: Mailbox<()> = Mailbox::with_window(64 * 1024);
    let (sock, client) = connected_pair(&iotask);
    sock.attach(&mailbox).unwrap();
    let total = 4 * MIB;
    let writer = fill_until_paused(&sock, client, total);
    sock.detach().unwrap();
    // The mailbox is still full and nobody receives from it; the port must read on.
    let port = sock.read_start().unwrap();
    let (from_port, end) = {
        let mut got = Vec::new();
        loop {
            match port.recv_timeout(TIMEOUT) {
                Ok(chunk) => got.extend(chunk),
                Err(e) if e.is_timeout() => panic!(
                    "a port started after detaching from a full mailbox got {} bytes, then \
                     nothing: the socket stays paused for the mailbox's window",
                    got.len()
                ),
                Err(e) => break (got, e),
            }
        }
    };
    assert!(end.is_eof());
    // The mailbox holds the start of the stream, the port the rest.
    let mut all = Vec::new();
    while let Some(event) = mailbox.try_recv() {
        match event {
            Event::Data { data, .. } => all.extend(data),
            other => panic!("unexpected {other:?}"),
        }
    }
    all.extend(from_port);
    assert_pattern(&all, total);
    join_within(writer, TIMEOUT);
}

#[test]
fn a_dropped_full_mailbox_does_not_stop_the_next_reader() {
    let iotask = IoTask::spawn().unwrap();
    let mailbox: Mailbox<()> = Mailbox::with_window(64 * 1024);
    let (sock, client) = connected_pair(&iotask);
    sock.attach(&mailbox).unwrap();
    let writer = fill_until_paused(&sock, client, 4 * MIB);
    drop(mailbox);
    let port = sock.read_start().unwrap();
    match port.recv_timeout(TIMEOUT) {
        Ok(chunk) => assert!(!chunk.is_empty()),
        Err(e) => panic!("after a full mailbox was dropped, a new port gets nothing: {e}"),
    }
    let (_, end) = recv_to_end(&port);
    assert!(end.is_eof());
    join_within(writer, TIMEOUT);
}
