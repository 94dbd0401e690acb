//! `IoTask::shutdown` and dropping the last `IoTask` handle: everything pending ends with
//! `SHUTDOWN`, promptly, and every later operation fails the same way.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use iotask::tcp::{self, ConnectError, ListenError, TcpError, TcpSocket, WriteFuture};
use iotask::{Event, IoTask, Mailbox};

use crate::util::*;

const PROMPTLY: Duration = Duration::from_secs(2);

fn is_shutdown(e: &TcpError) -> bool {
    e.name() == "SHUTDOWN"
}

/// Everything a user can have pending on a task: a receive blocked in another thread, a
/// large write stuck behind a peer that does not read, a read future, a mailbox.
struct Pending {
    blocked_recv: mpsc::Receiver<Result<Vec<u8>, TcpError>>,
    big_write: WriteFuture,
    read_future: iotask::tcp::ReadFuture,
    mailbox: Mailbox<()>,
    socks: Vec<TcpSocket>,
    _peers: Vec<std::net::TcpStream>,
}

fn make_pending(iotask: &IoTask) -> Pending {
    let (reading, peer_a) = connected_pair(iotask);
    let port = reading.read_start().unwrap();
    let (tx, blocked_recv) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(port.recv());
    });
    let (writing, peer_b) = connected_pair(iotask);
    let big_write = writing.write_future(vec![7u8; 64 * 1024 * 1024]);
    let (future_reading, peer_c) = connected_pair(iotask);
    let read_future = future_reading.read_future(Duration::from_secs(3600));
    let (attached, peer_d) = connected_pair(iotask);
    let mailbox = Mailbox::new();
    attached.attach(&mailbox).unwrap();
    Pending {
        blocked_recv,
        big_write,
        read_future,
        mailbox,
        socks: vec![reading, writing, future_reading, attached],
        _peers: vec![peer_a, peer_b, peer_c, peer_d],
    }
}

/// Checks that everything pending ended with `SHUTDOWN`, and that later operations fail.
fn check_pending_ended(pending: Pending, started: Instant) {
    let Pending {
        blocked_recv,
        big_write,
        read_future,
        mut mailbox,
        socks,
        _peers,
    } = pending;
    let e = blocked_recv
        .recv_timeout(PROMPTLY)
        .expect("a recv blocked in another thread did not end")
        .expect_err("the blocked recv got data");
    assert!(is_shutdown(&e), "blocked recv ended with {e:?}");
    let e = with_timeout(PROMPTLY, move || big_write.get()).expect_err("the write succeeded");
    assert!(is_shutdown(&e), "pending write ended with {e:?}");
    let e = with_timeout(PROMPTLY, move || read_future.get()).expect_err("the read got data");
    assert!(is_shutdown(&e), "pending read future ended with {e:?}");
    match mailbox.recv_timeout(PROMPTLY) {
        Some(Event::Closed { socket, error }) => {
            assert_eq!(socket, socks[3].id());
            assert!(is_shutdown(&error), "mailbox socket closed with {error:?}");
        }
        other => panic!("the mailbox got {other:?} instead of Closed"),
    }
    assert!(
        started.elapsed() < PROMPTLY * 2,
        "shutdown took {:?}",
        started.elapsed()
    );

    // Later operations on the sockets fail with SHUTDOWN.
    let sock = &socks[0];
    assert!(is_shutdown(&sock.read_start().unwrap_err()));
    assert!(is_shutdown(&sock.write(b"x".to_vec()).unwrap_err()));
    assert!(is_shutdown(
        &sock.write_future(b"x".to_vec()).get().unwrap_err()
    ));
    assert!(is_shutdown(&sock.read(TIMEOUT).unwrap_err()));
    assert!(is_shutdown(&sock.read_future(TIMEOUT).get().unwrap_err()));
    assert!(is_shutdown(&sock.attach(&mailbox).unwrap_err()));
    assert!(is_shutdown(&sock.detach().unwrap_err()));
    // Dropping handles of a stopped task is harmless.
    drop(socks);
    drop(mailbox);
}

#[test]
fn shutdown_ends_everything_pending_promptly() {
    let iotask = IoTask::spawn().unwrap();
    let pending = make_pending(&iotask);
    let started = Instant::now();
    iotask.shutdown();
    assert!(!iotask.is_running());
    check_pending_ended(pending, started);
    // Shutting down again does nothing.
    iotask.shutdown();
}

#[test]
fn dropping_the_last_handle_ends_everything_pending_promptly() {
    let iotask = IoTask::spawn().unwrap();
    let pending = make_pending(&iotask);
    let started = Instant::now();
    drop(iotask);
    check_pending_ended(pending, started);
}

#[test]
fn shutdown_from_another_thread_while_a_clone_lives_on() {
    let iotask = IoTask::spawn().unwrap();
    let pending = make_pending(&iotask);
    let clone = iotask.clone();
    let started = Instant::now();
    join_within(std::thread::spawn(move || clone.shutdown()), PROMPTLY);
    assert!(!iotask.is_running());
    check_pending_ended(pending, started);
}

#[test]
fn shutdown_makes_a_running_listen_return_shutdown() {
    let iotask = IoTask::spawn().unwrap();
    let (kill, handle, conns) = spawn_listener(&iotask);
    let addr = kill.local_addr();
    iotask.shutdown();
    let result = join_within(handle, PROMPTLY);
    match result {
        Err(ListenError::Generic { name, .. }) => assert_eq!(name, "SHUTDOWN"),
        other => panic!("listen returned {other:?}"),
    }
    // The listening port was closed.
    std::net::TcpListener::bind(addr).expect("the port is free after shutdown");
    drop(conns);
    // A kill after the end is refused, not a panic.
    assert!(kill.send(None).is_err());
}

#[test]
fn operations_on_a_stopped_task_fail_with_shutdown() {
    let iotask = IoTask::spawn().unwrap();
    let (kill, handle, conns) = spawn_listener(&iotask);
    // A connection that reached new_connect but was not accepted before the shutdown.
    let _client = std::net::TcpStream::connect(kill.local_addr()).unwrap();
    let conn = conns.recv_timeout(TIMEOUT).expect("new_connect ran");
    iotask.shutdown();
    let _ = join_within(handle, PROMPTLY);

    match tcp::accept(conn) {
        Err(e) => assert!(is_shutdown(&e), "accept failed with {e:?}"),
        Ok(_) => panic!("accepted a connection on a stopped task"),
    }
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    match tcp::connect(holder.local_addr().unwrap(), &iotask) {
        Err(ConnectError::Generic { name, .. }) => assert_eq!(name, "SHUTDOWN"),
        other => panic!("connect on a stopped task gave {other:?}"),
    }
    let result = tcp::listen("127.0.0.1:0", 128, &iotask, |_| {}, |_, _| {});
    match result {
        Err(ListenError::Generic { name, .. }) => assert_eq!(name, "SHUTDOWN"),
        other => panic!("listen on a stopped task gave {other:?}"),
    }
}

#[test]
fn shutdown_while_sockets_are_busy_on_several_threads_does_not_hang() {
    let iotask = IoTask::spawn().unwrap();
    let (kill, handle, conns) = spawn_listener(&iotask);
    let addr = kill.local_addr();
    // Echo servers and clients streaming through them.
    let acceptor = std::thread::spawn(move || {
        let mut workers = Vec::new();
        while let Ok(conn) = conns.recv_timeout(TIMEOUT) {
            let Ok(sock) = tcp::accept(conn) else { break };
            workers.push(std::thread::spawn(move || {
                let Ok(port) = sock.read_start() else { return };
                while let Ok(chunk) = port.recv() {
                    drop(sock.write_future(chunk));
                }
            }));
        }
        for w in workers {
            join_within(w, PROMPTLY);
        }
    });
    let (started_tx, started_rx) = mpsc::channel();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let iotask = iotask.clone();
            let started_tx = started_tx.clone();
            std::thread::spawn(move || {
                let sock = tcp::connect(addr, &iotask).unwrap();
                drop(iotask);
                let port = sock.read_start().unwrap();
                let _ = started_tx.send(());
                loop {
                    if sock.write(vec![1u8; 10_000]).is_err() {
                        break;
                    }
                    match port.recv() {
                        Ok(_) => {}
                        Err(e) => {
                            assert!(is_shutdown(&e), "client port ended with {e:?}");
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    for _ in 0..4 {
        started_rx.recv_timeout(TIMEOUT).expect("client started");
    }
    iotask.shutdown();
    for c in clients {
        join_within(c, PROMPTLY);
    }
    let result = join_within(handle, PROMPTLY);
    assert!(matches!(result, Err(ListenError::Generic { ref name, .. }) if name == "SHUTDOWN"));
    // The acceptor ends once new_connect's channel closes with the listen thread.
    join_within(acceptor, TIMEOUT + PROMPTLY);
}
