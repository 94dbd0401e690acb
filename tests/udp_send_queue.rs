//! UDP sends the kernel cannot take at once: a network namespace whose loopback is shaped
//! by a token bucket (`tc qdisc … tbf`, 400 kbit/s) holds datagrams in the qdisc, where
//! they count against the sender's small `SO_SNDBUF`, so the kernel answers `EAGAIN` and
//! iotask queues them. That path cannot be reached on a plain loopback, which hands every
//! datagram to its receiver within the `sendto` call.
//!
//! - 100 datagrams sent at once are queued (`queued` shows it), go out in order, and each
//!   future resolves with its length; the receiver gets all of them, in order;
//! - with a send queue limit, sends beyond it fail at once with `ENOBUFS`, are not sent,
//!   and the ones within it all arrive;
//! - a socket dropped with datagrams queued goes on sending them for the linger timeout:
//!   within it, all arrive; past it, the rest fail with `CLOSED` and are not sent, and the
//!   port is free again.
//!
//! A binary of its own: it moves threads into a network namespace. It needs root, `ip` and
//! `tc` (iproute2) and the `tbf` qdisc; without them it says so and skips, except under
//! `CI=true`, where it fails. The namespaces are `iotask-udpq-<pid>-<n>-a`, removed when a
//! test ends, however it ends.

#[allow(dead_code)]
#[path = "lossy_link/netns.rs"]
mod netns;

use std::net::UdpSocket as StdUdp;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use iotask::IoTask;
use iotask::udp::{SendFuture, UdpOptions, UdpSocket};

use netns::Netns;

const NETNS_PREFIX: &str = "iotask-udpq-";
/// The shaped rate: 400 kbit/s, 50 KB/s, so 100 datagrams of 500 bytes take about a second.
const RATE: &str = "400kbit";
const DATAGRAM: usize = 500;
const WAIT: Duration = Duration::from_secs(10);

static SERIAL: Mutex<()> = Mutex::new(());
static LABS: AtomicUsize = AtomicUsize::new(0);

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A namespace whose loopback is shaped; `None` after saying why it cannot be made (a
/// panic under `CI=true`).
fn shaped_namespace() -> Option<Netns> {
    match try_shaped_namespace() {
        Ok(ns) => Some(ns),
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("udp_send_queue: this machine cannot shape a namespace under CI: {why}")
        }
        Err(why) => {
            eprintln!("udp_send_queue: SKIPPED, this machine cannot shape a namespace: {why}");
            None
        }
    }
}

fn try_shaped_namespace() -> Result<Netns, String> {
    netns::remove_stale(NETNS_PREFIX);
    let n = LABS.fetch_add(1, Ordering::Relaxed);
    let ns = Netns::add(&netns::unique_name(NETNS_PREFIX, n, "a"))?;
    ns.ip(&["link", "set", "lo", "up"])?;
    let status = Command::new("tc")
        .args(["-n", ns.name(), "qdisc", "add", "dev", "lo", "root", "tbf"])
        .args(["rate", RATE, "burst", "1600", "limit", "1000000"])
        .status()
        .map_err(|e| format!("running tc: {e}"))?;
    if !status.success() {
        return Err(format!("tc qdisc add … tbf failed: {status}"));
    }
    Ok(ns)
}

/// A sender with the smallest send buffer the kernel allows, so that a few datagrams in
/// the qdisc fill it; and a receiver with room for everything.
fn endpoints(iotask: &IoTask) -> (UdpSocket, UdpSocket) {
    let small = UdpOptions::new().send_buffer_size(1);
    let sender = UdpSocket::bind_with("127.0.0.1:0", &small, iotask).unwrap();
    let roomy = UdpOptions::new().recv_buffer_size(4 << 20);
    let receiver = UdpSocket::bind_with("127.0.0.1:0", &roomy, iotask).unwrap();
    (sender, receiver)
}

fn numbered(i: u32) -> Vec<u8> {
    let mut data = vec![(i % 251) as u8; DATAGRAM];
    data[..4].copy_from_slice(&i.to_be_bytes());
    data
}

fn number(data: &[u8]) -> u32 {
    u32::from_be_bytes(data[..4].try_into().unwrap())
}

/// Waits for every future, at most `WAIT` in all.
fn outcomes(sends: Vec<SendFuture>) -> Vec<Result<usize, iotask::Error>> {
    let deadline = Instant::now() + WAIT;
    sends
        .into_iter()
        .map(|mut f| f.get_timeout(deadline.saturating_duration_since(Instant::now())))
        .collect()
}

#[test]
fn sends_the_kernel_cannot_take_are_queued_and_go_out_in_order() {
    let _serial = serial();
    let Some(ns) = shaped_namespace() else {
        return;
    };
    ns.run(|| {
        let iotask = IoTask::spawn().unwrap();
        let (sender, receiver) = endpoints(&iotask);
        let port = receiver.recv_start().unwrap();
        let to = receiver.local_addr().unwrap();
        let start = Instant::now();
        let sends: Vec<_> = (0..100).map(|i| sender.send_to(numbered(i), to)).collect();
        let mut most_queued = 0;
        assert!(
            wait(|| {
                most_queued = most_queued.max(sender.queued());
                most_queued > 50
            }),
            "the sends were never queued (at most {most_queued}): the kernel took them all"
        );
        for (i, outcome) in outcomes(sends).into_iter().enumerate() {
            assert_eq!(outcome.unwrap_or_else(|e| panic!("send {i}: {e}")), DATAGRAM);
        }
        for i in 0..100 {
            let d = port.recv_timeout(WAIT).expect("every datagram arrives");
            assert_eq!(number(&d.data), i, "out of order");
            assert_eq!(d.data, numbered(i));
        }
        assert_eq!((sender.queued(), sender.queued_bytes()), (0, 0));
        eprintln!(
            "udp_send_queue: 100 × {DATAGRAM} B through {RATE} in {:.2} s, at most {most_queued} queued",
            start.elapsed().as_secs_f64()
        );
    });
}

#[test]
fn sends_beyond_the_queue_limit_fail_with_enobufs_and_are_not_sent() {
    let _serial = serial();
    let Some(ns) = shaped_namespace() else {
        return;
    };
    ns.run(|| {
        let iotask = IoTask::spawn().unwrap();
        let (sender, receiver) = endpoints(&iotask);
        const LIMIT: usize = 20 * DATAGRAM;
        sender.set_send_queue_limit(Some(LIMIT));
        assert_eq!(sender.send_queue_limit(), Some(LIMIT));
        let port = receiver.recv_start().unwrap();
        let to = receiver.local_addr().unwrap();
        let sends: Vec<_> = (0..100).map(|i| sender.send_to(numbered(i), to)).collect();
        let mut sent = Vec::new();
        let mut refused = 0;
        for (i, outcome) in outcomes(sends).into_iter().enumerate() {
            match outcome {
                Ok(n) => {
                    assert_eq!(n, DATAGRAM);
                    sent.push(i as u32);
                }
                Err(e) => {
                    assert_eq!(e.name(), "ENOBUFS", "send {i}: {e}");
                    refused += 1;
                }
            }
        }
        assert!(refused > 0, "the limit refused nothing");
        assert!(
            sent.len() >= 20,
            "only {} sends went through a limit of 20 datagrams",
            sent.len()
        );
        for &i in &sent {
            let d = port
                .recv_timeout(WAIT)
                .expect("every accepted datagram arrives");
            assert_eq!(number(&d.data), i);
        }
        let extra = port.recv_timeout(Duration::from_millis(300));
        assert!(
            extra.as_ref().is_err_and(|e| e.is_timeout()),
            "a refused datagram was sent: {extra:?}"
        );
        eprintln!(
            "udp_send_queue: limit {LIMIT} B: {} sent, {refused} refused with ENOBUFS",
            sent.len()
        );
    });
}

#[test]
fn a_dropped_socket_sends_its_queue_for_the_linger_timeout_then_fails_the_rest() {
    let _serial = serial();
    let Some(ns) = shaped_namespace() else {
        return;
    };
    ns.run(|| {
        // Within the linger timeout: everything queued goes out after the drop.
        let iotask = IoTask::builder()
            .linger_timeout(Duration::from_secs(5))
            .spawn()
            .unwrap();
        let (sender, receiver) = endpoints(&iotask);
        let port = receiver.recv_start().unwrap();
        let to = receiver.local_addr().unwrap();
        let sends: Vec<_> = (0..20).map(|i| sender.send_to(numbered(i), to)).collect();
        drop(sender);
        for (i, outcome) in outcomes(sends).into_iter().enumerate() {
            assert_eq!(
                outcome.unwrap_or_else(|e| panic!("send {i}: {e}")),
                DATAGRAM
            );
        }
        for i in 0..20 {
            assert_eq!(number(&port.recv_timeout(WAIT).unwrap().data), i);
        }
        drop(iotask);

        // Past it: what did not go out fails with CLOSED, and was not sent.
        let iotask = IoTask::builder()
            .linger_timeout(Duration::from_millis(200))
            .spawn()
            .unwrap();
        let (sender, receiver) = endpoints(&iotask);
        let from = sender.local_addr().unwrap();
        let port = receiver.recv_start().unwrap();
        let to = receiver.local_addr().unwrap();
        let sends: Vec<_> = (0..100).map(|i| sender.send_to(numbered(i), to)).collect();
        drop(sender);
        let outcomes = outcomes(sends);
        let sent = outcomes.iter().take_while(|o| o.is_ok()).count();
        for (i, outcome) in outcomes.iter().enumerate().skip(sent) {
            let e = outcome
                .as_ref()
                .expect_err("sends after the first failure fail");
            assert_eq!(e.name(), "CLOSED", "send {i}: {e}");
        }
        assert!(
            (1..100).contains(&sent),
            "{sent} of 100 sent: the linger timeout cut nothing or everything"
        );
        for i in 0..sent as u32 {
            assert_eq!(number(&port.recv_timeout(WAIT).unwrap().data), i);
        }
        let extra = port.recv_timeout(Duration::from_millis(300));
        assert!(
            extra.as_ref().is_err_and(|e| e.is_timeout()),
            "a failed datagram was sent: {extra:?}"
        );
        assert!(
            wait(|| StdUdp::bind(from).is_ok()),
            "the socket's port stayed bound"
        );
        eprintln!("udp_send_queue: linger 200 ms: {sent} of 100 sent, the rest CLOSED");
    });
}

/// Retries `cond` until it holds, for at most `WAIT`.
fn wait(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    cond()
}
