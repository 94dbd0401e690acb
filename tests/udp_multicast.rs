//! UDP multicast and broadcast through iotask between two network namespaces joined by a
//! veth pair, with an I/O task in each.
//!
//! - IPv4 (239.1.2.3) and IPv6 (ff15::1234): two sockets of namespace b bound to one port
//!   (`SO_REUSEADDR` + `SO_REUSEPORT`) join the group on the veth; 50 datagrams sent from a
//!   through `IP_MULTICAST_IF` / `IPV6_MULTICAST_IF` reach both, all of them, byte-exact,
//!   from a's address; after one leaves the group, 20 more reach only the other, and the
//!   one that left stays silent;
//! - a socket bound to the group's port that never joined gets the group's datagrams while
//!   `IP_MULTICAST_ALL` / `IPV6_MULTICAST_ALL` is on (Linux's default), and none with it
//!   off: why the members above turn it off, since leaving cannot stop them otherwise
//!   while another socket of the namespace is still a member;
//! - multicast loop: a member that sends to its own group receives its datagram with
//!   `multicast_loop` on and not with it off, while a member across the link gets both;
//! - multicast TTL 0 keeps a datagram on its host (a local member gets it, the link does
//!   not), TTL 1 lets it cross;
//! - broadcast to 10.78.0.255 fails with `EACCES` without `SO_BROADCAST` and arrives with
//!   it (set on the socket, or by `UdpOptions::broadcast` before binding).
//!
//! A binary of its own: it makes namespaces and moves threads into them. Its tests take a
//! lock so that they run one at a time (each waits out silences the others would disturb
//! on a small machine). It needs root, veth and `ip` (iproute2); without them it says so
//! and skips, except under `CI=true`, where it fails. The namespaces are
//! `iotask-mc-<pid>-<n>-{a,b}`, removed when a test ends, however it ends (the veth pair
//! goes with them). Run it alone, with its figures:
//!
//! ```sh
//! cargo test --test udp_multicast -- --nocapture
//! ```
//!
//! The tests in which exactly one socket of a `SO_REUSEPORT` group is a member turn off
//! `net.ipv4.udp_early_demux` in that namespace: with it, Linux (seen on 6.18) hands such
//! a datagram to a socket of the group chosen by hash, member or not
//! (`Lab::disable_udp_early_demux` says how).
//!
//! Addresses 10.78.0.1/24 and fd00:78::1/64 (namespace a), 10.78.0.2/24 and fd00:78::2/64
//! (namespace b) exist only inside the namespaces. Every socket is made by a thread checked
//! to be inside one, so no datagram here can reach the host's networks.

// `open_tun` is lossy_link's: this lab joins its namespaces with veth instead.
#[allow(dead_code)]
#[path = "lossy_link/netns.rs"]
mod netns;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use iotask::IoTask;
use iotask::udp::{DatagramPort, UdpOptions, UdpSocket};
use socket2::SockRef;

use netns::Netns;

const ADDR_A: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
const ADDR_B: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);
const BROADCAST: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 255);
const ADDR6_A: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x78, 0, 0, 0, 0, 0, 1);
const ADDR6_B: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x78, 0, 0, 0, 0, 0, 2);
/// The groups: administratively scoped IPv4, transient site-scoped IPv6 (a scope wider
/// than link-local, so the sender's source address is its ULA one, not `fe80::`).
const GROUP_V4: Ipv4Addr = Ipv4Addr::new(239, 1, 2, 3);
const GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff15, 0, 0, 0, 0, 0, 0, 0x1234);
/// The veth's name in each namespace (each end has it).
const DEVICE: &str = "mc0";
/// The prefix of every namespace this test makes; the rest is `<pid>-<n>-<side>`.
const NETNS_PREFIX: &str = "iotask-mc-";

/// The longest an expected datagram, a send or the lab's link may take.
const WAIT: Duration = Duration::from_secs(5);
/// How long a socket that must receive nothing is watched (after the datagrams it must not
/// get were sent, and after another socket received what was sent with or after them).
const SILENCE: Duration = Duration::from_millis(300);

/// One test at a time: each builds its own pair of namespaces and waits out silences.
static SERIAL: Mutex<()> = Mutex::new(());
/// Numbers the labs of this process, for unique namespace names.
static LABS: AtomicUsize = AtomicUsize::new(0);

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    A,
    B,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn group(self) -> IpAddr {
        match self {
            Family::V4 => GROUP_V4.into(),
            Family::V6 => GROUP_V6.into(),
        }
    }

    fn unspecified(self) -> IpAddr {
        match self {
            Family::V4 => Ipv4Addr::UNSPECIFIED.into(),
            Family::V6 => Ipv6Addr::UNSPECIFIED.into(),
        }
    }

    /// The address of `side`'s end of the veth.
    fn addr(self, side: Side) -> IpAddr {
        match (self, side) {
            (Family::V4, Side::A) => ADDR_A.into(),
            (Family::V4, Side::B) => ADDR_B.into(),
            (Family::V6, Side::A) => ADDR6_A.into(),
            (Family::V6, Side::B) => ADDR6_B.into(),
        }
    }
}

/// Two namespaces joined by a veth pair, an I/O task in each. Dropping it stops the I/O
/// tasks and deletes the namespaces (and with them the veth pair).
struct Lab {
    // Fields drop in this order: the I/O tasks before the namespaces.
    task_a: IoTask,
    task_b: IoTask,
    /// The veth's interface index in each namespace.
    ifindex_a: u32,
    ifindex_b: u32,
    a: Netns,
    b: Netns,
}

impl Lab {
    /// Builds the lab, or returns `None` after saying loudly why this machine cannot (and
    /// panics instead under `CI=true`).
    fn start() -> Option<Lab> {
        match Lab::try_start() {
            Ok(lab) => Some(lab),
            Err(why) => {
                if std::env::var("CI").as_deref() == Ok("true") {
                    panic!("udp_multicast: this machine cannot build the lab under CI: {why}");
                }
                eprintln!(
                    "SKIPPED: udp_multicast needs root, veth and ip (iproute2) to build two \
                     network namespaces: {why}"
                );
                None
            }
        }
    }

    fn try_start() -> Result<Lab, String> {
        netns::remove_stale(NETNS_PREFIX);
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        let a = Netns::add(&netns::unique_name(NETNS_PREFIX, n, "a"))?;
        let b = Netns::add(&netns::unique_name(NETNS_PREFIX, n, "b"))?;
        if netns::initial_netns().is_none() {
            return Err("cannot read /proc/self/ns/net".to_owned());
        }
        // Made inside a with its peer inside b: the pair never exists in the host's
        // namespace, where its name could clash.
        a.ip(&[
            "link",
            "add",
            DEVICE,
            "type",
            "veth",
            "peer",
            "name",
            DEVICE,
            "netns",
            b.name(),
        ])?;
        for (ns, v4, v6) in [(&a, ADDR_A, ADDR6_A), (&b, ADDR_B, ADDR6_B)] {
            ns.ip(&["link", "set", "lo", "up"])?;
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", DEVICE])?;
            // `nodad`: usable at once, not tentative for a second of duplicate detection.
            ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", DEVICE, "nodad"])?;
            ns.ip(&["link", "set", DEVICE, "up"])?;
            ns.ip(&["route", "add", "224.0.0.0/4", "dev", DEVICE])?;
        }
        for ns in [&a, &b] {
            wait_link_up(ns)?;
            // The kernel adds it with the link; without it IPv6 multicast has no way out.
            let local = ip_output(ns, &["-6", "route", "show", "table", "local"])?;
            if !local.contains(&format!("ff00::/8 dev {DEVICE}")) {
                ns.ip(&[
                    "-6",
                    "route",
                    "add",
                    "multicast",
                    "ff00::/8",
                    "dev",
                    DEVICE,
                    "table",
                    "local",
                ])?;
            }
        }
        let ifindex_a = a.run(|| ifindex(DEVICE))?;
        let ifindex_b = b.run(|| ifindex(DEVICE))?;
        let task_a = iotask_in(&a, "iotask-mc-a");
        let task_b = iotask_in(&b, "iotask-mc-b");
        eprintln!(
            "udp_multicast: namespaces {} ({ADDR_A}, {ADDR6_A}, {DEVICE} index {ifindex_a}) \
             and {} ({ADDR_B}, {ADDR6_B}, {DEVICE} index {ifindex_b})",
            a.name(),
            b.name()
        );
        Ok(Lab {
            task_a,
            task_b,
            ifindex_a,
            ifindex_b,
            a,
            b,
        })
    }

    fn ns(&self, side: Side) -> &Netns {
        match side {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }

    fn task(&self, side: Side) -> &IoTask {
        match side {
            Side::A => &self.task_a,
            Side::B => &self.task_b,
        }
    }

    fn ifindex(&self, side: Side) -> u32 {
        match side {
            Side::A => self.ifindex_a,
            Side::B => self.ifindex_b,
        }
    }

    /// A socket bound to `addr` by a thread in `side`'s namespace, served by its I/O task.
    fn bind(&self, side: Side, addr: SocketAddr, options: &UdpOptions) -> UdpSocket {
        self.ns(side).run(|| {
            UdpSocket::bind_with(addr, options, self.task(side))
                .unwrap_or_else(|e| panic!("bind {addr} in namespace {side:?}: {e:?}"))
        })
    }

    /// A socket of `side` bound to the unspecified address and `port` (0: any) with
    /// `SO_REUSEADDR` and `SO_REUSEPORT`, as a group's members are.
    fn bind_member(&self, side: Side, family: Family, port: u16) -> UdpSocket {
        let mut options = UdpOptions::new().reuse_address(true).reuse_port(true);
        if family == Family::V6 {
            options = options.only_v6(true);
        }
        self.bind(side, SocketAddr::new(family.unspecified(), port), &options)
    }

    /// Joins `family`'s group on `side`'s veth.
    fn join(&self, sock: &UdpSocket, side: Side, family: Family) {
        let result = match family {
            Family::V4 => sock.join_multicast_v4(GROUP_V4, v4_addr(side)),
            Family::V6 => sock.join_multicast_v6(GROUP_V6, self.ifindex(side)),
        };
        result.unwrap_or_else(|e| panic!("join {} on {side:?}: {e:?}", family.group()));
    }

    fn leave(&self, sock: &UdpSocket, side: Side, family: Family) {
        let result = match family {
            Family::V4 => sock.leave_multicast_v4(GROUP_V4, v4_addr(side)),
            Family::V6 => sock.leave_multicast_v6(GROUP_V6, self.ifindex(side)),
        };
        result.unwrap_or_else(|e| panic!("leave {} on {side:?}: {e:?}", family.group()));
    }

    /// Sets `IP_MULTICAST_ALL` / `IPV6_MULTICAST_ALL` (Linux; on by default): whether a
    /// socket gets the datagrams of every group some socket of its namespace joined, on its
    /// port, or only those of the groups it joined itself. iotask has no method for it.
    fn set_multicast_all(&self, sock: &UdpSocket, family: Family, on: bool) {
        let sock = SockRef::from(sock);
        match family {
            Family::V4 => sock.set_multicast_all_v4(on),
            Family::V6 => sock.set_multicast_all_v6(on),
        }
        .expect("set IP_MULTICAST_ALL");
    }

    /// Turns off the UDP early demultiplexing of IPv4 in `side`'s namespace
    /// (`net.ipv4.udp_early_demux`), for tests in which exactly one socket of a
    /// `SO_REUSEPORT` group on the group's port is a member.
    ///
    /// On such a datagram the kernel's early demux finds that one member, marks it as a
    /// socket chosen in advance, and `__udp4_lib_rcv` then lets `inet_steal_sock` pick a
    /// socket of the reuseport group by the datagram's hash, without asking whether that
    /// one is a member: the datagram goes to a socket that left (or never joined) instead
    /// of the member, for about half of all sender ports. Seen on Linux 6.18 with plain
    /// sockets too; IPv6's early demux handles unicast only, and a group without
    /// `SO_REUSEPORT` is not affected.
    fn disable_udp_early_demux(&self, side: Side) {
        const SYSCTL: &str = "/proc/sys/net/ipv4/udp_early_demux";
        self.ns(side)
            .run(|| std::fs::write(SYSCTL, "0"))
            .unwrap_or_else(|e| panic!("write 0 to {SYSCTL} in namespace {side:?}: {e}"));
    }

    /// Sends `sock`'s multicast datagrams out of `side`'s veth, with `ttl`.
    fn send_multicast_through(&self, sock: &UdpSocket, side: Side, family: Family, ttl: u32) {
        match family {
            Family::V4 => sock.set_multicast_if_v4(v4_addr(side)),
            Family::V6 => sock.set_multicast_if_v6(self.ifindex(side)),
        }
        .expect("set the multicast interface");
        sock.set_multicast_ttl(ttl).expect("set the multicast TTL");
        assert_eq!(sock.multicast_ttl().expect("multicast TTL"), ttl);
    }
}

/// `side`'s IPv4 address, by which IPv4 joins and `IP_MULTICAST_IF` name the veth.
fn v4_addr(side: Side) -> Ipv4Addr {
    match side {
        Side::A => ADDR_A,
        Side::B => ADDR_B,
    }
}

/// An I/O task whose thread runs in `ns`: spawned by a thread inside it, whose namespace
/// the new thread inherits. Checked through `/proc` before it is used.
fn iotask_in(ns: &Netns, thread_name: &str) -> IoTask {
    let iotask = ns.run(|| {
        IoTask::builder()
            .name(thread_name)
            .drain_timeout(Duration::from_secs(1))
            .spawn()
            .expect("spawn an I/O task")
    });
    let deadline = Instant::now() + WAIT;
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

/// Runs `ip -n <ns> args…` and returns its output.
fn ip_output(ns: &Netns, args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(["-n", ns.name()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip (iproute2): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip -n {} {}: {} {}",
            ns.name(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits until the veth in `ns` is operationally up (`state UP`, which the kernel's link
/// watcher sets after the carrier, `LOWER_UP`, came).
fn wait_link_up(ns: &Netns) -> Result<(), String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let link = ip_output(ns, &["-o", "link", "show", "dev", DEVICE])?;
        if link.contains(" state UP ") {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{DEVICE} in {} is not up: {link}", ns.name()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The index of interface `name` in the calling thread's namespace (call it through
/// [`Netns::run`]).
fn ifindex(name: &str) -> Result<u32, String> {
    let c_name = std::ffi::CString::new(name).unwrap();
    // SAFETY: a valid NUL-terminated string for the whole call.
    match unsafe { libc::if_nametoindex(c_name.as_ptr()) } {
        0 => Err(format!(
            "if_nametoindex({name}): {}",
            std::io::Error::last_os_error()
        )),
        index => Ok(index),
    }
}

/// Datagram `i` of a run tagged `tag`: a header naming it, then a pattern; lengths differ
/// from one datagram to the next.
fn payload(tag: &str, i: usize) -> Vec<u8> {
    let mut data = format!("{tag} #{i:03} ").into_bytes();
    let len = 64 + i * 37 % 1400;
    data.extend((0..len).map(|j| ((i * 31 + j * 7) % 251) as u8));
    data
}

/// Sends `data` to `to`, waiting at most [`WAIT`] for the kernel to take it.
fn send(sock: &UdpSocket, data: Vec<u8>, to: SocketAddr) -> Result<usize, iotask::Error> {
    let len = data.len();
    let mut sent = sock.send_to(data, to);
    let result = sent.get_timeout(WAIT);
    if let Ok(n) = result {
        assert_eq!(n, len, "a datagram sent in part");
    }
    result
}

/// Sends `payload(tag, i)` for each `i` in `0..count` to `to`; returns the payloads.
fn send_run(sock: &UdpSocket, tag: &str, count: usize, to: SocketAddr) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let data = payload(tag, i);
            send(sock, data.clone(), to)
                .unwrap_or_else(|e| panic!("send {tag} #{i} to {to}: {e:?}"));
            data
        })
        .collect()
}

/// Shows a datagram's header for a failure message.
fn head(data: &[u8]) -> String {
    String::from_utf8_lossy(&data[..data.len().min(24)]).into_owned()
}

/// Receives every datagram of `expected` on `port`, each once, whole and byte-exact, each
/// from `from`, waiting at most [`WAIT`] for each; returns whether they came in the order
/// sent. `what` names the receiver in failures.
fn receive_all(port: &DatagramPort, expected: &[Vec<u8>], from: SocketAddr, what: &str) -> bool {
    let index: HashMap<&[u8], usize> = expected
        .iter()
        .enumerate()
        .map(|(i, data)| (data.as_slice(), i))
        .collect();
    let mut seen = vec![false; expected.len()];
    let mut order = Vec::with_capacity(expected.len());
    while order.len() < expected.len() {
        let datagram = port.recv_timeout(WAIT).unwrap_or_else(|e| {
            panic!(
                "{what}: {} of {} datagrams, then {e:?} (missing: {:?})",
                order.len(),
                expected.len(),
                (0..expected.len())
                    .filter(|&i| !seen[i])
                    .collect::<Vec<_>>()
            )
        });
        assert!(!datagram.truncated, "{what}: a datagram was truncated");
        assert_eq!(
            datagram.from,
            from,
            "{what}: {} came from the wrong address",
            head(&datagram.data)
        );
        let Some(&i) = index.get(datagram.data.as_slice()) else {
            panic!(
                "{what}: a datagram that was not sent, or not byte-exact: {} ({} bytes)",
                head(&datagram.data),
                datagram.data.len()
            );
        };
        assert!(!seen[i], "{what}: datagram #{i} came twice");
        seen[i] = true;
        order.push(i);
    }
    order.windows(2).all(|w| w[0] < w[1])
}

/// Receives one datagram on `port`, which must be `expected` from `from`.
fn receive_one(port: &DatagramPort, expected: &[u8], from: SocketAddr, what: &str) {
    receive_all(port, &[expected.to_vec()], from, what);
}

/// Checks that nothing arrives on `port` for [`SILENCE`].
fn assert_silent(port: &DatagramPort, what: &str) {
    match port.recv_timeout(SILENCE) {
        Err(e) if e.is_timeout() => {}
        Err(e) => panic!("{what}: expected silence, got an error: {e:?}"),
        Ok(datagram) => panic!(
            "{what}: expected nothing, got {} ({} bytes) from {}",
            head(&datagram.data),
            datagram.data.len(),
            datagram.from
        ),
    }
}

/// Test 1 and 2: two members of b on one port get all 50 datagrams from a; after one of
/// them leaves, the next 20 reach only the other.
fn two_members_then_one_leaves(family: Family) {
    const FIRST: usize = 50;
    const SECOND: usize = 20;
    let _serial = serial();
    let Some(lab) = Lab::start() else {
        return;
    };
    lab.disable_udp_early_demux(Side::B);
    let leaver = lab.bind_member(Side::B, family, 0);
    let port = leaver.local_addr().expect("local address").port();
    let stayer = lab.bind_member(Side::B, family, port);
    assert_eq!(
        stayer.local_addr().expect("local address"),
        leaver.local_addr().expect("local address")
    );
    // With it on, the member that leaves would still get the group's datagrams while the
    // other one keeps the namespace in the group (see the test after this one).
    lab.set_multicast_all(&leaver, family, false);
    lab.set_multicast_all(&stayer, family, false);
    lab.join(&leaver, Side::B, family);
    lab.join(&stayer, Side::B, family);
    let leaver_port = leaver.recv_start().expect("recv_start");
    let stayer_port = stayer.recv_start().expect("recv_start");

    let sender = lab.bind(
        Side::A,
        SocketAddr::new(family.unspecified(), 0),
        &UdpOptions::new(),
    );
    lab.send_multicast_through(&sender, Side::A, family, 1);
    let from = SocketAddr::new(
        family.addr(Side::A),
        sender.local_addr().expect("local address").port(),
    );
    let group = SocketAddr::new(family.group(), port);

    let started = Instant::now();
    let first = send_run(&sender, &format!("{family:?} both"), FIRST, group);
    let leaver_in_order = receive_all(&leaver_port, &first, from, "the member that will leave");
    let stayer_in_order = receive_all(&stayer_port, &first, from, "the member that stays");
    let both_took = started.elapsed();

    lab.leave(&leaver, Side::B, family);
    let started = Instant::now();
    let second = send_run(&sender, &format!("{family:?} after leave"), SECOND, group);
    let stayer_in_order_after = receive_all(
        &stayer_port,
        &second,
        from,
        "the member that stays, after the leave",
    );
    let stayer_took = started.elapsed();
    assert_silent(&leaver_port, "the member that left");
    assert_silent(&stayer_port, "the member that stays, after its datagrams");
    assert_eq!(
        leaver.dropped() + stayer.dropped(),
        0,
        "iotask dropped datagrams"
    );

    eprintln!(
        "udp_multicast: {family:?} {group} from {from}: {FIRST} datagrams ({} bytes) to 2 \
         members on one port in {both_took:?} (in order: {leaver_in_order}, \
         {stayer_in_order}); after one left, {SECOND} to the other in {stayer_took:?} (in \
         order: {stayer_in_order_after}), the one that left silent for {SILENCE:?}",
        first.iter().map(Vec::len).sum::<usize>()
    );
}

#[test]
fn ipv4_two_members_on_one_port_get_every_datagram_and_one_that_leaves_gets_no_more() {
    two_members_then_one_leaves(Family::V4);
}

#[test]
fn ipv6_two_members_on_one_port_get_every_datagram_and_one_that_leaves_gets_no_more() {
    two_members_then_one_leaves(Family::V6);
}

/// Linux delivers a group's datagrams to every socket bound to their port while the
/// namespace is a member, joined or not, unless the socket turned `IP_MULTICAST_ALL` /
/// `IPV6_MULTICAST_ALL` off: what `leave_multicast_*` cannot undo while another socket keeps
/// the membership.
fn a_bystander_gets_the_group_until_multicast_all_is_off(family: Family) {
    let _serial = serial();
    let Some(lab) = Lab::start() else {
        return;
    };
    lab.disable_udp_early_demux(Side::B);
    let member = lab.bind_member(Side::B, family, 0);
    let port = member.local_addr().expect("local address").port();
    lab.join(&member, Side::B, family);
    let bystander = lab.bind_member(Side::B, family, port);
    let member_port = member.recv_start().expect("recv_start");
    let bystander_port = bystander.recv_start().expect("recv_start");
    let sender = lab.bind(
        Side::A,
        SocketAddr::new(family.unspecified(), 0),
        &UdpOptions::new(),
    );
    lab.send_multicast_through(&sender, Side::A, family, 1);
    let from = SocketAddr::new(
        family.addr(Side::A),
        sender.local_addr().expect("local address").port(),
    );
    let group = SocketAddr::new(family.group(), port);

    let all_on = payload(&format!("{family:?} multicast_all on"), 0);
    send(&sender, all_on.clone(), group).expect("send");
    receive_one(&member_port, &all_on, from, "the member (first)");
    receive_one(
        &bystander_port,
        &all_on,
        from,
        "the bystander (multicast_all on)",
    );

    lab.set_multicast_all(&bystander, family, false);
    let all_off = payload(&format!("{family:?} multicast_all off"), 1);
    send(&sender, all_off.clone(), group).expect("send");
    receive_one(&member_port, &all_off, from, "the member (second)");
    assert_silent(&bystander_port, "the bystander (multicast_all off)");
    eprintln!(
        "udp_multicast: {family:?} {group}: a socket on the port that never joined got the \
         group's datagram with multicast_all on (the default), and none within {SILENCE:?} \
         with it off"
    );
}

#[test]
fn ipv4_a_socket_on_the_port_that_never_joined_gets_the_group_until_multicast_all_is_off() {
    a_bystander_gets_the_group_until_multicast_all_is_off(Family::V4);
}

#[test]
fn ipv6_a_socket_on_the_port_that_never_joined_gets_the_group_until_multicast_all_is_off() {
    a_bystander_gets_the_group_until_multicast_all_is_off(Family::V6);
}

/// Test 3: a member of b that sends to its group gets its own datagram back only with
/// `multicast_loop` on; a member in a gets both (so the one not looped back was sent).
fn multicast_loop(family: Family) {
    let _serial = serial();
    let Some(lab) = Lab::start() else {
        return;
    };
    let member = lab.bind_member(Side::B, family, 0);
    let port = member.local_addr().expect("local address").port();
    lab.join(&member, Side::B, family);
    lab.send_multicast_through(&member, Side::B, family, 1);
    let watcher = lab.bind_member(Side::A, family, port);
    lab.join(&watcher, Side::A, family);
    let member_port = member.recv_start().expect("recv_start");
    let watcher_port = watcher.recv_start().expect("recv_start");
    let group = SocketAddr::new(family.group(), port);
    let from = SocketAddr::new(family.addr(Side::B), port);

    assert!(
        member.multicast_loop().expect("multicast_loop"),
        "loop is on by default"
    );
    member.set_multicast_loop(false).expect("loop off");
    assert!(!member.multicast_loop().expect("multicast_loop"));
    let off = payload(&format!("{family:?} loop off"), 0);
    send(&member, off.clone(), group).expect("send with loop off");
    receive_one(
        &watcher_port,
        &off,
        from,
        "the member across the link (loop off)",
    );
    assert_silent(&member_port, "the sending member with loop off");

    member.set_multicast_loop(true).expect("loop on");
    let on = payload(&format!("{family:?} loop on"), 1);
    send(&member, on.clone(), group).expect("send with loop on");
    receive_one(&member_port, &on, from, "the sending member with loop on");
    receive_one(
        &watcher_port,
        &on,
        from,
        "the member across the link (loop on)",
    );
    assert_silent(&member_port, "the sending member after its own datagram");
    assert_silent(
        &watcher_port,
        "the member across the link after two datagrams",
    );
    eprintln!(
        "udp_multicast: {family:?} {group}: loop off, own datagram not received within \
         {SILENCE:?} (the peer got it); loop on, received"
    );
}

#[test]
fn ipv4_a_sending_member_gets_its_own_datagram_only_with_multicast_loop_on() {
    multicast_loop(Family::V4);
}

#[test]
fn ipv6_a_sending_member_gets_its_own_datagram_only_with_multicast_loop_on() {
    multicast_loop(Family::V6);
}

/// Test 4: with multicast TTL 0 a datagram reaches a member on the sender's host (loop
/// on) and not the link; with TTL 1 it crosses.
fn multicast_ttl(family: Family) {
    let _serial = serial();
    let Some(lab) = Lab::start() else {
        return;
    };
    let remote = lab.bind_member(Side::B, family, 0);
    let port = remote.local_addr().expect("local address").port();
    lab.join(&remote, Side::B, family);
    let local = lab.bind_member(Side::A, family, port);
    lab.join(&local, Side::A, family);
    let remote_port = remote.recv_start().expect("recv_start");
    let local_port = local.recv_start().expect("recv_start");

    let sender = lab.bind(
        Side::A,
        SocketAddr::new(family.unspecified(), 0),
        &UdpOptions::new(),
    );
    let from = SocketAddr::new(
        family.addr(Side::A),
        sender.local_addr().expect("local address").port(),
    );
    let group = SocketAddr::new(family.group(), port);

    lab.send_multicast_through(&sender, Side::A, family, 0);
    let ttl0 = payload(&format!("{family:?} ttl 0"), 0);
    send(&sender, ttl0.clone(), group).expect("send with TTL 0");
    receive_one(
        &local_port,
        &ttl0,
        from,
        "the sender's host's member (TTL 0)",
    );
    assert_silent(&remote_port, "the member across the link (TTL 0)");

    lab.send_multicast_through(&sender, Side::A, family, 1);
    let ttl1 = payload(&format!("{family:?} ttl 1"), 1);
    send(&sender, ttl1.clone(), group).expect("send with TTL 1");
    receive_one(
        &remote_port,
        &ttl1,
        from,
        "the member across the link (TTL 1)",
    );
    receive_one(
        &local_port,
        &ttl1,
        from,
        "the sender's host's member (TTL 1)",
    );
    assert_silent(&remote_port, "the member across the link after TTL 1");
    eprintln!(
        "udp_multicast: {family:?} {group}: TTL 0 reached the local member only (the link \
         silent for {SILENCE:?}), TTL 1 crossed"
    );
}

#[test]
fn ipv4_multicast_ttl_0_stays_on_the_host_and_ttl_1_crosses_the_link() {
    multicast_ttl(Family::V4);
}

#[test]
fn ipv6_multicast_hops_0_stay_on_the_host_and_1_crosses_the_link() {
    multicast_ttl(Family::V6);
}

/// Test 5: broadcast needs `SO_BROADCAST`.
#[test]
fn broadcast_fails_with_eacces_without_so_broadcast_and_arrives_with_it() {
    let _serial = serial();
    let Some(lab) = Lab::start() else {
        return;
    };
    let receiver = lab.bind(
        Side::B,
        SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
        &UdpOptions::new(),
    );
    let receiver_port = receiver.recv_start().expect("recv_start");
    let to = SocketAddr::new(
        BROADCAST.into(),
        receiver.local_addr().expect("local address").port(),
    );

    let sender = lab.bind(
        Side::A,
        SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
        &UdpOptions::new(),
    );
    let from = SocketAddr::new(
        ADDR_A.into(),
        sender.local_addr().expect("local address").port(),
    );
    assert!(!sender.broadcast().expect("broadcast"), "off by default");
    let refused = payload("broadcast refused", 0);
    match send(&sender, refused, to) {
        Err(e) if e.name() == "EACCES" => {}
        other => panic!("a broadcast without SO_BROADCAST: expected EACCES, got {other:?}"),
    }
    sender.set_broadcast(true).expect("set_broadcast");
    assert!(sender.broadcast().expect("broadcast"));
    let allowed = payload("broadcast allowed", 1);
    send(&sender, allowed.clone(), to).expect("a broadcast with SO_BROADCAST");
    // The first datagram to arrive must be this one: the refused one was not sent.
    receive_one(&receiver_port, &allowed, from, "the receiver in b");

    // The same, with the option set before binding.
    let preset = lab.bind(
        Side::A,
        SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
        &UdpOptions::new().broadcast(true),
    );
    assert!(preset.broadcast().expect("broadcast"));
    let preset_from = SocketAddr::new(
        ADDR_A.into(),
        preset.local_addr().expect("local address").port(),
    );
    let by_options = payload("broadcast by options", 2);
    send(&preset, by_options.clone(), to).expect("a broadcast with UdpOptions::broadcast");
    receive_one(
        &receiver_port,
        &by_options,
        preset_from,
        "the receiver in b",
    );
    assert_silent(&receiver_port, "the receiver in b after two broadcasts");
    eprintln!(
        "udp_multicast: broadcast to {to}: EACCES without SO_BROADCAST, received with it \
         (set_broadcast and UdpOptions::broadcast)"
    );
}
