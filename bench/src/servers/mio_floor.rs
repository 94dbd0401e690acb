//! The syscall floor: one thread, one edge-triggered epoll loop (mio), no channels.
//!
//! Each readable socket is read until it is drained into one shared buffer, and every chunk
//! is written back at once. What the kernel does not take is kept per connection; while a
//! connection holds leftovers it is not read (its data waits in the kernel), and reading
//! resumes when a writable edge drains them.
//!
//! "Drained" means a read returned `WouldBlock`, or returned less than the buffer holds: a
//! short read emptied the receive queue, and with edge-triggered epoll any byte arriving
//! after it raises a new edge. That saves the `EAGAIN` read per message (tokio does the
//! same); without it this loop would make three system calls per echoed message where
//! tokio makes two, and would be no floor.

use std::io::{self, ErrorKind, Read, Write};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(usize::MAX);

struct Conn {
    stream: TcpStream,
    /// Bytes read but not yet accepted by the kernel.
    pending: Vec<u8>,
    /// Set when reading stopped before `WouldBlock` because of `pending`; edge-triggered
    /// readiness will not report those bytes again, so reading resumes by itself.
    read_paused: bool,
}

enum Outcome {
    Open,
    Close,
}

pub(super) fn serve(addr: &str) -> io::Result<()> {
    let addr = addr
        .parse()
        .map_err(|e| io::Error::new(ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let mut listener = TcpListener::bind(addr)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    super::announce(listener.local_addr()?);

    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut buf = vec![0u8; super::ECHO_BUFFER];
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                accept_all(&listener, &poll, &mut conns, &mut free);
                continue;
            }
            let slot = event.token().0;
            let Some(conn) = conns.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            let outcome = serve_conn(conn, &mut buf, event);
            if let Outcome::Close = outcome {
                if let Some(mut conn) = conns[slot].take() {
                    let _ = poll.registry().deregister(&mut conn.stream);
                }
                free.push(slot);
            }
        }
    }
}

fn accept_all(
    listener: &TcpListener,
    poll: &Poll,
    conns: &mut Vec<Option<Conn>>,
    free: &mut Vec<usize>,
) {
    loop {
        match listener.accept() {
            Ok((mut stream, _)) => {
                let _ = stream.set_nodelay(true);
                let slot = free.pop().unwrap_or_else(|| {
                    conns.push(None);
                    conns.len() - 1
                });
                let interest = Interest::READABLE | Interest::WRITABLE;
                if poll
                    .registry()
                    .register(&mut stream, Token(slot), interest)
                    .is_err()
                {
                    free.push(slot);
                    continue;
                }
                conns[slot] = Some(Conn {
                    stream,
                    pending: Vec::new(),
                    read_paused: false,
                });
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                // Out of descriptors, or an aborted connection: try again on the next edge.
                eprintln!("mio: accept: {e}");
                return;
            }
        }
    }
}

fn serve_conn(conn: &mut Conn, buf: &mut [u8], event: &mio::event::Event) -> Outcome {
    let (readable, writable) = (event.is_readable(), event.is_writable());
    // After the peer's FIN no new edge comes: read on to the end of the stream.
    let read_closed = event.is_read_closed();
    if writable && !conn.pending.is_empty() {
        match write_some(&mut conn.stream, &conn.pending) {
            Ok(n) => {
                conn.pending.drain(..n);
            }
            Err(_) => return Outcome::Close,
        }
    }
    if !conn.pending.is_empty() {
        // Read later, when a writable edge has drained the leftovers.
        conn.read_paused |= readable;
        return Outcome::Open;
    }
    if !(readable || conn.read_paused) {
        return Outcome::Open;
    }
    conn.read_paused = false;
    loop {
        if !conn.pending.is_empty() {
            conn.read_paused = true;
            return Outcome::Open;
        }
        let n = match conn.stream.read(buf) {
            Ok(0) => return Outcome::Close,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Outcome::Open,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return Outcome::Close,
        };
        match write_some(&mut conn.stream, &buf[..n]) {
            Ok(written) => conn.pending.extend_from_slice(&buf[written..n]),
            Err(_) => return Outcome::Close,
        }
        if n < buf.len() && conn.pending.is_empty() && !read_closed {
            return Outcome::Open;
        }
    }
}

/// Writes as much of `data` as the kernel takes now; `WouldBlock` counts as zero bytes.
fn write_some(stream: &mut TcpStream, data: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < data.len() {
        match stream.write(&data[done..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
