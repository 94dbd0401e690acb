//! Server control: listener options, connection limits, pausing, dropping, closing modes,
//! handler-error policies, and a pool of I/O tasks.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use iotask::tcp::{
    self, CloseMode, KillChan, ListenError, ListenOptions, NewConnection, OnHandlerError,
    PoolListener,
};
use iotask::{IoPool, IoTask};

const WAIT: Duration = Duration::from_secs(10);
/// How long a test watches for something that must *not* happen.
const QUIET: Duration = Duration::from_millis(300);

struct Server {
    kill: KillChan,
    conns: mpsc::Receiver<NewConnection>,
    thread: JoinHandle<Result<(), ListenError>>,
}

fn serve(addr: &'static str, options: ListenOptions, iotask: &IoTask) -> Server {
    let (kill_tx, kill_rx) = mpsc::channel();
    let (conn_tx, conns) = mpsc::channel();
    let iotask = iotask.clone();
    let thread = std::thread::spawn(move || {
        tcp::bind(addr, &options, &iotask).and_then(|l| {
            l.serve(
                |kill| kill_tx.send(kill).unwrap(),
                move |conn, _| {
                    let _ = conn_tx.send(conn);
                },
            )
        })
    });
    let kill = kill_rx.recv_timeout(WAIT).expect("listener established");
    Server {
        kill,
        conns,
        thread,
    }
}

fn client(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// Waits until `cond` holds, failing the test after `WAIT`.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Asserts that the peer closed: a read returns 0 or a reset.
fn assert_closed_by_server(stream: &mut TcpStream) {
    let mut buf = [0u8; 16];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the server to close, got {other:?}"),
    }
}

#[test]
fn max_connections_stops_accepting_until_one_closes() {
    let iotask = IoTask::spawn().unwrap();
    let server = serve(
        "127.0.0.1:0",
        ListenOptions::new().max_connections(2),
        &iotask,
    );
    let addr = server.kill.local_addr();

    let _c1 = client(addr);
    let _c2 = client(addr);
    let first = server.conns.recv_timeout(WAIT).unwrap();
    let _second = server.conns.recv_timeout(WAIT).unwrap();
    assert_eq!(server.kill.num_connections(), 2);

    // The third completes its handshake in the kernel backlog but is not accepted.
    let mut c3 = client(addr);
    assert!(
        server.conns.recv_timeout(QUIET).is_err(),
        "accepted past the limit"
    );
    assert_eq!(server.kill.num_connections(), 2);

    // Closing one makes room: the third is accepted and served.
    drop(first);
    let third = server
        .conns
        .recv_timeout(WAIT)
        .expect("accepted after a close");
    let sock = tcp::accept(third).unwrap();
    sock.write(b"hi".to_vec()).unwrap();
    let mut buf = [0u8; 2];
    c3.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hi");
    eventually("two connections", || server.kill.num_connections() == 2);

    server.kill.send(None).unwrap();
    assert_eq!(server.thread.join().unwrap(), Ok(()));
}

/// Both ways a pool can share a listening address.
const POOL_MODES: [PoolListener; 2] = [PoolListener::PerTask, PoolListener::Shared];

/// Runs `listen_on_pool` on its own thread; returns once the listener is established.
fn serve_pool(
    pool: &IoPool,
    options: ListenOptions,
    new_connect: impl FnMut(NewConnection, &KillChan) + Send + 'static,
) -> (KillChan, JoinHandle<Result<(), ListenError>>) {
    let (kill_tx, kill_rx) = mpsc::channel();
    let pool = pool.clone();
    let thread = std::thread::spawn(move || {
        tcp::bind_pool("127.0.0.1:0", &options, &pool)
            .and_then(|l| l.serve(|kill| kill_tx.send(kill).unwrap(), new_connect))
    });
    let kill = kill_rx
        .recv_timeout(WAIT)
        .expect("pool listener established");
    (kill, thread)
}

#[test]
fn max_connections_is_shared_by_a_pool() {
    for mode in POOL_MODES {
        let pool = IoPool::spawn(2).unwrap();
        let (conn_tx, conns) = mpsc::channel();
        let options = ListenOptions::new().max_connections(3).pool_listener(mode);
        let (kill, thread) = serve_pool(&pool, options, move |conn, _| conn_tx.send(conn).unwrap());
        let clients: Vec<TcpStream> = (0..6).map(|_| client(kill.local_addr())).collect();
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(conns.recv_timeout(WAIT).unwrap());
        }
        assert!(
            conns.recv_timeout(QUIET).is_err(),
            "{mode:?}: accepted past the limit"
        );
        assert_eq!(kill.num_connections(), 3);
        held.clear();
        for _ in 0..3 {
            let conn = conns.recv_timeout(WAIT);
            held.push(conn.unwrap_or_else(|_| panic!("{mode:?}: no accept after closes")));
        }
        drop(clients);
        kill.send(None).unwrap();
        assert_eq!(thread.join().unwrap(), Ok(()));
        pool.shutdown();
    }
}

#[test]
fn pool_serves_many_clients() {
    for mode in POOL_MODES {
        let pool = IoPool::spawn(2).unwrap();
        let (kill, thread) = serve_pool(
            &pool,
            ListenOptions::new().pool_listener(mode),
            |conn, _| {
                std::thread::spawn(move || {
                    let sock = tcp::accept(conn).unwrap();
                    let port = sock.read_start().unwrap();
                    while let Ok(chunk) = port.recv() {
                        drop(sock.write_future(chunk));
                    }
                });
            },
        );
        let handles: Vec<_> = (0..40u8)
            .map(|i| {
                let addr = kill.local_addr();
                std::thread::spawn(move || {
                    let mut c = client(addr);
                    for round in 0..20u8 {
                        let msg = [i, round, 7, 9];
                        c.write_all(&msg).unwrap();
                        let mut back = [0u8; 4];
                        c.read_exact(&mut back).unwrap();
                        assert_eq!(back, msg);
                    }
                    c
                })
            })
            .collect();
        let clients: Vec<TcpStream> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(kill.num_connections(), 40, "{mode:?}: each accepted once");
        drop(clients);
        kill.send(None).unwrap();
        assert_eq!(thread.join().unwrap(), Ok(()));
        pool.shutdown();
    }
}

#[test]
fn pool_spreads_connections_over_its_tasks() {
    for mode in POOL_MODES {
        let pool = IoPool::spawn(2).unwrap();
        let (conn_tx, conns) = mpsc::channel();
        let (kill, thread) = serve_pool(
            &pool,
            ListenOptions::new().backlog(512).pool_listener(mode),
            move |conn, _| {
                let _ = conn_tx.send(conn);
            },
        );
        let clients: Vec<TcpStream> = (0..200).map(|_| client(kill.local_addr())).collect();
        let mut per_task = [0usize; 2];
        for _ in 0..200 {
            let conn = conns.recv_timeout(WAIT).expect("every client accepted");
            let sock = tcp::accept(conn).unwrap();
            let task = pool.index_of(&sock).expect("served by a task of the pool");
            per_task[task] += 1;
        }
        if mode == PoolListener::PerTask {
            // The kernel hashes each connection's addresses and ports to a socket: with 200
            // clients, an even hash splits outside 60..=140 with probability 6e-9.
            assert!(
                per_task.iter().all(|&n| (60..=140).contains(&n)),
                "SO_REUSEPORT spread {per_task:?}"
            );
        }
        drop(clients);
        kill.send(None).unwrap();
        assert_eq!(thread.join().unwrap(), Ok(()));
        pool.shutdown();
    }
}

#[test]
fn pool_pause_resume_and_close_free_the_port() {
    for mode in POOL_MODES {
        let pool = IoPool::spawn(2).unwrap();
        let (conn_tx, conns) = mpsc::channel();
        let options = ListenOptions::new().pool_listener(mode);
        let (kill, thread) = serve_pool(&pool, options, move |conn, _| {
            let _ = conn_tx.send(conn);
        });
        let addr = kill.local_addr();

        kill.pause();
        let _waiting: Vec<TcpStream> = (0..4).map(|_| client(addr)).collect();
        assert!(
            conns.recv_timeout(QUIET).is_err(),
            "{mode:?}: accepted while paused"
        );
        kill.resume();
        for _ in 0..4 {
            let conn = conns.recv_timeout(WAIT);
            conn.unwrap_or_else(|_| panic!("{mode:?}: not accepted after resume"));
        }

        kill.send(None).unwrap();
        assert_eq!(thread.join().unwrap(), Ok(()));
        // Every task closed its descriptor of the listening socket: the port is free.
        std::net::TcpListener::bind(addr)
            .unwrap_or_else(|e| panic!("{mode:?}: port still held after close: {e}"));
        pool.shutdown();
    }
}

#[test]
fn drop_incoming_connections_accepts_and_closes() {
    let iotask = IoTask::spawn().unwrap();
    let server = serve("127.0.0.1:0", ListenOptions::new(), &iotask);
    let addr = server.kill.local_addr();

    server.kill.set_drop_incoming_connections(true);
    let mut c = client(addr);
    assert_closed_by_server(&mut c);
    assert!(
        server.conns.recv_timeout(QUIET).is_err(),
        "handed a dropped connection out"
    );
    assert_eq!(server.kill.num_connections(), 0);

    server.kill.set_drop_incoming_connections(false);
    let _c = client(addr);
    server.conns.recv_timeout(WAIT).expect("accepted again");
    server.kill.send(None).unwrap();
    server.thread.join().unwrap().unwrap();
}

#[test]
fn pause_holds_clients_in_the_backlog_until_resume() {
    let iotask = IoTask::spawn().unwrap();
    let server = serve("127.0.0.1:0", ListenOptions::new(), &iotask);
    let addr = server.kill.local_addr();

    server.kill.pause();
    assert!(server.kill.is_paused());
    let mut c = client(addr);
    assert!(
        server.conns.recv_timeout(QUIET).is_err(),
        "accepted while paused"
    );

    server.kill.resume();
    let conn = server
        .conns
        .recv_timeout(WAIT)
        .expect("accepted after resume");
    let sock = tcp::accept(conn).unwrap();
    sock.write(b"ok".to_vec()).unwrap();
    let mut buf = [0u8; 2];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ok");
    server.kill.send(None).unwrap();
    server.thread.join().unwrap().unwrap();
}

#[test]
fn close_leaving_connections_keeps_them_working() {
    let iotask = IoTask::spawn().unwrap();
    let server = serve("127.0.0.1:0", ListenOptions::new(), &iotask);
    let addr = server.kill.local_addr();
    let mut c = client(addr);
    let sock = tcp::accept(server.conns.recv_timeout(WAIT).unwrap()).unwrap();

    server.kill.close(CloseMode::LeaveConnections);
    assert!(server.kill.is_closed());
    assert!(server.kill.wait_closed(WAIT));
    assert_eq!(server.thread.join().unwrap(), Ok(()));
    assert!(TcpStream::connect(addr).is_err(), "the port still accepts");

    sock.write(b"still here".to_vec()).unwrap();
    let mut buf = [0u8; 10];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still here");
    assert_eq!(server.kill.num_connections(), 1);
    assert!(
        !server
            .kill
            .wait_connections_closed(Duration::from_millis(50))
    );
    drop(sock);
    assert!(server.kill.wait_connections_closed(WAIT));
}

#[test]
fn close_with_connections_ends_their_reads_and_writes() {
    let iotask = IoTask::spawn().unwrap();
    let server = serve("127.0.0.1:0", ListenOptions::new(), &iotask);
    let addr = server.kill.local_addr();
    let mut c = client(addr);
    let sock = tcp::accept(server.conns.recv_timeout(WAIT).unwrap()).unwrap();
    let port = sock.read_start().unwrap();

    server.kill.close(CloseMode::CloseConnections);
    let e = port.recv_timeout(WAIT).unwrap_err();
    assert_eq!(e.name(), "CLOSED");
    assert_eq!(sock.write(b"x".to_vec()).unwrap_err().name(), "CLOSED");
    assert_closed_by_server(&mut c);
    assert!(server.kill.wait_connections_closed(WAIT));
    assert_eq!(server.kill.num_connections(), 0);
    assert_eq!(server.thread.join().unwrap(), Ok(()));
}

#[test]
fn drain_waits_for_connections_then_closes_the_rest() {
    let iotask = IoTask::spawn().unwrap();
    let server = serve("127.0.0.1:0", ListenOptions::new(), &iotask);
    let addr = server.kill.local_addr();
    let _polite = client(addr);
    let mut stubborn = client(addr);
    let polite = tcp::accept(server.conns.recv_timeout(WAIT).unwrap()).unwrap();
    let stubborn_sock = tcp::accept(server.conns.recv_timeout(WAIT).unwrap()).unwrap();

    let started = Instant::now();
    server
        .kill
        .close(CloseMode::Drain(Duration::from_millis(500)));
    drop(polite);
    eventually("the polite connection to close", || {
        server.kill.num_connections() == 1
    });
    // The other is closed by the drain deadline, not before.
    assert_closed_by_server(&mut stubborn);
    assert!(started.elapsed() >= Duration::from_millis(450));
    assert!(server.kill.wait_connections_closed(WAIT));
    assert_eq!(
        stubborn_sock.write(b"x".to_vec()).unwrap_err().name(),
        "CLOSED"
    );
    server.thread.join().unwrap().unwrap();
}

#[test]
fn panic_in_new_connect_raises_by_default() {
    let iotask = IoTask::spawn().unwrap();
    let (kill_tx, kill_rx) = mpsc::channel();
    let thread = std::thread::spawn({
        let iotask = iotask.clone();
        move || {
            tcp::listen(
                "127.0.0.1:0",
                128,
                &iotask,
                |kill| kill_tx.send(kill).unwrap(),
                |_, _| panic!("boom in handler"),
            )
        }
    });
    let kill: KillChan = kill_rx.recv_timeout(WAIT).unwrap();
    let _c = client(kill.local_addr());
    match thread.join().unwrap() {
        Err(ListenError::Generic { name, message }) => {
            assert_eq!(name, "PANIC");
            assert!(message.contains("boom in handler"), "{message}");
        }
        other => panic!("expected a PANIC error, got {other:?}"),
    }
    // The port is released and the I/O task still serves.
    std::net::TcpListener::bind(kill.local_addr()).expect("port released");
    assert!(iotask.is_running());
}

#[test]
fn panic_in_new_connect_can_be_ignored_or_reported() {
    let iotask = IoTask::spawn().unwrap();
    let reports = Arc::new(Mutex::new(Vec::new()));
    for policy in [
        OnHandlerError::Ignore,
        OnHandlerError::Call(Arc::new({
            let reports = reports.clone();
            move |peer, message: &str| reports.lock().unwrap().push((peer, message.to_owned()))
        })),
    ] {
        let (kill_tx, kill_rx) = mpsc::channel();
        let (ok_tx, ok_rx) = mpsc::channel();
        let options = ListenOptions::new().on_handler_error(policy);
        let thread = std::thread::spawn({
            let iotask = iotask.clone();
            move || {
                let mut calls = 0;
                tcp::bind("127.0.0.1:0", &options, &iotask).and_then(|l| {
                    l.serve(
                        |kill| kill_tx.send(kill).unwrap(),
                        move |_, _| {
                            calls += 1;
                            if calls == 1 {
                                panic!("first one fails");
                            }
                            ok_tx.send(()).unwrap();
                        },
                    )
                })
            }
        });
        let kill: KillChan = kill_rx.recv_timeout(WAIT).unwrap();
        let first = client(kill.local_addr());
        let _second = client(kill.local_addr());
        ok_rx
            .recv_timeout(WAIT)
            .expect("the listener went on after the panic");
        kill.send(None).unwrap();
        assert_eq!(thread.join().unwrap(), Ok(()));
        drop(first);
    }
    let reports = reports.lock().unwrap();
    assert_eq!(reports.len(), 1);
    assert!(reports[0].0.is_some_and(|a| a.ip().is_loopback()));
    assert!(reports[0].1.contains("first one fails"));
}

#[test]
fn listen_options_apply_to_sockets() {
    let iotask = IoTask::spawn().unwrap();
    let server = serve("127.0.0.1:0", ListenOptions::new().nodelay(false), &iotask);
    let _c = client(server.kill.local_addr());
    let sock = tcp::accept(server.conns.recv_timeout(WAIT).unwrap()).unwrap();
    assert!(!sock.nodelay().unwrap());
    server.kill.send(None).unwrap();
    server.thread.join().unwrap().unwrap();

    // Two listeners share a port only with SO_REUSEPORT.
    let a = serve(
        "127.0.0.1:0",
        ListenOptions::new().reuse_port(true),
        &iotask,
    );
    let port = a.kill.local_addr().port();
    let addr: &'static str = Box::leak(format!("127.0.0.1:{port}").into_boxed_str());
    let b = serve(addr, ListenOptions::new().reuse_port(true), &iotask);
    let refused =
        tcp::bind(addr, &ListenOptions::new(), &iotask).and_then(|l| l.serve(|_| {}, |_, _| {}));
    assert_eq!(refused, Err(ListenError::AddressInUse));
    for s in [a, b] {
        s.kill.send(None).unwrap();
        s.thread.join().unwrap().unwrap();
    }
}

#[test]
fn every_interface_forms_and_only_v6() {
    let iotask = IoTask::spawn().unwrap();
    for form in ["0", "*:0", ":0"] {
        let server = serve(form, ListenOptions::new(), &iotask);
        let port = server.kill.local_addr().port();
        assert!(server.kill.local_addr().ip().is_unspecified());
        let _c = client(SocketAddr::from(([127, 0, 0, 1], port)));
        server
            .conns
            .recv_timeout(WAIT)
            .expect("IPv4 client accepted");
        server.kill.send(None).unwrap();
        server.thread.join().unwrap().unwrap();
    }
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "no IPv6 loopback in CI"
        );
        eprintln!("SKIPPED: only_v6 part, no IPv6 loopback here");
        return;
    }
    let server = serve("[::]:0", ListenOptions::new().only_v6(true), &iotask);
    let port = server.kill.local_addr().port();
    assert!(TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).is_err());
    let _c = client(SocketAddr::from(([0u16, 0, 0, 0, 0, 0, 0, 1], port)));
    server
        .conns
        .recv_timeout(WAIT)
        .expect("IPv6 client accepted");
    server.kill.send(None).unwrap();
    server.thread.join().unwrap().unwrap();
}

#[test]
fn one_accept_per_batch_still_accepts_everyone() {
    let iotask = IoTask::spawn().unwrap();
    let server = serve(
        "127.0.0.1:0",
        ListenOptions::new().max_accepts_per_batch(1),
        &iotask,
    );
    let clients: Vec<TcpStream> = (0..50).map(|_| client(server.kill.local_addr())).collect();
    for _ in 0..clients.len() {
        server
            .conns
            .recv_timeout(WAIT)
            .expect("every client accepted");
    }
    server.kill.send(None).unwrap();
    server.thread.join().unwrap().unwrap();
}
