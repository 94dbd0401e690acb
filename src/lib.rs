//! TCP, UDP and Unix-domain networking for message-passing Rust: one I/O thread owns every
//! socket, and your threads talk to it over channels.
//!
//! # Bird's eye
//!
//! An [`IoTask`] is a dedicated thread running an event loop (epoll, level-triggered) over a
//! slab of every listener and socket created on it. User threads never wait on a file
//! descriptor: they send the I/O task commands and receive results on channels.
//!
//! - [`tcp::listen`] runs a server through two callbacks: `on_establish(kill)` once the
//!   port is bound, `new_connect(new_conn, &kill)` for each connection, on your thread.
//! - [`tcp::accept`] turns a [`NewConnection`](tcp::NewConnection) into a
//!   [`TcpSocket`](tcp::TcpSocket) on any thread; [`tcp::connect`] makes a client socket.
//! - [`TcpSocket::read_start`](tcp::TcpSocket::read_start) returns a
//!   [`ReadPort`](tcp::ReadPort) on which chunks arrive;
//!   [`write_future`](tcp::TcpSocket::write_future) moves bytes into the I/O task and
//!   resolves when the kernel has them.
//! - A [`Mailbox`] receives the reads of many sockets, each chunk tagged with its socket,
//!   plus the actor's own messages: one thread can own thousands of connections.
//!   [`tcp::bind`] then [`into_mailbox`](server::Listener::into_mailbox) feeds one with a
//!   listener's connections directly.
//! - [`unix`] has the same for Unix-domain sockets: every socket type is a
//!   [`Stream`](stream::Stream) of its family, and every server a
//!   [`Listener`](server::Listener) (see [`stream`] and [`server`]).
//! - [`udp`] serves datagram sockets from the same loop:
//!   [`send_to`](udp::UdpSocket::send_to) returns a future,
//!   datagrams arrive on a [`DatagramPort`](udp::DatagramPort) or in a mailbox as
//!   [`Event::Datagram`], and a reader that falls behind makes the I/O task drop datagrams
//!   (counted) instead of queueing without bound.
//!
//! # Thread model
//!
//! Only the I/O thread reads, writes or accepts on a registered socket, and no user code
//! ever runs on it. Commands are drained in batches, queued writes are gathered into one
//! system call, and a sleeping thread is woken only when there is something for it.
//! Everything is bounded: a reader that falls behind stops its sockets being read (TCP flow
//! control then slows the peer), and memory per connection stays at about one read window.
//!
//! # Example: an echo server and a client
//!
//! ```
//! use std::time::Duration;
//! use iotask::tcp;
//!
//! let iotask = iotask::IoTask::spawn()?;
//! let (addr_tx, addr_rx) = std::sync::mpsc::channel();
//! let server = std::thread::spawn({
//!     let iotask = iotask.clone();
//!     move || {
//!         tcp::listen("127.0.0.1:0", 128, &iotask,
//!             |kill| addr_tx.send(kill).unwrap(),
//!             |new_conn, _kill| {
//!                 std::thread::spawn(move || {
//!                     let sock = tcp::accept(new_conn).unwrap();
//!                     let port = sock.read_start().unwrap();
//!                     while let Ok(chunk) = port.recv() {
//!                         drop(sock.write_future(chunk));
//!                     }
//!                 });
//!             })
//!     }
//! });
//! let kill = addr_rx.recv_timeout(Duration::from_secs(5))?;
//!
//! let client = tcp::connect(kill.local_addr(), &iotask)?;
//! client.write(b"hello".to_vec())?;
//! assert_eq!(client.read(Duration::from_secs(5))?, b"hello");
//!
//! kill.send(None).unwrap();
//! assert_eq!(server.join().unwrap(), Ok(()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub,
    clippy::undocumented_unsafe_blocks
)]
// `unsafe` lives in the system-call layer and the registration only (they allow it).
#![deny(unsafe_code)]

/// Logs through the `log` facade with the `log` feature; compiles to nothing without it.
macro_rules! log {
    ($level:ident, $($arg:tt)*) => {
        #[cfg(feature = "log")]
        ::log::$level!(target: "iotask", $($arg)*);
    };
}

mod error;
mod io_task;
mod mailbox;
mod oneshot;
mod pool;
pub mod server;
pub mod stream;
pub mod tcp;
pub mod udp;
#[cfg(unix)]
pub mod unix;

pub use error::{ConnectError, Error, ListenError};
pub use io_task::stats::Stats;
pub use io_task::{Builder, IoTask, global};
pub use mailbox::{Connected, Event, Mailbox, MailboxSender, SocketId};
pub use pool::IoPool;

#[allow(dead_code)]
fn _assert_auto_traits() {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync>() {}
    send_sync::<IoTask>();
    send_sync::<tcp::TcpSocket>();
    send_sync::<udp::UdpSocket>();
    send::<udp::DatagramPort>();
    send::<udp::SendFuture>();
    send::<udp::RecvFuture>();
    send::<tcp::NewConnection>();
    send_sync::<tcp::KillChan>();
    send_sync::<tcp::Server>();
    send_sync::<IoPool>();
    send::<tcp::ReadPort>();
    send::<tcp::WriteFuture>();
    send::<tcp::ReadFuture>();
    send::<tcp::TcpSocketBuf>();
    send::<tcp::Listener>();
    send::<tcp::ConnectFuture>();
    #[cfg(unix)]
    {
        send_sync::<unix::UnixSocket>();
        send::<unix::NewConnection>();
        send::<unix::Listener>();
        send_sync::<unix::Server>();
    }
    send::<Mailbox<String>>();
    send_sync::<MailboxSender<String>>();
    send_sync::<tcp::TcpError>();
}

#[cfg(test)]
mod tests {
    //! Tests of the engine that drive it through the public API, which the engine itself
    //! does not name.

    use std::time::Duration;

    use crate::error::Error;
    use crate::io_task::command::Command;
    use crate::{Event, IoTask, Mailbox, tcp};

    #[test]
    fn a_loop_that_panics_fails_every_caller_and_marks_the_task_stopped() {
        let iotask = IoTask::spawn().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sock = tcp::connect(listener.local_addr().unwrap(), &iotask).unwrap();
        let (_peer, _) = listener.accept().unwrap();
        let port = sock.read_start().unwrap();
        let other = tcp::connect(listener.local_addr().unwrap(), &iotask).unwrap();
        let _other_peer = listener.accept().unwrap();
        let pending_read = other.read_future(Duration::from_secs(3600));
        let mut mailbox: Mailbox = Mailbox::new();
        let third = tcp::connect(listener.local_addr().unwrap(), &iotask).unwrap();
        let _accepted = listener.accept().unwrap();
        third.attach(&mailbox).unwrap();

        iotask.shared().send(Command::Panic).unwrap();
        let shutdown = |e: Error| assert_eq!(e.name(), "SHUTDOWN");
        shutdown(port.recv_timeout(Duration::from_secs(10)).unwrap_err());
        shutdown(pending_read.get().unwrap_err());
        match mailbox.recv_timeout(Duration::from_secs(10)) {
            Some(Event::Closed { error, .. }) => shutdown(error),
            other => panic!("expected the attached socket closed, got {other:?}"),
        }
        assert!(!iotask.is_running());
        shutdown(sock.write(b"late".to_vec()).unwrap_err());
        let addr = listener.local_addr().unwrap();
        assert!(tcp::connect(addr, &iotask).is_err());
        iotask.shutdown();
    }
}
#[cfg(test)]
mod sizes {
    /// What every connection costs the loop's slab and its shared write state. The
    /// benchmark's S6 (memory per idle connection) follows these; a field that only some
    /// sockets use belongs behind a pointer (`WriteState::controls`, boxed errors).
    #[test]
    fn a_connection_s_state_stays_small() {
        use crate::io_task::{entry::Entry, stream::StreamEntry, writes::WriteState};
        let entry = std::mem::size_of::<Entry>();
        assert_eq!(
            entry,
            std::mem::size_of::<StreamEntry>(),
            "a stream is the largest slot"
        );
        assert!(entry <= 240, "a slab slot takes {entry} bytes");
        let writes = std::mem::size_of::<WriteState>();
        assert!(writes <= 120, "a stream's write state takes {writes} bytes");
    }
}
