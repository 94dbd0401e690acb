//! Reading: ports, order, EOF, `read_stop`/`read_start`, timeouts, read futures.

use std::future::Future;
use std::io::Write;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use iotask::IoTask;
use iotask::tcp::ReadPort;

use crate::util::*;

/// How many chunks wait unreceived in a port, read from its `Debug` output (the only way to
/// look without receiving).
fn queued(port: &ReadPort) -> usize {
    let text = format!("{port:?}");
    let rest = text
        .split("queued: ")
        .nth(1)
        .unwrap_or_else(|| panic!("ReadPort's Debug no longer shows `queued`: {text}"));
    rest.split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse {text}"))
}

/// Waits until `port` holds at least `n` unreceived chunks.
fn wait_queued(port: &ReadPort, n: usize) {
    assert!(
        wait_until(TIMEOUT, || queued(port) >= n),
        "the port never held {n} chunks (holds {})",
        queued(port)
    );
}

/// A minimal executor: polls `fut` on this thread, parking between wake-ups.
fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        assert!(Instant::now() < deadline, "future never resolved");
        std::thread::park_timeout(Duration::from_millis(100));
    }
}

#[test]
fn chunks_arrive_in_order_and_eof_repeats() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    let total = 4 * 1024 * 1024;
    let port = sock.read_start().unwrap();
    let writer = std::thread::spawn(move || {
        peer.set_nodelay(true).unwrap();
        let mut offset = 0;
        let mut size = 1;
        while offset < total {
            let n = size.min(total - offset);
            peer.write_all(&pattern(offset as u64, n)).unwrap();
            offset += n;
            size = size * 3 % 70_001 + 1;
        }
        // Dropping the peer sends FIN after the last byte.
    });
    let (got, end) = recv_to_end(&port);
    join_within(writer, TIMEOUT);
    assert!(end.is_eof(), "the stream ended with {end:?} instead of EOF");
    assert_pattern(&got, total);

    // The end repeats, however the port is asked.
    for _ in 0..3 {
        assert!(port.recv().unwrap_err().is_eof());
        assert!(
            port.recv_timeout(Duration::from_millis(10))
                .unwrap_err()
                .is_eof()
        );
        assert!(matches!(port.try_recv(), Some(Err(e)) if e.is_eof()));
    }
}

#[test]
fn after_eof_every_new_reader_gets_eof() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    peer.write_all(b"last words").unwrap();
    drop(peer);
    let port = sock.read_start().unwrap();
    let (got, end) = recv_to_end(&port);
    assert_eq!(got, b"last words");
    assert!(end.is_eof());
    sock.read_stop(port).unwrap();
    // A new port, a read, a read future: all see the end at once.
    let port = sock.read_start().unwrap();
    assert!(port.recv_timeout(TIMEOUT).unwrap_err().is_eof());
    sock.read_stop(port).unwrap();
    assert!(sock.read(TIMEOUT).unwrap_err().is_eof());
    assert!(sock.read_future(TIMEOUT).get().unwrap_err().is_eof());
    assert!(block_on(sock.read_future(TIMEOUT)).unwrap_err().is_eof());
}

#[test]
fn read_stop_gives_back_chunks_left_in_the_port() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    peer.set_nodelay(true).unwrap();
    let port = sock.read_start().unwrap();
    // Three chunks that the port holds, unreceived.
    let mut sent = Vec::new();
    for (i, part) in [&b"first "[..], b"second ", b"third "].iter().enumerate() {
        peer.write_all(part).unwrap();
        sent.extend_from_slice(part);
        wait_queued(&port, i + 1);
    }
    sock.read_stop(port).unwrap();
    // Bytes that arrive while nobody reads.
    peer.write_all(b"fourth").unwrap();
    sent.extend_from_slice(b"fourth");

    // The first reader after the stop gets the oldest chunk.
    assert_eq!(sock.read(TIMEOUT).unwrap(), b"first ");
    let port = sock.read_start().unwrap();
    let rest = recv_exact(&port, sent.len() - 6);
    assert_eq!(rest, &sent[6..]);

    // Once more, handing chunks from a port to a read future and back to a port.
    peer.write_all(b"fifth ").unwrap();
    wait_queued(&port, 1);
    peer.write_all(b"sixth").unwrap();
    wait_queued(&port, 2);
    sock.read_stop(port).unwrap();
    assert_eq!(sock.read_future(TIMEOUT).get().unwrap(), b"fifth ");
    let port = sock.read_start().unwrap();
    assert_eq!(recv_exact(&port, 5), b"sixth");
}

#[test]
fn read_stop_and_start_while_streaming_lose_and_reorder_nothing() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    let total = 2 * 1024 * 1024;
    let writer = std::thread::spawn(move || {
        peer.set_nodelay(true).unwrap();
        let mut offset = 0;
        let mut size = 7;
        while offset < total {
            let n = size.min(total - offset);
            peer.write_all(&pattern(offset as u64, n)).unwrap();
            offset += n;
            size = size * 5 % 9_001 + 1;
        }
        peer
    });
    let mut got = Vec::with_capacity(total);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut round = 0usize;
    let mut stops_with_chunks_left = 0;
    while got.len() < total {
        assert!(
            Instant::now() < deadline,
            "stalled at {} of {total} bytes",
            got.len()
        );
        round += 1;
        if round % 7 == 0 {
            got.extend(sock.read(TIMEOUT).expect("read between ports"));
            continue;
        }
        let port = sock.read_start().expect("read_start after read_stop");
        for _ in 0..round % 4 {
            if got.len() == total {
                break;
            }
            got.extend(port.recv_timeout(TIMEOUT).expect("recv"));
        }
        if queued(&port) > 0 {
            stops_with_chunks_left += 1;
        }
        sock.read_stop(port).expect("read_stop");
    }
    let _peer = join_within(writer, TIMEOUT);
    assert_pattern(&got, total);
    eprintln!("{round} rounds, {stops_with_chunks_left} stops with chunks left in the port");
}

#[test]
fn read_with_a_timeout_times_out_then_gets_data() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    let started = Instant::now();
    let e = sock.read(Duration::from_millis(100)).unwrap_err();
    assert!(e.is_timeout(), "got {e:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(90),
        "timed out early"
    );
    assert!(started.elapsed() < TIMEOUT, "timed out late");

    peer.write_all(b"now").unwrap();
    assert_eq!(sock.read(TIMEOUT).unwrap(), b"now");

    // Data that comes while a read waits ends the wait.
    let reader = std::thread::spawn({
        let sock = Arc::new(sock);
        move || sock.read(TIMEOUT)
    });
    peer.write_all(b"later").unwrap();
    assert_eq!(join_within(reader, TIMEOUT).unwrap(), b"later");
}

#[test]
fn read_future_works_with_get_and_as_a_future() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);

    let fut = sock.read_future(TIMEOUT);
    peer.write_all(b"one").unwrap();
    assert_eq!(fut.get().unwrap(), b"one");

    // A hand-written executor.
    let fut = sock.read_future(TIMEOUT);
    peer.write_all(b"two").unwrap();
    assert_eq!(block_on(fut).unwrap(), b"two");

    // Tokio's current-thread runtime, with a timeout that must not fire.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let fut = sock.read_future(TIMEOUT);
    peer.write_all(b"three").unwrap();
    let got = rt.block_on(async { tokio::time::timeout(TIMEOUT, fut).await });
    assert_eq!(got.expect("resolved").unwrap(), b"three");

    // A future whose timeout passes resolves with a timeout error.
    let fut = sock.read_future(Duration::from_millis(50));
    let got = rt.block_on(async { tokio::time::timeout(TIMEOUT, fut).await });
    assert!(got.expect("resolved").unwrap_err().is_timeout());

    // And the socket reads on afterwards.
    peer.write_all(b"four").unwrap();
    assert_eq!(block_on(sock.read_future(TIMEOUT)).unwrap(), b"four");
}

#[test]
fn read_start_while_a_port_is_active_is_busy() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    let port = sock.read_start().unwrap();
    let e = sock.read_start().unwrap_err();
    assert_eq!(e.name(), "BUSY");
    let e = sock.read(Duration::from_millis(10)).unwrap_err();
    assert_eq!(e.name(), "BUSY");
    // The first port is untouched by the refusals.
    peer.write_all(b"still mine").unwrap();
    assert_eq!(recv_exact(&port, 10), b"still mine");
    // Once given back, a new port may start.
    sock.read_stop(port).unwrap();
    let port = sock.read_start().unwrap();
    peer.write_all(b"again").unwrap();
    assert_eq!(recv_exact(&port, 5), b"again");
}

#[test]
fn recv_timeout_with_nothing_times_out_and_the_port_still_works() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    let port = sock.read_start().unwrap();
    for _ in 0..3 {
        let e = port.recv_timeout(Duration::from_millis(30)).unwrap_err();
        assert!(e.is_timeout(), "got {e:?}");
        assert!(port.try_recv().is_none());
    }
    peer.write_all(b"after").unwrap();
    assert_eq!(recv_exact(&port, 5), b"after");
    drop(peer);
    let (rest, end) = recv_to_end(&port);
    assert!(rest.is_empty());
    assert!(end.is_eof());
}

#[test]
fn dropping_an_unresolved_read_future_loses_nothing() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    for i in 0..20 {
        drop(sock.read_future(TIMEOUT));
        let msg = format!("message {i}");
        peer.write_all(msg.as_bytes()).unwrap();
        assert_eq!(sock.read(TIMEOUT).unwrap(), msg.as_bytes());
    }
    // Dropped futures waiting in a batch, then a port.
    for _ in 0..5 {
        drop(sock.read_future(TIMEOUT));
    }
    peer.write_all(b"for the port").unwrap();
    let port = sock.read_start().unwrap();
    assert_eq!(recv_exact(&port, 12), b"for the port");
}

/// A read future that was never waited on, dropped after its chunk reached it: the chunk
/// must go to the next reader (`ReadFuture`'s documentation: "dropping the future
/// unresolved loses nothing").
#[test]
fn dropping_a_read_future_whose_chunk_already_arrived_loses_nothing() {
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    let fut = sock.read_future(TIMEOUT);
    peer.write_all(b"precious").unwrap();
    // Two round trips through the loop; on loopback the bytes are in the kernel before
    // `write_all` returns, so the loop has read them into the future by now.
    sock.write(Vec::new()).unwrap();
    sock.write(b"x".to_vec()).unwrap();
    sock.write(b"y".to_vec()).unwrap();
    drop(fut);
    match sock.read(Duration::from_secs(2)) {
        Ok(data) => assert_eq!(data, b"precious"),
        Err(e) => panic!("the chunk given to a dropped, never-polled read future was lost: {e}"),
    }
}

#[test]
fn many_small_writes_arrive_as_an_exact_stream_on_a_port() {
    // The reader sees exactly the bytes sent, however the kernel splits them.
    let iotask = IoTask::spawn().unwrap();
    let (sock, mut peer) = connected_pair(&iotask);
    peer.set_nodelay(true).unwrap();
    let port = sock.read_start().unwrap();
    let mut want = Vec::new();
    for i in 0..2000 {
        let msg = format!("<{i}>");
        peer.write_all(msg.as_bytes()).unwrap();
        want.extend_from_slice(msg.as_bytes());
    }
    drop(peer);
    let (got, end) = recv_to_end(&port);
    assert!(end.is_eof());
    assert_bytes_eq(&got, &want);
}
