//! `listen`, `accept`, `connect`: binding rules, callbacks, the kill channel, and the seed's
//! server/client cases.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use iotask::IoTask;
use iotask::tcp::{self, ConnectError, ListenError, TcpError};

use crate::util::*;

#[test]
fn relisten_on_a_port_in_time_wait_succeeds_at_once() {
    let iotask = IoTask::spawn().unwrap();
    let (kill, handle, conns) = spawn_listener(&iotask);
    let addr = kill.local_addr();

    // Close on the server side first, so that the server's socket ends in TIME_WAIT.
    let (sock, mut client) = accepted_pair(&conns, addr);
    sock.write(b"bye".to_vec()).unwrap();
    drop(sock);
    let mut buf = Vec::new();
    client.read_to_end(&mut buf).expect("client reads to EOF");
    assert_eq!(buf, b"bye");
    drop(client);
    assert_eq!(stop_listener(&kill, handle), Ok(()));

    // The premise: a socket on the server's port is in TIME_WAIT (state 06).
    assert!(
        wait_until(TIMEOUT, || tcp_states_on_port(addr.port())
            .iter()
            .any(|s| s == "06")),
        "no TIME_WAIT socket on port {}: {:?}",
        addr.port(),
        tcp_states_on_port(addr.port())
    );

    let again = try_spawn_listener_on(&addr.to_string(), &iotask);
    let again = again.expect("listen on a port in TIME_WAIT (SO_REUSEADDR before bind)");
    assert_eq!(again.kill.local_addr(), addr);
    let (sock, mut client) = accepted_pair(&again.conns, addr);
    sock.write(b"hi".to_vec()).unwrap();
    assert_eq!(read_exact_std(&mut client, 2), b"hi");
    assert_eq!(stop_listener(&again.kill, again.handle), Ok(()));
}

#[test]
fn on_establish_once_and_new_connect_on_the_listen_thread_for_every_connection() {
    let iotask = IoTask::spawn().unwrap();
    let established = Arc::new(AtomicUsize::new(0));
    let (kill_tx, kill_rx) = mpsc::channel();
    let (conn_tx, conn_rx) = mpsc::channel();
    let handle = std::thread::spawn({
        let iotask = iotask.clone();
        let established = established.clone();
        move || {
            let listen_thread = std::thread::current().id();
            let result = tcp::listen(
                "127.0.0.1:0",
                128,
                &iotask,
                |kill| {
                    established.fetch_add(1, Ordering::SeqCst);
                    assert_eq!(std::thread::current().id(), listen_thread);
                    kill_tx.send(kill).unwrap();
                },
                |conn, kill| {
                    let same = std::thread::current().id() == listen_thread;
                    conn_tx.send((conn, same, kill.local_addr())).unwrap();
                },
            );
            (result, listen_thread)
        }
    });
    let kill = kill_rx.recv_timeout(TIMEOUT).expect("on_establish ran");
    let addr = kill.local_addr();
    assert_ne!(addr.port(), 0, "local_addr resolves port 0");
    assert!(addr.ip().is_loopback());

    let n = 20;
    let mut clients = Vec::new();
    for _ in 0..n {
        clients.push(TcpStream::connect(addr).unwrap());
    }
    for i in 0..n {
        let (conn, same_thread, kill_addr) = conn_rx
            .recv_timeout(TIMEOUT)
            .unwrap_or_else(|_| panic!("new_connect ran only {i} times of {n}"));
        assert!(same_thread, "new_connect ran off the listen thread");
        assert_eq!(kill_addr, addr);
        drop(conn);
    }
    kill.send(None).unwrap();
    let (result, _) = join_within(handle, TIMEOUT);
    assert_eq!(result, Ok(()));
    assert_eq!(established.load(Ordering::SeqCst), 1);
    assert!(
        conn_rx.try_recv().is_err(),
        "new_connect ran more often than connections came"
    );
}

#[test]
fn kill_none_returns_ok_and_releases_the_port() {
    let iotask = IoTask::spawn().unwrap();
    let (kill, handle, _conns) = spawn_listener(&iotask);
    let addr = kill.local_addr();
    // While listening, the port is taken.
    assert!(TcpListener::bind(addr).is_err(), "the port should be held");
    assert_eq!(stop_listener(&kill, handle), Ok(()));
    // Released by the time listen returned: no retry here on purpose.
    TcpListener::bind(addr).expect("the port is free once listen returned");
    // A kill after the end gives the reason back.
    let reason = TcpError::other("LATE", "too late");
    assert_eq!(kill.send(Some(reason.clone())), Err(Some(reason)));
}

#[test]
fn kill_with_an_error_returns_generic_with_its_name() {
    let iotask = IoTask::spawn().unwrap();
    let (kill, handle, _conns) = spawn_listener(&iotask);
    let addr = kill.local_addr();
    kill.send(Some(TcpError::other("MYERR", "stop"))).unwrap();
    let result = join_within(handle, TIMEOUT);
    assert_eq!(
        result,
        Err(ListenError::Generic {
            name: "MYERR".to_owned(),
            message: "stop".to_owned()
        })
    );
    TcpListener::bind(addr).expect("the port is free once listen returned");
}

#[test]
fn kill_from_inside_new_connect_stops_the_listener() {
    let iotask = IoTask::spawn().unwrap();
    let (kill_tx, kill_rx) = mpsc::channel();
    let handle = std::thread::spawn({
        let iotask = iotask.clone();
        move || {
            tcp::listen(
                "127.0.0.1:0",
                128,
                &iotask,
                |kill| kill_tx.send(kill.local_addr()).unwrap(),
                |conn, kill| {
                    let sock = tcp::accept(conn).unwrap();
                    sock.write(b"bye".to_vec()).unwrap();
                    kill.send(Some(TcpError::other("DONE", "one is enough")))
                        .unwrap();
                },
            )
        }
    });
    let addr = kill_rx.recv_timeout(TIMEOUT).unwrap();
    let mut client = TcpStream::connect(addr).unwrap();
    client.set_read_timeout(Some(TIMEOUT)).unwrap();
    let result = join_within(handle, TIMEOUT);
    assert!(matches!(result, Err(ListenError::Generic { ref name, .. }) if name == "DONE"));
    let mut buf = Vec::new();
    client.read_to_end(&mut buf).unwrap();
    assert_eq!(buf, b"bye");
}

#[test]
fn a_port_held_by_another_listener_is_address_in_use() {
    let iotask = IoTask::spawn().unwrap();
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap();
    let established = Arc::new(AtomicUsize::new(0));
    let result = tcp::listen(
        addr,
        128,
        &iotask,
        {
            let established = established.clone();
            move |kill| {
                established.fetch_add(1, Ordering::SeqCst);
                let _ = kill.send(None);
            }
        },
        |_, _| {},
    );
    assert_eq!(result, Err(ListenError::AddressInUse));
    assert_eq!(established.load(Ordering::SeqCst), 0);

    // Also when the holder is an iotask listener.
    let (kill, handle, _conns) = spawn_listener(&iotask);
    let second = try_spawn_listener_on(&kill.local_addr().to_string(), &iotask);
    assert_eq!(second.err(), Some(ListenError::AddressInUse));
    assert_eq!(stop_listener(&kill, handle), Ok(()));
}

#[test]
fn a_privileged_port_is_access_denied_unless_root() {
    if is_root() {
        eprintln!(
            "NOTE: running as root, which may bind privileged ports: \
             the AccessDenied case cannot be observed here, nothing asserted"
        );
        return;
    }
    let unprivileged_start =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .unwrap_or(1024);
    if unprivileged_start <= 1 {
        eprintln!(
            "NOTE: net.ipv4.ip_unprivileged_port_start is {unprivileged_start}, so port 1 is \
             not privileged here: nothing asserted"
        );
        return;
    }
    let iotask = IoTask::spawn().unwrap();
    let result = tcp::listen("127.0.0.1:1", 128, &iotask, |_| {}, |_, _| {});
    assert_eq!(result, Err(ListenError::AccessDenied));
}

#[test]
fn a_bad_address_is_generic() {
    let iotask = IoTask::spawn().unwrap();
    let established = Arc::new(AtomicUsize::new(0));
    let result = tcp::listen(
        "256.1.1.1:0",
        128,
        &iotask,
        {
            let established = established.clone();
            move |_| {
                established.fetch_add(1, Ordering::SeqCst);
            }
        },
        |_, _| {},
    );
    assert!(
        matches!(result, Err(ListenError::Generic { .. })),
        "got {result:?}"
    );
    assert_eq!(established.load(Ordering::SeqCst), 0);
}

#[test]
fn a_new_connection_accepted_later_on_another_thread_gets_the_early_data() {
    let iotask = IoTask::spawn().unwrap();
    let (kill, handle, conns) = spawn_listener(&iotask);
    let addr = kill.local_addr();
    let early = pattern(0, 100_000);

    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel();
    // The accepting thread gets the connection now but accepts it only when told.
    let mut client = TcpStream::connect(addr).unwrap();
    let conn = conns.recv_timeout(TIMEOUT).expect("new_connect ran");
    let acceptor = std::thread::spawn(move || {
        go_rx.recv_timeout(TIMEOUT).expect("go signal");
        let sock = tcp::accept(conn).expect("accept on another thread");
        assert!(sock.nodelay().unwrap(), "accepted sockets have TCP_NODELAY");
        let port = sock.read_start().unwrap();
        let got = recv_exact(&port, 100_000);
        done_tx.send(got).unwrap();
        sock.write(b"ok".to_vec()).unwrap();
    });
    // The client's data is sent before the accept happens.
    client.write_all(&early).unwrap();
    client.flush().unwrap();
    go_tx.send(()).unwrap();
    let got = done_rx
        .recv_timeout(TIMEOUT)
        .expect("the acceptor got data");
    assert_bytes_eq(&got, &early);
    client.set_read_timeout(Some(TIMEOUT)).unwrap();
    assert_eq!(read_exact_std(&mut client, 2), b"ok");
    join_within(acceptor, TIMEOUT);
    assert_eq!(stop_listener(&kill, handle), Ok(()));
}

#[test]
fn dropping_a_new_connection_closes_the_client() {
    let iotask = IoTask::spawn().unwrap();
    let (kill, handle, conns) = spawn_listener(&iotask);
    let mut client = TcpStream::connect(kill.local_addr()).unwrap();
    client.set_read_timeout(Some(TIMEOUT)).unwrap();
    let conn = conns.recv_timeout(TIMEOUT).unwrap();
    // Dropped on another thread than the listener's.
    std::thread::spawn(move || drop(conn)).join().unwrap();
    let mut buf = [0u8; 16];
    match client.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("the client read {n} bytes from a dropped connection"),
        Err(e) => panic!("the client saw {e} instead of EOF (a timeout means no close)"),
    }
    assert_eq!(stop_listener(&kill, handle), Ok(()));
}

#[test]
fn accepted_and_connected_sockets_have_nodelay() {
    let iotask = IoTask::spawn().unwrap();
    let (kill, handle, conns) = spawn_listener(&iotask);
    let client = tcp::connect(kill.local_addr(), &iotask).unwrap();
    let server = accept_next(&conns);
    assert!(
        client.nodelay().unwrap(),
        "connected socket without TCP_NODELAY"
    );
    assert!(
        server.nodelay().unwrap(),
        "accepted socket without TCP_NODELAY"
    );
    assert_eq!(stop_listener(&kill, handle), Ok(()));
}

// The seed's own cases.

#[test]
fn server_client_ping_pong() {
    let iotask = IoTask::spawn().unwrap();
    let (kill, handle, conns) = spawn_listener(&iotask);
    let server = std::thread::spawn(move || {
        let sock = accept_next(&conns);
        let port = sock.read_start().unwrap();
        for i in 0..100 {
            let got = recv_exact(&port, format!("ping {i}").len());
            assert_eq!(got, format!("ping {i}").into_bytes());
            sock.write(format!("pong {i}")).unwrap();
        }
        let (rest, end) = recv_to_end(&port);
        assert!(rest.is_empty());
        assert!(end.is_eof(), "got {end:?}");
    });
    let client = tcp::connect(kill.local_addr(), &iotask).unwrap();
    let port = client.read_start().unwrap();
    for i in 0..100 {
        client.write(format!("ping {i}")).unwrap();
        let got = recv_exact(&port, format!("pong {i}").len());
        assert_eq!(got, format!("pong {i}").into_bytes());
    }
    drop(port);
    drop(client);
    join_within(server, TIMEOUT);
    assert_eq!(stop_listener(&kill, handle), Ok(()));
}

#[test]
fn peer_addresses_are_right_on_both_sides() {
    let iotask = IoTask::spawn().unwrap();
    let (kill, handle, conns) = spawn_listener(&iotask);
    let client = tcp::connect(kill.local_addr(), &iotask).unwrap();
    let conn = conns.recv_timeout(TIMEOUT).unwrap();
    let conn_peer = conn.peer_addr().unwrap();
    let server = tcp::accept(conn).unwrap();
    assert_eq!(client.peer_addr().unwrap(), kill.local_addr());
    assert_eq!(server.local_addr().unwrap(), kill.local_addr());
    assert_eq!(server.peer_addr().unwrap(), client.local_addr().unwrap());
    assert_eq!(conn_peer, client.local_addr().unwrap());
    assert_eq!(stop_listener(&kill, handle), Ok(()));
}

#[test]
fn connect_to_a_refused_port_is_connection_refused() {
    let iotask = IoTask::spawn().unwrap();
    let result = tcp::connect(refused_addr(), &iotask);
    assert_eq!(result.err(), Some(ConnectError::ConnectionRefused));
}

#[test]
fn connect_to_localhost_by_name_works() {
    let iotask = IoTask::spawn().unwrap();
    let (kill, handle, conns) = spawn_listener(&iotask);
    let name = format!("localhost:{}", kill.local_addr().port());
    let client = tcp::connect(name.as_str(), &iotask).expect("connect to localhost:<port>");
    let server = accept_next(&conns);
    client.write(b"hello".to_vec()).unwrap();
    assert_eq!(server.read(TIMEOUT).unwrap(), b"hello");
    assert_eq!(stop_listener(&kill, handle), Ok(()));
}

#[test]
fn connect_to_an_unusable_address_is_generic() {
    let iotask = IoTask::spawn().unwrap();
    // No port: rejected while resolving, without asking DNS.
    let result = tcp::connect("127.0.0.1", &iotask);
    assert!(
        matches!(result, Err(ConnectError::Generic { .. })),
        "got {result:?}"
    );
}

#[test]
fn listen_keeps_serving_while_earlier_connections_live() {
    // Many clients in flight at once, each echoed by its own thread.
    let iotask = IoTask::spawn().unwrap();
    let (kill, handle, conns) = spawn_listener(&iotask);
    let addr = kill.local_addr();
    let acceptor = std::thread::spawn(move || {
        let mut workers = Vec::new();
        for _ in 0..16 {
            let sock = accept_next(&conns);
            workers.push(std::thread::spawn(move || {
                let port = sock.read_start().unwrap();
                loop {
                    match port.recv_timeout(TIMEOUT) {
                        Ok(chunk) => sock.write(chunk).unwrap(),
                        Err(e) if e.is_eof() => break,
                        Err(e) => panic!("echo worker: {e}"),
                    }
                }
            }));
        }
        for w in workers {
            join_within(w, TIMEOUT);
        }
    });
    let clients: Vec<_> = (0..16)
        .map(|i| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(TIMEOUT)).unwrap();
                let msg = pattern(i * 1000, 50_000);
                s.write_all(&msg).unwrap();
                let got = read_exact_std(&mut s, msg.len());
                assert_bytes_eq(&got, &msg);
            })
        })
        .collect();
    for c in clients {
        join_within(c, TIMEOUT);
    }
    join_within(acceptor, TIMEOUT);
    assert_eq!(stop_listener(&kill, handle), Ok(()));
}

#[test]
fn a_burst_of_connections_all_reach_new_connect() {
    let iotask = IoTask::spawn().unwrap();
    let (kill, handle, conns) = spawn_listener(&iotask);
    let addr = kill.local_addr();
    let n = 200;
    let connector = std::thread::spawn(move || {
        (0..n)
            .map(|_| TcpStream::connect(addr).expect("connect in a burst"))
            .collect::<Vec<_>>()
    });
    for i in 0..n {
        conns
            .recv_timeout(TIMEOUT)
            .unwrap_or_else(|_| panic!("only {i} of {n} connections reached new_connect"));
    }
    drop(join_within(connector, TIMEOUT));
    assert_eq!(stop_listener(&kill, handle), Ok(()));
}

#[test]
fn a_kill_inside_on_establish_returns_at_once() {
    let iotask = IoTask::spawn().unwrap();
    let called = Arc::new(AtomicUsize::new(0));
    let result = tcp::listen(
        "127.0.0.1:0",
        128,
        &iotask,
        |kill| kill.send(None).unwrap(),
        {
            let called = called.clone();
            move |_, _| {
                called.fetch_add(1, Ordering::SeqCst);
            }
        },
    );
    assert_eq!(result, Ok(()));
    assert_eq!(called.load(Ordering::SeqCst), 0);
}
