//! The echo servers under test, one per peer, each run in its own child process; and the
//! two proxies of scenario S2P, which sit in front of tokio-ct's echo server; and the UDP echo
//! servers of scenarios U1 and U1x50.
//!
//! Every server binds the address it is given, prints the bound address on a line of its
//! own on stdout, then echoes every byte back on every connection until it is killed.
//! An address is `IP:PORT`, or `unix:PATH` for a Unix-domain stream socket, which only the
//! peers that [`Peer::serves`] it have a server for (iotask-actor and tokio-ct, each the
//! same server on `unix::bind` / `tokio::net::UnixListener`).
//! An address `udp:IP:PORT` asks for a UDP echo server instead, which sends every datagram
//! back to its sender; iotask-actor (the `udp_echo` example) and tokio-ct have one, and announce
//! `udp:IP:PORT`.
//! Each is written the way its stack's documentation teaches. All of them set
//! `TCP_NODELAY` on accepted connections (iotask does so itself), and the ones that read
//! into a buffer of their own use [`ECHO_BUFFER`] bytes, the size of iotask's default read
//! buffer, so that the comparison is about the I/O model rather than Nagle's algorithm or
//! buffer sizes.

mod iotask_actor;
mod iotask_ports;
mod iotask_proxy;
mod iotask_udp;
mod mio_floor;
mod std_threads;
mod tokio_echo;
mod tokio_proxy;
mod tokio_udp;

use std::fmt;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;

use iotask::tcp::PoolListener;

/// Bytes read at most per `read` call by the tokio, std and mio servers: 64 KiB, as
/// iotask's default `read_buffer`.
pub const ECHO_BUFFER: usize = 64 * 1024;

/// What a server listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// TCP on loopback.
    Tcp,
    /// A Unix-domain stream socket.
    Unix,
    /// TCP on loopback through a proxy, in front of tokio-ct's echo server (the upstream).
    Proxied,
    /// UDP on loopback: datagrams echoed to their sender.
    Udp,
}

/// A server implementation under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    /// iotask, a thread per connection reading a port and writing with `write_future`.
    IotaskPorts,
    /// iotask, one actor thread owning every socket through a `Mailbox` fed by `listen_into`.
    IotaskActor,
    /// As `IotaskActor`, fed by a `listen` thread that sends it each socket to attach.
    IotaskActorListen,
    /// As `IotaskActor`, on an I/O task built with a 50 µs spin before it sleeps.
    IotaskActorSpin,
    /// As `IotaskActor`, on a pool of 2 I/O tasks with one actor each.
    IotaskPool,
    /// As `IotaskPool`, the tasks sharing one listening socket.
    IotaskPoolShared,
    /// As `IotaskPool`, sockets dealt to the actors in turn rather than paired by task.
    IotaskPoolRr,
    /// tokio, current-thread runtime, a task per connection.
    TokioCt,
    /// tokio, multi-thread runtime with 2 workers, a task per connection.
    TokioMt,
    /// A single-thread edge-triggered mio loop: the syscall floor.
    Mio,
    /// std, a blocking thread per connection.
    StdThreads,
    /// The `proxy` example: one actor owns both sides of every connection (S2P only).
    IotaskProxy,
    /// tokio current_thread, a task per connection running `copy_bidirectional` (S2P only).
    TokioProxy,
}

impl Peer {
    /// Every peer, in table order.
    pub const ALL: [Peer; 13] = [
        Peer::IotaskPorts,
        Peer::IotaskActor,
        Peer::IotaskActorListen,
        Peer::IotaskActorSpin,
        Peer::IotaskPool,
        Peer::IotaskPoolShared,
        Peer::IotaskPoolRr,
        Peer::TokioCt,
        Peer::TokioMt,
        Peer::Mio,
        Peer::StdThreads,
        Peer::IotaskProxy,
        Peer::TokioProxy,
    ];

    /// The name used on the command line and in tables.
    pub fn name(self) -> &'static str {
        match self {
            Peer::IotaskPorts => "iotask-ports",
            Peer::IotaskActor => "iotask-actor",
            Peer::IotaskActorListen => "iotask-actor-listen",
            Peer::IotaskActorSpin => "iotask-actor-spin",
            Peer::IotaskPool => "iotask-pool",
            Peer::IotaskPoolShared => "iotask-pool-shared",
            Peer::IotaskPoolRr => "iotask-pool-rr",
            Peer::TokioCt => "tokio-ct",
            Peer::TokioMt => "tokio-mt",
            Peer::Mio => "mio",
            Peer::StdThreads => "std-threads",
            Peer::IotaskProxy => "iotask-proxy",
            Peer::TokioProxy => "tokio-proxy",
        }
    }

    /// One line saying what the server is.
    pub fn description(self) -> &'static str {
        match self {
            Peer::IotaskPorts => {
                "iotask: a thread per connection, `read_start` port, `drop(write_future(chunk))`"
            }
            Peer::IotaskActor => {
                "iotask: one actor thread owns every socket through a `Mailbox` that `listen_into` feeds, echoes `Event::Data` with `write_future`"
            }
            Peer::IotaskActorListen => {
                "as iotask-actor, a `listen` thread sending the actor each socket to `attach` (the path before `listen_into`)"
            }
            Peer::IotaskActorSpin => {
                "as iotask-actor, I/O task built with `Builder::spin(50 µs)` (opt-in low latency)"
            }
            Peer::IotaskPool => {
                "as iotask-actor on an `IoPool` of 2 I/O tasks (`listen_on_pool_into`, one `SO_REUSEPORT` listener each), one actor per task, each task feeding its own actor"
            }
            Peer::IotaskPoolShared => {
                "as iotask-pool, the tasks sharing one listening socket (`PoolListener::Shared`, `EPOLLEXCLUSIVE`)"
            }
            Peer::IotaskPoolRr => {
                "as iotask-pool, a `listen` thread dealing each socket to the actors in turn, whatever its task (the control)"
            }
            Peer::TokioCt => {
                "tokio current_thread runtime, a task per connection: `read_buf` into a 64 KiB buffer, `write_all`"
            }
            Peer::TokioMt => "tokio multi-thread runtime (2 workers), same handler as tokio-ct",
            Peer::Mio => {
                "raw mio, one thread, edge-triggered: read until drained (WouldBlock or a short read), write at once, keep leftovers"
            }
            Peer::StdThreads => {
                "std: a blocking thread per connection: `read` into a 64 KiB buffer, `write_all`"
            }
            Peer::IotaskProxy => {
                "the `proxy` example: one actor owns client and upstream sockets, `connect_into` per client, `write_future` to the other side, detach/attach at 1 MiB / 256 KiB watermarks"
            }
            Peer::TokioProxy => {
                "tokio current_thread, a task per client: `TcpStream::connect` upstream, `copy_bidirectional`"
            }
        }
    }

    /// Whether this peer has a server for `transport`: every echo server serves TCP, two
    /// serve Unix-domain sockets and UDP, and only the proxies are measured through a proxy.
    pub fn serves(self, transport: Transport) -> bool {
        match transport {
            Transport::Tcp => !self.is_proxy(),
            Transport::Unix | Transport::Udp => matches!(self, Peer::IotaskActor | Peer::TokioCt),
            Transport::Proxied => self.is_proxy(),
        }
    }

    /// Whether this peer is a proxy (it needs an upstream) rather than an echo server.
    pub fn is_proxy(self) -> bool {
        matches!(self, Peer::IotaskProxy | Peer::TokioProxy)
    }

    /// Whether this peer belongs to the library under test.
    pub fn is_iotask(self) -> bool {
        matches!(
            self,
            Peer::IotaskPorts
                | Peer::IotaskActor
                | Peer::IotaskActorListen
                | Peer::IotaskActorSpin
                | Peer::IotaskPool
                | Peer::IotaskPoolShared
                | Peer::IotaskPoolRr
                | Peer::IotaskProxy
        )
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Peer {
    type Err = String;

    fn from_str(s: &str) -> Result<Peer, String> {
        Peer::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Peer::ALL.iter().map(|p| p.name()).collect();
                format!("unknown peer {s:?}; known: {}", names.join(", "))
            })
    }
}

/// Runs `peer`'s echo server on `addr` (`IP:PORT`, `unix:PATH` or `udp:IP:PORT`), or its
/// proxy to `upstream`, until the process is killed.
///
/// # Errors
///
/// `Unsupported` for a Unix-domain or UDP address and a peer that does not
/// [`serve`](Peer::serves) one, `InvalidInput` for a proxy without an upstream or an echo server with one;
/// otherwise the server's own errors (binding, mostly).
pub fn serve(peer: Peer, addr: &str, upstream: Option<SocketAddr>) -> io::Result<()> {
    match (peer.is_proxy(), upstream) {
        (true, Some(upstream)) if !addr.starts_with("unix:") && !addr.starts_with("udp:") => {
            return match peer {
                Peer::IotaskProxy => iotask_proxy::serve(addr, upstream),
                _ => tokio_proxy::serve(addr, upstream),
            };
        }
        (true, Some(_)) => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("{peer} has no Unix-domain or UDP server"),
            ));
        }
        (true, None) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{peer} is a proxy: give --upstream IP:PORT"),
            ));
        }
        (false, Some(_)) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{peer} is an echo server: it takes no --upstream"),
            ));
        }
        (false, None) => {}
    }
    if let Some(addr) = addr.strip_prefix("udp:") {
        return match peer {
            Peer::IotaskActor => iotask_udp::serve(addr),
            Peer::TokioCt => tokio_udp::serve(addr),
            other => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("{other} has no UDP server"),
            )),
        };
    }
    if let Some(path) = addr.strip_prefix("unix:") {
        let path = Path::new(path);
        return match peer {
            Peer::IotaskActor => iotask_actor::serve_unix(path),
            Peer::TokioCt => tokio_echo::serve_unix(path),
            other => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("{other} has no Unix-domain server"),
            )),
        };
    }
    match peer {
        Peer::IotaskPorts => iotask_ports::serve(addr),
        Peer::IotaskActor => iotask_actor::serve(addr, None),
        Peer::IotaskActorListen => iotask_actor::serve_listen(addr),
        Peer::IotaskActorSpin => {
            iotask_actor::serve(addr, Some(std::time::Duration::from_micros(50)))
        }
        Peer::IotaskPool => iotask_actor::serve_pool(addr, 2, PoolListener::PerTask, true),
        Peer::IotaskPoolShared => iotask_actor::serve_pool(addr, 2, PoolListener::Shared, true),
        Peer::IotaskPoolRr => iotask_actor::serve_pool(addr, 2, PoolListener::PerTask, false),
        Peer::TokioCt => tokio_echo::serve(addr, None),
        Peer::TokioMt => tokio_echo::serve(addr, Some(2)),
        Peer::Mio => mio_floor::serve(addr),
        Peer::StdThreads => std_threads::serve(addr),
        Peer::IotaskProxy | Peer::TokioProxy => unreachable!("proxies are served above"),
    }
}

/// Tells the harness where the server listens: the bound address, alone on a line.
fn announce(addr: SocketAddr) {
    announce_line(format_args!("{addr}"));
}

/// Tells the harness where a Unix-domain server listens: `unix:PATH`, alone on a line.
fn announce_unix(path: &Path) {
    announce_line(format_args!("unix:{}", path.display()));
}

/// Tells the harness where a UDP echo server listens: `udp:IP:PORT`, alone on a line.
fn announce_udp(addr: SocketAddr) {
    announce_line(format_args!("udp:{addr}"));
}

fn announce_line(line: fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    // The harness is gone if this fails; the server will be killed anyway.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
