//! The echo examples (`echo_server`, `echo_actor`) and the demo, run in-process.

#[path = "../../examples/demo.rs"]
#[allow(dead_code)]
mod demo;
#[path = "../../examples/echo_server.rs"]
#[allow(dead_code)]
mod echo_server;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use iotask::server::ListenOptions;
use iotask::unix::Unix;

// The demo includes examples/echo_actor.rs; loading it a second time would duplicate it.
use demo::echo_actor;

use crate::examples_support::{
    Server, Socat, SocketDir, TIMEOUT, client, have_tool, join_within, unix_client,
};

fn start_echo_server() -> Server {
    Server::start(echo_server::serve)
}

fn start_echo_actor() -> Server {
    Server::start(echo_actor::serve)
}

fn start_unix_echo_server(path: &Path) -> Server<Unix> {
    Server::start_unix(path, echo_server::serve)
}

fn start_unix_echo_actor(path: &Path) -> Server<Unix> {
    Server::start_unix(path, echo_actor::serve)
}

/// `clients` concurrent `std` clients each make `messages` round trips of messages of
/// varying length and content, and check every echoed byte.
fn echo_load(addr: SocketAddr, clients: usize, messages: usize) {
    echo_load_with(move || client(addr), clients, messages);
}

/// `echo_load` with clients made by `connect`.
fn echo_load_with<S: Read + Write>(
    connect: impl Fn() -> S + Clone + Send + 'static,
    clients: usize,
    messages: usize,
) {
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let connect = connect.clone();
            std::thread::spawn(move || {
                let mut stream = connect();
                for i in 0..messages {
                    let mut message = format!("client {c} message {i} ").into_bytes();
                    message.resize(
                        message.len() + (c * 7 + i * 13) % 200,
                        b'a' + (i % 26) as u8,
                    );
                    stream.write_all(&message).expect("write");
                    let mut echo = vec![0; message.len()];
                    stream.read_exact(&mut echo).expect("read the echo");
                    assert_eq!(echo, message, "client {c} message {i}");
                }
            })
        })
        .collect();
    for thread in threads {
        join_within(thread, TIMEOUT * 3);
    }
}

/// Sends 1 MiB while reading the echo concurrently; the echo must equal what was sent.
fn echo_bulk(addr: SocketAddr) {
    let data: Vec<u8> = (0..1024 * 1024u32).map(|i| (i * 31 % 251) as u8).collect();
    let mut stream = client(addr);
    let writer = std::thread::spawn({
        let mut stream = stream.try_clone().expect("clone");
        let data = data.clone();
        move || stream.write_all(&data).expect("write 1 MiB")
    });
    let mut echo = vec![0; data.len()];
    stream.read_exact(&mut echo).expect("read 1 MiB back");
    join_within(writer, TIMEOUT);
    assert!(echo == data, "the 1 MiB echo differs from what was sent");
}

/// After the client shuts down its sending side, the server echoes what is left and then
/// closes the connection.
fn echo_then_close(addr: SocketAddr) {
    let mut stream = client(addr);
    stream.write_all(b"last words").expect("write");
    stream.shutdown(Shutdown::Write).expect("shutdown");
    let mut echo = Vec::new();
    stream.read_to_end(&mut echo).expect("read to EOF");
    assert_eq!(echo, b"last words");
}

#[test]
fn echo_server_echoes_for_many_concurrent_clients() {
    let server = start_echo_server();
    echo_load(server.addr, 50, 100);
    server.stop().expect("serve returns Ok when killed");
}

#[test]
fn echo_actor_echoes_for_many_concurrent_clients() {
    let server = start_echo_actor();
    echo_load(server.addr, 50, 100);
    server.stop().expect("serve returns Ok when killed");
}

#[test]
fn echo_server_echoes_a_megabyte() {
    let server = start_echo_server();
    echo_bulk(server.addr);
}

#[test]
fn echo_actor_echoes_a_megabyte() {
    let server = start_echo_actor();
    echo_bulk(server.addr);
}

#[test]
fn echo_server_closes_after_the_client_does() {
    let server = start_echo_server();
    echo_then_close(server.addr);
}

#[test]
fn echo_actor_closes_after_the_client_does() {
    let server = start_echo_actor();
    echo_then_close(server.addr);
}

#[test]
fn echo_server_stops_reading_a_client_that_does_not_read() {
    let server = start_echo_server();
    let mut stream = client(server.addr);
    stream
        .set_write_timeout(Some(Duration::from_secs(1)))
        .expect("write timeout");
    // Kernel buffers and the port's window hold a few MiB; far less than this limit.
    let limit = 64 * 1024 * 1024;
    let block = vec![b'x'; 64 * 1024];
    let mut sent = 0;
    let blocked = loop {
        assert!(
            sent < limit,
            "sent {sent} bytes unread and was never held back"
        );
        match stream.write(&block) {
            Ok(n) => sent += n,
            Err(e) => break e,
        }
    };
    assert_eq!(blocked.kind(), std::io::ErrorKind::WouldBlock, "{blocked}");
}

#[test]
fn echo_actor_closes_every_connection_when_stopped() {
    let server = start_echo_actor();
    let mut clients: Vec<TcpStream> = (0..5).map(|_| client(server.addr)).collect();
    // One round trip each, so every connection is known to the actor.
    for stream in &mut clients {
        stream.write_all(b"x").expect("write");
        let mut b = [0];
        stream.read_exact(&mut b).expect("echo");
    }
    server.stop().expect("serve returns Ok when killed");
    for stream in &mut clients {
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).expect("EOF, not a timeout");
        assert!(rest.is_empty());
    }
}

fn small_demo(server: Option<SocketAddr>, connections: usize) -> demo::Config {
    demo::Config {
        connections,
        duration: Duration::from_secs(1),
        server,
        progress: false,
    }
}

#[test]
fn demo_runs_and_verifies_its_echoes() {
    let report = demo::run(&small_demo(None, 10)).expect("the demo succeeds");
    assert_eq!(report.connections, 10);
    assert!(report.messages > 0, "{report:?}");
    assert!(report.elapsed >= Duration::from_secs(1), "{report:?}");
    assert!(report.p50 <= report.p99, "{report:?}");
    assert!(report.rate() > 0.0);
    let text = report.to_string();
    assert!(
        text.contains("messages/s") && text.contains("p99"),
        "{text}"
    );
}

#[test]
fn demo_drives_the_thread_per_client_echo_server() {
    let server = start_echo_server();
    let report = demo::run(&small_demo(Some(server.addr), 10)).expect("the demo succeeds");
    assert!(report.messages > 0, "{report:?}");
    assert_eq!(report.server, server.addr);
}

/// A `std` server for `connections` clients that answers each with `reply(chunk)`, or
/// closes the connection when `reply` gives `None`.
fn bad_server(
    connections: usize,
    reply: fn(Vec<u8>) -> Option<Vec<u8>>,
) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let thread = std::thread::spawn(move || {
        for _ in 0..connections {
            let (mut stream, _) = listener.accept().expect("accept");
            stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
            std::thread::spawn(move || {
                let mut buf = [0; 4096];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    let Some(answer) = reply(buf[..n].to_vec()) else {
                        return;
                    };
                    if stream.write_all(&answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, thread)
}

#[test]
fn demo_fails_when_an_echo_differs() {
    let (addr, server) = bad_server(2, |mut chunk| {
        chunk[0] ^= 1;
        Some(chunk)
    });
    let err = demo::run(&small_demo(Some(addr), 2)).expect_err("a corrupted echo is an error");
    assert!(err.to_string().contains("differs"), "{err}");
    join_within(server, TIMEOUT);
}

#[test]
fn demo_fails_when_a_connection_closes() {
    let (addr, server) = bad_server(2, |_| None);
    let err = demo::run(&small_demo(Some(addr), 2)).expect_err("a closed connection is an error");
    assert!(err.to_string().contains("closed early"), "{err}");
    join_within(server, TIMEOUT);
}

// ---- Over Unix-domain sockets ----------------------------------------------------------------

#[test]
fn echo_server_echoes_over_a_unix_socket() {
    let dir = SocketDir::new("echo-server");
    let path = dir.path("echo.sock");
    let server = start_unix_echo_server(&path);
    assert_eq!(server.addr.as_pathname(), Some(path.as_path()));
    let load_path = path.clone();
    echo_load_with(move || unix_client(&load_path), 10, 50);

    // After the client shuts down its sending side, the rest is echoed, then EOF.
    let mut stream = unix_client(&path);
    stream.write_all(b"last words").expect("write");
    stream.shutdown(Shutdown::Write).expect("shutdown");
    let mut echo = Vec::new();
    stream.read_to_end(&mut echo).expect("read to EOF");
    assert_eq!(echo, b"last words");

    server.stop().expect("serve returns Ok when killed");
    assert!(!path.exists(), "the socket file outlived the server");
}

#[test]
fn echo_actor_echoes_over_a_unix_socket_and_closes_its_clients_when_stopped() {
    let dir = SocketDir::new("echo-actor");
    let path = dir.path("echo.sock");
    let server = start_unix_echo_actor(&path);
    let load_path = path.clone();
    echo_load_with(move || unix_client(&load_path), 10, 50);

    let mut stream = unix_client(&path);
    stream.write_all(b"x").expect("write");
    let mut b = [0];
    stream.read_exact(&mut b).expect("echo");
    server.stop().expect("serve returns Ok when killed");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("EOF, not a timeout");
    assert!(rest.is_empty());
    assert!(!path.exists(), "the socket file outlived the server");
}

/// A line through `socat - UNIX-CONNECT:path` comes back, and socat exits when its input
/// closes.
fn socat_echo(path: &Path) {
    let mut socat = Socat::connect(&format!("UNIX-CONNECT:{}", path.display()));
    socat.say("hello over a unix socket");
    assert_eq!(socat.next_line(), "hello over a unix socket");
    socat.say("and again");
    assert_eq!(socat.next_line(), "and again");
    socat.close();
}

#[test]
fn socat_gets_its_echo_from_echo_server_over_a_unix_socket() {
    if !have_tool("socat", "socat") {
        return;
    }
    let dir = SocketDir::new("echo-server-socat");
    let path = dir.path("echo.sock");
    let server = start_unix_echo_server(&path);
    socat_echo(&path);
    server.stop().expect("serve returns Ok when killed");
}

#[test]
fn socat_gets_its_echo_from_echo_actor_over_a_unix_socket() {
    if !have_tool("socat", "socat") {
        return;
    }
    let dir = SocketDir::new("echo-actor-socat");
    let path = dir.path("echo.sock");
    let server = start_unix_echo_actor(&path);
    socat_echo(&path);
    server.stop().expect("serve returns Ok when killed");
}

/// `unix:@NAME` binds a Linux abstract name: no file, and clients connect by the name.
#[cfg(target_os = "linux")]
#[test]
fn echo_actor_serves_an_abstract_name() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixStream};

    use crate::examples_support::listen_addr::{Bound, ListenAddr};

    let name = format!("iotask-echo-actor-{}", std::process::id());
    let arg = format!("unix:@{name}");
    let addr: ListenAddr = arg.parse().expect("an abstract name");
    let server = Server::start_on(
        |iotask| {
            let bound = addr.bind(&ListenOptions::new(), iotask)?;
            assert_eq!(
                bound.to_string(),
                arg,
                "what `main` prints after `listening on`"
            );
            match bound {
                Bound::Unix(listener) => Ok(listener),
                Bound::Tcp(_) => panic!("{arg} parsed as a TCP address"),
            }
        },
        echo_actor::serve::<Unix>,
    );
    let mut stream =
        UnixStream::connect_addr(&UnixAddr::from_abstract_name(&name).expect("a name"))
            .expect("connect to the abstract name");
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    stream.write_all(b"abstract").expect("write");
    let mut echo = [0; 8];
    stream.read_exact(&mut echo).expect("the echo");
    assert_eq!(&echo, b"abstract");
    server.stop().expect("serve returns Ok when killed");
}

#[test]
fn addresses_parse_and_print_as_given() {
    use crate::examples_support::listen_addr::ListenAddr;

    for tcp in [
        "127.0.0.1:7000",
        "[::1]:0",
        "*:7000",
        "7000",
        "localhost:80",
    ] {
        let addr: ListenAddr = tcp.parse().expect("a TCP address");
        assert!(matches!(addr, ListenAddr::Tcp(_)), "{tcp}: {addr:?}");
        assert_eq!(addr.to_string(), tcp);
    }
    let addr: ListenAddr = "unix:/tmp/x.sock".parse().expect("a path");
    match &addr {
        ListenAddr::Unix(a) => assert_eq!(a.as_pathname(), Some(Path::new("/tmp/x.sock"))),
        other => panic!("{other:?}"),
    }
    assert_eq!(addr.to_string(), "unix:/tmp/x.sock");
    let relative: ListenAddr = "unix:x.sock".parse().expect("a relative path");
    assert_eq!(relative.to_string(), "unix:x.sock");
    #[cfg(target_os = "linux")]
    assert_eq!(
        "unix:@chat"
            .parse::<ListenAddr>()
            .expect("a name")
            .to_string(),
        "unix:@chat"
    );
    for bad in ["unix:", &format!("unix:/{}", "x".repeat(200))] {
        let err = bad.parse::<ListenAddr>().expect_err(bad);
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{bad}: {err}");
    }
}
