//! Helpers shared by the tests of the examples: run an example's server on its own thread and
//! I/O task, make `std` clients that cannot hang, give each test a folder of its own for
//! Unix-domain sockets, and check for and run external tools.
//!
//! A module of the `it` test binary (`tests/it/main.rs`); each `examples_*` module uses part
//! of it.

#![allow(dead_code)]

/// The examples' address argument (`HOST:PORT`, `unix:PATH`), as their `main` parses it.
#[path = "../../examples/support/listen_addr.rs"]
pub mod listen_addr;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use iotask::server::{KillChan, ListenOptions, Listener};
use iotask::stream::Family;
use iotask::tcp::{self, Tcp};
use iotask::unix::{self, Unix};
use iotask::{IoTask, ListenError};

use listen_addr::{Bound, ListenAddr};

/// How long any single wait in these tests may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The `on_bound` callback an example's `serve` function is given.
pub type OnBound<F = Tcp> = Box<dyn FnOnce(KillChan<F>) + Send>;

/// An example server running on its own thread and I/O task; stopped when dropped.
pub struct Server<F: Family = Tcp> {
    /// The address it listens on.
    pub addr: F::Addr,
    kill: KillChan<F>,
    thread: Option<JoinHandle<Result<(), ListenError>>>,
    iotask: IoTask,
}

impl Server<Tcp> {
    /// Starts `serve` (an example's `serve` function) on `127.0.0.1:0`.
    pub fn start<S>(serve: S) -> Server<Tcp>
    where
        S: FnOnce(tcp::Listener, OnBound<Tcp>) -> Result<(), ListenError> + Send + 'static,
    {
        Server::start_on(
            |iotask| tcp::bind("127.0.0.1:0", &ListenOptions::new(), iotask),
            serve,
        )
    }
}

impl Server<Unix> {
    /// Starts `serve` (an example's `serve` function) on `unix:{path}`, parsed as the
    /// examples parse their argument.
    pub fn start_unix<S>(path: &Path, serve: S) -> Server<Unix>
    where
        S: FnOnce(unix::Listener, OnBound<Unix>) -> Result<(), ListenError> + Send + 'static,
    {
        Server::start_on(
            |iotask| bind_unix(path, &ListenOptions::new(), iotask),
            serve,
        )
    }
}

impl<F: Family> Server<F> {
    /// Binds with `bind` on a new I/O task, starts `serve` on a new thread, and waits until
    /// it listens.
    pub fn start_on<B, S>(bind: B, serve: S) -> Server<F>
    where
        B: FnOnce(&IoTask) -> Result<Listener<F>, ListenError>,
        S: FnOnce(Listener<F>, OnBound<F>) -> Result<(), ListenError> + Send + 'static,
    {
        let iotask = IoTask::spawn().expect("spawn an I/O task");
        let listener = bind(&iotask).expect("bind the example server");
        let (bound_tx, bound) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            serve(
                listener,
                Box::new(move |kill| {
                    let _ = bound_tx.send(kill);
                }),
            )
        });
        let kill = bound
            .recv_timeout(TIMEOUT)
            .expect("the example server did not start listening");
        Server {
            addr: kill.local_addr(),
            kill,
            thread: Some(thread),
            iotask,
        }
    }

    /// Waits until the listener has accepted `n` connections that are still open.
    pub fn wait_for_connections(&self, n: usize) {
        let deadline = Instant::now() + TIMEOUT;
        while self.kill.num_connections() < n {
            assert!(
                Instant::now() < deadline,
                "{n} connections were not accepted in {TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills the listener and returns what the example's `serve` function returned.
    pub fn stop(mut self) -> Result<(), ListenError> {
        self.kill
            .send(None)
            .expect("the listener was still running");
        let thread = self.thread.take().expect("stopped once");
        join_within(thread, TIMEOUT)
    }
}

impl<F: Family> Drop for Server<F> {
    fn drop(&mut self) {
        let _ = self.kill.send(None);
        self.iotask.shutdown();
    }
}

/// Joins `thread`, failing the test if it does not finish within `timeout` or panicked.
pub fn join_within<T>(thread: JoinHandle<T>, timeout: Duration) -> T {
    let deadline = Instant::now() + timeout;
    while !thread.is_finished() {
        assert!(
            Instant::now() < deadline,
            "thread did not finish in {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    thread.join().expect("thread panicked")
}

/// Binds `unix:{path}` through the examples' address parser, as `main` would.
pub fn bind_unix(
    path: &Path,
    options: &ListenOptions,
    iotask: &IoTask,
) -> Result<unix::Listener, ListenError> {
    let arg = format!("unix:{}", path.display());
    let addr: ListenAddr = arg.parse().expect("a unix: address");
    let bound = addr.bind(options, iotask)?;
    assert_eq!(
        bound.to_string(),
        arg,
        "what `main` prints after `listening on`"
    );
    match bound {
        Bound::Unix(listener) => Ok(listener),
        Bound::Tcp(_) => panic!("{arg} parsed as a TCP address"),
    }
}

/// A folder of its own for one test's Unix-domain sockets, removed when dropped.
pub struct SocketDir(PathBuf);

impl SocketDir {
    /// A new, empty folder under the system's temporary folder, named after `test`.
    pub fn new(test: &str) -> SocketDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("iotask-{test}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the socket folder");
        SocketDir(dir)
    }

    /// The path of a socket named `name` in the folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `std` Unix-domain client connected to `path` whose reads and writes time out.
pub fn unix_client(path: &Path) -> UnixStream {
    let stream = UnixStream::connect(path).expect("connect");
    stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(TIMEOUT))
        .expect("write timeout");
    stream
}

/// A `std` client connected to `addr` whose reads and writes time out.
pub fn client(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
    stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(TIMEOUT))
        .expect("write timeout");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// Whether `tool` can be run. When it cannot, skips the test loudly, or fails it under CI.
pub fn have_tool(tool: &str, package: &str) -> bool {
    let found = Command::new(tool)
        .arg("-V")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{tool} missing in CI");
        }
        eprintln!("SKIPPED: {tool} not installed (apt-get install {package})");
    }
    found
}

/// A child process that is killed if the test ends before it exits.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// Waits for the child to exit, failing the test after `timeout`.
    pub fn wait_within(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.0.try_wait().expect("wait for the child") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "child did not exit in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Asserts that nothing arrives on `reader` (which reads `socket`) for 200 ms: the server
/// waits for more input; `what` says what an early byte would mean.
pub fn expect_silence(reader: &mut impl Read, socket: &TcpStream, what: &str) {
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut byte = [0u8; 1];
    let result = reader.read(&mut byte);
    assert!(
        matches!(&result, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "{what}: {result:?}"
    );
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
}

/// Runs `wrk -t1 -c50 -d{seconds}s url`, asserts that it saw no socket errors and no failed
/// answers, and returns its requests per second.
pub fn wrk(url: &str, seconds: u32) -> f64 {
    let output = run(
        Command::new("wrk").args(["-t1", "-c50", &format!("-d{seconds}s"), url]),
        Stdio::null(),
        Duration::from_secs(60),
    );
    let text = String::from_utf8_lossy(&output.stdout);
    eprintln!("wrk -t1 -c50 -d{seconds}s {url}:\n{text}");
    assert!(output.status.success(), "wrk failed: {output:?}");
    assert!(
        !text.contains("Socket errors"),
        "wrk saw socket errors:\n{text}"
    );
    assert!(
        !text.contains("Non-2xx or 3xx responses"),
        "wrk saw failures:\n{text}"
    );
    let rate: f64 = text
        .lines()
        .find_map(|line| line.strip_prefix("Requests/sec:"))
        .and_then(|rate| rate.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in:\n{text}"));
    assert!(rate > 0.0, "{text}");
    rate
}

/// Runs a command with `stdin`, killing it if it runs past `limit`.
pub fn run(command: &mut Command, stdin: Stdio, limit: Duration) -> Output {
    let mut child = command
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Drain the pipes on threads so that a chatty child cannot block on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} ran longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// `socat - ADDRESS` as a line-based client: lines go to its standard input, and the lines
/// it prints are read with a timeout. Killed if the test ends first.
pub struct Socat {
    child: ChildGuard,
    stdin: Option<ChildStdin>,
    lines: Receiver<std::io::Result<String>>,
}

impl Socat {
    /// Starts `socat - {address}` (`UNIX-CONNECT:/path`, `TCP:host:port`).
    pub fn connect(address: &str) -> Socat {
        let mut child = ChildGuard(
            Command::new("socat")
                .arg("-")
                .arg(address)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start socat"),
        );
        let stdin = child.0.stdin.take();
        let stdout = child.0.stdout.take().expect("piped stdout");
        // socat's output, line by line, through a channel so that waiting for it can time out.
        let (lines_tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        Socat {
            child,
            stdin,
            lines,
        }
    }

    /// socat's process id.
    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Writes `line` and a newline to socat's input.
    pub fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("socat's input is open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .expect("write to socat");
        stdin.flush().expect("flush");
    }

    /// The next line socat prints, without its newline.
    pub fn next_line(&mut self) -> String {
        self.lines
            .recv_timeout(TIMEOUT)
            .expect("a line from socat in time")
            .expect("socat's output")
    }

    /// Closes socat's input, which makes it close the connection and exit, and checks that
    /// it exits successfully.
    pub fn close(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait_within(TIMEOUT);
        assert!(status.success(), "socat exited with {status}");
    }
}
