//! Scenarios S1–S7, S2U, S2P, U1 and U1x50, the two CPU layouts, and one measurement of one
//! peer.

use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::child::ServerChild;
use crate::load::{self, ChurnLoad, DatagramLoad, Pattern, Stop, StreamLoad};
use crate::servers::{Peer, Transport};
use crate::sys::{self, ProcSample};
use crate::syscalls::{self, SyscallCount};

/// A benchmark scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scenario {
    /// 1 connection, 64 B ping-pong: latency.
    S1,
    /// 50 connections, 64 B, closed loop: messages/s.
    S2,
    /// S2 over a Unix-domain socket (only the peers that serve one).
    S2U,
    /// S2 through a proxy (only the proxy peers) in front of tokio-ct's echo server.
    S2P,
    /// 10 connections, 16 KiB messages, 4 in flight: MB/s.
    S3,
    /// One stream of 1 GiB: MB/s.
    S4,
    /// Connection churn (connect, one echo, close): connections/s.
    S5,
    /// 10,000 idle connections: resident memory per connection.
    S6,
    /// 1,000 connections, 64 B, closed loop: messages/s.
    S7,
    /// UDP echo, 1 client socket, 64 B datagrams, one in flight: datagrams/s.
    U1,
    /// UDP echo, 50 client sockets, 64 B datagrams, one in flight each: datagrams/s.
    U1x50,
}

/// What a scenario's headline figure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Headline {
    /// Median latency, µs (lower is better).
    P50,
    /// Messages per second.
    MsgsPerS,
    /// Megabytes (10^6) echoed per second.
    MbPerS,
    /// Connections per second.
    ConnsPerS,
    /// KiB of resident memory per connection (lower is better).
    KibPerConn,
}

impl Headline {
    /// Whether a smaller figure is better.
    pub fn lower_is_better(self) -> bool {
        matches!(self, Headline::P50 | Headline::KibPerConn)
    }

    /// The unit shown in tables.
    pub fn label(self) -> &'static str {
        match self {
            Headline::P50 => "p50 µs",
            Headline::MsgsPerS => "msg/s",
            Headline::MbPerS => "MB/s",
            Headline::ConnsPerS => "conn/s",
            Headline::KibPerConn => "KiB/conn",
        }
    }

    /// Picks the headline figure out of a measurement.
    pub fn value(self, m: &Metrics) -> Option<f64> {
        match self {
            Headline::P50 => m.p50_us,
            Headline::MsgsPerS => m.msgs_per_s,
            Headline::MbPerS => m.mb_per_s,
            Headline::ConnsPerS => m.conns_per_s,
            Headline::KibPerConn => m.kib_per_conn,
        }
    }
}

impl Scenario {
    /// Every scenario, in order.
    pub const ALL: [Scenario; 11] = [
        Scenario::S1,
        Scenario::S2,
        Scenario::S2U,
        Scenario::S2P,
        Scenario::S3,
        Scenario::S4,
        Scenario::S5,
        Scenario::S6,
        Scenario::S7,
        Scenario::U1,
        Scenario::U1x50,
    ];

    /// What the scenario does, with the sizes in force.
    pub fn title(self, s: &Settings) -> String {
        match self {
            Scenario::S1 => "1 connection, 64 B ping-pong".into(),
            Scenario::S2 => "50 connections, 64 B, closed loop".into(),
            Scenario::S2U => "50 connections over a Unix-domain socket, 64 B, closed loop".into(),
            Scenario::S2P => {
                "50 connections through a proxy to an echo server, 64 B, closed loop".into()
            }
            Scenario::S3 => "10 connections, 16 KiB messages, 4 in flight each".into(),
            Scenario::S4 => format!(
                "one stream of {} MiB (64 KiB messages, 16 in flight)",
                s.s4_bytes >> 20
            ),
            Scenario::S5 => format!(
                "connection churn: connect, one 64 B echo, close ({} at a time)",
                s.s5_concurrency
            ),
            Scenario::S6 => format!("{} idle connections (one 16 B echo each)", s.s6_conns),
            Scenario::S7 => format!("{} connections, 64 B, closed loop", s.s7_conns),
            Scenario::U1 => "UDP echo, 1 client socket, 64 B datagrams ping-pong".into(),
            Scenario::U1x50 => {
                "UDP echo, 50 client sockets, 64 B datagrams, one in flight each".into()
            }
        }
    }

    /// The figure the scenario is judged by.
    pub fn headline(self) -> Headline {
        match self {
            Scenario::S1 => Headline::P50,
            Scenario::S2
            | Scenario::S2U
            | Scenario::S2P
            | Scenario::S7
            | Scenario::U1
            | Scenario::U1x50 => Headline::MsgsPerS,
            Scenario::S3 | Scenario::S4 => Headline::MbPerS,
            Scenario::S5 => Headline::ConnsPerS,
            Scenario::S6 => Headline::KibPerConn,
        }
    }

    /// What the load generator connects over.
    pub fn transport(self) -> Transport {
        match self {
            Scenario::S2U => Transport::Unix,
            Scenario::S2P => Transport::Proxied,
            Scenario::U1 | Scenario::U1x50 => Transport::Udp,
            _ => Transport::Tcp,
        }
    }

    /// Whether the harness counts the servers' system calls in this scenario (when asked).
    pub fn counts_syscalls(self) -> bool {
        matches!(self, Scenario::S1 | Scenario::S2 | Scenario::S2U)
    }

    /// The peer ratios are taken against.
    pub fn reference(self) -> Peer {
        match self {
            Scenario::S4 => Peer::StdThreads,
            Scenario::S2P => Peer::TokioProxy,
            _ => Peer::TokioCt,
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

impl FromStr for Scenario {
    type Err = String;

    fn from_str(s: &str) -> Result<Scenario, String> {
        Scenario::ALL
            .into_iter()
            .find(|x| x.to_string().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown scenario {s:?}; known: S1 … S7, S2U, S2P, U1, U1x50"))
    }
}

/// Where the server and the load generator run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Layout {
    /// Server on CPU 1, load generator on CPU 0.
    Pinned,
    /// Wherever the scheduler puts them.
    Unpinned,
}

impl Layout {
    /// The CPU of the server and of the load generator.
    pub fn cpus(self) -> (Option<usize>, Option<usize>) {
        match self {
            Layout::Pinned => (Some(1), Some(0)),
            Layout::Unpinned => (None, None),
        }
    }

    /// Name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Pinned => "pinned",
            Layout::Unpinned => "unpinned",
        }
    }
}

/// Sizes and durations of a run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Whether these are the `--quick` sizes.
    pub quick: bool,
    /// Rounds per scenario (each round measures every peer once).
    pub rounds: usize,
    /// Warm-up before each measured window.
    pub warmup: Duration,
    /// Measured window of the timed scenarios.
    pub duration: Duration,
    /// Bytes streamed in S4.
    pub s4_bytes: u64,
    /// The longest one S4 measurement may take.
    pub s4_cap: Duration,
    /// Connections opened at a time in S5.
    pub s5_concurrency: usize,
    /// Idle connections in S6.
    pub s6_conns: usize,
    /// Connections in S7.
    pub s7_conns: usize,
    /// Window of each syscall count in S2.
    pub syscall_window: Duration,
}

impl Settings {
    /// The full run (about 11–12 minutes for every peer, scenario and layout on 2 cores).
    pub fn full() -> Settings {
        Settings {
            quick: false,
            rounds: 3,
            warmup: Duration::from_millis(300),
            duration: Duration::from_secs(2),
            s4_bytes: 1 << 30,
            s4_cap: Duration::from_secs(20),
            s5_concurrency: 16,
            s6_conns: 10_000,
            s7_conns: 1_000,
            syscall_window: Duration::from_secs(1),
        }
    }

    /// The quick run (a minute or two).
    pub fn quick() -> Settings {
        Settings {
            quick: true,
            rounds: 2,
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(400),
            s4_bytes: 128 << 20,
            s4_cap: Duration::from_secs(10),
            s5_concurrency: 16,
            s6_conns: 2_000,
            s7_conns: 1_000,
            syscall_window: Duration::from_millis(500),
        }
    }
}

/// The figures of one measurement; absent ones do not apply to the scenario.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// Messages echoed per second.
    pub msgs_per_s: Option<f64>,
    /// Megabytes (10^6) echoed per second, one direction.
    pub mb_per_s: Option<f64>,
    /// Median round trip, µs.
    pub p50_us: Option<f64>,
    /// 99th percentile round trip, µs.
    pub p99_us: Option<f64>,
    /// 99.9th percentile round trip, µs.
    pub p999_us: Option<f64>,
    /// Connections completed per second (S5).
    pub conns_per_s: Option<f64>,
    /// Resident memory added per idle connection, KiB (S6).
    pub kib_per_conn: Option<f64>,
    /// Server resident memory at the end, MiB.
    pub rss_mib: Option<f64>,
    /// Server CPU time over wall time, percent (100 = one core busy).
    pub cpu_pct: Option<f64>,
    /// Server CPU time per message (or per connection in S5), µs.
    pub cpu_us_per_op: Option<f64>,
    /// Server context switches per message (or per connection in S5).
    pub ctx_per_op: Option<f64>,
    /// Datagrams given up as lost, percent of those sent (U1, U1x50).
    pub lost_pct: Option<f64>,
    /// Server threads at the end.
    pub threads: Option<f64>,
    /// The load generator's CPU time over wall time, percent: near 100 means the load
    /// generator, not the server, set the pace.
    pub load_cpu_pct: Option<f64>,
}

impl Metrics {
    /// Fills in the server figures from two samples over `wall`, for `ops` operations.
    fn server(&mut self, samples: Option<(ProcSample, ProcSample)>, wall: Duration, ops: u64) {
        let Some((before, after)) = samples else {
            return;
        };
        let cpu = after.cpu.saturating_sub(before.cpu).as_secs_f64();
        self.cpu_pct = Some(100.0 * cpu / wall.as_secs_f64().max(1e-9));
        self.rss_mib = Some(after.rss_kib as f64 / 1024.0);
        self.threads = Some(after.threads as f64);
        if ops > 0 {
            self.cpu_us_per_op = Some(cpu * 1e6 / ops as f64);
            let ctx = after.ctx_switches.saturating_sub(before.ctx_switches);
            self.ctx_per_op = Some(ctx as f64 / ops as f64);
        }
    }
}

/// Runs `f` on a new thread pinned to `cpu` (or on any CPU) and returns its result.
fn on_load_thread<T: Send + 'static>(
    cpu: Option<usize>,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    std::thread::Builder::new()
        .name("load".into())
        .spawn(move || {
            sys::pin_current_thread(cpu)?;
            f()
        })?
        .join()
        .map_err(|_| io::Error::other("the load generator panicked"))?
}

/// How long a client socket of U1 or U1x50 waits for an echo before it counts its datagram
/// lost and sends the next: far beyond any round trip on loopback, short enough that a loss
/// costs the socket little of a measured window.
pub const LOSS_TIMEOUT: Duration = Duration::from_millis(200);

/// Starts a fresh server for `peer` and measures `scenario` once.
pub fn measure(
    peer: Peer,
    scenario: Scenario,
    layout: Layout,
    s: &Settings,
) -> io::Result<Metrics> {
    let (server_cpu, load_cpu) = layout.cpus();
    // Through a proxy, the figures (CPU, memory, context switches) are the proxy's; the
    // upstream shares its CPU and lives until the measurement ends.
    let (server, _upstream) = match scenario.transport() {
        Transport::Proxied => {
            let upstream = ServerChild::echo(Peer::TokioCt, Transport::Tcp, server_cpu)?;
            let proxy = ServerChild::proxy(peer, upstream.target.tcp()?, server_cpu)?;
            (proxy, Some(upstream))
        }
        transport => (ServerChild::echo(peer, transport, server_cpu)?, None),
    };
    let (target, pid) = (server.target.clone(), server.pid());
    let stream =
        |conns: usize, msg_size: usize, depth: usize, stop: Stop, warmup: Duration| StreamLoad {
            conns,
            msg_size,
            depth,
            warmup,
            stop,
            progress: None,
        };
    let timed = Stop::After(s.duration);
    let load = match scenario {
        Scenario::S1 => stream(1, 64, 1, timed, s.warmup),
        Scenario::S2 | Scenario::S2U | Scenario::S2P => stream(50, 64, 1, timed, s.warmup),
        Scenario::S3 => stream(10, 16 * 1024, 4, timed, s.warmup),
        Scenario::S4 => stream(
            1,
            64 * 1024,
            16,
            Stop::Bytes {
                total: s.s4_bytes,
                cap: s.s4_cap,
            },
            Duration::ZERO,
        ),
        Scenario::S7 => stream(s.s7_conns, 64, 1, timed, s.warmup),
        Scenario::S5 => {
            let churn = ChurnLoad {
                concurrency: s.s5_concurrency,
                msg_size: 64,
                warmup: s.warmup,
                duration: s.duration,
            };
            let addr = target.tcp()?;
            let mut r = on_load_thread(load_cpu, move || load::run_churn(addr, &churn, Some(pid)))?;
            let secs = r.elapsed.as_secs_f64();
            let mut m = Metrics {
                conns_per_s: Some(r.conns as f64 / secs),
                p50_us: r.latencies.quantile_us(0.5),
                p99_us: r.latencies.quantile_us(0.99),
                p999_us: r.latencies.quantile_us(0.999),
                ..Metrics::default()
            };
            m.load_cpu_pct = Some(100.0 * r.load_cpu.as_secs_f64() / secs.max(1e-9));
            if r.port_retries > 0 {
                eprintln!(
                    "  note: {} connects waited for a free local port",
                    r.port_retries
                );
            }
            m.server(r.server, r.elapsed, r.conns);
            return Ok(m);
        }
        Scenario::S6 => {
            let (addr, n) = (target.tcp()?, s.s6_conns);
            return on_load_thread(load_cpu, move || idle(addr, pid, n));
        }
        Scenario::U1 | Scenario::U1x50 => {
            let load = DatagramLoad {
                sockets: if scenario == Scenario::U1 { 1 } else { 50 },
                size: 64,
                warmup: s.warmup,
                duration: s.duration,
                loss_timeout: LOSS_TIMEOUT,
            };
            let addr = target.udp()?;
            let mut r = on_load_thread(load_cpu, move || {
                load::run_datagrams(addr, &load, Some(pid))
            })?;
            let secs = r.elapsed.as_secs_f64().max(1e-9);
            let sent = r.datagrams + r.lost;
            let mut m = Metrics {
                msgs_per_s: Some(r.datagrams as f64 / secs),
                p50_us: r.latencies.quantile_us(0.5),
                p99_us: r.latencies.quantile_us(0.99),
                p999_us: r.latencies.quantile_us(0.999),
                lost_pct: (sent > 0).then(|| 100.0 * r.lost as f64 / sent as f64),
                load_cpu_pct: Some(100.0 * r.load_cpu.as_secs_f64() / secs),
                ..Metrics::default()
            };
            if r.late > 0 {
                eprintln!(
                    "  note: {} echoes came after their datagram was given up",
                    r.late
                );
            }
            m.server(r.server, r.elapsed, r.datagrams);
            return Ok(m);
        }
    };
    let mut r = on_load_thread(load_cpu, move || {
        load::run_stream(&target, &load, Some(pid))
    })?;
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    let mut m = Metrics {
        msgs_per_s: Some(r.msgs as f64 / secs),
        mb_per_s: Some(r.bytes as f64 / secs / 1e6),
        p50_us: r.latencies.quantile_us(0.5),
        p99_us: r.latencies.quantile_us(0.99),
        p999_us: r.latencies.quantile_us(0.999),
        load_cpu_pct: Some(100.0 * r.load_cpu.as_secs_f64() / secs),
        ..Metrics::default()
    };
    m.server(r.server, r.elapsed, r.msgs);
    drop(server);
    Ok(m)
}

/// S6: opens `n` connections, echoes once on each, lets them sit, and weighs the server.
fn idle(addr: std::net::SocketAddr, pid: u32, n: usize) -> io::Result<Metrics> {
    // Let the server finish starting before taking the baseline.
    std::thread::sleep(Duration::from_millis(100));
    let before = ProcSample::rss_kib(pid)?;
    let conns = load::connect_primed(addr, n, 0, &Pattern::new())?;
    std::thread::sleep(Duration::from_millis(300));
    let sample = ProcSample::read(pid)?;
    drop(conns);
    let added = sample.rss_kib.saturating_sub(before) as f64;
    Ok(Metrics {
        kib_per_conn: Some(added / n as f64),
        rss_mib: Some(sample.rss_kib as f64 / 1024.0),
        threads: Some(sample.threads as f64),
        conns_per_s: None,
        ..Metrics::default()
    })
}

/// The system-call counts of one peer under S1's, S2's or S2U's load.
#[derive(Debug, Clone, Default)]
pub struct SyscallReport {
    /// From `perf stat` (preferred: it barely slows the server).
    pub perf: Option<SyscallCount>,
    /// From `strace -c -f`, when perf could not count (the server runs slower under it).
    pub strace: Option<SyscallCount>,
}

impl SyscallReport {
    /// The counts and the tool that made them.
    pub fn best(&self) -> Option<(&'static str, &SyscallCount)> {
        match (&self.perf, &self.strace) {
            (Some(p), _) => Some(("perf", p)),
            (None, Some(s)) => Some(("strace", s)),
            (None, None) => None,
        }
    }
}

/// Runs the scenario's load (S1: one connection; S2: 50; S2U: S2 over a Unix-domain socket)
/// on a fresh server and, after the warm-up, counts its system calls in a window separate
/// from the throughput rounds: with perf, or else strace.
pub fn count_syscalls(
    peer: Peer,
    scenario: Scenario,
    layout: Layout,
    s: &Settings,
) -> io::Result<SyscallReport> {
    let (server_cpu, load_cpu) = layout.cpus();
    let server = ServerChild::echo(peer, scenario.transport(), server_cpu)?;
    let (target, pid) = (server.target.clone(), server.pid());
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicU64::new(0));
    let load = StreamLoad {
        conns: if scenario == Scenario::S1 { 1 } else { 50 },
        msg_size: 64,
        depth: 1,
        warmup: Duration::ZERO,
        stop: Stop::Flag(stop.clone()),
        progress: Some(progress.clone()),
    };
    let runner = std::thread::Builder::new()
        .name("load".into())
        .spawn(move || {
            sys::pin_current_thread(load_cpu)?;
            load::run_stream(&target, &load, None)
        })?;
    let mut report = SyscallReport::default();
    let mut failure = None;
    let wait_for_load = |progress: &AtomicU64| {
        // Connections are set up and echoing once the counter moves; then warm up.
        let deadline = Instant::now() + Duration::from_secs(20);
        while progress.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(s.warmup);
    };
    wait_for_load(&progress);
    if syscalls::available("perf") {
        match syscalls::perf(pid, s.syscall_window, &progress) {
            Ok(c) => report.perf = Some(c),
            Err(e) => {
                eprintln!("  perf stat on {peer}: {e}; trying strace");
                failure = Some(e);
            }
        }
    }
    if report.perf.is_none() && syscalls::available("strace") {
        match syscalls::strace(pid, s.syscall_window, &progress) {
            Ok(c) => report.strace = Some(c),
            Err(e) => failure = Some(e),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let load_result = runner
        .join()
        .map_err(|_| io::Error::other("the load generator panicked"))?;
    drop(server);
    load_result?;
    if let (Some(e), None, None) = (failure, &report.perf, &report.strace) {
        return Err(e);
    }
    Ok(report)
}
