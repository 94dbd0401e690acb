//! The impaired link: two threads, one per direction, read IP packets from one TUN device
//! and write them into the other, after deciding each packet's fate with a seeded random
//! number generator: lost, delayed (with jitter), held back so that later packets overtake
//! it, or duplicated. The link can also be blacked out for a while, or cut for good.
//!
//! The kernel's `netem` queueing discipline does this on machines that have it; this one
//! has not, so the test does it in user space. Packet fates are a function of the seed and
//! of the packet's number in its direction; what the packets are depends on timing, so a
//! run is repeatable in its impairment, not bit for bit.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the link does to each packet, in each direction independently.
#[derive(Debug, Clone, Copy)]
pub struct Impairment {
    /// The fraction of packets dropped.
    pub loss: f64,
    /// The one-way delay of every packet.
    pub delay: Duration,
    /// Each packet's delay varies uniformly by up to this much either way. Jitter alone does
    /// not reorder: a packet never leaves before the one read before it (except below).
    pub jitter: Duration,
    /// The fraction of packets held back by up to `hold_back` more, so that the packets
    /// behind them overtake them.
    pub reorder: f64,
    /// The longest extra delay of a reordered packet.
    pub hold_back: Duration,
    /// The fraction of packets delivered twice (the copy up to 1 ms after the original).
    pub duplicate: f64,
}

/// Counts of what happened to the packets of one direction.
#[derive(Debug, Default)]
pub struct Counters {
    /// Packets read from the sending side's device.
    pub read: AtomicU64,
    /// Packets written into the receiving side's device (copies included).
    pub delivered: AtomicU64,
    /// Packets dropped as random loss.
    pub lost: AtomicU64,
    /// Packets held back to be overtaken.
    pub reordered: AtomicU64,
    /// Extra copies made.
    pub duplicated: AtomicU64,
    /// Packets dropped because the link was blacked out or cut.
    pub dark: AtomicU64,
    /// Writes into the receiving device that failed (the packet is lost).
    pub write_errors: AtomicU64,
}

/// A plain copy of [`Counters`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    pub read: u64,
    pub delivered: u64,
    pub lost: u64,
    pub reordered: u64,
    pub duplicated: u64,
    pub dark: u64,
    pub write_errors: u64,
}

impl Counters {
    fn snapshot(&self) -> Snapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            read: get(&self.read),
            delivered: get(&self.delivered),
            lost: get(&self.lost),
            reordered: get(&self.reordered),
            duplicated: get(&self.duplicated),
            dark: get(&self.dark),
            write_errors: get(&self.write_errors),
        }
    }
}

/// What the test can change while the link runs.
#[derive(Debug, Default)]
struct Control {
    stop: AtomicBool,
    cut: AtomicBool,
    /// While `Some(t)` and `t` is in the future, nothing crosses.
    dark_until: Mutex<Option<Instant>>,
}

impl Control {
    fn is_down(&self, now: Instant) -> bool {
        self.cut.load(Ordering::Relaxed) || lock(&self.dark_until).is_some_and(|until| now < until)
    }
}

/// A running forwarder between two TUN devices; stops its threads when dropped.
#[derive(Debug)]
pub struct Link {
    control: Arc<Control>,
    /// `[a_to_b, b_to_a]`.
    counters: [Arc<Counters>; 2],
    threads: Vec<JoinHandle<()>>,
}

impl Link {
    /// Starts forwarding between the devices `a` and `b` (non-blocking descriptors).
    pub fn start(a: OwnedFd, b: OwnedFd, impairment: Impairment, seed: u64) -> Link {
        let control = Arc::new(Control::default());
        let a = Arc::new(a);
        let b = Arc::new(b);
        let counters = [Arc::new(Counters::default()), Arc::new(Counters::default())];
        let directions = [
            ("lossy a->b", a.clone(), b.clone(), seed),
            ("lossy b->a", b, a, seed ^ 0x5DEE_CE66_D1CE_B00C),
        ];
        let threads = directions
            .into_iter()
            .zip(counters.iter().cloned())
            .map(|((name, from, to, seed), counters)| {
                let direction = Direction {
                    from,
                    to,
                    impairment,
                    rng: Rng::new(seed),
                    control: control.clone(),
                    counters,
                };
                std::thread::Builder::new()
                    .name(name.to_owned())
                    .spawn(move || direction.run())
                    .expect("spawn a forwarder thread")
            })
            .collect();
        Link {
            control,
            counters,
            threads,
        }
    }

    /// Drops every packet, both ways, for `length` from now; returns when it ends.
    pub fn black_out(&self, length: Duration) -> Instant {
        let until = Instant::now() + length;
        *lock(&self.control.dark_until) = Some(until);
        until
    }

    /// Drops every packet, both ways, from now on.
    pub fn cut(&self) {
        self.control.cut.store(true, Ordering::Relaxed);
    }

    /// What happened so far, `[a_to_b, b_to_a]`.
    pub fn counters(&self) -> [Snapshot; 2] {
        [self.counters[0].snapshot(), self.counters[1].snapshot()]
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.control.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            // A forwarder that panicked has already printed why; the test's own checks
            // report what it broke.
            let _ = thread.join();
        }
    }
}

/// A packet waiting for its time, ordered by that time, then by arrival.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Pending {
    due: Instant,
    seq: u64,
    packet: Vec<u8>,
}

/// One direction of the link.
struct Direction {
    from: Arc<OwnedFd>,
    to: Arc<OwnedFd>,
    impairment: Impairment,
    rng: Rng,
    control: Arc<Control>,
    counters: Arc<Counters>,
}

/// How long the forwarder sleeps at most, so that it notices `stop`.
const IDLE: Duration = Duration::from_millis(20);

impl Direction {
    fn run(mut self) {
        let mut queue: BinaryHeap<Reverse<Pending>> = BinaryHeap::new();
        let mut seq = 0u64;
        // No packet in order leaves before this: jitter alone does not reorder.
        let mut in_order_floor = Instant::now();
        let mut buf = vec![0u8; 65536];
        while !self.control.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            while queue.peek().is_some_and(|p| p.0.due <= now) {
                let Reverse(p) = queue.pop().expect("peeked");
                if self.control.is_down(now) {
                    self.count(|c| &c.dark);
                } else {
                    self.deliver(&p.packet);
                }
            }
            let wait = queue
                .peek()
                .map_or(IDLE, |p| p.0.due.saturating_duration_since(now))
                .min(IDLE);
            if !wait_readable(&self.from, wait) {
                continue;
            }
            let now = Instant::now();
            loop {
                // SAFETY: `buf` is writable for its whole length; the descriptor is open.
                let n = unsafe {
                    libc::read(self.from.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
                };
                if n <= 0 {
                    // EAGAIN: nothing more for now. Other errors: try again next turn.
                    break;
                }
                self.count(|c| &c.read);
                let packet = &buf[..n as usize];
                if self.control.is_down(now) {
                    self.count(|c| &c.dark);
                    continue;
                }
                if self.rng.chance(self.impairment.loss) {
                    self.count(|c| &c.lost);
                    continue;
                }
                let mut due = (now + self.jittered_delay()).max(in_order_floor);
                if self.rng.chance(self.impairment.reorder) {
                    due += self.rng.up_to(self.impairment.hold_back);
                    self.count(|c| &c.reordered);
                } else {
                    in_order_floor = due;
                }
                if self.rng.chance(self.impairment.duplicate) {
                    self.count(|c| &c.duplicated);
                    seq += 1;
                    queue.push(Reverse(Pending {
                        due: due + self.rng.up_to(Duration::from_millis(1)),
                        seq,
                        packet: packet.to_vec(),
                    }));
                }
                seq += 1;
                queue.push(Reverse(Pending {
                    due,
                    seq,
                    packet: packet.to_vec(),
                }));
            }
        }
    }

    fn jittered_delay(&mut self) -> Duration {
        let base = self.impairment.delay;
        let jitter = self.impairment.jitter;
        if jitter.is_zero() {
            return base;
        }
        let offset = self.rng.up_to(jitter * 2);
        (base + offset).saturating_sub(jitter)
    }

    fn deliver(&self, packet: &[u8]) {
        // SAFETY: `packet` is readable for its whole length; the descriptor is open.
        let n = unsafe { libc::write(self.to.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
        if n == packet.len() as isize {
            self.count(|c| &c.delivered);
        } else {
            self.count(|c| &c.write_errors);
        }
    }

    fn count(&self, which: impl FnOnce(&Counters) -> &AtomicU64) {
        which(&self.counters).fetch_add(1, Ordering::Relaxed);
    }
}

/// Waits up to `timeout` for `fd` to be readable.
fn wait_readable(fd: &OwnedFd, timeout: Duration) -> bool {
    let mut pollfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one valid `pollfd` and a valid timeout for the whole call; no signal mask.
    let rc = unsafe { libc::ppoll(&mut pollfd, 1, &ts, std::ptr::null()) };
    rc > 0 && pollfd.revents & libc::POLLIN != 0
}

/// SplitMix64: small, fast, and the same sequence for the same seed everywhere.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// A duration uniformly in `[0, max]`.
    pub fn up_to(&mut self, max: Duration) -> Duration {
        let nanos = max.as_nanos() as u64;
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.next_u64() % (nanos + 1))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
