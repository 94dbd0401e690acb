//! UDP sockets through the I/O task: datagram boundaries, senders, truncation, oversize
//! sends, ordered sends, the three kinds of readers (port, future, mailbox) and their
//! hand-overs, drops beyond a reader's window, ICMP errors on a connected socket, options,
//! and closing in every order.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket as StdUdp};
use std::time::Duration;

use iotask::udp::{UdpOptions, UdpSocket};
use iotask::{Event, IoTask, Mailbox};

use crate::util::{TIMEOUT, wait_until};

fn pair(iotask: &IoTask) -> (UdpSocket, StdUdp) {
    let sock = UdpSocket::bind("127.0.0.1:0", iotask).unwrap();
    let peer = StdUdp::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(TIMEOUT)).unwrap();
    (sock, peer)
}

/// One datagram from a std socket (with its read timeout set).
fn recv(peer: &StdUdp) -> Vec<u8> {
    let mut buf = vec![0u8; 65_536];
    let n = peer.recv(&mut buf).expect("a datagram");
    buf.truncate(n);
    buf
}

/// Sends `count` datagrams of 64 bytes to `to` in bursts of 50, each once the I/O task
/// received the one before, so that the kernel's receive buffer never overflows: every
/// drop is then the reader's window's.
fn send_paced(iotask: &IoTask, peer: &StdUdp, to: SocketAddr, count: u64) {
    let start = iotask.stats().datagrams_received;
    let mut sent = 0;
    while sent < count {
        let burst = (count - sent).min(50);
        for _ in 0..burst {
            peer.send_to(&[sent as u8; 64], to).unwrap();
            sent += 1;
        }
        assert!(
            wait_until(TIMEOUT, || iotask.stats().datagrams_received
                == start + sent),
            "the I/O task received {} of {sent}",
            iotask.stats().datagrams_received - start
        );
    }
}

/// A port on loopback where nobody listens (bound, then closed).
fn dead_port() -> SocketAddr {
    let s = StdUdp::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

#[test]
fn datagrams_keep_their_boundaries_and_senders_both_ways() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, peer) = pair(&iotask);
    let to = sock.local_addr().unwrap();
    let sizes = [1usize, 7, 1400, 9000, 65_507];
    for &n in &sizes {
        peer.send_to(&vec![n as u8; n], to).unwrap();
    }
    for &n in &sizes {
        let d = sock.recv_from(TIMEOUT).unwrap();
        assert_eq!(d.data, vec![n as u8; n], "datagram of {n} bytes");
        assert_eq!(d.from, peer.local_addr().unwrap());
        assert!(!d.truncated);
    }
    let peer_addr = peer.local_addr().unwrap();
    for &n in &sizes {
        assert_eq!(sock.send_to(vec![3u8; n], peer_addr).get().unwrap(), n);
    }
    let mut buf = vec![0u8; 70_000];
    for &n in &sizes {
        let (got, from) = peer.recv_from(&mut buf).unwrap();
        assert_eq!((got, from), (n, to));
        assert!(buf[..got].iter().all(|&b| b == 3));
    }
}

#[test]
fn an_empty_datagram_is_a_datagram() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, peer) = pair(&iotask);
    peer.send_to(&[], sock.local_addr().unwrap()).unwrap();
    peer.send_to(b"after", sock.local_addr().unwrap()).unwrap();
    let port = sock.recv_start().unwrap();
    assert_eq!(port.recv_timeout(TIMEOUT).unwrap().data, b"");
    assert_eq!(port.recv_timeout(TIMEOUT).unwrap().data, b"after");
    assert_eq!(
        sock.send_to(Vec::new(), peer.local_addr().unwrap())
            .get()
            .unwrap(),
        0
    );
    let mut buf = [0u8; 8];
    assert_eq!(peer.recv_from(&mut buf).unwrap().0, 0);
}

#[test]
fn ipv6_datagrams_round_trip() {
    let iotask = IoTask::spawn().unwrap();
    let Ok(sock) = UdpSocket::bind("[::1]:0", &iotask) else {
        panic!("this machine has no IPv6 loopback, which the suite needs");
    };
    let peer = StdUdp::bind("[::1]:0").unwrap();
    peer.set_read_timeout(Some(TIMEOUT)).unwrap();
    peer.send_to(b"six", sock.local_addr().unwrap()).unwrap();
    let d = sock.recv_from(TIMEOUT).unwrap();
    assert_eq!(
        (d.data.as_slice(), d.from),
        (&b"six"[..], peer.local_addr().unwrap())
    );
    sock.send_to(b"back".to_vec(), d.from).get().unwrap();
    assert_eq!(recv(&peer), b"back");
}

#[test]
fn a_datagram_longer_than_max_datagram_is_flagged_truncated_and_the_next_is_whole() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, peer) = pair(&iotask);
    sock.set_max_datagram(1024).unwrap();
    assert_eq!(sock.max_datagram(), 1024);
    let to = sock.local_addr().unwrap();
    let long: Vec<u8> = (0..2000u32).map(|i| i as u8).collect();
    peer.send_to(&long, to).unwrap();
    peer.send_to(b"short", to).unwrap();
    let d = sock.recv_from(TIMEOUT).unwrap();
    assert!(d.truncated, "a cut datagram must say so");
    assert_eq!(d.data, long[..1024]);
    let d = sock.recv_from(TIMEOUT).unwrap();
    assert!(!d.truncated);
    assert_eq!(d.data, b"short");
    // Exactly max_datagram bytes fit.
    peer.send_to(&long[..1024], to).unwrap();
    let d = sock.recv_from(TIMEOUT).unwrap();
    assert!(!d.truncated);
    assert_eq!(d.data.len(), 1024);
}

#[test]
fn an_oversize_send_fails_with_emsgsize_and_the_socket_goes_on() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, peer) = pair(&iotask);
    let to = peer.local_addr().unwrap();
    let err = sock.send_to(vec![0u8; 70_000], to).get().unwrap_err();
    assert_eq!(err.name(), "EMSGSIZE", "{err}");
    assert_eq!(sock.send_to(b"fine".to_vec(), to).get().unwrap(), 4);
    assert_eq!(recv(&peer), b"fine");
}

#[test]
fn sends_from_several_threads_arrive_whole_and_each_threads_in_order() {
    let iotask = IoTask::spawn().unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0", &iotask).unwrap();
    let roomy = UdpOptions::new().recv_buffer_size(4 << 20);
    let receiver = UdpSocket::bind_with("127.0.0.1:0", &roomy, &iotask).unwrap();
    let port = receiver.recv_start().unwrap();
    let to = receiver.local_addr().unwrap();
    const PER_THREAD: u32 = 300;
    std::thread::scope(|s| {
        for t in 0..3u8 {
            let sock = sock.try_clone().unwrap();
            s.spawn(move || {
                for i in 0..PER_THREAD {
                    let mut data = vec![t; 200];
                    data[1..5].copy_from_slice(&i.to_be_bytes());
                    let sent = sock.send_to(data, to);
                    // Pace each thread by 10 datagrams, so that the receiver's kernel
                    // buffer (208 KiB by default, about 200 such datagrams) never
                    // overflows while the loop sends.
                    if i % 10 == 9 {
                        assert_eq!(sent.get().unwrap(), 200);
                    }
                }
            });
        }
    });
    let mut next = [0u32; 3];
    for _ in 0..3 * PER_THREAD {
        let d = port.recv_timeout(TIMEOUT).expect("every datagram arrives");
        assert_eq!(d.data.len(), 200);
        let t = d.data[0] as usize;
        let i = u32::from_be_bytes(d.data[1..5].try_into().unwrap());
        assert_eq!(i, next[t], "thread {t}'s datagrams out of order");
        assert!(
            d.data[5..].iter().all(|&b| b == t as u8),
            "a datagram mixed"
        );
        next[t] += 1;
    }
    assert_eq!((sock.queued(), receiver.dropped()), (0, 0));
}

#[test]
fn recv_stop_gives_back_what_the_port_held_to_the_next_reader_in_order() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, peer) = pair(&iotask);
    let to = sock.local_addr().unwrap();
    let port = sock.recv_start().unwrap();
    for i in 0..10u8 {
        peer.send_to(&[i], to).unwrap();
    }
    assert_eq!(port.recv_timeout(TIMEOUT).unwrap().data, [0]);
    // Wait until all ten went through the loop, so the port holds nine.
    assert!(wait_until(TIMEOUT, || iotask.stats().datagrams_received == 10));
    sock.recv_stop(port).unwrap();
    for i in 1..10u8 {
        assert_eq!(sock.recv_from(TIMEOUT).unwrap().data, [i]);
    }
    let err = sock.recv_from(Duration::from_millis(50)).unwrap_err();
    assert!(err.is_timeout(), "{err}");
}

#[test]
fn one_reader_at_a_time_and_a_dropped_reader_frees_the_socket() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, peer) = pair(&iotask);
    let port = sock.recv_start().unwrap();
    assert_eq!(sock.recv_start().unwrap_err().name(), "BUSY");
    assert_eq!(
        sock.recv_from(Duration::from_millis(10))
            .unwrap_err()
            .name(),
        "BUSY"
    );
    drop(port);
    peer.send_to(b"x", sock.local_addr().unwrap()).unwrap();
    let port = sock.recv_start().unwrap();
    assert_eq!(port.recv_timeout(TIMEOUT).unwrap().data, b"x");
    let other = UdpSocket::bind("127.0.0.1:0", &iotask).unwrap();
    assert_eq!(other.recv_stop(port).unwrap_err().name(), "EINVAL");
}

#[test]
fn a_receive_future_dropped_after_its_datagram_came_loses_nothing() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, peer) = pair(&iotask);
    let future = sock.recv_from_future(Duration::MAX);
    peer.send_to(b"kept", sock.local_addr().unwrap()).unwrap();
    assert!(wait_until(TIMEOUT, || iotask.stats().datagrams_received == 1));
    drop(future);
    assert_eq!(sock.recv_from(TIMEOUT).unwrap().data, b"kept");
}

#[test]
fn a_receive_times_out_with_etimedout_and_the_socket_still_receives() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, peer) = pair(&iotask);
    let err = sock.recv_from(Duration::from_millis(20)).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    peer.send_to(b"late", sock.local_addr().unwrap()).unwrap();
    assert_eq!(sock.recv_from(TIMEOUT).unwrap().data, b"late");
}

#[test]
fn a_port_not_received_from_drops_datagrams_beyond_its_window_and_counts_them() {
    // A window of 4 KiB: each 64-byte datagram costs 128 with its overhead, so 32 fit.
    let iotask = IoTask::builder().read_window(4096).spawn().unwrap();
    let (sock, peer) = pair(&iotask);
    let to = sock.local_addr().unwrap();
    let port = sock.recv_start().unwrap();
    const SENT: u64 = 500;
    send_paced(&iotask, &peer, to, SENT);
    // Every datagram is either in the port or dropped: nothing waits anywhere else.
    let held = port.len();
    assert_eq!(held as u64 + sock.dropped(), SENT);
    assert!(
        held <= 33,
        "the port holds {held} datagrams past its window"
    );
    assert_eq!(iotask.stats().datagrams_dropped, sock.dropped());
    // Receiving frees the window: later datagrams get through again.
    for i in 0..held {
        assert_eq!(port.recv_timeout(TIMEOUT).unwrap().data, [i as u8; 64]);
    }
    peer.send_to(b"room again", to).unwrap();
    assert_eq!(port.recv_timeout(TIMEOUT).unwrap().data, b"room again");
}

#[test]
fn a_mailbox_gets_datagrams_next_to_tcp_data_and_drops_beyond_its_window() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, peer) = pair(&iotask);
    let to = sock.local_addr().unwrap();
    let mut mailbox: Mailbox = Mailbox::with_window(4096);
    sock.attach(&mailbox).unwrap();
    // A TCP socket on the same mailbox.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp = iotask::tcp::connect(listener.local_addr().unwrap(), &iotask).unwrap();
    let (mut server_side, _) = listener.accept().unwrap();
    tcp.attach(&mailbox).unwrap();
    std::io::Write::write_all(&mut server_side, b"tcp bytes").unwrap();
    peer.send_to(b"udp datagram", to).unwrap();
    let (mut saw_tcp, mut saw_udp) = (false, false);
    while !(saw_tcp && saw_udp) {
        match mailbox.recv_timeout(TIMEOUT).expect("both events") {
            Event::Data { socket, data } => {
                assert_eq!((socket, data.as_slice()), (tcp.id(), &b"tcp bytes"[..]));
                saw_tcp = true;
            }
            Event::Datagram { socket, datagram } => {
                assert_eq!(socket, sock.id());
                assert_eq!(datagram.data, b"udp datagram");
                assert_eq!(datagram.from, peer.local_addr().unwrap());
                saw_udp = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // Not receiving: the mailbox takes about its window, the rest is dropped and counted.
    const SENT: u64 = 300;
    send_paced(&iotask, &peer, to, SENT);
    let mut got = 0u64;
    while let Some(event) = mailbox.try_recv() {
        assert!(matches!(event, Event::Datagram { .. }), "{event:?}");
        got += 1;
    }
    assert_eq!(got + sock.dropped(), SENT);
    assert!(
        got <= 33,
        "the mailbox held {got} datagrams past its window"
    );
    // Dropping the socket ends it with `Closed`.
    let id = sock.id();
    drop(sock);
    match mailbox.recv_timeout(TIMEOUT) {
        Some(Event::Closed { socket, error }) => {
            assert_eq!((socket, error.name()), (id, "CLOSED"));
        }
        other => panic!("expected Closed, got {other:?}"),
    }
}

#[test]
fn a_connected_socket_reports_icmp_port_unreachable_as_econnrefused_and_goes_on() {
    let iotask = IoTask::spawn().unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0", &iotask).unwrap();
    let dead = dead_port();
    sock.connect(dead).unwrap();
    assert_eq!(sock.peer_addr().unwrap(), dead);
    let port = sock.recv_start().unwrap();
    sock.send(b"anyone?".to_vec()).get().unwrap();
    let err = port.recv_timeout(TIMEOUT).unwrap_err();
    assert_eq!(err.name(), "ECONNREFUSED", "{err}");
    assert!(!port.is_ended(), "an ICMP error does not end the port");
    // It goes on: a peer that appears at the address is heard.
    let peer = StdUdp::bind(dead).expect("the dead port is still free");
    peer.set_read_timeout(Some(TIMEOUT)).unwrap();
    peer.send_to(b"here now", sock.local_addr().unwrap())
        .unwrap();
    assert_eq!(port.recv_timeout(TIMEOUT).unwrap().data, b"here now");
    sock.send(b"hello".to_vec()).get().unwrap();
    assert_eq!(recv(&peer), b"hello");
}

#[test]
fn without_a_reader_the_icmp_error_fails_a_later_send() {
    let iotask = IoTask::spawn().unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0", &iotask).unwrap();
    sock.connect(dead_port()).unwrap();
    let mut refused = false;
    assert!(wait_until(TIMEOUT, || {
        match sock.send(b"x".to_vec()).get() {
            Ok(_) => false,
            Err(e) => {
                assert_eq!(e.name(), "ECONNREFUSED", "{e}");
                refused = true;
                true
            }
        }
    }));
    assert!(refused);
}

#[test]
fn a_mailbox_hears_icmp_errors_as_datagram_error_events() {
    let iotask = IoTask::spawn().unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0", &iotask).unwrap();
    sock.connect(dead_port()).unwrap();
    let mut mailbox: Mailbox = Mailbox::new();
    sock.attach(&mailbox).unwrap();
    sock.send(b"x".to_vec()).get().unwrap();
    match mailbox.recv_timeout(TIMEOUT) {
        Some(Event::DatagramError { socket, error }) => {
            assert_eq!((socket, error.name()), (sock.id(), "ECONNREFUSED"));
        }
        other => panic!("expected DatagramError, got {other:?}"),
    }
}

#[test]
fn a_socket_closes_when_its_last_handle_goes_and_the_reader_hears_closed() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, peer) = pair(&iotask);
    let to = sock.local_addr().unwrap();
    let clone = sock.try_clone().unwrap();
    let port = clone.recv_start().unwrap();
    drop(sock);
    peer.send_to(b"still open", to).unwrap();
    assert_eq!(port.recv_timeout(TIMEOUT).unwrap().data, b"still open");
    assert_eq!(iotask.stats().datagram_sockets, 1);
    drop(clone);
    assert_eq!(port.recv_timeout(TIMEOUT).unwrap_err().name(), "CLOSED");
    assert_eq!(port.recv().unwrap_err().name(), "CLOSED");
    assert!(port.is_ended());
    assert!(wait_until(TIMEOUT, || iotask.stats().datagram_sockets == 0));
    // The port is free for anyone now.
    StdUdp::bind(to).expect("the closed socket released its port");
}

#[test]
fn an_io_task_shutdown_ends_readers_and_fails_sends_with_shutdown() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, peer) = pair(&iotask);
    let port = sock.recv_start().unwrap();
    let other = UdpSocket::bind("127.0.0.1:0", &iotask).unwrap();
    let pending = other.recv_from_future(Duration::MAX);
    iotask.shutdown();
    assert_eq!(port.recv_timeout(TIMEOUT).unwrap_err().name(), "SHUTDOWN");
    assert_eq!(pending.get().unwrap_err().name(), "SHUTDOWN");
    let err = sock
        .send_to(b"x".to_vec(), peer.local_addr().unwrap())
        .get()
        .unwrap_err();
    assert_eq!(err.name(), "SHUTDOWN");
    assert_eq!(
        UdpSocket::bind("127.0.0.1:0", &iotask).unwrap_err().name(),
        "SHUTDOWN"
    );
}

#[test]
fn bind_reports_an_address_in_use_and_bad_addresses_clearly() {
    let iotask = IoTask::spawn().unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0", &iotask).unwrap();
    let addr = sock.local_addr().unwrap();
    assert_eq!(
        UdpSocket::bind(addr, &iotask).unwrap_err().name(),
        "EADDRINUSE"
    );
    assert!(UdpSocket::bind("not an address", &iotask).is_err());
    assert_eq!(
        UdpSocket::bind("192.0.2.1:0", &iotask).unwrap_err().name(),
        "EADDRNOTAVAIL"
    );
    // Sharing a port takes both sockets asking for it.
    let options = UdpOptions::new().reuse_address(true).reuse_port(true);
    let a = UdpSocket::bind_with("127.0.0.1:0", &options, &iotask).unwrap();
    let b = UdpSocket::bind_with(a.local_addr().unwrap(), &options, &iotask).unwrap();
    assert_eq!(a.local_addr().unwrap(), b.local_addr().unwrap());
}

#[test]
fn a_bare_port_binds_every_interface() {
    let iotask = IoTask::spawn().unwrap();
    let sock = UdpSocket::bind("0", &iotask).unwrap();
    let addr = sock.local_addr().unwrap();
    assert!(addr.ip().is_unspecified(), "{addr}");
    // Reachable over IPv4 loopback (dual-stack where IPv6 exists).
    let peer = StdUdp::bind("127.0.0.1:0").unwrap();
    peer.send_to(b"any", (Ipv4Addr::LOCALHOST, addr.port()))
        .unwrap();
    assert_eq!(sock.recv_from(TIMEOUT).unwrap().data, b"any");
}

#[test]
fn options_read_back_and_absurd_values_are_refused() {
    let iotask = IoTask::spawn().unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0", &iotask).unwrap();
    sock.set_broadcast(true).unwrap();
    assert!(sock.broadcast().unwrap());
    sock.set_ttl(17).unwrap();
    assert_eq!(sock.ttl().unwrap(), 17);
    assert_eq!(sock.set_ttl(0).unwrap_err().name(), "EINVAL");
    assert_eq!(sock.set_ttl(256).unwrap_err().name(), "EINVAL");
    sock.set_multicast_ttl(4).unwrap();
    assert_eq!(sock.multicast_ttl().unwrap(), 4);
    assert_eq!(sock.set_multicast_ttl(1000).unwrap_err().name(), "EINVAL");
    sock.set_multicast_loop(false).unwrap();
    assert!(!sock.multicast_loop().unwrap());
    assert_eq!(sock.set_max_datagram(0).unwrap_err().name(), "EINVAL");
    assert_eq!(sock.set_max_datagram(1 << 30).unwrap_err().name(), "EINVAL");
    sock.set_recv_buffer_size(1 << 20).unwrap();
    assert!(sock.recv_buffer_size().unwrap() >= 1 << 20);
    sock.set_send_buffer_size(1 << 16).unwrap();
    assert!(sock.send_buffer_size().unwrap() >= 1 << 16);
    // A multicast join needs a multicast address.
    assert!(
        sock.join_multicast_v4(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::UNSPECIFIED)
            .is_err()
    );
    let v6 = UdpSocket::bind("[::1]:0", &iotask).unwrap();
    v6.set_ttl(9).unwrap();
    assert_eq!(v6.ttl().unwrap(), 9);
    v6.set_multicast_ttl(3).unwrap();
    assert_eq!(v6.multicast_ttl().unwrap(), 3);
}

#[test]
fn broadcast_needs_so_broadcast() {
    let iotask = IoTask::spawn().unwrap();
    let sock = UdpSocket::bind("0.0.0.0:0", &iotask).unwrap();
    let target: SocketAddr = "255.255.255.255:9".parse().unwrap();
    let err = sock.send_to(b"all".to_vec(), target).get().unwrap_err();
    assert_eq!(err.name(), "EACCES", "{err}");
}

#[test]
fn futures_can_be_awaited_without_a_runtime_of_ours() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, peer) = pair(&iotask);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let to = sock.local_addr().unwrap();
    rt.block_on(async {
        let receive = sock.recv_from_future(TIMEOUT);
        peer.send_to(b"awaited", to).unwrap();
        let d = tokio::time::timeout(TIMEOUT, receive)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d.data, b"awaited");
        let sent = tokio::time::timeout(TIMEOUT, sock.send_to(b"ok".to_vec(), d.from))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(sent, 2);
    });
}

#[test]
fn stats_count_datagrams() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, peer) = pair(&iotask);
    peer.send_to(b"12345", sock.local_addr().unwrap()).unwrap();
    sock.recv_from(TIMEOUT).unwrap();
    sock.send_to(b"123".to_vec(), peer.local_addr().unwrap())
        .get()
        .unwrap();
    let stats = iotask.stats();
    assert_eq!(stats.datagram_sockets, 1);
    assert_eq!(stats.datagrams_received, 1);
    assert_eq!(stats.datagrams_sent, 1);
    assert_eq!((stats.bytes_read, stats.bytes_written), (5, 3));
}

#[test]
fn a_pool_of_sockets_on_one_port_spreads_senders_over_its_tasks() {
    let pool = iotask::IoPool::spawn(2).unwrap();
    let sockets = UdpSocket::bind_pool("127.0.0.1:0", &UdpOptions::new(), &pool).unwrap();
    assert_eq!(sockets.len(), 2);
    let to = sockets[0].local_addr().unwrap();
    assert_eq!(sockets[1].local_addr().unwrap(), to);
    let ports: Vec<_> = sockets.iter().map(|s| s.recv_start().unwrap()).collect();
    // Senders from 32 ports: the kernel hashes each to one socket, and both get some.
    const SENDERS: usize = 32;
    let senders: Vec<StdUdp> = (0..SENDERS)
        .map(|_| StdUdp::bind("127.0.0.1:0").unwrap())
        .collect();
    for (i, sender) in senders.iter().enumerate() {
        for _ in 0..3 {
            sender.send_to(&[i as u8], to).unwrap();
        }
    }
    let mut got = [0usize; 2];
    let mut owner = vec![None; SENDERS];
    let deadline = std::time::Instant::now() + TIMEOUT;
    for _ in 0..3 * SENDERS {
        let (k, d) = loop {
            if let Some(d) = ports[0].try_recv() {
                break (0, d.unwrap());
            }
            if let Some(d) = ports[1].try_recv() {
                break (1, d.unwrap());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "only {got:?} of {} datagrams arrived",
                3 * SENDERS
            );
            std::thread::yield_now();
        };
        got[k] += 1;
        let i = d.data[0] as usize;
        assert_eq!(d.from, senders[i].local_addr().unwrap());
        // One sender's datagrams all reach the same socket.
        assert_eq!(*owner[i].get_or_insert(k), k, "sender {i} was split");
    }
    assert!(got[0] > 0 && got[1] > 0, "the pool did not spread: {got:?}");
    drop((ports, sockets));
    pool.shutdown();
}
