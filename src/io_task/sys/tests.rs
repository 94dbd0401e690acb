//! The contract of `sys/mod.rs`, checked against every backend that builds here: on Linux
//! both (the `polling` one is built for the tests even when epoll is selected), elsewhere
//! the `polling` one.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use super::Interest;

const READ: Interest = Interest {
    read: true,
    write: false,
    exclusive: false,
};
const WRITE: Interest = Interest {
    read: false,
    write: true,
    exclusive: false,
};

/// A connected pair on loopback: (client, server side).
fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    client.set_nonblocking(true).unwrap();
    server.set_nonblocking(true).unwrap();
    (client, server)
}

fn listener() -> (Socket, SocketAddr) {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(16).unwrap();
    socket.set_nonblocking(true).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    (socket, addr)
}

macro_rules! contract_tests {
    ($name:ident, $backend:path) => {
        mod $name {
            use super::*;
            use backend::{Events, Poller};
            use $backend as backend;

            /// The keys and directions of one wait, sorted by key.
            fn wait(poller: &Poller, timeout: Duration) -> Vec<(usize, bool, bool)> {
                let mut events = Events::with_capacity(16);
                poller.wait(&mut events, Some(timeout)).unwrap();
                let mut seen: Vec<_> = events
                    .iter()
                    .map(|e| (e.key, e.readable, e.writable))
                    .collect();
                seen.sort();
                assert_eq!(events.is_empty(), seen.is_empty());
                events.clear();
                assert!(events.is_empty() && events.iter().next().is_none());
                seen
            }

            /// Waits until `key` is reported (a wait may return early with nothing).
            fn wait_for(poller: &Poller, key: usize) -> (bool, bool) {
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    if let Some(&(_, r, w)) = wait(poller, Duration::from_millis(100))
                        .iter()
                        .find(|e| e.0 == key)
                    {
                        return (r, w);
                    }
                }
                panic!("key {key} never reported");
            }

            #[test]
            fn notify_wakes_a_blocked_wait_and_is_no_event() {
                let poller = std::sync::Arc::new(Poller::new().unwrap());
                let waker = poller.clone();
                let t = thread::spawn(move || {
                    thread::sleep(Duration::from_millis(50));
                    waker.notify().unwrap();
                });
                let start = Instant::now();
                let mut events = Events::with_capacity(4);
                poller.wait(&mut events, None).unwrap();
                assert!(events.iter().next().is_none());
                assert!(start.elapsed() < Duration::from_secs(5));
                t.join().unwrap();
                // A notify before the wait makes it return at once.
                poller.notify().unwrap();
                let start = Instant::now();
                poller
                    .wait(&mut events, Some(Duration::from_secs(10)))
                    .unwrap();
                assert!(start.elapsed() < Duration::from_secs(5));
            }

            #[test]
            fn timeout_ends_an_idle_wait_with_no_events() {
                let poller = Poller::new().unwrap();
                let start = Instant::now();
                assert!(wait(&poller, Duration::from_millis(30)).is_empty());
                assert!(start.elapsed() >= Duration::from_millis(29));
            }

            #[test]
            fn readiness_is_level_triggered() {
                let poller = Poller::new().unwrap();
                let (mut client, server) = pair();
                // SAFETY: `server` outlives its registration (deleted below).
                unsafe { poller.add(server.as_raw_fd(), 7, READ).unwrap() };
                assert!(wait(&poller, Duration::from_millis(20)).is_empty());
                client.write_all(b"ping").unwrap();
                assert_eq!(wait_for(&poller, 7).0, true);
                // Not read: reported again, and again.
                assert_eq!(
                    wait(&poller, Duration::from_secs(5)),
                    vec![(7, true, false)]
                );
                assert_eq!(
                    wait(&poller, Duration::from_secs(5)),
                    vec![(7, true, false)]
                );
                let mut buf = [0; 16];
                assert_eq!((&server).read(&mut buf).unwrap(), 4);
                assert!(wait(&poller, Duration::from_millis(20)).is_empty());
                poller.delete(server.as_fd()).unwrap();
            }

            #[test]
            fn modify_replaces_and_delete_ends_the_interest() {
                let poller = Poller::new().unwrap();
                let (_client, server) = pair();
                // SAFETY: `server` outlives its registration.
                unsafe { poller.add(server.as_raw_fd(), 3, READ).unwrap() };
                assert!(wait(&poller, Duration::from_millis(20)).is_empty());
                poller.modify(server.as_fd(), 4, WRITE).unwrap();
                assert_eq!(wait_for(&poller, 4), (false, true));
                poller.delete(server.as_fd()).unwrap();
                assert!(wait(&poller, Duration::from_millis(20)).is_empty());
            }

            #[test]
            fn a_reset_counts_as_readable_and_writable() {
                let poller = Poller::new().unwrap();
                let (client, server) = pair();
                // SAFETY: `server` outlives its registration.
                unsafe { poller.add(server.as_raw_fd(), 5, READ).unwrap() };
                // Linger 0: close sends RST.
                Socket::from(client)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
                let (readable, writable) = wait_for(&poller, 5);
                assert!(readable && writable, "({readable}, {writable})");
                let mut buf = [0; 16];
                let e = (&server).read(&mut buf).unwrap_err();
                assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
                poller.delete(server.as_fd()).unwrap();
            }

            #[test]
            fn a_write_interest_sees_the_peer_go_away() {
                let poller = Poller::new().unwrap();
                let (client, server) = pair();
                // Fill the send buffer, so that writable is not reported for room.
                let mut chunk = vec![0u8; 64 * 1024];
                while (&server).write(&chunk).is_ok() {}
                chunk.clear();
                // SAFETY: `server` outlives its registration.
                unsafe { poller.add(server.as_raw_fd(), 6, WRITE).unwrap() };
                assert!(wait(&poller, Duration::from_millis(20)).is_empty());
                Socket::from(client)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
                assert!(wait_for(&poller, 6).1);
                let e =
                    super::super::socket::send(&Socket::from(server.try_clone().unwrap()), b"x")
                        .unwrap_err();
                assert!(
                    matches!(
                        e.kind(),
                        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                    ),
                    "{e}"
                );
                poller.delete(server.as_fd()).unwrap();
            }

            #[test]
            fn a_fin_counts_as_readable() {
                let poller = Poller::new().unwrap();
                let (client, server) = pair();
                // SAFETY: `server` outlives its registration.
                unsafe { poller.add(server.as_raw_fd(), 9, READ).unwrap() };
                client.shutdown(Shutdown::Write).unwrap();
                assert!(wait_for(&poller, 9).0);
                let mut buf = [0; 16];
                assert_eq!((&server).read(&mut buf).unwrap(), 0);
                poller.delete(server.as_fd()).unwrap();
            }

            #[test]
            fn a_shared_listener_registers_with_several_pollers() {
                // `exclusive` on the listener `PoolListener::Shared` gives every loop: each
                // poller takes it, and a connection is reported to at least one of them.
                let (socket, addr) = listener();
                let copy = socket.try_clone().unwrap();
                let exclusive = Interest {
                    exclusive: true,
                    ..READ
                };
                let (a, b) = (Poller::new().unwrap(), Poller::new().unwrap());
                // SAFETY: both descriptors outlive their registrations.
                unsafe {
                    a.add(socket.as_raw_fd(), 1, exclusive).unwrap();
                    b.add(copy.as_raw_fd(), 2, exclusive).unwrap();
                }
                let _client = TcpStream::connect(addr).unwrap();
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    let seen_a = !wait(&a, Duration::from_millis(10)).is_empty();
                    let seen_b = !wait(&b, Duration::from_millis(10)).is_empty();
                    if seen_a || seen_b {
                        break;
                    }
                    assert!(Instant::now() < deadline, "no poller saw the connection");
                }
                let accepted = super::super::accept_nonblocking(&socket).unwrap();
                drop(accepted);
                a.delete(socket.as_fd()).unwrap();
                b.delete(copy.as_fd()).unwrap();
            }
        }
    };
}

#[cfg(all(target_os = "linux", not(iotask_force_polling)))]
contract_tests!(epoll_backend, super::super::epoll);
contract_tests!(polling_backend, super::super::polling);

/// The flags an accepted socket must have, whichever way it was accepted.
fn assert_nonblocking_cloexec(socket: &Socket) {
    let mut buf = [std::mem::MaybeUninit::new(0u8); 4];
    let e = socket.recv(&mut buf).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    // SAFETY: F_GETFD on an open descriptor takes no pointer.
    let fd_flags = unsafe { libc::fcntl(socket.as_raw_fd(), libc::F_GETFD) };
    assert!(fd_flags >= 0 && fd_flags & libc::FD_CLOEXEC != 0);
}

#[test]
fn accept_nonblocking_makes_a_nonblocking_cloexec_socket() {
    let (listener, addr) = listener();
    let e = super::accept_nonblocking(&listener).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    let _client = TcpStream::connect(addr).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let accepted = loop {
        match super::accept_nonblocking(&listener) {
            Ok(s) => break s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_nonblocking_cloexec(&accepted);
}

/// The fallback for systems without `accept4` (macOS among them), run here.
#[test]
fn accept_without_accept4_makes_a_nonblocking_cloexec_socket() {
    let (listener, addr) = listener();
    let _client = TcpStream::connect(addr).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let accepted = loop {
        match super::socket::accept_then_set_flags(&listener) {
            Ok(s) => break s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_nonblocking_cloexec(&accepted);
}

#[test]
fn send_and_send_vectored_deliver() {
    let (client, server) = pair();
    let server = Socket::from(server);
    assert_eq!(super::send(&server, b"ab").unwrap(), 2);
    let bufs = [io::IoSlice::new(b"cd"), io::IoSlice::new(b"ef")];
    assert_eq!(super::send_vectored(&server, &bufs).unwrap(), 4);
    client.set_nonblocking(false).unwrap();
    let mut got = [0; 6];
    (&client).read_exact(&mut got).unwrap();
    assert_eq!(&got, b"abcdef");
}

#[test]
fn accept_errors_are_classified() {
    let err = io::Error::from_raw_os_error;
    for code in [libc::EINTR, libc::ECONNABORTED, libc::EPROTO, libc::EPERM] {
        assert!(super::accept_error_is_transient(&err(code)), "{code}");
        assert!(
            !super::accept_error_is_out_of_resources(&err(code)),
            "{code}"
        );
    }
    for code in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
        assert!(
            super::accept_error_is_out_of_resources(&err(code)),
            "{code}"
        );
        assert!(!super::accept_error_is_transient(&err(code)), "{code}");
    }
    for code in [libc::EBADF, libc::EINVAL, libc::EAGAIN] {
        assert!(!super::accept_error_is_transient(&err(code)), "{code}");
        assert!(
            !super::accept_error_is_out_of_resources(&err(code)),
            "{code}"
        );
    }
}

#[test]
fn set_reuse_port_lets_two_sockets_bind_one_address() {
    let bind = |addr: SocketAddr| {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        super::set_reuse_port(&socket).unwrap();
        socket.bind(&addr.into()).unwrap();
        socket.listen(4).unwrap();
        socket
    };
    let first = bind("127.0.0.1:0".parse().unwrap());
    let addr = first.local_addr().unwrap().as_socket().unwrap();
    let _second = bind(addr);
    if cfg!(target_os = "linux") {
        assert!(super::reuse_port_spreads());
    }
}

#[test]
fn the_backend_is_the_one_the_build_selects() {
    let name = std::any::type_name::<super::Poller>();
    let expected = if cfg!(all(target_os = "linux", not(iotask_force_polling))) {
        "::epoll::"
    } else {
        "::polling::"
    };
    assert!(name.contains(expected), "{name}");
}

/// The copying `send_file`, which every system but Linux uses: bytes from the offset, at
/// most the length asked for, and an error when the file is too short.
#[test]
fn send_file_copy_sends_the_file_s_bytes() {
    use std::os::unix::net::UnixStream;
    let path = std::env::temp_dir().join(format!("iotask-sys-send-file-{}", std::process::id()));
    std::fs::write(&path, b"0123456789").unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let (a, mut b) = UnixStream::pair().unwrap();
    let socket = Socket::from(a);
    let mut buf = Vec::with_capacity(4);
    assert_eq!(
        super::socket::send_file_copy(&socket, &file, 3, 5, &mut buf).unwrap(),
        5
    );
    assert!(buf.is_empty());
    let mut got = [0; 5];
    b.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"34567");
    let e = super::socket::send_file_copy(&socket, &file, 10, 5, &mut buf).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    std::fs::remove_file(&path).unwrap();
}
