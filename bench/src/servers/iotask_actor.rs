//! iotask's many-sockets-one-actor mode: the listener hands each accepted socket to one
//! actor thread, which attaches it to its `Mailbox` and echoes every `Event::Data`.

use std::collections::HashMap;
use std::io;
use std::time::Duration;

use iotask::tcp::{self, ListenOptions, PoolListener, TcpSocket};
use iotask::{Event, IoPool, IoTask, Mailbox, SocketId};

pub(super) fn serve(addr: &str, spin: Option<Duration>) -> io::Result<()> {
    let iotask = match spin {
        Some(spin) => IoTask::builder().spin(spin).spawn()?,
        None => iotask::global(),
    };
    let mailbox: Mailbox<TcpSocket> = Mailbox::new();
    let sender = mailbox.sender();
    std::thread::Builder::new()
        .name("echo-actor".into())
        .spawn(move || actor(mailbox))?;
    tcp::listen(
        addr,
        1024,
        &iotask,
        |kill| super::announce(kill.local_addr()),
        move |new_conn, _kill| match tcp::accept(new_conn) {
            Ok(sock) => {
                // The actor lives as long as the process; a failed send cannot happen.
                let _ = sender.send(sock);
            }
            Err(e) => eprintln!("iotask-actor: accept: {e}"),
        },
    )
    .map_err(|e| io::Error::other(e.to_string()))
}

/// The same actors on an `IoPool` of `loops` I/O tasks, one actor per task. With `paired`,
/// each accepted socket goes to the actor of the task it lives on ([`IoPool::index_of`]),
/// so an actor's writes wake one loop; without, sockets are dealt to the actors in turn
/// (the `iotask-pool-rr` control). `mode` says whether the tasks listen on sockets of their own
/// (`SO_REUSEPORT`) or share one (`EPOLLEXCLUSIVE`).
pub(super) fn serve_pool(
    addr: &str,
    loops: usize,
    mode: PoolListener,
    paired: bool,
) -> io::Result<()> {
    let pool = IoPool::spawn(loops)?;
    let mut actors = Vec::new();
    for i in 0..loops {
        let mailbox: Mailbox<TcpSocket> = Mailbox::new();
        actors.push(mailbox.sender());
        std::thread::Builder::new()
            .name(format!("echo-actor-{i}"))
            .spawn(move || actor(mailbox))?;
    }
    let mut next = 0;
    let options = ListenOptions::new().backlog(1024).pool_listener(mode);
    tcp::listen_on_pool(
        addr,
        &options,
        &pool.clone(),
        |kill| super::announce(kill.local_addr()),
        move |new_conn, _kill| match tcp::accept(new_conn) {
            Ok(sock) => {
                // Every socket accepted here lives on a task of `pool`.
                let i = match pool.index_of(&sock) {
                    Some(i) if paired => i,
                    _ => next % actors.len(),
                };
                next += 1;
                let _ = actors[i].send(sock);
            }
            Err(e) => eprintln!("iotask-pool: accept: {e}"),
        },
    )
    .map_err(|e| io::Error::other(e.to_string()))
}

/// Owns every connection: attaches new ones, echoes data, forgets closed ones.
fn actor(mut mailbox: Mailbox<TcpSocket>) {
    let mut sockets: HashMap<SocketId, TcpSocket> = HashMap::new();
    loop {
        match mailbox.recv() {
            Event::Message(sock) => {
                if sock.attach(&mailbox).is_ok() {
                    sockets.insert(sock.id(), sock);
                }
            }
            Event::Data { socket, data } => {
                if let Some(sock) = sockets.get(&socket) {
                    drop(sock.write_future(data));
                }
            }
            Event::Closed { socket, .. } => {
                sockets.remove(&socket);
            }
        }
    }
}
