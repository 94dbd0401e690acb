//! Server child processes: the echo servers (this binary re-executed with `serve`) and
//! external servers for the Redis comparison.

use std::io::{self, BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::load::Target;
use crate::servers::{Peer, Transport};

/// How long a server may take to start listening.
const START_DEADLINE: Duration = Duration::from_secs(15);

/// A running server process, killed when dropped.
#[derive(Debug)]
pub struct ServerChild {
    child: Child,
    /// Where it listens.
    pub target: Target,
    /// A folder made for its Unix-domain socket, removed when it is dropped.
    dir: Option<PathBuf>,
}

impl ServerChild {
    /// Starts `peer`'s echo server, pinned to `cpu` when given, on a free loopback port (TCP
    /// or UDP) or on a socket in a fresh temporary folder, and waits for it to print its
    /// address.
    pub fn echo(peer: Peer, transport: Transport, cpu: Option<usize>) -> io::Result<ServerChild> {
        let (addr, dir) = match transport {
            Transport::Tcp => ("127.0.0.1:0".to_owned(), None),
            Transport::Udp => ("udp:127.0.0.1:0".to_owned(), None),
            Transport::Proxied => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a proxy is started with ServerChild::proxy",
                ));
            }
            Transport::Unix => {
                let dir = socket_dir()?;
                let addr = format!("unix:{}", dir.join("echo.sock").display());
                (addr, Some(dir))
            }
        };
        // From here on the folder goes with the child (or with this guard, on failure).
        ServerChild::serve(peer, &[&addr], cpu, DirGuard(dir))
    }

    /// Starts a proxy peer's proxy to `upstream`, pinned to `cpu` when given, on a free
    /// loopback port, and waits for it to print its address.
    pub fn proxy(peer: Peer, upstream: SocketAddr, cpu: Option<usize>) -> io::Result<ServerChild> {
        let upstream = upstream.to_string();
        let args = ["127.0.0.1:0", "--upstream", &upstream];
        ServerChild::serve(peer, &args, cpu, DirGuard(None))
    }

    /// Runs `iotask-bench serve PEER ARGS...` and waits for the address it prints.
    fn serve(
        peer: Peer,
        args: &[&str],
        cpu: Option<usize>,
        guard: DirGuard,
    ) -> io::Result<ServerChild> {
        let mut command = Command::new(std::env::current_exe()?);
        command.args(["serve", peer.name()]).args(args);
        if let Some(cpu) = cpu {
            command.args(["--cpu", &cpu.to_string()]);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn()?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let read = BufReader::new(stdout).read_line(&mut line).map(|_| line);
            let _ = tx.send(read);
        });
        let line = match rx.recv_timeout(START_DEADLINE) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{peer}: no address printed within {START_DEADLINE:?}"),
                ));
            }
        };
        let target = match parse_target(line.trim()) {
            Some(target) => target,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::other(format!(
                    "{peer}: expected the bound address, got {line:?}"
                )));
            }
        };
        Ok(ServerChild {
            child,
            target,
            dir: guard.keep(),
        })
    }

    /// Starts `command` with `127.0.0.1:PORT` appended or inserted by `build`, and waits
    /// until the port accepts connections.
    pub fn external(build: impl FnOnce(u16) -> Command, what: &str) -> io::Result<ServerChild> {
        let port = free_port()?;
        let mut command = build(port);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = command
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("{what}: cannot start: {e}")))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(ServerChild {
                    child,
                    target: Target::Tcp(addr),
                    dir: None,
                });
            }
            if let Some(status) = child.try_wait()? {
                return Err(io::Error::other(format!(
                    "{what}: exited with {status} before accepting connections on {addr}"
                )));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{what}: {addr} refused connections for {START_DEADLINE:?}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        drop(DirGuard(self.dir.take()));
    }
}

/// Removes a socket folder when dropped, unless kept.
struct DirGuard(Option<PathBuf>);

impl DirGuard {
    fn keep(mut self) -> Option<PathBuf> {
        self.0.take()
    }
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A new, empty folder under the temporary directory for one server's socket, readable by
/// this user only.
fn socket_dir() -> io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("iotask-bench-{}-{n}", std::process::id()));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

/// A server's announced address: `IP:PORT`, `unix:PATH`, or `udp:IP:PORT`.
fn parse_target(line: &str) -> Option<Target> {
    if let Some(addr) = line.strip_prefix("udp:") {
        return addr.parse().ok().map(Target::Udp);
    }
    match line.strip_prefix("unix:") {
        Some(path) if !path.is_empty() => Some(Target::Unix(PathBuf::from(path))),
        Some(_) => None,
        None => line.parse().ok().map(Target::Tcp),
    }
}

/// A loopback port that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
