//! Helpers shared by the tests of the examples: run an example's server on its own thread and
//! I/O task, make `std` clients that cannot hang, and check for external tools.
//!
//! A module of the `it` test binary (`tests/it/main.rs`); each `examples_*` module uses part
//! of it.

#![allow(dead_code)]

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use iotask::IoTask;
use iotask::tcp::{KillChan, ListenError};

/// How long any single wait in these tests may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The `on_bound` callback an example's `serve` function is given.
pub type OnBound = Box<dyn FnOnce(KillChan) + Send>;

/// An example server running on its own thread and I/O task; stopped when dropped.
pub struct Server {
    /// The address it listens on.
    pub addr: SocketAddr,
    kill: KillChan,
    thread: Option<JoinHandle<Result<(), ListenError>>>,
    iotask: IoTask,
}

impl Server {
    /// Starts `serve` (an example's `serve` function bound to `127.0.0.1:0`) on a new thread
    /// with a new I/O task, and waits until it listens.
    pub fn start<F>(serve: F) -> Server
    where
        F: FnOnce(&IoTask, OnBound) -> Result<(), ListenError> + Send + 'static,
    {
        let iotask = IoTask::spawn().expect("spawn an I/O task");
        let (bound_tx, bound) = std::sync::mpsc::channel();
        let thread = std::thread::spawn({
            let iotask = iotask.clone();
            move || {
                serve(
                    &iotask,
                    Box::new(move |kill| {
                        let _ = bound_tx.send(kill);
                    }),
                )
            }
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

    /// Kills the listener and returns what the example's `serve` function returned.
    pub fn stop(mut self) -> Result<(), ListenError> {
        self.kill
            .send(None)
            .expect("the listener was still running");
        let thread = self.thread.take().expect("stopped once");
        join_within(thread, TIMEOUT)
    }
}

impl Drop for Server {
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
