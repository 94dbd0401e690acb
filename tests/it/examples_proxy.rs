//! The `proxy` example, in front of the other examples and of std servers: `curl` and `wrk`
//! to the http example, `redis-benchmark` to kv, a half-closed `socat` session to the echo
//! actor, resets and idle connections, and the proxy's resident memory while a fast sender
//! floods a slow receiver (measured in a child process, so that nothing else in this test
//! binary counts).

#[path = "../../examples/echo_actor.rs"]
#[allow(dead_code)]
mod echo_actor;
#[path = "../../examples/http.rs"]
#[allow(dead_code)]
mod http;
#[path = "../../examples/kv.rs"]
#[allow(dead_code)]
mod kv;
#[path = "../../examples/proxy.rs"]
#[allow(dead_code)]
mod proxy;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use iotask::IoTask;
use iotask::tcp::{self, Tcp};
use iotask::unix::Unix;

use crate::examples_support::{self, SocketDir, TIMEOUT, client, have_tool, unix_client};

/// A proxy on `127.0.0.1:0` in front of `upstream`, with an I/O task of its own.
fn start_proxy<U: proxy::Connect>(
    upstream: U::Target,
    config: proxy::Config,
) -> (proxy::Server<Tcp>, IoTask) {
    let iotask = IoTask::spawn().expect("an I/O task");
    let listener =
        tcp::bind("127.0.0.1:0", &proxy::listen_options(), &iotask).expect("the port binds");
    let server = proxy::start::<_, U>(listener, upstream, config, &iotask).expect("it starts");
    (server, iotask)
}

/// A proxy in front of the TCP server at `upstream`, with the default idle limit.
fn proxy_to(upstream: SocketAddr) -> (proxy::Server<Tcp>, IoTask) {
    start_proxy::<Tcp>(vec![upstream], proxy::Config::default())
}

/// The http example on a port of its own.
fn start_http() -> (http::Server, IoTask) {
    let iotask = IoTask::spawn().expect("an I/O task");
    let listener =
        tcp::bind("127.0.0.1:0", &http::listen_options(), &iotask).expect("the port binds");
    (http::start(listener).expect("http starts"), iotask)
}

fn start_echo() -> examples_support::Server {
    examples_support::Server::start(echo_actor::serve)
}

/// A std server on its own thread that accepts one connection and runs `serve` on it.
fn one_shot_upstream(
    serve: impl FnOnce(TcpStream) + Send + 'static,
) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap();
    let thread = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("the proxy connects");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        serve(stream);
    });
    (addr, thread)
}

/// Reads everything up to EOF, then answers how many bytes came and closes: a peer that
/// needs the other side's half-close to answer at all.
fn count_until_eof<S: Read + Write>(mut stream: S) {
    let mut all = Vec::new();
    stream.read_to_end(&mut all).expect("read to EOF");
    write!(stream, "got {} bytes", all.len()).expect("answer");
}

/// The client half of a half-close: sends `len` bytes, shuts down its writing half, and
/// reads the answer to EOF.
fn send_then_half_close<S: Read + Write>(mut stream: S, shut: impl FnOnce(&S), len: usize) {
    let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    stream.write_all(&body).expect("send");
    shut(&stream);
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .expect("the answer, then EOF");
    assert_eq!(answer, format!("got {len} bytes"));
}

#[test]
fn curl_gets_and_posts_through_the_proxy() {
    if !have_tool("curl", "curl") {
        return;
    }
    let (http, _http_task) = start_http();
    let (proxy, _proxy_task) = proxy_to(http.local_addr());
    let url = format!("http://{}", proxy.local_addr());

    let output = examples_support::run(
        Command::new("curl").args(["-sS", "--max-time", "10", &format!("{url}/hello")]),
        Stdio::null(),
        TIMEOUT,
    );
    assert!(output.status.success(), "curl failed: {output:?}");
    assert_eq!(output.stdout, b"hello\n");

    // 3 MiB each way: more than the watermarks, so reading pauses and resumes on the way.
    let dir = SocketDir::new("proxy-curl");
    let body: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 253) as u8).collect();
    std::fs::write(dir.path("body"), &body).unwrap();
    let output = examples_support::run(
        Command::new("curl").args([
            "-sS",
            "--max-time",
            "10",
            "--data-binary",
            &format!("@{}", dir.path("body").display()),
            &format!("{url}/echo"),
        ]),
        Stdio::null(),
        TIMEOUT,
    );
    assert!(output.status.success(), "curl failed: {output:?}");
    assert!(output.stdout == body, "the echoed body differs");

    proxy.stop().unwrap();
    http.stop().unwrap();
}

#[test]
fn wrk_through_the_proxy_gets_every_answer() {
    if !have_tool("wrk", "wrk") {
        return;
    }
    let (http, _http_task) = start_http();
    let (proxy, _proxy_task) = proxy_to(http.local_addr());
    let url = format!("http://{}/hello", proxy.local_addr());
    examples_support::wrk(&url, 2);
    proxy.stop().unwrap();
    http.stop().unwrap();
}

#[test]
fn redis_benchmark_through_the_proxy_completes_without_errors() {
    if !have_tool("redis-benchmark", "redis-tools") {
        return;
    }
    let iotask = IoTask::spawn().expect("an I/O task");
    let listener = tcp::bind("127.0.0.1:0", &kv::listen_options(), &iotask).expect("bind");
    let kv = kv::start(listener).expect("kv starts");
    let (proxy, _proxy_task) = proxy_to(kv.local_addr());
    let addr = proxy.local_addr();
    let port = addr.port().to_string();
    let output = examples_support::run(
        Command::new("redis-benchmark").args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "ping,set,get",
            "-c",
            "50",
            "-n",
            "20000",
            "-P",
            "16",
            "-q",
        ]),
        Stdio::null(),
        Duration::from_secs(120),
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "redis-benchmark failed: {output:?}"
    );
    // Progress lines end in CR; the results end in LF.
    let lines: Vec<&str> = text.split(['\r', '\n']).map(str::trim).collect();
    for line in lines.iter().copied().chain(errors.lines()) {
        assert!(
            !line.contains("ERR") && !line.to_lowercase().contains("error"),
            "redis-benchmark reported an error: {line}"
        );
    }
    let mut results = String::new();
    for test in ["PING_INLINE", "PING_MBULK", "SET", "GET"] {
        let line = lines
            .iter()
            .find(|l| l.starts_with(&format!("{test}: ")) && l.contains("requests per second"))
            .unwrap_or_else(|| panic!("no result for {test} in {text:?}"));
        results.push_str(line);
        results.push('\n');
    }
    eprintln!("redis-benchmark -P 16 through the proxy:\n{results}");
    proxy.stop().unwrap();
    kv.stop().unwrap();
}

/// `socat -t 5` with its input closed after a line: socat shuts down its writing half, the
/// proxy passes that on to the echo server, and the echo of the line still comes back
/// before the end, well within socat's 5 s.
#[test]
fn a_half_closed_socat_session_still_gets_its_echo() {
    if !have_tool("socat", "socat") {
        return;
    }
    let echo = start_echo();
    let (proxy, _proxy_task) = proxy_to(echo.addr);
    let dir = SocketDir::new("proxy-socat");
    std::fs::write(dir.path("input"), "hello through the proxy\n").unwrap();
    let input = std::fs::File::open(dir.path("input")).unwrap();
    let started = Instant::now();
    let output = examples_support::run(
        Command::new("socat").args(["-t", "5", "-", &format!("TCP:{}", proxy.local_addr())]),
        Stdio::from(input),
        TIMEOUT,
    );
    let took = started.elapsed();
    assert!(output.status.success(), "socat failed: {output:?}");
    assert_eq!(output.stdout, b"hello through the proxy\n");
    assert!(
        took < Duration::from_secs(4),
        "socat waited {took:?}: the echo server's end did not come through"
    );
    proxy.stop().unwrap();
}

/// A client that half-closes gets the answer its upstream sends only after the EOF, in
/// every combination of families.
#[test]
fn a_half_close_is_passed_on_and_the_answer_still_arrives() {
    // TCP to TCP, with more than the watermarks on the way.
    let (upstream, served) = one_shot_upstream(count_until_eof);
    let (proxy, _task) = proxy_to(upstream);
    send_then_half_close(
        client(proxy.local_addr()),
        |s| s.shutdown(Shutdown::Write).unwrap(),
        5 << 20,
    );
    examples_support::join_within(served, TIMEOUT);
    proxy.stop().unwrap();

    // TCP to a Unix-domain upstream.
    let dir = SocketDir::new("proxy-half-close");
    let path = dir.path("upstream.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let served = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        count_until_eof(stream);
    });
    let target = iotask::unix::SocketAddr::from_pathname(&path).unwrap();
    let (proxy, _task) = start_proxy::<Unix>(target, proxy::Config::default());
    send_then_half_close(
        client(proxy.local_addr()),
        |s| s.shutdown(Shutdown::Write).unwrap(),
        100_000,
    );
    examples_support::join_within(served, TIMEOUT);
    proxy.stop().unwrap();

    // A Unix-domain listener in front of TCP.
    let (upstream, served) = one_shot_upstream(count_until_eof);
    let iotask = IoTask::spawn().unwrap();
    let front = dir.path("proxy.sock");
    let listener = examples_support::bind_unix(&front, &proxy::listen_options(), &iotask).unwrap();
    let proxy = proxy::start::<_, Tcp>(listener, vec![upstream], proxy::Config::default(), &iotask)
        .unwrap();
    send_then_half_close(
        unix_client(&front),
        |s: &UnixStream| s.shutdown(Shutdown::Write).unwrap(),
        100_000,
    );
    examples_support::join_within(served, TIMEOUT);
    proxy.stop().unwrap();
}

/// A reset from either side reaches the other as a reset, not as a clean end.
#[test]
fn a_reset_is_passed_on_as_a_reset() {
    // The upstream resets: SO_LINGER 0, then close.
    let (upstream, served) = one_shot_upstream(|mut stream| {
        let mut line = [0u8; 5];
        stream.read_exact(&mut line).unwrap();
        socket2::SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    });
    let (proxy, _task) = proxy_to(upstream);
    let mut c = client(proxy.local_addr());
    c.write_all(b"hello").unwrap();
    examples_support::join_within(served, TIMEOUT);
    let mut rest = Vec::new();
    let error = c
        .read_to_end(&mut rest)
        .expect_err("the client sees the reset");
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");

    // The client resets.
    let (seen_tx, seen) = std::sync::mpsc::channel();
    let (upstream, served) = one_shot_upstream(move |mut stream| {
        let mut line = [0u8; 5];
        stream.read_exact(&mut line).unwrap();
        let mut rest = Vec::new();
        let _ = seen_tx.send(stream.read_to_end(&mut rest).map_err(|e| e.kind()));
    });
    let (proxy2, _task2) = proxy_to(upstream);
    let mut c = client(proxy2.local_addr());
    c.write_all(b"hello").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    socket2::SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(c);
    let result = seen
        .recv_timeout(TIMEOUT)
        .expect("the upstream's read ends");
    assert_eq!(result, Err(io::ErrorKind::ConnectionReset));
    examples_support::join_within(served, TIMEOUT);
    proxy.stop().unwrap();
    proxy2.stop().unwrap();
}

/// A client whose upstream refuses the connection is reset.
#[test]
fn a_client_whose_upstream_refuses_is_reset() {
    let free = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = free.local_addr().unwrap();
    drop(free);
    let (proxy, _task) = proxy_to(upstream);
    let mut c = client(proxy.local_addr());
    let mut rest = Vec::new();
    let error = c
        .read_to_end(&mut rest)
        .expect_err("the client sees a reset");
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");
    proxy.stop().unwrap();
}

/// A connection on which nothing is sent for the idle limit is closed; a busy one is not.
#[test]
fn idle_connections_are_closed_after_the_limit() {
    let echo = start_echo();
    let idle = Duration::from_millis(300);
    let (proxy, _task) = start_proxy::<Tcp>(vec![echo.addr], proxy::Config { idle });

    let mut busy = client(proxy.local_addr());
    let mut quiet = client(proxy.local_addr());
    quiet.write_all(b"ping").unwrap();
    let mut echo_buf = [0u8; 4];
    quiet.read_exact(&mut echo_buf).unwrap();
    let quiet_since = Instant::now();

    // The busy client talks every 50 ms for three times the limit.
    while quiet_since.elapsed() < idle * 3 {
        busy.write_all(b"ping").unwrap();
        busy.read_exact(&mut echo_buf).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut rest = Vec::new();
    quiet.read_to_end(&mut rest).expect("a clean close");
    let closed_after = quiet_since.elapsed();
    assert!(rest.is_empty());
    assert!(
        closed_after >= idle && closed_after < idle * 4,
        "closed after {closed_after:?}, limit {idle:?}"
    );
    busy.write_all(b"ping").unwrap();
    busy.read_exact(&mut echo_buf).unwrap();
    assert_eq!(&echo_buf, b"ping", "the busy connection is still open");
    proxy.stop().unwrap();
}

// ---- Memory --------------------------------------------------------------------------------

/// Set in the child process that runs the proxy for the memory test: the upstream address.
const CHILD_ENV: &str = "IOTASK_PROXY_MEMORY_CHILD";

/// The growth of the proxy's resident memory that the memory test allows.
///
/// One connection floods one direction. What the proxy can hold for it: the upstream's
/// write queue up to [`proxy::HIGH_WATER`] (1 MiB) plus whatever the mailbox held when the
/// client was detached (its window, 4 MiB), plus the I/O task's 64 KiB read buffer:
/// about 5 MiB. 32 MiB leaves room for the allocator keeping freed chunks; an unbounded
/// proxy passes it within a tenth of a second on loopback.
const MEMORY_BOUND: u64 = 32 << 20;

/// Runs the proxy in a child process in front of a receiver reading 256 KiB every 50 ms
/// (5 MiB/s), while a sender writes as fast as it can for 3 s; samples the child's VmRSS.
#[test]
fn a_fast_sender_into_a_slow_receiver_keeps_the_proxy_memory_bounded() {
    // The slow receiver, which checks that the bytes arrive in order.
    let receiver = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = receiver.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicUsize::new(0));
    let slow = {
        let (stop, received) = (stop.clone(), received.clone());
        std::thread::spawn(move || {
            let (mut stream, _) = receiver.accept().unwrap();
            stream.set_read_timeout(Some(TIMEOUT)).unwrap();
            let mut buf = vec![0u8; 256 << 10];
            let mut at = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let n = stream.read(&mut buf).expect("read");
                assert!(n > 0, "the stream ended early");
                for (i, &b) in buf[..n].iter().enumerate() {
                    assert_eq!(b, ((at + i) % 251) as u8, "byte {} out of order", at + i);
                }
                at += n;
                received.store(at, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    let mut child = examples_support::ChildGuard(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "examples_proxy::memory_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, upstream.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    let stdout = BufReader::new(child.0.stdout.take().unwrap());
    let addr: SocketAddr = stdout
        .lines()
        .map_while(Result::ok)
        .find_map(|line| {
            line.split_once("PROXY ")
                .map(|(_, addr)| addr.trim().parse().unwrap())
        })
        .expect("the child says where the proxy listens");

    let mut sender = client(addr);
    sender.set_write_timeout(None).unwrap();
    sender.write_all(&[0]).unwrap();
    // The first byte is through, so the connection is set up; this is the baseline.
    while received.load(Ordering::Relaxed) == 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let baseline = rss(pid);
    let stop_sending = sender.try_clone().unwrap();
    let sending = std::thread::spawn(move || {
        // Byte p of the stream is p % 251: the first byte was 0, and each chunk, a multiple
        // of 251 bytes long, starts at 1.
        let chunk: Vec<u8> = (0..251 * 4096).map(|i| ((i + 1) % 251) as u8).collect();
        let mut sent = 1usize;
        // 200 MiB, far more than the receiver takes in the time; cut short by a shutdown.
        while sent < 200 << 20 && sender.write_all(&chunk).is_ok() {
            sent += chunk.len();
        }
        sent
    });
    let started = Instant::now();
    let mut peak = baseline;
    while started.elapsed() < Duration::from_secs(3) {
        peak = peak.max(rss(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    examples_support::join_within(slow, TIMEOUT);
    let _ = stop_sending.shutdown(Shutdown::Both);
    let sent = examples_support::join_within(sending, TIMEOUT);
    drop(child);
    let growth = peak.saturating_sub(baseline);
    let got = received.load(Ordering::Relaxed);
    eprintln!(
        "proxy VmRSS: baseline {} KiB, peak {} KiB, growth {} KiB; \
         the sender wrote {} KiB, the receiver read {} KiB in 3 s",
        baseline >> 10,
        peak >> 10,
        growth >> 10,
        sent >> 10,
        got >> 10
    );
    // What the sender got rid of and the receiver did not take waits in the kernel's
    // buffers (several MiB each way on loopback) and in the proxy.
    assert!(
        sent > got + (4 << 20),
        "the sender was not faster: sent {sent}, got {got}"
    );
    assert!(growth < MEMORY_BOUND, "the proxy grew by {growth} bytes");
}

/// The proxy of the memory test, run in a child process; does nothing in a normal run.
#[test]
fn memory_child() {
    let Ok(upstream) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (proxy, _task) = proxy_to(upstream.parse().unwrap());
    println!("PROXY {}", proxy.local_addr());
    io::stdout().flush().unwrap();
    // Serves until the parent closes our input (or kills us).
    let _ = io::stdin().read_to_end(&mut Vec::new());
    let _ = proxy.stop();
}

/// The resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib << 10
}
