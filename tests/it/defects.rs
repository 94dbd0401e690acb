//! The engine defects found by trying the crate as a demanding user would (the issue "One
//! engine under every socket family", section 4), one test each. Each failed before its fix.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use iotask::tcp::{self, ConnectError, ListenOptions};
use iotask::{IoTask, Mailbox};

use crate::util::*;

/// A TCP listener whose accept queue is full and never drained: Linux then drops further
/// SYNs, so a connect to it neither succeeds nor fails until the kernel gives up (about two
/// minutes). Returns the listener (keep it alive), the filler connections and the address.
fn black_hole() -> (socket2::Socket, Vec<TcpStream>, SocketAddr) {
    let listener =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    listener
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    // A backlog of 0 holds one completed connection; fill it (and a SYN or two more).
    let mut fillers = Vec::new();
    for _ in 0..2 {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            fillers.push(s);
        }
    }
    (listener, fillers, addr)
}

/// Defect 1: `read_stop`, then a read future dropped before the loop served it, then
/// `read_start` gave the stashed chunks out of order (A B C came back as B C A).
#[test]
fn stashed_chunks_come_back_in_order_after_a_dropped_read_future() {
    let iotask = IoTask::spawn().unwrap();
    for round in 0..20 {
        let (sock, mut peer) = connected_pair(&iotask);
        // Sent before anyone reads, so the loop reads it in several full 64 KiB chunks in
        // one cycle and the port holds a few of them when it is stopped.
        let data = pattern(round, 600 * 1024);
        peer.write_all(&data).unwrap();
        let port = sock.read_start().unwrap();
        let first = port.recv_timeout(TIMEOUT).expect("a first chunk");
        sock.read_stop(port).unwrap();
        drop(sock.read_future(TIMEOUT));
        let port = sock.read_start().unwrap();
        let rest = recv_exact(&port, data.len() - first.len());
        assert_bytes_eq(&rest, &data[first.len()..]);
    }
}

/// Defect 2: a `listen_into` actor that panicked (or dropped its mailbox) left the
/// connections still queued in the mailbox open for as long as any `MailboxSender` lived:
/// their clients got no reply and no FIN.
#[test]
fn a_dropped_mailbox_closes_the_connections_it_still_holds() {
    let iotask = IoTask::spawn().unwrap();
    let mailbox: Mailbox<()> = Mailbox::new();
    let sender = mailbox.sender();
    let server = tcp::bind("127.0.0.1:0", &ListenOptions::new(), &iotask)
        .unwrap()
        .into_mailbox(&mailbox)
        .unwrap();
    let mut clients: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut c = TcpStream::connect(server.local_addr()).unwrap();
            c.set_read_timeout(Some(TIMEOUT)).unwrap();
            c.write_all(b"hello?").unwrap();
            c
        })
        .collect();
    assert!(
        wait_until(TIMEOUT, || server.kill_chan().num_connections() == 3),
        "the three connections were accepted"
    );
    // The actor dies without ever receiving its events.
    let actor = std::thread::spawn(move || {
        let _mailbox = mailbox;
        panic!("the actor fails");
    });
    assert!(actor.join().is_err());
    for client in &mut clients {
        let mut buf = [0; 16];
        match client.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("expected the connection closed, got {other:?}"),
        }
    }
    assert!(wait_until(TIMEOUT, || server.kill_chan().num_connections() == 0));
    // The sender outlived the mailbox: what it sends now comes back.
    assert_eq!(sender.send(()), Err(()));
    drop(server);
}

/// Defect 3: a `Duration::MAX` drain or linger timeout made the I/O thread panic on an
/// `Instant` overflow the first time a socket closed; every later call then hung while
/// `is_running()` said true.
#[test]
fn duration_max_settings_do_not_kill_the_loop() {
    let iotask = IoTask::builder()
        .drain_timeout(Duration::MAX)
        .linger_timeout(Duration::MAX)
        .spawn()
        .unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    sock.write(b"last words".to_vec()).unwrap();
    drop(sock);
    let mut got = [0; 10];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"last words");
    drop(peer);
    // The loop is alive and serves the next socket.
    let (sock, mut peer) = connected_pair(&iotask);
    peer.write_all(b"ping").unwrap();
    assert_eq!(sock.read(TIMEOUT).unwrap(), b"ping");
    drop(peer);
    let end = with_timeout(TIMEOUT, move || sock.read(Duration::MAX));
    assert_eq!(
        end.unwrap_err().name(),
        "EOF",
        "a read with no deadline ends with the stream"
    );
    assert!(iotask.is_running());
}

/// Defect 3, second part: a spin of `Duration::MAX` spins without ever overflowing.
#[test]
fn a_spin_of_duration_max_still_serves() {
    let iotask = IoTask::builder().spin(Duration::MAX).spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    peer.write_all(b"spin").unwrap();
    assert_eq!(sock.read(TIMEOUT).unwrap(), b"spin");
    iotask.shutdown();
    assert!(!iotask.is_running());
}

/// Defect 4: `connect` blocked the caller's thread in the kernel, so `IoTask::shutdown`
/// could not end a connect to a black-holed address (the kernel's ~2 minutes).
#[test]
fn shutdown_ends_connects_in_progress() {
    let (_listener, _fillers, addr) = black_hole();
    let iotask = IoTask::spawn().unwrap();
    let pending: Vec<_> = (0..3)
        .map(|_| {
            let iotask = iotask.clone();
            std::thread::spawn(move || tcp::connect(addr, &iotask))
        })
        .collect();
    let future = tcp::connect_future(addr, &iotask);
    // Let the connects reach the loop; they cannot complete.
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    iotask.shutdown();
    for t in pending {
        match join_within(t, TIMEOUT) {
            Err(ConnectError::Generic { name, .. }) => assert_eq!(name, "SHUTDOWN"),
            other => panic!("expected SHUTDOWN, got {other:?}"),
        }
    }
    match future.get() {
        Err(ConnectError::Generic { name, .. }) => assert_eq!(name, "SHUTDOWN"),
        other => panic!("expected SHUTDOWN, got {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(5));
}

/// Defect 4: a connect timeout is kept by the loop, and async code can connect without
/// blocking a thread.
#[test]
fn connects_time_out_and_can_be_awaited() {
    let (_listener, _fillers, addr) = black_hole();
    let iotask = IoTask::spawn().unwrap();
    let start = Instant::now();
    match tcp::connect_timeout(addr, Duration::from_millis(200), &iotask) {
        Err(ConnectError::Generic { name, .. }) => assert_eq!(name, "ETIMEDOUT"),
        other => panic!("expected ETIMEDOUT, got {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(5));

    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = server.local_addr().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let sock = runtime.block_on(async {
        tokio::time::timeout(TIMEOUT, tcp::connect_future(target, &iotask))
            .await
            .expect("the connect completes")
    });
    let sock = sock.unwrap();
    assert_eq!(sock.peer_addr().unwrap(), target);
    assert!(sock.nodelay().unwrap(), "connected sockets get TCP_NODELAY");
    let refused = tcp::connect_future(refused_addr(), &iotask).get();
    assert_eq!(refused.unwrap_err(), ConnectError::ConnectionRefused);
}

/// Defect 6: an error converted to `io::Error` and back lost its name (`SHUTDOWN` came
/// back as `ConnectionAborted`).
#[test]
fn errors_keep_their_names_through_io_error() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, _peer) = connected_pair(&iotask);
    iotask.shutdown();
    let e = sock.write(b"x".to_vec()).unwrap_err();
    assert_eq!(e.name(), "SHUTDOWN");
    let io: std::io::Error = e.clone().into();
    assert_eq!(io.kind(), ErrorKind::ConnectionAborted);
    assert_eq!(iotask::Error::from(io), e);
}

/// Nothing is lost while one thread waits in `read` on a stream whose events all come to
/// a mailbox actor that is busy: a pending `ReadFuture` owns the reads (`BUSY` for others).
#[test]
fn a_read_future_holding_a_chunk_keeps_other_readers_out() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    let future = sock.read_future(TIMEOUT);
    peer.write_all(b"first").unwrap();
    // The chunk reaches the future's slot; until the future is read or dropped, it owns the
    // stream's reads.
    assert!(wait_until(TIMEOUT, || {
        matches!(sock.read_start(), Err(e) if e.name() == "BUSY")
    }));
    drop(future);
    peer.write_all(b" second").unwrap();
    let port = sock.read_start().unwrap();
    assert_eq!(recv_exact(&port, 12), b"first second");
}

#[test]
fn an_event_carries_accepted_sockets_of_either_family() {
    let iotask = IoTask::spawn().unwrap();
    let mut mailbox: Mailbox = Mailbox::new();
    let server = tcp::bind("127.0.0.1:0", &ListenOptions::new(), &iotask)
        .unwrap()
        .into_mailbox(&mailbox)
        .unwrap();
    let _client = TcpStream::connect(server.local_addr()).unwrap();
    let event = mailbox.recv_timeout(TIMEOUT).expect("an event");
    let event = match event.into_accepted::<iotask::unix::Unix>() {
        Ok(sock) => panic!("a TCP connection came as a Unix one: {sock:?}"),
        Err(event) => event,
    };
    let sock = event
        .into_accepted::<tcp::Tcp>()
        .expect("an accepted TCP socket");
    assert_eq!(sock.local_addr().unwrap(), server.local_addr());
}
