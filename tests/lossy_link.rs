//! iotask over a lossy link: two network namespaces joined through TUN devices by a
//! forwarder in this process that drops, delays, reorders and duplicates packets, and can
//! black the link out or cut it for good. An I/O task runs in each namespace.
//!
//! - 20 MiB each way at once through 2% loss, 5 ms ± 3 ms delay, 1% reordering and 0.5%
//!   duplication arrive byte-exact (pattern and checksum);
//! - a transfer survives a 3 s blackout and completes byte-exact;
//! - on a link cut for good, a pending write on a socket with `TCP_USER_TIMEOUT` and a read
//!   on an idle socket with keepalive end with the kernel's `ETIMEDOUT` within their bound,
//!   and so does the writing socket's read port (it ended with `EOF` until the library kept
//!   the error a failed send consumed).
//!
//! A binary of its own: it makes namespaces and moves threads into them. Its tests take a
//! lock so that they run one at a time (their timings would disturb each other). It needs
//! root, `/dev/net/tun` and `ip` (iproute2); without them it says so and skips, except
//! under `CI=true`, where it fails. The namespaces are `iotask-lossy-<pid>-<n>-{a,b}`,
//! removed when a test ends, however it ends. Run it alone, with its figures:
//!
//! ```sh
//! cargo test --release --test lossy_link -- --nocapture
//! ```
//!
//! Addresses 10.77.0.1 (namespace a) and 10.77.0.2 (namespace b) exist only inside the
//! namespaces. Every socket is made by a thread checked to be inside one, so nothing here
//! can send a packet anywhere else.

#[path = "lossy_link/forwarder.rs"]
mod forwarder;
#[path = "lossy_link/netns.rs"]
mod netns;
#[path = "lossy_link/transfer.rs"]
mod transfer;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use iotask::IoTask;
use iotask::tcp::{self, ListenOptions, NewConnection, TcpSocket};
use socket2::{SockRef, TcpKeepalive};

use forwarder::{Impairment, Link};
use netns::Netns;
use transfer::{Received, Sent, receive_stream, send_stream, wait_future};

const ADDR_A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const ADDR_B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// The TUN device's name in each namespace.
const DEVICE: &str = "lossy0";
const MIB: u64 = 1024 * 1024;
/// The prefix of every namespace this test makes; the rest is `<pid>-<n>-<side>`.
const NETNS_PREFIX: &str = "iotask-lossy-";

/// The impairment of the transfer tests.
const LOSSY: Impairment = Impairment {
    loss: 0.02,
    delay: Duration::from_millis(5),
    jitter: Duration::from_millis(3),
    reorder: 0.01,
    hold_back: Duration::from_millis(4),
    duplicate: 0.005,
};

/// The longest a connect through the lossy link may take (lost SYNs are resent after 1 s,
/// then 2 s, ...).
const CONNECT_LIMIT: Duration = Duration::from_secs(10);
/// The longest any single read or write may wait while a transfer is expected to move.
const STALL: Duration = Duration::from_secs(20);

/// One test at a time: each builds its own pair of namespaces, and their timings would
/// disturb each other on a small machine.
static SERIAL: Mutex<()> = Mutex::new(());
/// Numbers the labs of this process, for unique namespace names.
static LABS: AtomicUsize = AtomicUsize::new(0);

/// Two namespaces joined by an impaired link. Dropping it stops the forwarder (which
/// removes the TUN devices) and deletes the namespaces.
struct Lab {
    // Fields drop in this order: the link before the namespaces.
    link: Link,
    a: Netns,
    b: Netns,
}

impl Lab {
    /// Builds the lab, or returns `None` after saying loudly why this machine cannot (and
    /// panics instead under `CI=true`).
    fn start(impairment: Impairment, seed: u64) -> Option<Lab> {
        match Lab::try_start(impairment, seed) {
            Ok(lab) => Some(lab),
            Err(why) => {
                if std::env::var("CI").as_deref() == Ok("true") {
                    panic!("lossy_link: this machine cannot build the lab under CI: {why}");
                }
                eprintln!(
                    "SKIPPED: lossy_link needs root, /dev/net/tun and ip (iproute2) to \
                     build two network namespaces: {why}"
                );
                None
            }
        }
    }

    fn try_start(impairment: Impairment, seed: u64) -> Result<Lab, String> {
        if !std::path::Path::new("/dev/net/tun").exists() {
            return Err("/dev/net/tun does not exist".to_owned());
        }
        netns::remove_stale(NETNS_PREFIX);
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        let a = Netns::add(&netns::unique_name(NETNS_PREFIX, n, "a"))?;
        let b = Netns::add(&netns::unique_name(NETNS_PREFIX, n, "b"))?;
        if netns::initial_netns().is_none() {
            return Err("cannot read /proc/self/ns/net".to_owned());
        }
        let tun_a = a.run(|| netns::open_tun(DEVICE))?;
        let tun_b = b.run(|| netns::open_tun(DEVICE))?;
        for (ns, addr) in [(&a, ADDR_A), (&b, ADDR_B)] {
            ns.ip(&["link", "set", "lo", "up"])?;
            ns.ip(&["addr", "add", &format!("{addr}/30"), "dev", DEVICE])?;
            ns.ip(&["link", "set", DEVICE, "up"])?;
        }
        let congestion_control = congestion_control(&a)?;
        let link = Link::start(tun_a, tun_b, impairment, seed);
        eprintln!(
            "lossy_link: namespaces {} ({ADDR_A}) and {} ({ADDR_B}), seed {seed:#x}, \
             congestion control {congestion_control}, {impairment:?}",
            a.name(),
            b.name()
        );
        Ok(Lab { link, a, b })
    }

    /// An I/O task whose thread runs in `ns`: spawned by a thread inside it, whose
    /// namespace the new thread inherits. Checked through `/proc` before it is used, since
    /// its connects must not leave the namespace.
    fn iotask_in(ns: &Netns, thread_name: &str) -> IoTask {
        let iotask = ns.run(|| {
            IoTask::builder()
                .name(thread_name)
                .drain_timeout(Duration::from_secs(2))
                .linger_timeout(Duration::from_secs(1))
                .spawn()
                .expect("spawn an I/O task")
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match ns.check_threads_named(thread_name) {
                Ok(0) => {
                    assert!(Instant::now() < deadline, "no thread named {thread_name}");
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(_) => return iotask,
                Err(e) => panic!("the I/O thread did not inherit the namespace: {e}"),
            }
        }
    }

    /// A listener on `ADDR_B`, bound by a thread in namespace b, served by `iotask`;
    /// returns its address and the connections it accepts.
    fn listen_b(
        &self,
        iotask: &IoTask,
    ) -> (SocketAddr, tcp::Server, mpsc::Receiver<NewConnection>) {
        let listener = self.b.run(|| {
            tcp::bind(
                SocketAddrV4::new(ADDR_B, 0),
                // Both ends stream at once: b must read while its own writes are queued.
                &ListenOptions::new().write_window(None),
                iotask,
            )
            .expect("bind in namespace b")
        });
        let addr = listener.local_addr();
        let (tx, rx) = mpsc::channel();
        let server = listener
            .spawn(move |conn, _kill| {
                let _ = tx.send(conn);
            })
            .expect("serve the listener");
        (addr, server, rx)
    }
}

/// The TCP congestion control the namespaces' sockets use: what new namespaces get from
/// the kernel, usually the host's default. (Another one cannot be chosen for a namespace
/// unless the host allows it in `tcp_allowed_congestion_control`.)
fn congestion_control(ns: &Netns) -> Result<String, String> {
    const SYSCTL: &str = "/proc/sys/net/ipv4/tcp_congestion_control";
    ns.run(|| {
        std::fs::read_to_string(SYSCTL)
            .map(|cc| cc.trim().to_owned())
            .map_err(|e| format!("{SYSCTL}: {e}"))
    })
}

/// The seed for a test: `LOSSY_SEED` (hexadecimal or decimal) when set, else `default`.
fn seed(default: u64) -> u64 {
    let Ok(text) = std::env::var("LOSSY_SEED") else {
        return default;
    };
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.unwrap_or_else(|_| panic!("LOSSY_SEED={text} is not a number"))
}

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A connected pair through the link: `a` connected by a's I/O task (which makes the socket
/// on its thread, in namespace a), `b` accepted by b's.
fn connect_through(lab: &Lab, task_a: &IoTask, task_b: &IoTask) -> (TcpSocket, TcpSocket) {
    let (addr, _server, conns) = lab.listen_b(task_b);
    let a = tcp::connect_timeout(addr, CONNECT_LIMIT, task_a).expect("connect from a to b");
    let conn = conns
        .recv_timeout(CONNECT_LIMIT)
        .expect("b accepted no connection");
    let b = tcp::accept(conn).expect("accept in b");
    assert_eq!(b.peer_addr().unwrap(), a.local_addr().unwrap());
    (a, b)
}

/// The outcome of streaming both ways at once.
struct BothWays {
    a_to_b: (Sent, Received),
    b_to_a: (Sent, Received),
    elapsed: Duration,
}

/// Streams `total` bytes from `a` to `b` and `total` from `b` to `a` at once, checks them
/// byte by byte and by checksum; `progress` follows what b, then a, has received. `during` runs on
/// this thread meanwhile.
fn stream_both_ways(
    a: &TcpSocket,
    b: &TcpSocket,
    total: u64,
    progress: &[AtomicU64; 2],
    during: impl FnOnce(),
) -> BothWays {
    const KEY_A: u64 = 0xA;
    const KEY_B: u64 = 0xB;
    let port_a = a.read_start().expect("read_start on a");
    let port_b = b.read_start().expect("read_start on b");
    let start = Instant::now();
    let (send_a, recv_b, send_b, recv_a) = std::thread::scope(|s| {
        let send_a = s.spawn(|| send_stream(a, KEY_A, total, STALL));
        let recv_b = s.spawn(|| receive_stream(&port_b, KEY_A, total, STALL, &progress[0]));
        let send_b = s.spawn(|| send_stream(b, KEY_B, total, STALL));
        let recv_a = s.spawn(|| receive_stream(&port_a, KEY_B, total, STALL, &progress[1]));
        during();
        (
            send_a.join().unwrap(),
            recv_b.join().unwrap(),
            send_b.join().unwrap(),
            recv_a.join().unwrap(),
        )
    });
    let elapsed = start.elapsed();
    let send_a = send_a.unwrap_or_else(|e| panic!("a sending: {e}"));
    let recv_b = recv_b.unwrap_or_else(|e| panic!("b receiving: {e}"));
    let send_b = send_b.unwrap_or_else(|e| panic!("b sending: {e}"));
    let recv_a = recv_a.unwrap_or_else(|e| panic!("a receiving: {e}"));
    for (what, sent, received) in [("a to b", &send_a, &recv_b), ("b to a", &send_b, &recv_a)] {
        assert_eq!(received.bytes, sent.bytes, "{what}: byte count");
        assert_eq!(received.checksum, sent.checksum, "{what}: checksum");
    }
    BothWays {
        a_to_b: (send_a, recv_b),
        b_to_a: (send_b, recv_a),
        elapsed,
    }
}

fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / MIB as f64 / elapsed.as_secs_f64()
}

fn report(lab: &Lab, result: &BothWays) {
    for (what, (sent, received)) in [("a to b", &result.a_to_b), ("b to a", &result.b_to_a)] {
        eprintln!(
            "lossy_link: {what}: {} MiB received in {:.2} s ({:.2} MiB/s; the sender's last write \
             done at {:.2} s), checksum {:#018x}, longest gap {:.2} s",
            received.bytes / MIB,
            received.elapsed.as_secs_f64(),
            mib_per_s(received.bytes, received.elapsed),
            sent.elapsed.as_secs_f64(),
            received.checksum,
            received.longest_gap.as_secs_f64(),
        );
    }
    let [ab, ba] = lab.link.counters();
    eprintln!(
        "lossy_link: both ways done in {:.2} s",
        result.elapsed.as_secs_f64()
    );
    eprintln!("lossy_link: packets a->b {ab:?}");
    eprintln!("lossy_link: packets b->a {ba:?}");
}

/// Checks that the forwarder did impair the link, so that the test proves something.
fn assert_impaired(lab: &Lab) {
    for (what, c) in ["a->b", "b->a"].into_iter().zip(lab.link.counters()) {
        assert!(c.lost > 0, "{what}: no packet was lost: {c:?}");
        assert!(c.reordered > 0, "{what}: no packet was reordered: {c:?}");
        assert!(c.duplicated > 0, "{what}: no packet was duplicated: {c:?}");
        assert_eq!(
            c.write_errors, 0,
            "{what}: the forwarder failed to deliver: {c:?}"
        );
        assert!(c.delivered > 0, "{what}: nothing delivered: {c:?}");
        let loss = c.lost as f64 / c.read as f64;
        assert!(
            (0.01..0.03).contains(&loss),
            "{what}: loss {loss:.4} is far from {}",
            LOSSY.loss
        );
    }
}

#[test]
fn twenty_mib_each_way_through_loss_delay_reordering_and_duplication_arrive_byte_exact() {
    let _serial = serial();
    let Some(lab) = Lab::start(LOSSY, seed(0x1055_11AC_0000_000A)) else {
        return;
    };
    let task_a = Lab::iotask_in(&lab.a, "lossy-io-a");
    let task_b = Lab::iotask_in(&lab.b, "lossy-io-b");
    let (a, b) = connect_through(&lab, &task_a, &task_b);

    let total = 20 * MIB;
    let progress = [AtomicU64::new(0), AtomicU64::new(0)];
    let result = stream_both_ways(&a, &b, total, &progress, || {});
    report(&lab, &result);
    assert_impaired(&lab);
    assert!(
        result.elapsed < Duration::from_secs(60),
        "the transfer took {:?}",
        result.elapsed
    );
    task_a.shutdown();
    task_b.shutdown();
}

#[test]
fn a_transfer_resumes_after_a_three_second_blackout_and_completes_byte_exact() {
    const BLACKOUT: Duration = Duration::from_secs(3);
    let _serial = serial();
    let Some(lab) = Lab::start(LOSSY, seed(0x1055_11AC_0000_000B)) else {
        return;
    };
    let task_a = Lab::iotask_in(&lab.a, "lossy-io-a");
    let task_b = Lab::iotask_in(&lab.b, "lossy-io-b");
    let (a, b) = connect_through(&lab, &task_a, &task_b);

    let total = 20 * MIB;
    let progress = [AtomicU64::new(0), AtomicU64::new(0)];
    let mut blackout = None;
    let result = stream_both_ways(&a, &b, total, &progress, || {
        // Black out once the slower direction has a quarter across: it is mid-transfer.
        // The faster one may have finished by then; loss makes the two differ widely.
        let deadline = Instant::now() + STALL;
        let crossed = || progress.each_ref().map(|p| p.load(Ordering::Relaxed));
        while crossed().into_iter().min().unwrap() < total / 4 {
            assert!(Instant::now() < deadline, "the transfer never got going");
            std::thread::sleep(Duration::from_millis(5));
        }
        let until = lab.link.black_out(BLACKOUT);
        blackout = Some((until, crossed()));
    });
    report(&lab, &result);
    let (until, at) = blackout.expect("the blackout happened");
    let directions = [("a to b", &result.a_to_b), ("b to a", &result.b_to_a)];
    let mut crossed_the_blackout = 0;
    for ((what, (_, received)), at) in directions.into_iter().zip(at) {
        eprintln!(
            "lossy_link: {what}: {:.1} MiB of {} MiB had arrived when the link went dark",
            at as f64 / MIB as f64,
            total / MIB
        );
        // What had crossed but not yet been read (up to a receive buffer) arrives during
        // the blackout; with half the stream still to come, the gap is certain.
        if total - at < total / 2 {
            continue;
        }
        crossed_the_blackout += 1;
        assert!(
            received.longest_gap >= BLACKOUT - Duration::from_millis(100),
            "{what}: the longest gap ({:?}) is shorter than the blackout: it missed the transfer",
            received.longest_gap
        );
        eprintln!(
            "lossy_link: {what}: data flowed again {:.2} s after the link came back",
            received
                .longest_gap_end
                .saturating_duration_since(until)
                .as_secs_f64()
        );
    }
    assert!(crossed_the_blackout > 0, "no direction was mid-transfer");
    assert!(
        lab.link.counters().iter().all(|c| c.dark > 0),
        "the blackout dropped nothing"
    );
    task_a.shutdown();
    task_b.shutdown();
}

/// `TCP_USER_TIMEOUT` of the socket that writes when the link is cut.
const USER_TIMEOUT: Duration = Duration::from_secs(3);
/// Keepalive of the idle socket: first probe after 1 s idle, then every 1 s, and the
/// connection is dead after 2 unanswered probes.
const KEEPALIVE_TIME: Duration = Duration::from_secs(1);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_RETRIES: u32 = 2;
/// How late past its bound an error may come on a busy machine.
const SLACK: Duration = Duration::from_millis(1500);

/// How a waiter saw its socket end: when, and with what.
#[derive(Debug)]
struct Ending {
    after_cut: Duration,
    error: iotask::Error,
}

/// What ended how once the link was cut for good.
#[derive(Debug)]
struct CutEndings {
    /// The first failed write of the socket that kept writing (`TCP_USER_TIMEOUT` set).
    busy_write: Ending,
    /// The read port of that same socket.
    busy_port: Ending,
    /// The read port of the idle socket (keepalive set).
    idle_port: Ending,
}

/// Opens two connections from a to b, one that writes without pause with
/// `TCP_USER_TIMEOUT` set and one idle with keepalive set, both read through ports; cuts
/// the link for good once the busy one flows, and records how each waiter ends.
fn cut_the_link(seed_default: u64) -> Option<CutEndings> {
    let lab = Lab::start(LOSSY, seed(seed_default))?;
    let task_a = Lab::iotask_in(&lab.a, "lossy-io-a");
    let task_b = Lab::iotask_in(&lab.b, "lossy-io-b");
    let (addr, _server, conns) = lab.listen_b(&task_b);

    // iotask has no setters for these options yet: set them on std streams, made by a
    // thread in namespace a, then adopt the streams.
    let (busy, idle) = lab.a.run(|| {
        let connect = || TcpStream::connect_timeout(&addr, CONNECT_LIMIT).expect("connect");
        let busy = connect();
        SockRef::from(&busy)
            .set_tcp_user_timeout(Some(USER_TIMEOUT))
            .expect("TCP_USER_TIMEOUT");
        let idle = connect();
        let keepalive = TcpKeepalive::new()
            .with_time(KEEPALIVE_TIME)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(KEEPALIVE_RETRIES);
        SockRef::from(&idle)
            .set_tcp_keepalive(&keepalive)
            .expect("keepalive");
        (busy, idle)
    });
    let busy = TcpSocket::from_std(busy, &task_a).expect("adopt the busy stream");
    let idle = TcpSocket::from_std(idle, &task_a).expect("adopt the idle stream");
    let mut peers = Vec::new();
    for _ in 0..2 {
        let conn = conns.recv_timeout(CONNECT_LIMIT).expect("b accepted");
        peers.push(tcp::accept(conn).expect("accept in b"));
    }
    let busy_local = busy.local_addr().unwrap();
    let (busy_peer, idle_peer): (Vec<_>, Vec<_>) = peers
        .into_iter()
        .partition(|p| p.peer_addr().unwrap() == busy_local);
    let (busy_peer, idle_peer) = (&busy_peer[0], &idle_peer[0]);

    // The idle connection works before the cut.
    let idle_port = idle.read_start().expect("read_start on the idle socket");
    idle_peer.write(b"ping".to_vec()).expect("ping");
    assert_eq!(
        idle_port.recv_timeout(STALL).expect("ping arrives"),
        b"ping"
    );

    let busy_peer_port = busy_peer.read_start().expect("read_start in b");
    let busy_port = busy.read_start().expect("read_start on the busy socket");
    let received = AtomicU64::new(0);
    let limit = USER_TIMEOUT + STALL;
    let (cut_at, busy_write, busy_port, idle_port) = std::thread::scope(|s| {
        // b reads the busy stream and throws it away; a writes it until a write fails.
        s.spawn(|| {
            while let Ok(chunk) = busy_peer_port.recv_timeout(STALL) {
                received.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        });
        let busy_write = s.spawn(|| {
            let mut queued = std::collections::VecDeque::new();
            loop {
                queued.push_back(busy.write_future(vec![0x5A; transfer::CHUNK]));
                if queued.len() < 8 {
                    continue;
                }
                let oldest = queued.pop_front().expect("not empty");
                match wait_future(oldest, limit) {
                    Some(Ok(())) => {}
                    Some(Err(e)) => return (Instant::now(), e),
                    None => panic!("a write neither completed nor failed in {limit:?}"),
                }
            }
        });
        let read_end = move |port: &tcp::ReadPort, what: &str| match port.recv_timeout(limit) {
            Ok(chunk) => panic!("{what} read {} bytes", chunk.len()),
            Err(e) => (Instant::now(), e),
        };
        let busy_port = s.spawn(move || read_end(&busy_port, "the busy socket"));
        let idle_port = s.spawn(move || read_end(&idle_port, "the idle socket"));

        // Cut once the busy stream flows, so that its send buffer is full behind the cut.
        let deadline = Instant::now() + STALL;
        while received.load(Ordering::Relaxed) < 2 * MIB {
            assert!(Instant::now() < deadline, "the busy stream never got going");
            std::thread::sleep(Duration::from_millis(5));
        }
        let cut_at = Instant::now();
        lab.link.cut();
        eprintln!(
            "lossy_link: link cut after {:.1} MiB crossed",
            received.load(Ordering::Relaxed) as f64 / MIB as f64
        );
        let ends = (
            busy_write.join().unwrap(),
            busy_port.join().unwrap(),
            idle_port.join().unwrap(),
        );
        // b's reader would wait for the dead link until its stall limit: end it now.
        task_b.shutdown();
        (cut_at, ends.0, ends.1, ends.2)
    });
    task_a.shutdown();
    let ending = |(at, error): (Instant, iotask::Error)| Ending {
        after_cut: at.saturating_duration_since(cut_at),
        error,
    };
    let endings = CutEndings {
        busy_write: ending(busy_write),
        busy_port: ending(busy_port),
        idle_port: ending(idle_port),
    };
    eprintln!("lossy_link: {endings:#?}");
    Some(endings)
}

/// Checks that `ending` is the kernel's `ETIMEDOUT` (not iotask's read timeout of the same
/// name), no earlier than `low` less half a second and no later than `high` plus [`SLACK`].
fn assert_timed_out(what: &str, ending: &Ending, low: Duration, high: Duration) {
    let Ending { after_cut, error } = ending;
    assert_eq!(error.name(), "ETIMEDOUT", "{what}: {error:?}");
    assert_eq!(
        error.raw_os_error(),
        Some(libc::ETIMEDOUT),
        "{what}: the kernel's error, not a read timeout: {error:?}"
    );
    assert!(
        *after_cut + Duration::from_millis(500) >= low && *after_cut <= high + SLACK,
        "{what}: ended {after_cut:?} after the cut, outside [{low:?}, {high:?}] (+ {SLACK:?})"
    );
}

#[test]
fn a_link_cut_for_good_fails_pending_writes_and_idle_reads_with_etimedout_within_the_bound() {
    let _serial = serial();
    let Some(endings) = cut_the_link(0x1055_11AC_0000_000C) else {
        return;
    };
    // The oldest unacknowledged byte was sent just before the cut: the kernel gives up
    // `TCP_USER_TIMEOUT` later.
    assert_timed_out(
        "the pending write",
        &endings.busy_write,
        USER_TIMEOUT,
        USER_TIMEOUT,
    );
    // The last byte came at most one keepalive interval before the cut (a ping or a probe's
    // answer); the connection dies after the probes that follow go unanswered.
    assert_timed_out(
        "the idle socket's read port",
        &endings.idle_port,
        KEEPALIVE_INTERVAL * KEEPALIVE_RETRIES,
        KEEPALIVE_TIME + KEEPALIVE_INTERVAL * KEEPALIVE_RETRIES,
    );
}

#[test]
fn a_link_cut_for_good_ends_the_writing_sockets_read_port_with_etimedout() {
    let _serial = serial();
    let Some(endings) = cut_the_link(0x1055_11AC_0000_000D) else {
        return;
    };
    // The peer never closed: a reader told "EOF" would take a truncated stream for a
    // complete one.
    assert_timed_out(
        "the busy socket's read port",
        &endings.busy_port,
        USER_TIMEOUT,
        USER_TIMEOUT,
    );
}
