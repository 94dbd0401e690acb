//! Mailboxes: one thread receives the reads of many sockets, tagged with their ids, plus its
//! own messages.

use std::collections::HashMap;
use std::io::Write;
use std::net::Shutdown;
use std::time::Duration;

use iotask::tcp::TcpSocket;
use iotask::{Event, IoTask, Mailbox, SocketId};

use crate::util::*;

#[test]
fn one_mailbox_receives_many_sockets_in_order_with_their_ids() {
    let iotask = IoTask::spawn().unwrap();
    let n = 20;
    let per_socket = 200_000;
    let mut mailbox: Mailbox<()> = Mailbox::new();
    let mut socks: HashMap<SocketId, (usize, TcpSocket)> = HashMap::new();
    let mut clients = Vec::new();
    for i in 0..n {
        let (sock, client) = connected_pair(&iotask);
        sock.attach(&mailbox).unwrap();
        assert!(
            socks.insert(sock.id(), (i, sock)).is_none(),
            "two sockets share an id"
        );
        clients.push(client);
    }
    // Even-numbered peers close (EOF); odd-numbered ones stay open and their socket is
    // dropped by the actor once it has every byte (CLOSED).
    let writers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            std::thread::spawn(move || {
                client.set_nodelay(true).unwrap();
                let base = (i * per_socket) as u64;
                let mut offset = 0;
                let mut size = 100 + i;
                while offset < per_socket {
                    let k = size.min(per_socket - offset);
                    client.write_all(&pattern(base + offset as u64, k)).unwrap();
                    offset += k;
                    size = size * 7 % 20_011 + 1;
                }
                if i % 2 == 0 {
                    drop(client);
                    None
                } else {
                    Some(client)
                }
            })
        })
        .collect();

    let mut got: Vec<Vec<u8>> = vec![Vec::new(); n];
    let mut closed: HashMap<SocketId, String> = HashMap::new();
    let mut dropped = Vec::new();
    while closed.len() < n {
        let event = mailbox
            .recv_timeout(TIMEOUT)
            .unwrap_or_else(|| panic!("mailbox stalled with {} sockets closed", closed.len()));
        match event {
            Event::Data { socket, data } => {
                assert!(!data.is_empty(), "empty Data event");
                assert!(
                    !closed.contains_key(&socket),
                    "Data for {socket} after its Closed"
                );
                let i = socks
                    .get(&socket)
                    .map(|(i, _)| *i)
                    .or_else(|| dropped.iter().find(|(id, _)| *id == socket).map(|p| p.1))
                    .unwrap_or_else(|| panic!("Data for unknown {socket}"));
                got[i].extend(data);
                if i % 2 == 1 && got[i].len() == per_socket {
                    let (i, sock) = socks.remove(&socket).unwrap();
                    dropped.push((socket, i));
                    drop(sock);
                }
            }
            Event::Closed { socket, error } => {
                let previous = closed.insert(socket, error.name().to_owned());
                assert!(previous.is_none(), "second Closed for {socket}");
            }
            Event::Message(()) => panic!("no messages were sent"),
            other => panic!("unexpected event: {other:?}"),
        }
    }
    // No events after the last Closed.
    assert!(mailbox.recv_timeout(Duration::from_millis(50)).is_none());
    for w in writers {
        drop(join_within(w, TIMEOUT));
    }
    for (i, data) in got.iter().enumerate() {
        let base = (i * per_socket) as u64;
        assert_bytes_eq(data, &pattern(base, per_socket));
    }
    for (id, name) in &closed {
        let i = socks
            .get(id)
            .map(|(i, _)| *i)
            .or_else(|| dropped.iter().find(|(d, _)| d == id).map(|p| p.1))
            .unwrap();
        let want = if i % 2 == 0 { "EOF" } else { "CLOSED" };
        assert_eq!(name, want, "socket {i} closed with {name}");
    }
}

#[test]
fn mailbox_sender_messages_arrive_as_messages_in_order() {
    let mut mailbox: Mailbox<(usize, usize)> = Mailbox::new();
    let senders: Vec<_> = (0..4)
        .map(|t| {
            let sender = mailbox.sender();
            std::thread::spawn(move || {
                for i in 0..500 {
                    sender.send((t, i)).unwrap();
                }
            })
        })
        .collect();
    let mut next = [0usize; 4];
    for _ in 0..2000 {
        match mailbox.recv_timeout(TIMEOUT).expect("a message") {
            Event::Message((t, i)) => {
                assert_eq!(i, next[t], "messages of sender {t} out of order");
                next[t] += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    for s in senders {
        join_within(s, TIMEOUT);
    }
    assert!(mailbox.try_recv().is_none());
    // A sender outliving its mailbox gets its message back.
    let sender = mailbox.sender();
    drop(mailbox);
    assert_eq!(sender.send((9, 9)), Err((9, 9)));
}

#[test]
fn messages_and_socket_data_share_one_mailbox() {
    let iotask = IoTask::spawn().unwrap();
    let mut mailbox: Mailbox<&'static str> = Mailbox::new();
    let (sock, mut client) = connected_pair(&iotask);
    sock.attach(&mailbox.sender()).unwrap();
    mailbox.sender().send("hello").unwrap();
    client.write_all(b"bytes").unwrap();
    let mut saw_message = false;
    let mut data = Vec::new();
    while !saw_message || data.len() < 5 {
        match mailbox.recv_timeout(TIMEOUT).expect("an event") {
            Event::Message(m) => {
                assert_eq!(m, "hello");
                saw_message = true;
            }
            Event::Data { socket, data: d } => {
                assert_eq!(socket, sock.id());
                data.extend(d);
            }
            Event::Closed { error, .. } => panic!("closed early: {error:?}"),
            other => panic!("unexpected event: {other:?}"),
        }
    }
    assert_eq!(data, b"bytes");
}

#[test]
fn detach_stops_delivery_and_a_later_read_start_gets_the_following_bytes() {
    let iotask = IoTask::spawn().unwrap();
    let mut mailbox: Mailbox<()> = Mailbox::new();
    let (sock, mut client) = connected_pair(&iotask);
    sock.attach(&mailbox).unwrap();
    // Attaching again to the same mailbox changes nothing; another mailbox is refused, and
    // hears why as the socket's `Closed` event.
    sock.attach(&mailbox).unwrap();
    let mut other: Mailbox<()> = Mailbox::new();
    sock.attach(&other).unwrap();
    match other.recv_timeout(TIMEOUT).expect("the refusal") {
        Event::Closed { socket, error } => {
            assert_eq!(socket, sock.id());
            assert_eq!(error.name(), "BUSY");
        }
        unexpected => panic!("unexpected {unexpected:?}"),
    }
    client.write_all(b"one").unwrap();
    match mailbox.recv_timeout(TIMEOUT).expect("data") {
        Event::Data { socket, data } => {
            assert_eq!(socket, sock.id());
            assert_eq!(data, b"one");
        }
        other => panic!("unexpected {other:?}"),
    }
    sock.detach().unwrap();
    // A command with a reply, processed after the detach: from then on nothing is read.
    sock.set_write_window(None).unwrap();
    client.write_all(b"two").unwrap();
    assert!(
        mailbox.recv_timeout(Duration::from_millis(200)).is_none(),
        "a detached socket still delivers"
    );
    let port = sock.read_start().unwrap();
    assert_eq!(recv_exact(&port, 3), b"two");
    sock.read_stop(port).unwrap();

    // And attaching again picks up after that.
    sock.attach(&mailbox).unwrap();
    client.write_all(b"three").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut data = Vec::new();
    loop {
        match mailbox.recv_timeout(TIMEOUT).expect("event") {
            Event::Data { data: d, .. } => data.extend(d),
            Event::Closed { error, .. } => {
                assert!(error.is_eof(), "got {error:?}");
                break;
            }
            Event::Message(()) => unreachable!(),
            other => panic!("unexpected event: {other:?}"),
        }
    }
    assert_eq!(data, b"three");
}

#[test]
fn dropping_a_mailbox_keeps_undelivered_bytes_for_the_next_reader() {
    // Repeated, because the bytes may reach the loop before, with or after the new reader's
    // command: every interleaving must deliver them.
    let iotask = IoTask::spawn().unwrap();
    for round in 0..300 {
        let mailbox: Mailbox<()> = Mailbox::new();
        let (sock, mut client) = connected_pair(&iotask);
        sock.attach(&mailbox).unwrap();
        drop(mailbox);
        client.write_all(b"kept").unwrap();
        // With the mailbox gone, the socket may be read elsewhere.
        let port = sock
            .read_start()
            .expect("read_start after the mailbox was dropped");
        match port.recv_timeout(TIMEOUT) {
            Ok(data) => assert_eq!(data, b"kept", "round {round}"),
            Err(e) => panic!(
                "round {round}: bytes read for a dropped mailbox never reached the next \
                 reader ({e})"
            ),
        }
    }
}
