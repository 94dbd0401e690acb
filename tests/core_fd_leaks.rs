//! No user action leaks a descriptor, panics or hangs: ports, futures, sockets, new
//! connections, kill channels and mailboxes dropped in every order, from several threads.
//!
//! Descriptors are counted for the whole process, so this file holds a single test that
//! runs its scenarios one after the other, in a test binary of its own: tests in one binary
//! run as threads of one process and would disturb each other's counts.

#[path = "it/util.rs"]
mod util;

use std::io::{BufRead, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use iotask::tcp::{self, KillChan, ListenError, ListenOptions, PoolListener};
use iotask::{Builder, Event, IoPool, IoTask, Mailbox};
use util::*;

/// Closes are asynchronous (the I/O thread does them): how long a count may take to settle.
const SETTLE: Duration = Duration::from_secs(5);
/// How long one scenario may take before it counts as hung.
const SCENARIO_LIMIT: Duration = Duration::from_secs(60);

/// Waits until the process has exactly `target` descriptors open, or fails naming them.
fn settle(target: usize, before: &[String], what: &str) {
    if !wait_until(SETTLE, || open_fds() == target) {
        let now = fd_listing();
        let extra: Vec<_> = now.iter().filter(|f| !before.contains(f)).collect();
        panic!(
            "{what}: {} descriptors open, expected {target}; new since the baseline: {extra:?}",
            open_fds()
        );
    }
}

/// Runs `f` on a fresh I/O task. Once `f` returns (having dropped everything it made), the
/// descriptor count must fall back to the task's own while it still runs, and to the
/// process's baseline after the task is shut down and dropped.
fn scenario<F>(name: &'static str, builder: Builder, f: F)
where
    F: FnOnce(&IoTask) + Send + 'static,
{
    let base = open_fds();
    let base_list = fd_listing();
    with_timeout(SCENARIO_LIMIT, move || {
        let iotask = builder.spawn().unwrap();
        let task_base = open_fds();
        let task_list = fd_listing();
        f(&iotask);
        settle(
            task_base,
            &task_list,
            &format!("{name}, while the task runs"),
        );
        iotask.shutdown();
    });
    settle(base, &base_list, &format!("{name}, after shutdown"));
    eprintln!("ok: {name}");
}

fn default() -> Builder {
    IoTask::builder()
}

#[test]
fn no_drop_order_leaks_a_descriptor_panics_or_hangs() {
    scenario("port dropped before its socket", default(), |iotask| {
        let (sock, mut peer) = connected_pair(iotask);
        let port = sock.read_start().unwrap();
        write_std(&mut peer, b"unread");
        drop(port);
        drop(sock);
        assert!(read_to_eof(&mut peer).is_empty());
    });

    scenario("socket dropped before its port", default(), |iotask| {
        let (sock, mut peer) = connected_pair(iotask);
        let port = sock.read_start().unwrap();
        drop(sock);
        let e = port.recv_timeout(TIMEOUT).unwrap_err();
        assert_eq!(e.name(), "CLOSED");
        assert!(read_to_eof(&mut peer).is_empty());
        drop(port);
    });

    scenario(
        "port given back, then socket dropped",
        default(),
        |iotask| {
            let (sock, mut peer) = connected_pair(iotask);
            let port = sock.read_start().unwrap();
            write_std(&mut peer, b"held");
            assert!(wait_until(TIMEOUT, || format!("{port:?}").contains("queued: 1")));
            sock.read_stop(port).unwrap();
            drop(sock);
            drop(peer);
        },
    );

    scenario(
        "pending read future outlives its socket",
        default(),
        |iotask| {
            let (sock, peer) = connected_pair(iotask);
            let fut = sock.read_future(Duration::from_secs(3600));
            drop(sock);
            let e = with_timeout(TIMEOUT, move || fut.get()).unwrap_err();
            assert_eq!(e.name(), "CLOSED");
            drop(peer);
        },
    );

    scenario(
        "read futures dropped unresolved, then the socket",
        default(),
        |iotask| {
            let (sock, peer) = connected_pair(iotask);
            for _ in 0..10 {
                drop(sock.read_future(Duration::from_secs(3600)));
            }
            drop(sock.read_future(Duration::from_millis(1)));
            drop(sock);
            drop(peer);
        },
    );

    scenario(
        "read future timing out after its socket is gone",
        default(),
        |iotask| {
            let (sock, peer) = connected_pair(iotask);
            let fut = sock.read_future(Duration::from_millis(20));
            drop(peer);
            drop(sock);
            drop(fut);
        },
    );

    scenario(
        "write futures dropped, socket dropped, peer reads",
        default(),
        |iotask| {
            let (sock, mut peer) = connected_pair(iotask);
            for i in 0..100 {
                drop(sock.write_future(vec![i as u8; 10_000]));
            }
            drop(sock);
            assert_eq!(read_to_eof(&mut peer).len(), 1_000_000);
        },
    );

    scenario(
        "queued writes to a peer that never reads hit the drain timeout",
        default().drain_timeout(Duration::from_millis(300)),
        |iotask| {
            let (sock, peer) = connected_pair(iotask);
            let fut = sock.write_future(vec![0u8; 32 * 1024 * 1024]);
            let with_peer = open_fds();
            let before = fd_listing();
            drop(sock);
            // The task closes its descriptor although the peer holds the connection open.
            settle(with_peer - 1, &before, "drain timeout");
            let e = with_timeout(TIMEOUT, move || fut.get()).unwrap_err();
            eprintln!("a write cut by the drain timeout resolves with {e:?}");
            drop(peer);
        },
    );

    scenario(
        "write futures pending when the peer resets",
        default(),
        |iotask| {
            let (sock, peer) = connected_pair(iotask);
            sock.write(b"unread".to_vec()).unwrap();
            let mut b = [0u8; 6];
            assert_eq!(peer.peek(&mut b).unwrap(), 6);
            let futs: Vec<_> = (0..50)
                .map(|_| sock.write_future(vec![0u8; 1 << 20]))
                .collect();
            drop(peer);
            drop(sock);
            for f in futs {
                let _ = with_timeout(TIMEOUT, move || f.get());
            }
        },
    );

    scenario("new connections dropped unaccepted", default(), |iotask| {
        let (kill, handle, conns) = spawn_listener(iotask);
        let clients: Vec<_> = (0..10)
            .map(|_| TcpStream::connect(kill.local_addr()).unwrap())
            .collect();
        for _ in 0..5 {
            drop(conns.recv_timeout(TIMEOUT).unwrap());
        }
        // The other five are still queued when the listener stops.
        assert_eq!(stop_listener(&kill, handle), Ok(()));
        drop(conns);
        for mut c in clients {
            c.set_read_timeout(Some(TIMEOUT)).unwrap();
            let _ = read_to_eof_or_reset(&mut c);
        }
        drop(kill);
    });

    scenario(
        "new connections accepted on other threads, later",
        default(),
        |iotask| {
            let (kill, handle, conns) = spawn_listener(iotask);
            let mut clients = Vec::new();
            let mut conns_held = Vec::new();
            for _ in 0..6 {
                clients.push(TcpStream::connect(kill.local_addr()).unwrap());
                conns_held.push(conns.recv_timeout(TIMEOUT).unwrap());
            }
            drop(kill.clone());
            assert_eq!(stop_listener(&kill, handle), Ok(()));
            // The listener is gone; its connections live on.
            let threads: Vec<_> = conns_held
                .into_iter()
                .enumerate()
                .map(|(i, conn)| {
                    std::thread::spawn(move || {
                        if i % 3 == 0 {
                            drop(conn);
                            return;
                        }
                        let sock = tcp::accept(conn).unwrap();
                        sock.write(b"hi".to_vec()).unwrap();
                        if i % 3 == 1 {
                            let port = sock.read_start().unwrap();
                            drop(sock);
                            drop(port);
                        }
                    })
                })
                .collect();
            for t in threads {
                join_within(t, TIMEOUT);
            }
            drop(clients);
        },
    );

    scenario(
        "kill channel kept after listen returned",
        default(),
        |iotask| {
            let (kill, handle, conns) = spawn_listener(iotask);
            let kept = kill.clone();
            let c = TcpStream::connect(kill.local_addr()).unwrap();
            assert_eq!(stop_listener(&kill, handle), Ok(()));
            drop(kill);
            assert!(kept.send(None).is_err());
            drop(c);
            drop(conns);
            drop(kept);
        },
    );

    scenario(
        "connections arriving while the listener stops",
        default(),
        |iotask| {
            let (kill, handle, conns) = spawn_listener(iotask);
            let addr = kill.local_addr();
            let connector = std::thread::spawn(move || {
                let mut v = Vec::new();
                for _ in 0..50 {
                    match TcpStream::connect(addr) {
                        Ok(s) => v.push(s),
                        Err(_) => break,
                    }
                }
                v
            });
            let _ = conns.recv_timeout(TIMEOUT);
            assert_eq!(stop_listener(&kill, handle), Ok(()));
            drop(join_within(connector, TIMEOUT));
            drop(conns);
        },
    );

    scenario("a panic in new_connect", default(), |iotask| {
        let (addr_tx, addr_rx) = mpsc::channel();
        let handle = std::thread::spawn({
            let iotask = iotask.clone();
            move || {
                tcp::listen(
                    "127.0.0.1:0",
                    128,
                    &iotask,
                    |kill| addr_tx.send(kill.local_addr()).unwrap(),
                    |_conn, _kill| panic!("deliberate panic in new_connect"),
                )
            }
        });
        let addr = addr_rx.recv_timeout(TIMEOUT).unwrap();
        let c = TcpStream::connect(addr).unwrap();
        let joined = with_timeout(TIMEOUT, move || handle.join());
        // The default handler-error policy stops the listener with an error naming the panic.
        match joined {
            Ok(Err(ListenError::Generic { name, message })) => {
                assert_eq!(name, "PANIC");
                assert!(
                    message.contains("deliberate panic in new_connect"),
                    "{message}"
                );
            }
            other => panic!("expected listen to return a PANIC error, got {other:?}"),
        }
        TcpListener::bind(addr).expect("the port is released after the panic");
        drop(c);
    });

    scenario("a panic in on_establish", default(), |iotask| {
        let iotask = iotask.clone();
        let joined = with_timeout(TIMEOUT, move || {
            std::thread::spawn(move || {
                tcp::listen(
                    "127.0.0.1:0",
                    128,
                    &iotask,
                    |_kill| panic!("deliberate panic in on_establish"),
                    |_, _| {},
                )
            })
            .join()
        });
        match joined {
            Ok(Err(ListenError::Generic { name, .. })) => assert_eq!(name, "PANIC"),
            other => panic!("expected listen to return a PANIC error, got {other:?}"),
        }
    });

    scenario("failed binds and connects", default(), |iotask| {
        let holder = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = holder.local_addr().unwrap();
        let r = tcp::listen(addr, 128, iotask, |_| {}, |_, _| {});
        assert_eq!(r, Err(ListenError::AddressInUse));
        drop(holder);
        assert!(tcp::connect(refused_addr(), iotask).is_err());
        let r = tcp::listen("256.1.1.1:0", 128, iotask, |_| {}, |_, _| {});
        assert!(r.is_err());
    });

    scenario(
        "mailbox listener: stopped, dropped, its mailbox dropped, shut down with connections",
        default(),
        |iotask| {
            let options = ListenOptions::new();
            // Stopped with connections open, which are then dropped in both orders.
            let mut mailbox: Mailbox<()> = Mailbox::new();
            let server = tcp::bind("127.0.0.1:0", &options, iotask)
                .and_then(|l| l.into_mailbox(&mailbox))
                .unwrap();
            let clients: Vec<TcpStream> = (0..4)
                .map(|_| TcpStream::connect(server.local_addr()).unwrap())
                .collect();
            let mut accepted = Vec::new();
            while accepted.len() < 4 {
                if let Event::Accepted(sock) = mailbox.recv_timeout(TIMEOUT).expect("events") {
                    accepted.push(sock);
                }
            }
            server.stop().unwrap();
            accepted.truncate(2);
            drop(clients);
            drop(accepted);
            // Connections the mailbox never received, then the server dropped.
            let server = tcp::bind("127.0.0.1:0", &options, iotask)
                .and_then(|l| l.into_mailbox(&mailbox))
                .unwrap();
            let clients: Vec<TcpStream> = (0..4)
                .map(|_| TcpStream::connect(server.local_addr()).unwrap())
                .collect();
            assert!(wait_until(SETTLE, || server.kill_chan().num_connections() == 4));
            drop(mailbox);
            drop(server);
            drop(clients);
            // The mailbox dropped first: the listener closes itself.
            let mailbox: Mailbox<()> = Mailbox::new();
            let server = tcp::bind("127.0.0.1:0", &options, iotask)
                .and_then(|l| l.into_mailbox(&mailbox))
                .unwrap();
            drop(mailbox);
            let client = TcpStream::connect(server.local_addr()).unwrap();
            assert!(server.wait().is_err());
            drop(client);
        },
    );

    scenario("mailbox dropped before its sockets", default(), |iotask| {
        let mailbox: Mailbox<()> = Mailbox::new();
        let pairs: Vec<_> = (0..5).map(|_| connected_pair(iotask)).collect();
        for (sock, peer) in &pairs {
            sock.attach(&mailbox).unwrap();
            (&*peer).write_all(b"data").unwrap();
        }
        drop(mailbox);
        drop(pairs);
    });

    scenario(
        "sockets dropped before their mailbox",
        default(),
        |iotask| {
            let mut mailbox: Mailbox<()> = Mailbox::new();
            let sender = mailbox.sender();
            let pairs: Vec<_> = (0..5).map(|_| connected_pair(iotask)).collect();
            for (sock, peer) in &pairs {
                sock.attach(&sender).unwrap();
                (&*peer).write_all(b"data").unwrap();
            }
            drop(pairs);
            let mut closed = 0;
            while closed < 5 {
                if let Event::Closed { .. } = mailbox.recv_timeout(TIMEOUT).expect("events") {
                    closed += 1;
                }
            }
            drop(mailbox);
            drop(sender);
        },
    );

    scenario(
        "socket buffers dropped with unflushed bytes",
        default(),
        |iotask| {
            let (sock, mut peer) = connected_pair(iotask);
            let mut buf = tcp::socket_buf(sock);
            buf.write_all(b"unflushed").unwrap();
            drop(buf);
            assert_eq!(read_to_eof(&mut peer), b"unflushed");

            let (sock, mut peer) = connected_pair(iotask);
            let mut buf = tcp::socket_buf(sock);
            write_std(&mut peer, b"line\nrest");
            let mut line = String::new();
            buf.read_line(&mut line).unwrap();
            let sock = buf.into_inner().unwrap();
            drop(sock);
            drop(peer);
        },
    );

    scenario("many threads, every drop order", default(), |iotask| {
        let (kill, handle, conns) = spawn_listener(iotask);
        let addr = kill.local_addr();
        let echo = std::thread::spawn(move || {
            let mut workers = Vec::new();
            while let Ok(conn) = conns.recv_timeout(Duration::from_secs(2)) {
                workers.push(std::thread::spawn(move || {
                    let sock = tcp::accept(conn).unwrap();
                    let port = sock.read_start().unwrap();
                    while let Ok(chunk) = port.recv_timeout(TIMEOUT) {
                        drop(sock.write_future(chunk));
                    }
                }));
            }
            for w in workers {
                join_within(w, TIMEOUT);
            }
        });
        let clients: Vec<_> = (0..12)
            .map(|i| {
                let iotask = iotask.clone();
                std::thread::spawn(move || {
                    let sock = tcp::connect(addr, &iotask).unwrap();
                    let port = sock.read_start().unwrap();
                    let w = sock.write_future(pattern(i, 100_000));
                    let r = sock.read_future(TIMEOUT);
                    match i % 6 {
                        0 => {
                            drop(port);
                            drop(w);
                            drop(r);
                            drop(sock);
                        }
                        1 => {
                            drop(sock);
                            drop(port);
                            drop(r);
                            drop(w);
                        }
                        2 => {
                            drop(r);
                            drop(sock);
                            drop(w);
                            drop(port);
                        }
                        3 => {
                            recv_exact(&port, 100_000);
                            sock.read_stop(port).unwrap();
                            drop(sock);
                            drop(w);
                            drop(r);
                        }
                        4 => {
                            w.get().unwrap();
                            drop(sock);
                            drop(port);
                            drop(r);
                        }
                        _ => {
                            drop(iotask);
                            drop(w);
                            drop(port);
                            drop(sock);
                            drop(r);
                        }
                    }
                })
            })
            .collect();
        for c in clients {
            join_within(c, TIMEOUT);
        }
        assert_eq!(stop_listener(&kill, handle), Ok(()));
        join_within(echo, TIMEOUT + TIMEOUT);
        drop(kill);
    });

    // Shutdown (and drop of the last handle) while the user still holds everything.
    let base = open_fds();
    let base_list = fd_listing();
    with_timeout(SCENARIO_LIMIT, || {
        let iotask = IoTask::spawn().unwrap();
        let held = hold_everything(&iotask, true);
        iotask.shutdown();
        drop(iotask);
        drop(held);
    });
    settle(base, &base_list, "shutdown while the user holds everything");
    eprintln!("ok: shutdown while the user holds everything");

    with_timeout(SCENARIO_LIMIT, || {
        let iotask = IoTask::spawn().unwrap();
        let held = hold_everything(&iotask, false);
        drop(iotask);
        drop(held);
    });
    settle(
        base,
        &base_list,
        "last handle dropped while the user holds everything",
    );
    eprintln!("ok: last handle dropped while the user holds everything");

    with_timeout(SCENARIO_LIMIT, || {
        let iotask = IoTask::spawn().unwrap();
        let held = hold_everything(&iotask, false);
        // Dropped in the opposite order: user objects first, then the task.
        drop(held);
        drop(iotask);
    });
    settle(
        base,
        &base_list,
        "user objects dropped before the last handle",
    );
    eprintln!("ok: user objects dropped before the last handle");

    scenario(
        "UDP sockets dropped with ports, futures, sends and mailboxes in every order",
        default(),
        |iotask| {
            use iotask::udp::UdpSocket;
            let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            // Port first, then the socket, with datagrams waiting in the port.
            let a = UdpSocket::bind("127.0.0.1:0", iotask).unwrap();
            let port = a.recv_start().unwrap();
            peer.send_to(b"held", a.local_addr().unwrap()).unwrap();
            assert!(wait_until(TIMEOUT, || port.len() == 1));
            drop(port);
            drop(a);
            // The socket first: its port ends with CLOSED.
            let b = UdpSocket::bind("127.0.0.1:0", iotask).unwrap();
            let port = b.recv_start().unwrap();
            drop(b);
            assert_eq!(port.recv_timeout(TIMEOUT).unwrap_err().name(), "CLOSED");
            // A pending receive and unawaited sends outlive their socket.
            let c = UdpSocket::bind("[::1]:0", iotask).unwrap();
            let pending = c.recv_from_future(Duration::from_secs(3600));
            let sends: Vec<_> = (0..10)
                .map(|_| c.send_to(b"x".to_vec(), "[::1]:9".parse().unwrap()))
                .collect();
            drop(c);
            assert_eq!(
                with_timeout(TIMEOUT, move || pending.get())
                    .unwrap_err()
                    .name(),
                "CLOSED"
            );
            drop(sends);
            // A clone keeps it open; attached to a mailbox that is dropped first.
            let d = UdpSocket::bind("127.0.0.1:0", iotask).unwrap();
            let d2 = d.try_clone().unwrap();
            let mailbox: Mailbox = Mailbox::new();
            d.attach(&mailbox).unwrap();
            peer.send_to(b"to a mailbox", d.local_addr().unwrap())
                .unwrap();
            drop(mailbox);
            drop(d);
            drop(d2);
        },
    );

    for mode in [PoolListener::PerTask, PoolListener::Shared] {
        with_timeout(SCENARIO_LIMIT, move || {
            let pool = IoPool::spawn(2).unwrap();
            let (kill_tx, kill_rx) = mpsc::channel();
            let (conn_tx, conns) = mpsc::channel();
            let listener = std::thread::spawn({
                let pool = pool.clone();
                move || {
                    tcp::bind_pool(
                        "127.0.0.1:0",
                        &ListenOptions::new().pool_listener(mode),
                        &pool,
                    )
                    .and_then(|l| {
                        l.serve(
                            |kill| kill_tx.send(kill).unwrap(),
                            move |conn, _| conn_tx.send(conn).unwrap(),
                        )
                    })
                }
            });
            let kill: KillChan = kill_rx.recv_timeout(SETTLE).unwrap();
            let clients: Vec<TcpStream> = (0..8)
                .map(|_| TcpStream::connect(kill.local_addr()).unwrap())
                .collect();
            let accepted: Vec<_> = (0..8)
                .map(|_| tcp::accept(conns.recv_timeout(SETTLE).unwrap()).unwrap())
                .collect();
            kill.send(None).unwrap();
            assert_eq!(listener.join().unwrap(), Ok(()));
            drop((clients, accepted, kill));
            pool.shutdown();
        });
        let what = format!("pool listener {mode:?}, killed, then the pool shut down");
        settle(base, &base_list, &what);
        eprintln!("ok: {what}");
    }
}

/// Reads until EOF or a reset, whichever the peer's close produced.
fn read_to_eof_or_reset(s: &mut TcpStream) -> std::io::Result<usize> {
    let mut total = 0;
    let mut buf = [0u8; 4096];
    loop {
        match std::io::Read::read(s, &mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n,
            Err(e) => return Err(e),
        }
    }
}

/// One of everything, alive. With `live_listener`, a `listen` keeps running on its thread,
/// which holds an `IoTask` handle for as long as it runs; without, the listener is stopped
/// after handing over a connection, so that the caller's handle is the last one.
fn hold_everything(iotask: &IoTask, live_listener: bool) -> Vec<Box<dyn Send>> {
    let mut held: Vec<Box<dyn Send>> = Vec::new();
    let (kill, handle, conns) = spawn_listener(iotask);
    let client = TcpStream::connect(kill.local_addr()).unwrap();
    let conn = conns.recv_timeout(TIMEOUT).unwrap();
    if !live_listener {
        assert_eq!(stop_listener(&kill, handle), Ok(()));
        held.push(Box::new(kill));
        held.push(Box::new(conns));
        held.push(Box::new(client));
        held.push(Box::new(conn));
        held.extend(hold_sockets(iotask));
        return held;
    }
    held.push(Box::new(kill));
    held.push(Box::new(handle));
    held.push(Box::new(conns));
    held.push(Box::new(client));
    held.push(Box::new(conn));
    held.extend(hold_sockets(iotask));
    held
}

/// Sockets in every state, alive.
fn hold_sockets(iotask: &IoTask) -> Vec<Box<dyn Send>> {
    let mut held: Vec<Box<dyn Send>> = Vec::new();
    let (sock, peer) = connected_pair(iotask);
    let port = sock.read_start().unwrap();
    let (sock2, peer2) = connected_pair(iotask);
    let big = sock2.write_future(vec![0u8; 32 * 1024 * 1024]);
    let rf = sock2.read_future(Duration::from_secs(3600));
    let (sock3, peer3) = connected_pair(iotask);
    let mailbox: Mailbox<()> = Mailbox::new();
    sock3.attach(&mailbox).unwrap();
    let (sock4, peer4) = connected_pair(iotask);
    let buf = tcp::socket_buf(sock4);
    peer4.shutdown(Shutdown::Write).unwrap();
    held.push(Box::new(sock));
    held.push(Box::new(peer));
    held.push(Box::new(port));
    held.push(Box::new(sock2));
    held.push(Box::new(peer2));
    held.push(Box::new(big));
    held.push(Box::new(rf));
    held.push(Box::new(sock3));
    held.push(Box::new(peer3));
    held.push(Box::new(mailbox));
    held.push(Box::new(buf));
    held.push(Box::new(peer4));
    held
}
