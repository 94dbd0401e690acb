//! IPv6: listening, connecting, echoing and addresses on `[::1]`.

use std::net::{SocketAddr, TcpListener};

use iotask::IoTask;
use iotask::tcp::{self, ConnectError};

use crate::util::*;

/// Whether `::1` can be bound here; says so loudly when not, and fails under CI.
fn ipv6_available() -> bool {
    match TcpListener::bind("[::1]:0") {
        Ok(_) => true,
        Err(e) => {
            eprintln!("SKIPPED: IPv6 loopback [::1] is unavailable in this environment: {e}");
            assert!(!in_ci(), "IPv6 loopback [::1] missing in CI: {e}");
            false
        }
    }
}

#[test]
fn listen_connect_and_echo_on_ipv6_loopback() {
    if !ipv6_available() {
        return;
    }
    let iotask = IoTask::spawn().unwrap();
    let listener = try_spawn_listener_on("[::1]:0", &iotask).expect("listen on [::1]:0");
    let addr = listener.kill.local_addr();
    assert!(addr.is_ipv6(), "bound {addr}");
    assert!(addr.ip().is_loopback());
    assert_ne!(addr.port(), 0);

    let client = tcp::connect(addr, &iotask).expect("connect to [::1]");
    let server = accept_next(&listener.conns);
    assert!(client.nodelay().unwrap());
    assert!(server.nodelay().unwrap());

    let client_local: SocketAddr = client.local_addr().unwrap();
    assert!(client_local.is_ipv6());
    assert_eq!(client.peer_addr().unwrap(), addr);
    assert_eq!(server.local_addr().unwrap(), addr);
    assert_eq!(server.peer_addr().unwrap(), client_local);
    assert!(server.peer_addr().unwrap().is_ipv6());

    let echo = std::thread::spawn(move || {
        let port = server.read_start().unwrap();
        loop {
            match port.recv_timeout(TIMEOUT) {
                Ok(chunk) => server.write(chunk).unwrap(),
                Err(e) if e.is_eof() => break,
                Err(e) => panic!("echo: {e}"),
            }
        }
    });
    let port = client.read_start().unwrap();
    let msg = pattern(0, 300_000);
    client.write(msg.clone()).unwrap();
    let got = recv_exact(&port, msg.len());
    assert_bytes_eq(&got, &msg);
    drop(port);
    drop(client);
    join_within(echo, TIMEOUT);
    assert_eq!(stop_listener(&listener.kill, listener.handle), Ok(()));
}

#[test]
fn ipv6_std_peer_and_refused_port() {
    if !ipv6_available() {
        return;
    }
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair_on("[::1]:0", &iotask);
    assert!(sock.peer_addr().unwrap().is_ipv6());
    sock.write(b"six".to_vec()).unwrap();
    assert_eq!(read_exact_std(&mut peer, 3), b"six");
    write_std(&mut peer, b"four");
    assert_eq!(sock.read(TIMEOUT).unwrap(), b"four");

    let refused = TcpListener::bind("[::1]:0").unwrap().local_addr().unwrap();
    assert_eq!(
        tcp::connect(refused, &iotask).err(),
        Some(ConnectError::ConnectionRefused)
    );
}
