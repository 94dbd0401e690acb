//! The buffered socket (`tcp::socket_buf`) as reader and writer, and EOF through it.

use std::io::{BufRead, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::time::Duration;

use iotask::IoTask;
use iotask::tcp;

use crate::util::*;

#[test]
fn write_lines_flush_and_read_them_back() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, peer) = connected_pair(&iotask);
    // The peer echoes every byte back.
    let echo = std::thread::spawn(move || {
        let mut peer = peer;
        let mut buf = [0u8; 4096];
        loop {
            match peer.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => peer.write_all(&buf[..n]).unwrap(),
                Err(e) => panic!("echo peer: {e}"),
            }
        }
    });
    let mut buf = tcp::socket_buf(sock);
    for i in 0..100 {
        writeln!(buf, "line number {i}").unwrap();
    }
    // Nothing is sent before the flush, so nothing can come back.
    buf.flush().unwrap();
    for i in 0..100 {
        let mut line = String::new();
        assert!(buf.read_line(&mut line).unwrap() > 0);
        assert_eq!(line, format!("line number {i}\n"));
    }
    // A large write passes through the buffer intact.
    let big = pattern(0, 1_000_000);
    buf.write_all(&big).unwrap();
    buf.flush().unwrap();
    let mut got = vec![0u8; big.len()];
    buf.read_exact(&mut got).unwrap();
    assert_bytes_eq(&got, &big);
    drop(buf);
    join_within(echo, TIMEOUT);
}

#[test]
fn into_inner_keeps_the_unread_bytes() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    let mut buf = tcp::socket_buf(sock);
    // One write, so that the buffer very likely receives it as one chunk and holds the rest.
    write_std(&mut peer, b"first line\nsecond line\nand the rest");
    let mut line = String::new();
    buf.read_line(&mut line).unwrap();
    assert_eq!(line, "first line\n");
    let sock = buf.into_inner().expect("into_inner");
    write_std(&mut peer, b", then more");
    peer.shutdown(Shutdown::Write).unwrap();
    let port = sock.read_start().unwrap();
    let (rest, end) = recv_to_end(&port);
    assert!(end.is_eof());
    assert_eq!(
        String::from_utf8(rest).unwrap(),
        "second line\nand the rest, then more"
    );
    sock.read_stop(port).unwrap();

    // And into a buffer again: the end is still there.
    let mut buf = tcp::socket_buf(sock);
    let mut all = Vec::new();
    assert_eq!(buf.read_to_end(&mut all).unwrap(), 0);
}

#[test]
fn into_inner_flushes_pending_writes() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    let mut buf = tcp::socket_buf(sock);
    buf.write_all(b"buffered").unwrap();
    let sock = buf.into_inner().unwrap();
    assert_eq!(read_exact_std(&mut peer, 8), b"buffered");
    drop(sock);
}

#[test]
fn eof_reads_as_zero_and_read_to_end_gets_everything() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    let data = pattern(0, 500_000);
    write_std(&mut peer, &data);
    drop(peer);
    let mut buf = tcp::socket_buf(sock);
    let mut all = Vec::new();
    buf.read_to_end(&mut all).unwrap();
    assert_bytes_eq(&all, &data);
    let mut line = String::new();
    assert_eq!(buf.read_line(&mut line).unwrap(), 0);
    let mut one = [0u8; 1];
    assert_eq!(buf.read(&mut one).unwrap(), 0);
}

#[test]
fn a_read_timeout_reads_as_timed_out() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    let mut buf = tcp::socket_buf(sock);
    buf.set_read_timeout(Some(Duration::from_millis(50)));
    let mut one = [0u8; 1];
    let e = buf.read(&mut one).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TimedOut);
    // The buffer works on afterwards.
    write_std(&mut peer, b"x");
    buf.set_read_timeout(Some(TIMEOUT));
    assert_eq!(buf.read(&mut one).unwrap(), 1);
    assert_eq!(one[0], b'x');
}

#[test]
fn dropping_the_buffer_sends_unflushed_bytes() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    let mut buf = tcp::socket_buf(sock);
    buf.write_all(b"never flushed").unwrap();
    drop(buf);
    assert_eq!(read_to_eof(&mut peer), b"never flushed");
}

#[test]
fn socket_buf_over_an_accepted_socket() {
    let iotask = IoTask::spawn().unwrap();
    let (kill, handle, conns) = spawn_listener(&iotask);
    let client = tcp::connect(kill.local_addr(), &iotask).unwrap();
    let server = accept_next(&conns);
    let mut c = tcp::socket_buf(client);
    let mut s = tcp::socket_buf(server);
    c.set_read_timeout(Some(TIMEOUT));
    s.set_read_timeout(Some(TIMEOUT));
    writeln!(c, "ping").unwrap();
    c.flush().unwrap();
    let mut line = String::new();
    s.read_line(&mut line).unwrap();
    assert_eq!(line, "ping\n");
    writeln!(s, "pong").unwrap();
    s.flush().unwrap();
    line.clear();
    c.read_line(&mut line).unwrap();
    assert_eq!(line, "pong\n");
    assert_eq!(stop_listener(&kill, handle), Ok(()));
}
