//! `tcp::listen_into` and `tcp::listen_on_pool_into`: connections handed by the I/O task
//! straight to an actor's mailbox, with the listener controls of `listen`.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use iotask::tcp::{self, CloseMode, ListenError, ListenOptions, PoolListener, TcpSocket};
use iotask::{Event, IoPool, IoTask, Mailbox, SocketId};

const WAIT: Duration = Duration::from_secs(10);
/// How long a test watches for something that must *not* happen.
const QUIET: Duration = Duration::from_millis(300);

fn client(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

fn next(mailbox: &mut Mailbox) -> Event<()> {
    mailbox
        .recv_timeout(WAIT)
        .expect("an event within the timeout")
}

fn next_accepted(mailbox: &mut Mailbox) -> TcpSocket {
    match next(mailbox) {
        Event::Accepted(sock) => sock,
        other => panic!("expected a connection, got {other:?}"),
    }
}

/// The next event, which must end a socket's reading: its socket and the error's name.
fn next_closed(mailbox: &mut Mailbox) -> (SocketId, String) {
    match next(mailbox) {
        Event::Closed { socket, error } => (socket, error.name().to_owned()),
        other => panic!("expected Closed, got {other:?}"),
    }
}

/// Waits until `cond` holds, failing the test after `WAIT`.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Asserts that connecting to `addr` is refused: nothing listens there any more.
fn assert_refused(addr: SocketAddr) {
    match TcpStream::connect(addr) {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}"),
        Ok(_) => panic!("{addr} still accepts connections"),
    }
}

#[test]
fn each_connection_is_announced_before_its_data_and_can_be_answered() {
    let iotask = IoTask::spawn().unwrap();
    let mut mailbox: Mailbox = Mailbox::new();
    let server = tcp::bind("127.0.0.1:0", &ListenOptions::new(), &iotask)
        .and_then(|l| l.into_mailbox(&mailbox))
        .unwrap();
    let n = 20;
    let mut clients: Vec<TcpStream> = (0..n)
        .map(|i| {
            let mut c = client(server.local_addr());
            c.write_all(format!("hello from {i};").as_bytes()).unwrap();
            c.shutdown(Shutdown::Write).unwrap();
            c
        })
        .collect();

    let mut sockets: HashMap<SocketId, (TcpSocket, Vec<u8>)> = HashMap::new();
    let mut ended = 0;
    while ended < n {
        match next(&mut mailbox) {
            Event::Accepted(sock) => {
                assert!(sockets.insert(sock.id(), (sock, Vec::new())).is_none());
            }
            Event::Data { socket, data } => {
                let (_, got) = sockets.get_mut(&socket).expect("Data after Accepted");
                got.extend(data);
            }
            Event::Closed { socket, error } => {
                assert!(error.is_eof(), "closed with {error:?}");
                let (sock, got) = sockets.get(&socket).expect("Closed after Accepted");
                // Answer with what it sent, so the client can tell it reached its own socket.
                sock.write(got.clone()).unwrap();
                ended += 1;
            }
            other => panic!("unexpected event: {other:?}"),
        }
    }
    assert_eq!(server.kill_chan().num_connections(), n);
    // Dropping the sockets flushes the answers and closes the connections.
    drop(sockets);
    for (i, c) in clients.iter_mut().enumerate() {
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, format!("hello from {i};"));
    }
    eventually("connections counted closed", || {
        server.kill_chan().num_connections() == 0
    });
    server.stop().unwrap();
}

#[test]
fn stop_frees_the_port_and_leaves_connections_working() {
    let iotask = IoTask::spawn().unwrap();
    let mut mailbox: Mailbox = Mailbox::new();
    let server = tcp::bind("127.0.0.1:0", &ListenOptions::new(), &iotask)
        .and_then(|l| l.into_mailbox(&mailbox))
        .unwrap();
    let addr = server.local_addr();
    let mut c = client(addr);
    let sock = next_accepted(&mut mailbox);

    // Taken while it listens; free once `stop` returns.
    let again =
        tcp::bind(addr, &ListenOptions::new(), &iotask).and_then(|l| l.into_mailbox(&mailbox));
    assert!(matches!(again, Err(ListenError::AddressInUse)), "{again:?}");
    server.stop().unwrap();
    assert_refused(addr);

    sock.write(b"still here".to_vec()).unwrap();
    let mut buf = [0u8; 10];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still here");
    c.write_all(b"and back").unwrap();
    match next(&mut mailbox) {
        Event::Data { socket, data } => {
            assert_eq!(socket, sock.id());
            assert_eq!(data, b"and back");
        }
        other => panic!("expected data, got {other:?}"),
    }
}

#[test]
fn dropping_the_server_stops_it() {
    let iotask = IoTask::spawn().unwrap();
    let mailbox: Mailbox = Mailbox::new();
    let server = tcp::bind("127.0.0.1:0", &ListenOptions::new(), &iotask)
        .and_then(|l| l.into_mailbox(&mailbox))
        .unwrap();
    let addr = server.local_addr();
    drop(server);
    assert_refused(addr);
}

#[test]
fn max_connections_holds_the_rest_until_one_closes() {
    let iotask = IoTask::spawn().unwrap();
    let mut mailbox: Mailbox = Mailbox::new();
    let options = ListenOptions::new().max_connections(2);
    let server = tcp::bind("127.0.0.1:0", &options, &iotask)
        .and_then(|l| l.into_mailbox(&mailbox))
        .unwrap();
    let clients: Vec<TcpStream> = (0..3).map(|_| client(server.local_addr())).collect();
    let first = next_accepted(&mut mailbox);
    let _second = next_accepted(&mut mailbox);
    assert!(
        mailbox.recv_timeout(QUIET).is_none(),
        "a third connection was accepted at the limit"
    );
    assert_eq!(server.kill_chan().num_connections(), 2);
    let first_id = first.id();
    drop(first);
    // The dropped socket's reading ends first, then its place goes to the third client.
    assert_eq!(next_closed(&mut mailbox), (first_id, "CLOSED".to_owned()));
    let _third = next_accepted(&mut mailbox);
    assert_eq!(server.kill_chan().num_connections(), 2);
    drop(clients);
    server.stop().unwrap();
}

#[test]
fn pause_holds_clients_until_resume_and_drop_incoming_refuses_them() {
    let iotask = IoTask::spawn().unwrap();
    let mut mailbox: Mailbox = Mailbox::new();
    let server = tcp::bind("127.0.0.1:0", &ListenOptions::new(), &iotask)
        .and_then(|l| l.into_mailbox(&mailbox))
        .unwrap();
    let kill = server.kill_chan().clone();

    kill.pause();
    let _waiting = client(server.local_addr());
    assert!(
        mailbox.recv_timeout(QUIET).is_none(),
        "accepted while paused"
    );
    kill.resume();
    let _sock = next_accepted(&mut mailbox);

    kill.set_drop_incoming_connections(true);
    let mut dropped = client(server.local_addr());
    let mut buf = [0u8; 1];
    match dropped.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("expected the server to close, got {other:?}"),
    }
    assert!(
        mailbox.recv_timeout(QUIET).is_none(),
        "a dropped connection reached the mailbox"
    );
    server.stop().unwrap();
}

#[test]
fn close_with_connections_ends_them_in_the_mailbox() {
    let iotask = IoTask::spawn().unwrap();
    let mut mailbox: Mailbox = Mailbox::new();
    let server = tcp::bind("127.0.0.1:0", &ListenOptions::new(), &iotask)
        .and_then(|l| l.into_mailbox(&mailbox))
        .unwrap();
    let mut clients: Vec<TcpStream> = (0..3).map(|_| client(server.local_addr())).collect();
    let sockets: Vec<TcpSocket> = (0..3).map(|_| next_accepted(&mut mailbox)).collect();

    server.kill_chan().close(CloseMode::CloseConnections);
    let mut closed = Vec::new();
    while closed.len() < sockets.len() {
        let (socket, error) = next_closed(&mut mailbox);
        assert_eq!(error, "CLOSED");
        closed.push(socket);
    }
    closed.sort();
    let mut ids: Vec<SocketId> = sockets.iter().map(TcpSocket::id).collect();
    ids.sort();
    assert_eq!(closed, ids);
    assert!(server.kill_chan().wait_connections_closed(WAIT));
    // Closed through its handle: not an error.
    server.wait().unwrap();
    for c in &mut clients {
        let mut buf = [0u8; 1];
        assert!(matches!(c.read(&mut buf), Ok(0) | Err(_)));
    }
}

#[test]
fn a_dropped_mailbox_stops_the_listener_at_its_next_connection() {
    let iotask = IoTask::spawn().unwrap();
    let mailbox: Mailbox = Mailbox::new();
    let server = tcp::bind("127.0.0.1:0", &ListenOptions::new(), &iotask)
        .and_then(|l| l.into_mailbox(&mailbox))
        .unwrap();
    let addr = server.local_addr();
    drop(mailbox);
    // Completed by the kernel from the backlog, then closed with the listener.
    let mut c = client(addr);
    match server.wait() {
        Err(ListenError::Generic { name, .. }) => assert_eq!(name, "CLOSED"),
        other => panic!("expected CLOSED, got {other:?}"),
    }
    let mut buf = [0u8; 1];
    assert!(matches!(c.read(&mut buf), Ok(0) | Err(_)));
    assert_refused(addr);
}

#[test]
fn shutdown_stops_the_listener_and_its_connections() {
    let iotask = IoTask::spawn().unwrap();
    let mut mailbox: Mailbox = Mailbox::new();
    let server = tcp::bind("127.0.0.1:0", &ListenOptions::new(), &iotask)
        .and_then(|l| l.into_mailbox(&mailbox))
        .unwrap();
    let addr = server.local_addr();
    let _c = client(addr);
    let sock = next_accepted(&mut mailbox);
    iotask.shutdown();
    assert_eq!(
        next_closed(&mut mailbox),
        (sock.id(), "SHUTDOWN".to_owned())
    );
    match server.wait() {
        Err(ListenError::Generic { name, .. }) => assert_eq!(name, "SHUTDOWN"),
        other => panic!("expected SHUTDOWN, got {other:?}"),
    }
    assert_refused(addr);
}

#[test]
fn a_pool_hands_each_task_s_connections_to_its_own_mailbox() {
    for mode in [PoolListener::PerTask, PoolListener::Shared] {
        let pool = IoPool::spawn(2).unwrap();
        let mut mailboxes: Vec<Mailbox> = vec![Mailbox::new(), Mailbox::new()];
        let options = ListenOptions::new().backlog(512).pool_listener(mode);
        let server = tcp::bind_pool("127.0.0.1:0", &options, &pool)
            .and_then(|l| l.into_mailboxes(&mailboxes))
            .unwrap();
        let n = 200;
        let clients: Vec<TcpStream> = (0..n).map(|_| client(server.local_addr())).collect();
        let mut per_task = [0usize; 2];
        let mut sockets = Vec::new();
        let deadline = Instant::now() + WAIT;
        while sockets.len() < n {
            assert!(
                Instant::now() < deadline,
                "accepted {} of {n}",
                sockets.len()
            );
            for (i, mailbox) in mailboxes.iter_mut().enumerate() {
                while let Some(event) = mailbox.try_recv() {
                    let Event::Accepted(sock) = event else {
                        panic!("expected a connection, got {event:?}");
                    };
                    assert_eq!(pool.index_of(&sock), Some(i), "{mode:?}: on another task");
                    per_task[i] += 1;
                    sockets.push(sock);
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if mode == PoolListener::PerTask {
            // As in server_control: an even hash splits outside 60..=140 with probability
            // 6e-9.
            assert!(
                per_task.iter().all(|&n| (60..=140).contains(&n)),
                "SO_REUSEPORT spread {per_task:?}"
            );
        }
        assert_eq!(server.kill_chan().num_connections(), n);
        drop(clients);
        drop(sockets);
        server.stop().unwrap();
        pool.shutdown();
    }
}

#[test]
fn a_pool_listener_needs_a_mailbox() {
    let pool = IoPool::spawn(2).unwrap();
    let none: [Mailbox; 0] = [];
    match tcp::bind_pool("127.0.0.1:0", &ListenOptions::new(), &pool)
        .and_then(|l| l.into_mailboxes(&none))
    {
        Err(ListenError::Generic { name, .. }) => assert_eq!(name, "EINVAL"),
        other => panic!("expected EINVAL, got {other:?}"),
    }
    pool.shutdown();
}

#[test]
fn a_pool_listener_stops_as_a_whole_when_one_task_stops() {
    let pool = IoPool::spawn(2).unwrap();
    let mailboxes: Vec<Mailbox> = vec![Mailbox::new(), Mailbox::new()];
    let server = tcp::bind_pool("127.0.0.1:0", &ListenOptions::new(), &pool)
        .and_then(|l| l.into_mailboxes(&mailboxes))
        .unwrap();
    let addr = server.local_addr();
    pool.tasks()[0].shutdown();
    // The other task's socket closes too, and waiting says why.
    match server.wait() {
        Err(ListenError::Generic { name, .. }) => assert_eq!(name, "SHUTDOWN"),
        other => panic!("expected SHUTDOWN, got {other:?}"),
    }
    assert_refused(addr);
    pool.shutdown();
}

/// The spellings from before `bind` still compile and serve, with a deprecation warning
/// that names their replacement.
#[test]
#[allow(deprecated)]
fn the_older_server_calls_still_work() {
    let iotask = IoTask::spawn().unwrap();
    let options = ListenOptions::new();
    let mailbox: Mailbox = Mailbox::new();
    let server = tcp::listen_into("127.0.0.1:0", &options, &iotask, &mailbox).unwrap();
    let _client = TcpStream::connect(server.local_addr()).unwrap();
    assert!(crate::util::wait_until(WAIT, || server
        .kill_chan()
        .num_connections()
        == 1));
    server.stop().unwrap();

    let spawned = tcp::spawn_listen("127.0.0.1:0", &options, &iotask, |conn, _| {
        drop(tcp::accept(conn).unwrap().write_future(b"old".to_vec()));
    })
    .unwrap();
    let sock = tcp::connect(spawned.local_addr(), &iotask).unwrap();
    assert_eq!(sock.read(WAIT).unwrap(), b"old");
    spawned.stop().unwrap();

    let with = tcp::listen_with(
        "127.0.0.1:0",
        &options,
        &iotask,
        |kill| kill.send(None).unwrap(),
        |_, _| {},
    );
    assert_eq!(with, Ok(()));

    let pool = iotask::IoPool::spawn(2).unwrap();
    let on_pool = tcp::listen_on_pool(
        "127.0.0.1:0",
        &options,
        &pool,
        |kill| kill.send(None).unwrap(),
        |_, _| {},
    );
    assert_eq!(on_pool, Ok(()));
    let mailboxes: Vec<Mailbox> = vec![Mailbox::new(), Mailbox::new()];
    let pooled = tcp::listen_on_pool_into("127.0.0.1:0", &options, &pool, &mailboxes).unwrap();
    pooled.stop().unwrap();
    pool.shutdown();
}
