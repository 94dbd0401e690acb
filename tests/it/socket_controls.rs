//! What a socket's owner controls beyond read and write: shutdowns from any thread, resets,
//! exact and bounded reads, write timeouts, and socket options.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iotask::server::{Keepalive, ListenOptions};
use iotask::tcp;
use iotask::{Event, IoTask, Mailbox};

use crate::util::*;

#[test]
fn shutdown_read_wakes_a_thread_blocked_on_the_port() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    let sock = Arc::new(sock);
    peer.write_all(b"before").unwrap();
    let port = sock.read_start().unwrap();
    assert_eq!(recv_exact(&port, 6), b"before");
    let reader = std::thread::spawn(move || port.recv());
    // The reader blocks: nothing more comes until the other thread shuts reading down.
    sock.shutdown_read().unwrap();
    let end = join_within(reader, TIMEOUT).unwrap_err();
    assert!(end.is_eof(), "{end:?}");
    // Writing still works after the reading half is shut.
    sock.write(b"still writing".to_vec()).unwrap();
    let mut got = [0; 13];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"still writing");
}

#[test]
fn shutdown_read_keeps_what_was_read_but_not_yet_received() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    let port = sock.read_start().unwrap();
    peer.write_all(b"kept").unwrap();
    // Once the loop has handed the bytes to the port, stop it: they go to the stash.
    let first = port.recv_timeout(TIMEOUT).unwrap();
    sock.read_stop(port).unwrap();
    sock.shutdown_read().unwrap();
    let port = sock.read_start().unwrap();
    let (rest, end) = recv_to_end(&port);
    assert_eq!([first, rest].concat(), b"kept");
    assert!(end.is_eof());
}

#[test]
fn shutdown_sends_the_queued_writes_then_ends_both_ways() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    let data = pattern(0, 3 << 20);
    drop(sock.write_future(data.clone()));
    let reader = std::thread::spawn(move || {
        let got = read_to_eof(&mut peer);
        (got, peer)
    });
    sock.shutdown().unwrap();
    let (got, _peer) = join_within(reader, TIMEOUT);
    assert_bytes_eq(&got, &data);
    let e = sock.read(TIMEOUT).unwrap_err();
    assert!(e.is_eof(), "{e:?}");
}

#[test]
fn abort_resets_the_connection_and_fails_what_waits() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    let sock = Arc::new(sock);
    // More than the kernel buffers, so that most of it is still queued in iotask.
    let write = sock.write_future(vec![7u8; 32 << 20]);
    let port = sock.read_start().unwrap();
    let reader = std::thread::spawn(move || port.recv());
    sock.abort().unwrap();
    assert_eq!(write.get().unwrap_err().name(), "ABORTED");
    assert_eq!(join_within(reader, TIMEOUT).unwrap_err().name(), "ABORTED");
    assert_eq!(sock.write(b"late".to_vec()).unwrap_err().name(), "ABORTED");
    // The peer sees a reset, not an orderly end, once it reads past what had arrived.
    let mut buf = vec![0; 1 << 20];
    let end = loop {
        match peer.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(_) => {}
            Err(e) => break Err(e.kind()),
        }
    };
    assert_eq!(end, Err(ErrorKind::ConnectionReset));
}

#[test]
fn a_linger_of_zero_makes_dropping_the_socket_reset_it() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    sock.set_linger(Some(Duration::ZERO)).unwrap();
    assert_eq!(sock.linger().unwrap(), Some(Duration::ZERO));
    drop(sock.write_future(vec![1u8; 16 << 20]));
    drop(sock);
    let mut buf = vec![0; 1 << 20];
    let end = loop {
        match peer.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(_) => {}
            Err(e) => break Err(e.kind()),
        }
    };
    assert_eq!(end, Err(ErrorKind::ConnectionReset));
}

#[test]
fn read_exact_takes_what_it_needs_and_loses_nothing() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    peer.write_all(b"0123456789").unwrap();
    assert_eq!(sock.read_exact(4, TIMEOUT).unwrap(), b"0123");
    // Not enough bytes in time: a timeout, and the bytes stay.
    let e = sock.read_exact(10, Duration::from_millis(100)).unwrap_err();
    assert!(e.is_timeout(), "{e:?}");
    peer.write_all(b"abcd").unwrap();
    assert_eq!(sock.read_exact(10, TIMEOUT).unwrap(), b"456789abcd");
    // The end of the stream before the bytes: EOF, and the bytes stay for the next read.
    peer.write_all(b"xy").unwrap();
    peer.shutdown(Shutdown::Write).unwrap();
    assert!(sock.read_exact(3, TIMEOUT).unwrap_err().is_eof());
    assert_eq!(sock.read_exact(2, TIMEOUT).unwrap(), b"xy");
}

#[test]
fn read_to_end_stops_at_its_limit_and_loses_nothing() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    let data = pattern(0, 100_000);
    peer.write_all(&data).unwrap();
    peer.shutdown(Shutdown::Write).unwrap();
    let e = sock.read_to_end(10_000, TIMEOUT).unwrap_err();
    assert_eq!(e.name(), "EMSGSIZE");
    let all = sock.read_to_end(1 << 20, TIMEOUT).unwrap();
    assert_bytes_eq(&all, &data);
}

#[test]
fn read_to_end_times_out_without_losing_bytes() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    peer.write_all(b"partial").unwrap();
    let e = sock
        .read_to_end(1 << 20, Duration::from_millis(100))
        .unwrap_err();
    assert!(e.is_timeout(), "{e:?}");
    peer.shutdown(Shutdown::Write).unwrap();
    assert_eq!(sock.read_to_end(1 << 20, TIMEOUT).unwrap(), b"partial");
}

#[test]
fn a_write_can_be_waited_for_with_a_timeout_and_again() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    let data = pattern(0, 32 << 20);
    let write = sock.write_future(data.clone());
    let start = Instant::now();
    assert!(
        write
            .get_timeout(Duration::from_millis(100))
            .unwrap_err()
            .is_timeout()
    );
    assert!(start.elapsed() >= Duration::from_millis(90));
    let reader = std::thread::spawn(move || {
        let mut got = vec![0; data.len()];
        peer.read_exact(&mut got).unwrap();
        assert_bytes_eq(&got, &data);
    });
    write.get_timeout(TIMEOUT).unwrap();
    write.get().unwrap();
    join_within(reader, TIMEOUT);
}

#[test]
fn socket_options_can_be_read_and_set() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, _peer) = connected_pair(&iotask);
    assert!(sock.nodelay().unwrap());
    sock.set_nodelay(false).unwrap();
    assert!(!sock.nodelay().unwrap());
    assert!(!sock.keepalive().unwrap());
    let keepalive = Keepalive::new(Duration::from_secs(7))
        .interval(Duration::from_secs(3))
        .retries(4);
    sock.set_keepalive(Some(keepalive)).unwrap();
    assert!(sock.keepalive().unwrap());
    let raw = socket2::SockRef::from(&sock);
    assert_eq!(raw.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
    assert_eq!(
        raw.tcp_keepalive_interval().unwrap(),
        Duration::from_secs(3)
    );
    assert_eq!(raw.tcp_keepalive_retries().unwrap(), 4);
    sock.set_keepalive(None).unwrap();
    assert!(!sock.keepalive().unwrap());
    sock.set_ttl(17).unwrap();
    assert_eq!(sock.ttl().unwrap(), 17);
    sock.set_send_buffer_size(64 * 1024).unwrap();
    assert!(sock.send_buffer_size().unwrap() >= 64 * 1024);
    sock.set_recv_buffer_size(64 * 1024).unwrap();
    assert!(sock.recv_buffer_size().unwrap() >= 64 * 1024);
    assert_eq!(sock.linger().unwrap(), None);
}

#[test]
fn hop_limit_on_ipv6() {
    let Ok(listener) = TcpListener::bind("[::1]:0") else {
        eprintln!("SKIPPED: no IPv6 loopback");
        return;
    };
    let iotask = IoTask::spawn().unwrap();
    let sock = tcp::connect(listener.local_addr().unwrap(), &iotask).unwrap();
    sock.set_ttl(9).unwrap();
    assert_eq!(sock.ttl().unwrap(), 9);
}

#[test]
fn listen_options_apply_to_accepted_sockets() {
    let iotask = IoTask::spawn().unwrap();
    let options = ListenOptions::new()
        .keepalive(Keepalive::new(Duration::from_secs(11)).retries(2))
        .send_buffer_size(96 * 1024)
        .recv_buffer_size(80 * 1024);
    let mut mailbox: Mailbox = Mailbox::new();
    let server = tcp::bind("127.0.0.1:0", &options, &iotask)
        .unwrap()
        .into_mailbox(&mailbox)
        .unwrap();
    let _client = TcpStream::connect(server.local_addr()).unwrap();
    let sock = match mailbox.recv_timeout(TIMEOUT) {
        Some(Event::Accepted(sock)) => sock,
        other => panic!("expected a connection, got {other:?}"),
    };
    assert!(sock.nodelay().unwrap());
    assert!(sock.keepalive().unwrap());
    let raw = socket2::SockRef::from(&sock);
    assert_eq!(raw.tcp_keepalive_time().unwrap(), Duration::from_secs(11));
    assert_eq!(raw.tcp_keepalive_retries().unwrap(), 2);
    assert!(sock.send_buffer_size().unwrap() >= 96 * 1024);
    assert!(sock.recv_buffer_size().unwrap() >= 80 * 1024);
    server.stop().unwrap();
}

#[test]
fn a_buffered_socket_flushes_its_own_bytes_before_shutting_down() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    let mut buf = tcp::socket_buf(sock);
    buf.write_all(b"unflushed").unwrap();
    buf.shutdown_write().unwrap();
    assert_eq!(read_to_eof(&mut peer), b"unflushed");
}

#[test]
fn a_deadline_fails_a_write_that_cannot_finish_and_says_how_far_it_got() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, _peer) = connected_pair(&iotask);
    sock.timeout_after(Duration::from_millis(200)).unwrap();
    let total = 64 << 20;
    let start = Instant::now();
    let e = sock.write(vec![0u8; total]).unwrap_err();
    let took = start.elapsed();
    assert!(e.is_timeout(), "{e:?}");
    let written = e.bytes_written().expect("how far the write got");
    assert!(written > 0 && written < total, "{written} of {total}");
    assert!(
        took >= Duration::from_millis(150) && took < TIMEOUT,
        "{took:?}"
    );
    // The stream was cut short: later writes fail with the same error.
    sock.reset_deadline().unwrap();
    assert!(sock.write(b"more".to_vec()).unwrap_err().is_timeout());
}

#[test]
fn a_deadline_bounds_reads_and_a_passed_one_refuses_writes_whole() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    sock.timeout_after(Duration::from_millis(100)).unwrap();
    let start = Instant::now();
    assert!(sock.read(Duration::MAX).unwrap_err().is_timeout());
    assert!(sock.read_exact(1, Duration::MAX).unwrap_err().is_timeout());
    assert!(start.elapsed() < TIMEOUT);
    // Past the deadline a write is refused whole, and the stream is not cut short by it.
    let e = sock.write(b"refused".to_vec()).unwrap_err();
    assert_eq!((e.name(), e.bytes_written()), ("ETIMEDOUT", Some(0)));
    sock.reset_deadline().unwrap();
    assert_eq!(sock.deadline(), None);
    sock.write(b"accepted".to_vec()).unwrap();
    let mut got = [0; 8];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"accepted");
    peer.write_all(b"late").unwrap();
    assert_eq!(sock.read(TIMEOUT).unwrap(), b"late");
}

#[test]
fn a_buffered_socket_keeps_the_deadline_and_its_own_write_timeout() {
    use std::io::BufRead;
    let iotask = IoTask::spawn().unwrap();
    let (sock, _peer) = connected_pair(&iotask);
    sock.timeout_after(Duration::from_millis(100)).unwrap();
    let mut buf = tcp::socket_buf(sock);
    let e = buf.fill_buf().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TimedOut);
    buf.get_ref().reset_deadline().unwrap();
    buf.set_write_timeout(Some(Duration::from_millis(100)));
    // 64 MiB to a peer that never reads: the buffer flushes in 64 KiB steps, which the
    // kernel takes until its buffers fill; then a flush waits past the write timeout.
    let e = buf.write_all(&vec![0u8; 64 << 20]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TimedOut);
}

#[test]
fn an_actor_hears_when_a_socket_it_flooded_drains() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    // Small kernel buffers on both sides, so that most of what is written waits in iotask.
    sock.set_send_buffer_size(16 << 10).unwrap();
    socket2::SockRef::from(&peer)
        .set_recv_buffer_size(16 << 10)
        .unwrap();
    let mut mailbox: Mailbox = Mailbox::new();
    sock.attach(&mailbox).unwrap();
    sock.set_watermarks(1 << 20, 256 << 10).unwrap();
    assert_eq!(sock.set_watermarks(1, 2).unwrap_err().name(), "EINVAL");
    let data = pattern(0, 16 << 20);
    for chunk in data.chunks(64 << 10) {
        drop(sock.write_future(chunk.to_vec()));
    }
    // The peer reads nothing yet: far more than the kernel can hold stays queued, and
    // nothing drains.
    assert!(sock.queued_bytes() > 8 << 20);
    assert!(mailbox.recv_timeout(Duration::from_millis(100)).is_none());
    let reader = std::thread::spawn(move || {
        let mut got = vec![0; data.len()];
        peer.read_exact(&mut got).unwrap();
        assert_bytes_eq(&got, &data);
        peer
    });
    match mailbox.recv_timeout(TIMEOUT) {
        Some(Event::Drained { socket }) => assert_eq!(socket, sock.id()),
        other => panic!("expected Drained, got {other:?}"),
    }
    assert!(sock.queued_bytes() <= 256 << 10);
    let _peer = join_within(reader, TIMEOUT);
}

/// Watermarks set when the queue is already past them still bring the event.
#[test]
fn watermarks_set_above_an_already_long_queue_still_report_the_drain() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    sock.set_send_buffer_size(16 << 10).unwrap();
    let mut mailbox: Mailbox = Mailbox::new();
    sock.attach(&mailbox).unwrap();
    let data = pattern(0, 8 << 20);
    drop(sock.write_future(data.clone()));
    assert!(sock.queued_bytes() > 1 << 20);
    sock.set_watermarks(1 << 20, 0).unwrap();
    let reader = std::thread::spawn(move || read_exact_std(&mut peer, data.len()));
    match mailbox.recv_timeout(TIMEOUT) {
        Some(Event::Drained { socket }) => assert_eq!(socket, sock.id()),
        other => panic!("expected Drained, got {other:?}"),
    }
    assert_eq!(sock.queued_bytes(), 0);
    assert_eq!(join_within(reader, TIMEOUT).len(), 8 << 20);
}

#[test]
fn bytes_that_wait_past_the_age_limit_fail_the_socket() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, _peer) = connected_pair(&iotask);
    sock.set_write_age_limit(Some(Duration::from_millis(200)));
    let start = Instant::now();
    let e = sock.write(vec![0u8; 64 << 20]).unwrap_err();
    assert_eq!(e.name(), "STALLED");
    assert!(start.elapsed() >= Duration::from_millis(150) && start.elapsed() < TIMEOUT);
    assert_eq!(sock.write(b"x".to_vec()).unwrap_err().name(), "STALLED");
}

#[test]
fn writes_that_keep_moving_do_not_stall() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    sock.set_write_age_limit(Some(Duration::from_millis(300)));
    let reader = std::thread::spawn(move || read_exact_std(&mut peer, 8 << 20));
    for i in 0..8u64 {
        sock.write(pattern(i << 20, 1 << 20)).unwrap();
    }
    assert_bytes_eq(&join_within(reader, TIMEOUT), &pattern(0, 8 << 20));
}

#[test]
fn an_actor_connects_without_blocking_and_hears_the_outcome() {
    let iotask = IoTask::spawn().unwrap();
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut mailbox: Mailbox = Mailbox::new();
    let id = tcp::connect_into(server.local_addr().unwrap(), &iotask, &mailbox).unwrap();
    let (mut peer, _) = server.accept().unwrap();
    peer.write_all(b"hello actor").unwrap();
    let sock = match mailbox.recv_timeout(TIMEOUT) {
        Some(Event::Connected { socket, result }) => {
            assert_eq!(socket, id);
            result.unwrap()
        }
        other => panic!("expected Connected, got {other:?}"),
    };
    assert_eq!(sock.id(), id);
    assert!(sock.nodelay().unwrap());
    // Already attached: the data follows the announcement.
    match mailbox.recv_timeout(TIMEOUT) {
        Some(Event::Data { socket, data }) => {
            assert_eq!(socket, id);
            assert_eq!(data, b"hello actor");
        }
        other => panic!("expected Data, got {other:?}"),
    }

    let refused = tcp::connect_into(refused_addr(), &iotask, &mailbox).unwrap();
    match mailbox.recv_timeout(TIMEOUT) {
        Some(Event::Connected { socket, result }) => {
            assert_eq!(socket, refused);
            assert_eq!(result.unwrap_err(), tcp::ConnectError::ConnectionRefused);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_unix_connect_into_a_mailbox_succeeds_or_says_why_not() {
    let dir = std::env::temp_dir().join(format!("iotask-connect-into-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let iotask = IoTask::spawn().unwrap();
    let mut mailbox: Mailbox = Mailbox::new();
    let id = iotask::unix::connect_into(&path, &iotask, &mailbox).unwrap();
    let _peer = listener.accept().unwrap();
    let sock = match mailbox.recv_timeout(TIMEOUT) {
        Some(Event::ConnectedUnix { socket, result }) => {
            assert_eq!(socket, id);
            result.unwrap()
        }
        other => panic!("expected ConnectedUnix, got {other:?}"),
    };
    assert_eq!(sock.id(), id);
    let missing = iotask::unix::connect_into(dir.join("none.sock"), &iotask, &mailbox).unwrap();
    match mailbox.recv_timeout(TIMEOUT) {
        Some(Event::ConnectedUnix { socket, result }) => {
            assert_eq!(socket, missing);
            assert!(
                matches!(result, Err(tcp::ConnectError::Generic { ref name, .. }) if name == "ENOENT")
            );
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_io_task_counts_what_it_does() {
    let iotask = IoTask::spawn().unwrap();
    let start = iotask.stats();
    assert_eq!(
        (start.streams, start.listeners, start.bytes_read),
        (0, 0, 0)
    );
    let mut mailbox: Mailbox = Mailbox::new();
    let server = tcp::bind("127.0.0.1:0", &ListenOptions::new(), &iotask)
        .unwrap()
        .into_mailbox(&mailbox)
        .unwrap();
    let mut client = TcpStream::connect(server.local_addr()).unwrap();
    client.write_all(b"12345").unwrap();
    let sock = match mailbox.recv_timeout(TIMEOUT) {
        Some(Event::Accepted(sock)) => sock,
        other => panic!("expected a connection, got {other:?}"),
    };
    assert!(matches!(
        mailbox.recv_timeout(TIMEOUT),
        Some(Event::Data { .. })
    ));
    sock.write(b"abc".to_vec()).unwrap();
    let stats = iotask.stats();
    assert_eq!((stats.streams, stats.listeners, stats.accepted), (1, 1, 1));
    assert_eq!((stats.bytes_read, stats.bytes_written), (5, 3));
    assert!(stats.reads >= 1 && stats.writes >= 1 && stats.waits >= 1 && stats.commands >= 2);
    // The client resets the connection: counted once the loop reads it.
    socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client);
    match mailbox.recv_timeout(TIMEOUT) {
        Some(Event::Closed { error, .. }) => assert_eq!(error.name(), "ECONNRESET"),
        other => panic!("expected the reset, got {other:?}"),
    }
    assert_eq!(iotask.stats().resets, 1);
    drop(sock);
    server.stop().unwrap();
    assert!(wait_until(TIMEOUT, || iotask.stats().streams == 0));
    assert_eq!(iotask.stats().listeners, 0);
    iotask.shutdown();
    assert_eq!(iotask.stats().accepted, 1, "the final counts stay readable");
}

/// A temporary file holding `len` bytes of the test pattern from `offset`, removed on drop.
struct PatternFile(std::path::PathBuf);

impl PatternFile {
    fn new(name: &str, offset: u64, len: usize) -> PatternFile {
        let path = std::env::temp_dir().join(format!("iotask-{name}-{}", std::process::id()));
        std::fs::write(&path, pattern(offset, len)).unwrap();
        PatternFile(path)
    }

    fn open(&self) -> std::fs::File {
        std::fs::File::open(&self.0).unwrap()
    }
}

impl Drop for PatternFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_file_far_larger_than_the_send_buffer_goes_out_in_order_with_the_writes() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    let head = 1000;
    let file_len = 48 << 20;
    // The file holds the pattern from `head` on, so that head, file and tail read as one
    // stretch of the pattern.
    let file = PatternFile::new("send-file", head as u64, file_len + 5000);
    let handle = file.open();
    drop(sock.write_future(pattern(0, head)));
    let sent = sock.send_file(&handle, 0, Some(file_len as u64));
    drop(handle);
    let tail_at = (head + file_len) as u64;
    let tail = sock.write_future(pattern(tail_at, 3000));
    let total = head + file_len + 3000;
    let reader = std::thread::spawn(move || read_exact_std(&mut peer, total));
    sent.get().unwrap();
    tail.get().unwrap();
    assert_pattern(&join_within(reader, TIMEOUT), total);
    // From an offset to the end.
    let (sock, mut peer) = connected_pair(&iotask);
    sock.send_file(&file.open(), (file_len + 1000) as u64, None)
        .get()
        .unwrap();
    let got = read_exact_std(&mut peer, 4000);
    assert_bytes_eq(&got, &pattern((head + file_len + 1000) as u64, 4000));
    let e = sock
        .send_file(&file.open(), 1 << 40, None)
        .get()
        .unwrap_err();
    assert_eq!(e.name(), "EINVAL");
}

#[test]
fn a_file_send_keeps_the_socket_deadline() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, _peer) = connected_pair(&iotask);
    let file = PatternFile::new("send-file-deadline", 0, 64 << 20);
    sock.timeout_after(Duration::from_millis(200)).unwrap();
    let e = sock.send_file(&file.open(), 0, None).get().unwrap_err();
    assert!(e.is_timeout(), "{e:?}");
    assert!(e.bytes_written().unwrap() < 64 << 20);
}

#[test]
fn a_file_goes_out_over_a_unix_socket_too() {
    let dir =
        std::env::temp_dir().join(format!("iotask-send-file-unix-dir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let iotask = IoTask::spawn().unwrap();
    let sock = iotask::unix::connect(&path, &iotask).unwrap();
    let (mut peer, _) = listener.accept().unwrap();
    peer.set_read_timeout(Some(TIMEOUT)).unwrap();
    let file = PatternFile::new("send-file-unix", 0, 3 << 20);
    let sent = sock.send_file(&file.open(), 0, None);
    let mut got = vec![0; 3 << 20];
    peer.read_exact(&mut got).unwrap();
    sent.get().unwrap();
    assert_pattern(&got, 3 << 20);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_cloned_handle_reads_and_writes_the_same_connection_until_the_last_is_dropped() {
    use std::io::BufRead;
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    let writer = sock.try_clone().unwrap();
    assert_eq!(writer.id(), sock.id());
    let port = sock.read_start().unwrap();
    assert_eq!(
        writer.read_start().unwrap_err().name(),
        "BUSY",
        "one reader at a time"
    );
    let writing = std::thread::spawn(move || {
        for i in 0..100u64 {
            writer.write(pattern(i * 1000, 1000)).unwrap();
        }
        writer
    });
    let got = read_exact_std(&mut peer, 100_000);
    assert_pattern(&got, 100_000);
    peer.write_all(b"to the reader").unwrap();
    assert_eq!(recv_exact(&port, 13), b"to the reader");
    let writer = join_within(writing, TIMEOUT);
    // Dropping one handle leaves the connection open for the other.
    drop(port);
    drop(sock);
    writer.write(b"still open".to_vec()).unwrap();
    assert_eq!(read_exact_std(&mut peer, 10), b"still open");
    drop(writer);
    assert_eq!(read_to_eof(&mut peer), b"", "closed with the last handle");

    // Buffered: one buffer reads lines while the other writes them.
    let (sock, mut peer) = connected_pair(&iotask);
    let mut reader = tcp::socket_buf(sock);
    let mut writer = reader.try_clone().unwrap();
    writer.write_all(b"ping\n").unwrap();
    writer.flush().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(&mut peer)
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ping\n");
    peer.write_all(b"pong\n").unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "pong\n");
}

#[test]
fn sockets_and_listeners_go_into_and_out_of_std() {
    let iotask = IoTask::spawn().unwrap();
    // A std listener served by iotask.
    let std_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = std_listener.local_addr().unwrap();
    let listener = tcp::Listener::from_std(std_listener, &ListenOptions::new(), &iotask).unwrap();
    assert_eq!(listener.local_addr(), addr);
    assert!(socket2::SockRef::from(&listener).is_listener().unwrap());
    let server = listener
        .spawn(|conn, _| {
            let sock = tcp::accept(conn).unwrap();
            drop(sock.write_future(b"served".to_vec()));
        })
        .unwrap();
    let sock = tcp::connect(addr, &iotask).unwrap();
    assert_eq!(sock.read_exact(6, TIMEOUT).unwrap(), b"served");
    server.stop().unwrap();

    // Out to std while a reader is attached: refused, and the socket comes back.
    let (sock, mut peer) = connected_pair(&iotask);
    let port = sock.read_start().unwrap();
    let refused = sock.into_std().unwrap_err();
    assert_eq!(refused.error().name(), "BUSY");
    let sock = refused.into_inner().unwrap();
    sock.read_stop(port).unwrap();
    let clone = sock.try_clone().unwrap();
    let refused = sock.into_std().unwrap_err();
    assert_eq!(refused.error().name(), "BUSY", "another handle exists");
    let sock = refused.into_inner().unwrap();
    drop(clone);
    sock.write(b"via iotask ".to_vec()).unwrap();
    let mut std_stream = sock.into_std().unwrap();
    std_stream.write_all(b"then std").unwrap();
    assert_eq!(read_exact_std(&mut peer, 19), b"via iotask then std");
    peer.write_all(b"back").unwrap();
    let mut got = [0; 4];
    std_stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    std_stream.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"back");
    // And back in again.
    let sock = tcp::TcpSocket::from_std(std_stream, &iotask).unwrap();
    peer.write_all(b"again").unwrap();
    assert_eq!(sock.read_exact(5, TIMEOUT).unwrap(), b"again");
}

#[test]
fn a_bound_listener_goes_back_to_std_and_a_server_shows_its_descriptor() {
    use std::os::fd::{AsRawFd, BorrowedFd};
    let iotask = IoTask::spawn().unwrap();
    let listener = tcp::bind("127.0.0.1:0", &ListenOptions::new(), &iotask).unwrap();
    let addr = listener.local_addr();
    let std_listener = listener.into_std().unwrap();
    assert_eq!(std_listener.local_addr().unwrap(), addr);
    let client = TcpStream::connect(addr).unwrap();
    let (accepted, _) = std_listener.accept().unwrap();
    assert_eq!(accepted.peer_addr().unwrap(), client.local_addr().unwrap());

    let pool = iotask::IoPool::spawn(2).unwrap();
    let pooled = tcp::bind_pool("127.0.0.1:0", &ListenOptions::new(), &pool).unwrap();
    assert!(matches!(
        pooled.into_std(),
        Err(tcp::ListenError::Generic { ref name, .. }) if name == "EINVAL"
    ));

    let server = tcp::bind("127.0.0.1:0", &ListenOptions::new(), &iotask)
        .unwrap()
        .spawn(|conn, _| drop(conn))
        .unwrap();
    let fd = server.as_raw_fd();
    assert!(fd >= 0);
    // SAFETY: the server runs, so its listening socket is open for this borrow.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let raw = socket2::SockRef::from(&borrowed);
    assert!(raw.is_listener().unwrap());
    assert_eq!(
        raw.local_addr().unwrap().as_socket(),
        Some(server.local_addr())
    );
    server
        .kill_chan()
        .close(iotask::server::CloseMode::LeaveConnections);
    assert!(server.kill_chan().wait_closed(Duration::from_secs(10)));
    assert_eq!(
        server.as_raw_fd(),
        -1,
        "a closed listener's number may be reused"
    );
    server.stop().unwrap();
    pool.shutdown();
}
