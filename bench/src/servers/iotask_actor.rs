//! iotask's many-sockets-one-actor mode: the I/O task hands each accepted socket straight to
//! one actor thread's `Mailbox` (`tcp::listen_into`, or `unix::bind(..).into_mailbox(..)`
//! for a Unix-domain socket), and the actor echoes every `Event::Data`.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::time::Duration;

use iotask::stream::{Family, Stream};
use iotask::tcp::{self, ListenOptions, PoolListener, TcpSocket};
use iotask::unix::{self, UnixSocket};
use iotask::{Event, IoPool, IoTask, Mailbox, SocketId};

pub(super) fn serve(addr: &str, spin: Option<Duration>) -> io::Result<()> {
    let iotask = match spin {
        Some(spin) => IoTask::builder().spin(spin).spawn()?,
        None => iotask::global(),
    };
    let mailbox: Mailbox<TcpSocket> = Mailbox::new();
    let sender = mailbox.sender();
    // Started first, on a thread of its own, as iotask-actor-listen does, so that the two
    // differ only in how connections reach the actor: in a trial, starting the actor after
    // the I/O thread instead moved S1's median by about 10 µs.
    std::thread::Builder::new()
        .name("echo-actor".into())
        .spawn(move || actor(mailbox))?;
    let options = ListenOptions::new().backlog(1024);
    let server = tcp::bind(addr, &options, &iotask)
        .and_then(|l| l.into_mailbox(&sender))
        .map_err(io::Error::other)?;
    super::announce(server.local_addr());
    server.wait().map_err(io::Error::other)
}

/// The same server on a Unix-domain socket at `path`: the listener hands each connection to
/// the actor's mailbox, which receives it as `Event::AcceptedUnix`.
pub(super) fn serve_unix(path: &Path) -> io::Result<()> {
    let iotask = iotask::global();
    let mailbox: Mailbox<UnixSocket> = Mailbox::new();
    let sender = mailbox.sender();
    std::thread::Builder::new()
        .name("echo-actor".into())
        .spawn(move || actor(mailbox))?;
    let options = ListenOptions::new().backlog(1024);
    let server = unix::bind(path, &options, &iotask)
        .and_then(|listener| listener.into_mailbox(&sender))
        .map_err(io::Error::other)?;
    super::announce_unix(path);
    server.wait().map_err(io::Error::other)
}

/// The same actor, fed by a `listen` thread that sends it each accepted socket, which the
/// actor then attaches to its mailbox.
pub(super) fn serve_listen(addr: &str) -> io::Result<()> {
    let mailbox: Mailbox<TcpSocket> = Mailbox::new();
    let sender = mailbox.sender();
    std::thread::Builder::new()
        .name("echo-actor".into())
        .spawn(move || actor(mailbox))?;
    tcp::listen(
        addr,
        1024,
        &iotask::global(),
        |kill| super::announce(kill.local_addr()),
        move |new_conn, _kill| match tcp::accept(new_conn) {
            Ok(sock) => {
                // The actor lives as long as the process; a failed send cannot happen.
                let _ = sender.send(sock);
            }
            Err(e) => eprintln!("iotask-actor-listen: accept: {e}"),
        },
    )
    .map_err(|e| io::Error::other(e.to_string()))
}

/// The same actors on an `IoPool` of `loops` I/O tasks, one actor per task. With `paired`,
/// each task hands its sockets straight to its own actor (`tcp::listen_on_pool_into`), so an
/// actor's writes wake one loop; without, a `listen` thread deals the sockets to the actors
/// in turn (the `iotask-pool-rr` control: what a server written before `listen_into` did).
/// `mode` says whether the tasks listen on sockets of their own (`SO_REUSEPORT`) or share
/// one (`EPOLLEXCLUSIVE`).
pub(super) fn serve_pool(
    addr: &str,
    loops: usize,
    mode: PoolListener,
    paired: bool,
) -> io::Result<()> {
    let pool = IoPool::spawn(loops)?;
    let mut mailboxes = Vec::new();
    for _ in 0..loops {
        mailboxes.push(Mailbox::<TcpSocket>::new());
    }
    let actors: Vec<_> = mailboxes.iter().map(Mailbox::sender).collect();
    let options = ListenOptions::new().backlog(1024).pool_listener(mode);
    // Bound before the actors start, so that the returned server outlives them.
    let paired_server = if paired {
        let server = tcp::bind_pool(addr, &options, &pool)
            .and_then(|l| l.into_mailboxes(&actors))
            .map_err(io::Error::other)?;
        super::announce(server.local_addr());
        Some(server)
    } else {
        None
    };
    for (i, mailbox) in mailboxes.into_iter().enumerate() {
        std::thread::Builder::new()
            .name(format!("echo-actor-{i}"))
            .spawn(move || actor(mailbox))?;
    }
    if let Some(server) = paired_server {
        return server.wait().map_err(io::Error::other);
    }
    let mut next = 0;
    tcp::bind_pool(addr, &options, &pool.clone())
        .and_then(|l| {
            l.serve(
                |kill| super::announce(kill.local_addr()),
                move |new_conn, _kill| match tcp::accept(new_conn) {
                    Ok(sock) => {
                        let _ = actors[next % actors.len()].send(sock);
                        next += 1;
                    }
                    Err(e) => eprintln!("iotask-pool: accept: {e}"),
                },
            )
        })
        .map_err(|e| io::Error::other(e.to_string()))
}

/// Owns every connection of family `F` (TCP or Unix-domain): takes in accepted ones,
/// attaches those sent to it, echoes data, forgets closed ones.
fn actor<F: Family>(mut mailbox: Mailbox<Stream<F>>) {
    let mut sockets: HashMap<SocketId, Stream<F>> = HashMap::new();
    loop {
        match mailbox.recv() {
            Event::Data { socket, data } => {
                if let Some(sock) = sockets.get(&socket) {
                    drop(sock.write_future(data));
                }
            }
            Event::Closed { socket, .. } => {
                sockets.remove(&socket);
            }
            // A socket that cannot attach (its peer already reset it) is dropped.
            Event::Message(sock) => {
                if sock.attach(&mailbox).is_ok() {
                    sockets.insert(sock.id(), sock);
                }
            }
            // `Accepted` or `AcceptedUnix`, whichever is `F`'s; `Event` may grow variants.
            other => {
                if let Ok(sock) = other.into_accepted::<F>() {
                    sockets.insert(sock.id(), sock);
                }
            }
        }
    }
}
