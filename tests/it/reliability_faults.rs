//! Faults from outside: a peer that resets in the middle of a transfer or half-closes, an
//! I/O task of a pool shut down under its sockets, an actor that panics with connections
//! queued in its mailbox. Each case is bounded in time and asserts what the user sees.
//!
//! The process-wide cases (descriptor counts, `RLIMIT_NOFILE`, thousands of sockets,
//! signals) live in `tests/reliability_load.rs` and `tests/reliability_signals.rs`.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use iotask::tcp::{self, ListenOptions, TcpSocket};
use iotask::{Event, IoPool, IoTask, Mailbox};

use crate::util::*;

/// How soon an error must reach the user once its cause happened.
const PROMPTLY: Duration = Duration::from_secs(2);

/// Reads from a std stream until EOF or a reset; returns how long that took, or fails the
/// test when the stream is still open after `limit`.
fn wait_closed_by_peer(stream: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return started.elapsed(),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return started.elapsed(),
            Err(e) => panic!("the connection is still open after {limit:?}: {e}"),
        }
        assert!(started.elapsed() < limit, "the peer keeps sending");
    }
}

#[test]
fn a_peer_reset_in_mid_write_fails_the_queued_writes_with_econnreset_or_epipe() {
    let iotask = IoTask::spawn().unwrap();
    let chunk = 256 * 1024;
    let chunks = 64;
    let sockets: Vec<_> = (0..4).map(|_| connected_pair(&iotask)).collect();
    let mut pending = Vec::new();
    for (sock, mut peer) in sockets {
        let port = sock.read_start().unwrap();
        let futures: Vec<_> = (0..chunks)
            .map(|i| sock.write_future(pattern((i * chunk) as u64, chunk)))
            .collect();
        // Take a little, so that the reset comes in mid-transfer, then wait until iotask
        // holds megabytes the kernel would not take.
        let head = read_exact_std(&mut peer, 100_000);
        assert_bytes_eq(&head, &pattern(0, 100_000));
        assert!(
            wait_until(TIMEOUT, || sock.queued_bytes() > 4 << 20),
            "only {} bytes queued",
            sock.queued_bytes()
        );
        socket2::SockRef::from(&peer)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        pending.push((sock, port, futures, peer));
    }

    let started = Instant::now();
    for (sock, port, futures, peer) in pending {
        let queued = sock.queued_bytes();
        drop(peer); // SO_LINGER 0: the close sends a reset.
        let mut ok = 0;
        let mut failed = Vec::new();
        for future in futures {
            match with_timeout(PROMPTLY, move || future.get()) {
                Ok(()) => ok += 1,
                Err(e) => failed.push(e.name().to_owned()),
            }
        }
        assert!(
            !failed.is_empty(),
            "every write succeeded although {queued} bytes were queued at the reset"
        );
        assert!(
            failed.iter().all(|n| n == "ECONNRESET" || n == "EPIPE"),
            "writes ended with {failed:?}"
        );
        assert!(
            ok + failed.len() == chunks && ok < chunks,
            "{ok} ok, {failed:?}"
        );
        // The read side ends too: the reset itself, or an end once the writes took it.
        let (_, end) = recv_to_end(&port);
        assert!(
            ["ECONNRESET", "EPIPE", "EOF"].contains(&end.name()),
            "the port ended with {end:?}"
        );
        // Later writes fail at once, with the connection's error, not SHUTDOWN or a hang.
        let later = with_timeout(PROMPTLY, move || sock.write(b"more".to_vec()));
        let e = later.expect_err("a write after the reset succeeded");
        assert_ne!(e.name(), "SHUTDOWN");
        eprintln!(
            "reset with {queued} bytes queued: {ok} writes ok, {} failed ({}), after {:?}",
            failed.len(),
            failed[0],
            started.elapsed()
        );
    }
    assert!(started.elapsed() < PROMPTLY * 4);
}

#[test]
fn after_the_peer_half_closes_a_port_yields_eof_and_replies_still_go_out() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    let port = sock.read_start().unwrap();
    let request = pattern(0, 1 << 20);
    write_std(&mut peer, &request);
    peer.shutdown(Shutdown::Write).unwrap();

    let (got, end) = recv_to_end(&port);
    assert_bytes_eq(&got, &request);
    assert!(end.is_eof(), "the port ended with {end:?}");
    assert!(port.recv_timeout(TIMEOUT).unwrap_err().is_eof());

    // The other direction is still open: 4 MiB of replies, in 64 writes.
    let reply = pattern(7, 4 << 20);
    let futures: Vec<_> = reply
        .chunks(64 * 1024)
        .map(|c| sock.write_future(c.to_vec()))
        .collect();
    let reader = std::thread::spawn(move || read_to_eof(&mut peer));
    for f in futures {
        with_timeout(TIMEOUT, move || f.get()).expect("a reply after the half-close");
    }
    drop(sock);
    let echoed = join_within(reader, TIMEOUT);
    assert_bytes_eq(&echoed, &reply);
}

#[test]
fn after_a_client_half_closes_an_actor_sees_eof_and_can_still_answer() {
    let iotask = IoTask::spawn().unwrap();
    let mut mailbox: Mailbox = Mailbox::new();
    let server = tcp::bind("127.0.0.1:0", &ListenOptions::new(), &iotask)
        .and_then(|l| l.into_mailbox(&mailbox))
        .unwrap();
    let n = 10;
    let clients: Vec<TcpStream> = (0..n)
        .map(|i| {
            let mut c = TcpStream::connect(server.local_addr()).unwrap();
            c.write_all(&pattern(i, 100_000)).unwrap();
            c.shutdown(Shutdown::Write).unwrap();
            c
        })
        .collect();
    let mut sockets: HashMap<_, (TcpSocket, Vec<u8>)> = HashMap::new();
    let mut answered = 0;
    while answered < n {
        match mailbox.recv_timeout(TIMEOUT).expect("an event") {
            Event::Accepted(sock) => {
                sockets.insert(sock.id(), (sock, Vec::new()));
            }
            Event::Data { socket, data } => sockets.get_mut(&socket).unwrap().1.extend(data),
            Event::Closed { socket, error } => {
                assert!(error.is_eof(), "closed with {error:?}");
                let (sock, got) = sockets.remove(&socket).unwrap();
                assert_eq!(got.len(), 100_000);
                // Answer twice what was asked, then close.
                drop(sock.write_future(got.clone()));
                drop(sock.write_future(got));
                answered += 1;
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    for (i, mut c) in clients.into_iter().enumerate() {
        c.set_read_timeout(Some(TIMEOUT)).unwrap();
        let answer = read_to_eof(&mut c);
        let sent = pattern(i as u64, 100_000);
        assert_bytes_eq(&answer, &[sent.clone(), sent].concat());
    }
    server.stop().unwrap();
}

#[test]
fn shutting_down_one_task_of_a_pool_ends_its_sockets_and_spares_the_others() {
    let pool = IoPool::spawn(2).unwrap();
    let (doomed, doomed_peer) = connected_pair(&pool.tasks()[0]);
    let (spared, mut spared_peer) = connected_pair(&pool.tasks()[1]);
    let doomed_port = doomed.read_start().unwrap();
    let (reading, _reading_peer) = connected_pair(&pool.tasks()[0]);
    let read_future = reading.read_future(Duration::from_secs(3600));
    let big_write = doomed.write_future(vec![1u8; 32 << 20]);
    let spared_port = spared.read_start().unwrap();

    // A pooled echo server, an actor per task.
    let mailboxes: Vec<Mailbox> = vec![Mailbox::new(), Mailbox::new()];
    let server = tcp::bind_pool("127.0.0.1:0", &ListenOptions::new(), &pool)
        .and_then(|l| l.into_mailboxes(&mailboxes))
        .unwrap();
    let addr = server.local_addr();
    let stops: Vec<_> = mailboxes.iter().map(Mailbox::sender).collect();
    let (ends_tx, ends) = mpsc::channel();
    let actors: Vec<_> = mailboxes
        .into_iter()
        .map(|mailbox| {
            let ends_tx = ends_tx.clone();
            std::thread::spawn(move || echo_actor(mailbox, ends_tx))
        })
        .collect();
    drop(ends_tx);
    let before: Vec<TcpStream> = (0..20).map(|_| echo_client(addr)).collect();

    let started = Instant::now();
    pool.tasks()[0].shutdown();
    assert!(!pool.tasks()[0].is_running() && pool.tasks()[1].is_running());

    // Everything on task 0 ends with SHUTDOWN, promptly.
    let e = doomed_port.recv_timeout(PROMPTLY).unwrap_err();
    assert_eq!(e.name(), "SHUTDOWN");
    let e = with_timeout(PROMPTLY, move || big_write.get()).unwrap_err();
    assert_eq!(e.name(), "SHUTDOWN");
    let e = with_timeout(PROMPTLY, move || read_future.get()).unwrap_err();
    assert_eq!(e.name(), "SHUTDOWN");
    assert_eq!(doomed.write(b"x".to_vec()).unwrap_err().name(), "SHUTDOWN");
    match tcp::connect(addr, &pool.tasks()[0]) {
        Err(tcp::ConnectError::Generic { name, .. }) => assert_eq!(name, "SHUTDOWN"),
        other => panic!("connect on the stopped task: {other:?}"),
    }
    assert!(started.elapsed() < PROMPTLY * 2);

    // Task 1 still serves its sockets.
    write_std(&mut spared_peer, b"still there?");
    assert_eq!(recv_exact(&spared_port, 12), b"still there?");
    spared.write(b"yes".to_vec()).unwrap();
    assert_eq!(read_exact_std(&mut spared_peer, 3), b"yes");

    // The server's connections on task 0 are closed; those on task 1 still echo.
    let (mut echoing, mut closed) = (0, 0);
    for mut c in before {
        if echo_once(&mut c) {
            echoing += 1;
        } else {
            closed += 1;
        }
    }
    eprintln!("pool: {closed} connections on the stopped task closed, {echoing} still echo");
    assert!(
        echoing > 0 && closed > 0,
        "{echoing} echoing, {closed} closed"
    );
    drop(server);
    drop(doomed_peer);
    pool.shutdown();
    for stop in stops {
        let _ = stop.send(());
    }
    for a in actors {
        join_within(a, TIMEOUT);
    }
    let ends: Vec<String> = ends.try_iter().collect();
    assert!(ends.iter().any(|n| n == "SHUTDOWN"), "{ends:?}");
}

/// A pool listener stops as a whole when one of its tasks stops, as a serving thread
/// returns when any of its sockets stops: the server reports the failure (`SHUTDOWN`)
/// instead of running on with part of its loops, and frees its port; connections already
/// on the tasks still running keep working.
#[test]
fn a_pool_listener_stops_as_a_whole_when_one_task_stops() {
    let pool = IoPool::spawn(2).unwrap();
    let mailboxes: Vec<Mailbox> = vec![Mailbox::new(), Mailbox::new()];
    let server = tcp::bind_pool("127.0.0.1:0", &ListenOptions::new(), &pool)
        .and_then(|l| l.into_mailboxes(&mailboxes))
        .unwrap();
    let addr = server.local_addr();
    let stops: Vec<_> = mailboxes.iter().map(Mailbox::sender).collect();
    let (ends_tx, _ends) = mpsc::channel();
    let actors: Vec<_> = mailboxes
        .into_iter()
        .map(|mailbox| {
            let ends_tx = ends_tx.clone();
            std::thread::spawn(move || echo_actor(mailbox, ends_tx))
        })
        .collect();
    // Connections on both tasks before the shutdown.
    let mut clients: Vec<TcpStream> = (0..20).map(|_| echo_client(addr)).collect();
    assert!(wait_until(TIMEOUT, || server.kill_chan().num_connections() == 20));
    pool.tasks()[0].shutdown();
    match server.wait() {
        Err(tcp::ListenError::Generic { name, .. }) => assert_eq!(name, "SHUTDOWN"),
        other => panic!("expected the pool listener stopped with SHUTDOWN, got {other:?}"),
    }
    assert!(
        TcpStream::connect(addr).is_err(),
        "the port is free once the listener stopped"
    );
    let survivors = clients
        .iter_mut()
        .map(echo_once)
        .filter(|&echoed| echoed)
        .count();
    assert!(
        (1..20).contains(&survivors),
        "the connections on the running task still echo, the others are closed: {survivors}"
    );
    pool.shutdown();
    for stop in stops {
        let _ = stop.send(());
    }
    for a in actors {
        join_within(a, TIMEOUT);
    }
}

/// Echoes every connection of `mailbox` until nothing happens for a while; reports the name
/// of each `Closed` event.
fn echo_actor(mut mailbox: Mailbox, ends: mpsc::Sender<String>) {
    let mut sockets = HashMap::new();
    while let Some(event) = mailbox.recv_timeout(TIMEOUT) {
        match event {
            Event::Accepted(sock) => {
                sockets.insert(sock.id(), sock);
            }
            Event::Data { socket, data } => {
                if let Some(sock) = sockets.get(&socket) {
                    drop(sock.write_future(data));
                }
            }
            Event::Closed { socket, error } => {
                sockets.remove(&socket);
                let _ = ends.send(error.name().to_owned());
            }
            Event::Message(()) => return,
            _ => {}
        }
    }
}

fn echo_client(addr: SocketAddr) -> TcpStream {
    let c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    c
}

/// Sends a line and reads its echo: true if it came back, false if the connection was
/// closed (EOF or reset); fails on a timeout.
fn echo_once(c: &mut TcpStream) -> bool {
    if c.write_all(b"ping\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 5];
    match c.read_exact(&mut buf) {
        Ok(()) => {
            assert_eq!(&buf, b"ping\n");
            true
        }
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
            ) =>
        {
            false
        }
        Err(e) => panic!("echo: {e}"),
    }
}

#[test]
fn an_actor_that_panics_with_connections_in_its_mailbox_closes_them() {
    let iotask = IoTask::spawn().unwrap();
    let mailbox: Mailbox = Mailbox::new();
    let server = tcp::bind("127.0.0.1:0", &ListenOptions::new(), &iotask)
        .and_then(|l| l.into_mailbox(&mailbox))
        .unwrap();
    let addr = server.local_addr();
    // Another thread keeps a sender for the whole test.
    let (release_tx, release) = mpsc::channel::<()>();
    let keeper = std::thread::spawn({
        let sender = mailbox.sender();
        move || {
            let _ = release.recv_timeout(TIMEOUT * 3);
            drop(sender);
        }
    });
    let n = 20;
    let mut clients: Vec<TcpStream> = (0..n)
        .map(|i| {
            let mut c = echo_client(addr);
            c.write_all(format!("request {i}").as_bytes()).unwrap();
            c
        })
        .collect();
    assert!(wait_until(TIMEOUT, || server.kill_chan().num_connections() == n));

    let actor = std::thread::spawn(move || {
        let mut mailbox = mailbox;
        // Takes two connections, then dies with them and the rest still queued.
        let mut held = Vec::new();
        while held.len() < 2 {
            if let Some(Event::Accepted(sock)) = mailbox.recv_timeout(TIMEOUT) {
                held.push(sock);
            }
        }
        panic!("the actor dies holding {} sockets", held.len());
    });
    assert!(
        join_within_result(actor).is_err(),
        "the actor did not panic"
    );
    let died = Instant::now();
    let mut worst = Duration::ZERO;
    for c in &mut clients {
        worst = worst.max(wait_closed_by_peer(c, PROMPTLY));
    }
    eprintln!("actor died: {n} queued connections closed, the last after {worst:?}");
    // The listener stops at its next connection: that one is closed or refused.
    match TcpStream::connect(addr) {
        Ok(mut late) => {
            wait_closed_by_peer(&mut late, PROMPTLY);
        }
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused),
    }
    let stopped = with_timeout(TIMEOUT, move || server.wait());
    assert!(stopped.is_err(), "the server of a dead actor ended with Ok");
    assert!(died.elapsed() < PROMPTLY * 2);
    release_tx.send(()).unwrap();
    join_within(keeper, TIMEOUT);
}

/// Joins a thread that is expected to panic, within [`TIMEOUT`].
fn join_within_result<T: Send + 'static>(
    handle: std::thread::JoinHandle<T>,
) -> std::thread::Result<T> {
    assert!(
        wait_until(TIMEOUT, || handle.is_finished()),
        "the thread hangs"
    );
    handle.join()
}
