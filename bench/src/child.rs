//! Server child processes: the echo servers (this binary re-executed with `serve`) and
//! external servers for the Redis comparison.

use std::io::{self, BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::servers::Peer;

/// How long a server may take to start listening.
const START_DEADLINE: Duration = Duration::from_secs(15);

/// A running server process, killed when dropped.
#[derive(Debug)]
pub struct ServerChild {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl ServerChild {
    /// Starts `peer`'s echo server on a free loopback port, pinned to `cpu` when given, and
    /// waits for it to print its address.
    pub fn echo(peer: Peer, cpu: Option<usize>) -> io::Result<ServerChild> {
        let mut command = Command::new(std::env::current_exe()?);
        command.args(["serve", peer.name(), "127.0.0.1:0"]);
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
        let addr = match line.trim().parse() {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::other(format!(
                    "{peer}: expected the bound address, got {line:?}"
                )));
            }
        };
        Ok(ServerChild { child, addr })
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
                return Ok(ServerChild { child, addr });
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
    }
}

/// A loopback port that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
