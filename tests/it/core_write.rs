//! Writing: order of queued writes, when a write future resolves, errors on reset, dropped
//! futures and dropped sockets.

use std::future::Future;
use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use iotask::IoTask;
use iotask::tcp::WriteFuture;

use crate::util::*;

const MIB: usize = 1024 * 1024;

/// Polls a write future once, without blocking.
fn poll_once(fut: &mut WriteFuture) -> Poll<Result<(), iotask::tcp::TcpError>> {
    let mut cx = Context::from_waker(Waker::noop());
    Pin::new(fut).poll(&mut cx)
}

/// The largest send plus receive buffer the kernel may give a socket pair: the most a
/// writer can have "in the kernel" while the peer reads nothing.
fn kernel_buffer_bound() -> usize {
    let max_of = |path: &str| -> usize {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.split_whitespace().nth(2).and_then(|v| v.parse().ok()))
            .unwrap_or(32 * MIB)
    };
    max_of("/proc/sys/net/ipv4/tcp_rmem") + max_of("/proc/sys/net/ipv4/tcp_wmem")
}

#[test]
fn queued_write_futures_arrive_in_order() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    let mut want = Vec::new();
    let mut futures = Vec::new();
    for i in 0..10_000 {
        let msg = format!("{i};");
        want.extend_from_slice(msg.as_bytes());
        futures.push(sock.write_future(msg));
    }
    let total = want.len();
    let reader = std::thread::spawn(move || read_exact_std(&mut peer, total));
    for (i, f) in futures.into_iter().enumerate() {
        f.get().unwrap_or_else(|e| panic!("write {i} failed: {e}"));
    }
    let got = join_within(reader, TIMEOUT);
    assert_bytes_eq(&got, &want);
}

#[test]
fn writes_from_several_threads_stay_whole_and_in_order_per_thread() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    let sock = Arc::new(sock);
    let threads = 4;
    let per_thread = 2000;
    let writers: Vec<_> = (0..threads)
        .map(|t| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                let futures: Vec<_> = (0..per_thread)
                    .map(|i| sock.write_future(format!("[{t}:{i}:{}]", "x".repeat(i % 50))))
                    .collect();
                for f in futures {
                    f.get().unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        join_within(w, TIMEOUT);
    }
    drop(sock);
    let got = read_to_eof(&mut peer);
    let text = String::from_utf8(got).unwrap();
    let mut next = vec![0usize; threads];
    let mut count = 0;
    for msg in text.split_terminator(']') {
        let body = msg.strip_prefix('[').expect("a message starts with [");
        let mut parts = body.split(':');
        let t: usize = parts.next().unwrap().parse().unwrap();
        let i: usize = parts.next().unwrap().parse().unwrap();
        let pad = parts.next().unwrap();
        assert_eq!(pad.len(), i % 50, "message {t}:{i} was cut");
        assert_eq!(i, next[t], "thread {t}'s writes out of order");
        next[t] += 1;
        count += 1;
    }
    assert_eq!(count, threads * per_thread);
}

#[test]
fn a_large_write_resolves_only_after_the_slow_peer_read_enough() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    let total = 64 * MIB;
    let mut big = sock.write_future(pattern(0, total));
    let mut small = sock.write_future(b"tail".to_vec());

    // The peer reads nothing yet: the write cannot have completed, however long we wait.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let waited = rt.block_on(async {
        tokio::time::timeout(Duration::from_millis(500), &mut big)
            .await
            .is_err()
    });
    assert!(
        waited,
        "a 64 MiB write resolved while the peer read nothing"
    );
    assert!(poll_once(&mut big).is_pending());
    assert!(poll_once(&mut small).is_pending(), "a later write overtook");

    let read_so_far = Arc::new(AtomicUsize::new(0));
    let reader = std::thread::spawn({
        let read_so_far = read_so_far.clone();
        move || {
            let mut got = Vec::with_capacity(total + 4);
            let mut buf = vec![0; 256 * 1024];
            while got.len() < total + 4 {
                let n = peer.read(&mut buf).expect("peer read");
                assert!(n > 0, "EOF after {} bytes", got.len());
                got.extend_from_slice(&buf[..n]);
                read_so_far.store(got.len(), Ordering::SeqCst);
            }
            got
        }
    });
    let result = rt.block_on(async { tokio::time::timeout(TIMEOUT, &mut big).await });
    let read_when_resolved = read_so_far.load(Ordering::SeqCst);
    result
        .expect("the big write resolved")
        .expect("the big write succeeded");
    let bound = kernel_buffer_bound();
    assert!(
        read_when_resolved + bound >= total,
        "resolved when the peer had read {read_when_resolved} bytes: more than the kernel's \
         {bound} bytes of buffers were still unread"
    );
    with_timeout(TIMEOUT, move || small.get()).expect("the small write succeeded");
    let got = join_within(reader, TIMEOUT);
    assert_pattern(&got[..total], total);
    assert_eq!(&got[total..], b"tail");
}

#[test]
fn writes_fail_with_econnreset_or_epipe_after_the_peer_resets() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, peer) = connected_pair(&iotask);
    sock.write(b"unread".to_vec()).unwrap();
    // Wait until the bytes sit in the peer's receive buffer, then close without reading
    // them: Linux answers with a reset.
    let mut buf = [0u8; 6];
    assert_eq!(peer.peek(&mut buf).unwrap(), 6);
    drop(peer);

    let deadline = Instant::now() + TIMEOUT;
    let error = loop {
        assert!(
            Instant::now() < deadline,
            "writes kept succeeding after a reset"
        );
        match with_timeout(TIMEOUT, {
            let fut = sock.write_future(vec![1u8; 1024]);
            move || fut.get()
        }) {
            Ok(()) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => break e,
        }
    };
    assert!(
        error.name() == "ECONNRESET" || error.name() == "EPIPE",
        "got {error:?}"
    );
    // Later writes fail too, at once.
    let again = with_timeout(TIMEOUT, {
        let fut = sock.write_future(b"more".to_vec());
        move || fut.get()
    });
    assert!(again.is_err(), "a write succeeded after the reset");
    // Reading ends with an error rather than hanging.
    let port = sock.read_start().unwrap();
    let (_, end) = recv_to_end(&port);
    assert!(!end.is_timeout(), "got {end:?}");
}

#[test]
fn dropping_an_unresolved_write_future_still_writes() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    drop(sock.write_future(b"one ".to_vec()));
    drop(sock.write_future(b"two ".to_vec()));
    let third = sock.write_future(b"three".to_vec());
    drop(sock.write_future(pattern(0, 3 * MIB)));
    third.get().unwrap();
    let got = read_exact_std(&mut peer, 13);
    assert_eq!(got, b"one two three");
    let got = read_exact_std(&mut peer, 3 * MIB);
    assert_pattern(&got, 3 * MIB);
}

#[test]
fn dropping_a_socket_flushes_every_queued_write_then_closes() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    let total = 32 * MIB;
    let mut futures = Vec::new();
    let mut offset = 0;
    while offset < total {
        let n = MIB.min(total - offset);
        futures.push(sock.write_future(pattern(offset as u64, n)));
        offset += n;
    }
    drop(sock);
    // Only now does the peer start reading.
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        go_rx.recv_timeout(TIMEOUT).unwrap();
        read_to_eof(&mut peer)
    });
    go_tx.send(()).unwrap();
    let got = join_within(reader, Duration::from_secs(60));
    assert_pattern(&got, total);
    for (i, f) in futures.into_iter().enumerate() {
        with_timeout(TIMEOUT, move || f.get())
            .unwrap_or_else(|e| panic!("write {i} failed after the socket was dropped: {e}"));
    }
}

#[test]
fn write_blocks_until_done_and_empty_writes_resolve_in_order() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    sock.write(b"abc".to_vec()).unwrap();
    let empty = sock.write_future(Vec::new());
    empty.get().unwrap();
    sock.write(b"def".to_vec()).unwrap();
    assert_eq!(read_exact_std(&mut peer, 6), b"abcdef");
}

#[test]
fn writes_still_work_after_the_peer_closed_its_sending_side() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    write_std(&mut peer, b"request");
    peer.shutdown(std::net::Shutdown::Write).unwrap();
    let port = sock.read_start().unwrap();
    let (got, end) = recv_to_end(&port);
    assert_eq!(got, b"request");
    assert!(end.is_eof());
    // Half-closed: the reply still goes out.
    sock.write(b"response".to_vec()).unwrap();
    drop(sock);
    assert_eq!(read_to_eof(&mut peer), b"response");
}

/// A peer that sent bytes nobody read: closing with unread input makes Linux answer with a
/// reset, which throws away whatever of our output the kernel still held. Dropping the
/// socket must still deliver every queued byte (it "never cuts data short").
#[test]
fn dropping_a_socket_with_unread_input_still_delivers_every_queued_write() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    write_std(&mut peer, b"a request nobody reads");
    let total = 16 * MIB;
    let fut = sock.write_future(pattern(0, total));
    drop(sock);
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = vec![0; 256 * 1024];
        loop {
            match peer.read(&mut buf) {
                Ok(0) => return Ok(got),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return Err((got.len(), e)),
            }
        }
    });
    match join_within(reader, Duration::from_secs(60)) {
        Ok(got) => assert_pattern(&got, total),
        Err((n, e)) => panic!(
            "the peer got {n} of {total} bytes, then {e}: the close reset the connection and \
             dropped queued output"
        ),
    }
    with_timeout(TIMEOUT, move || fut.get()).expect("the write succeeded");
}
