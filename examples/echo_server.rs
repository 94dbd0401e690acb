//! The seed's echo server: a thread per client, each echoing what its client sends.
//!
//! ```sh
//! cargo run --example echo_server -- 127.0.0.1:7000
//! socat - TCP:127.0.0.1:7000
//!
//! cargo run --example echo_server -- unix:/tmp/echo.sock
//! socat - UNIX-CONNECT:/tmp/echo.sock
//! ```
//!
//! The first argument is the address to listen on: `HOST:PORT` (default `127.0.0.1:7000`;
//! give `127.0.0.1:0` for any free port) or `unix:PATH` for a Unix-domain socket. The
//! server prints the address it bound and serves until killed.

#[path = "support/listen_addr.rs"]
mod listen_addr;

use std::error::Error;
use std::io::Write;

use iotask::server::{KillChan, ListenOptions, Listener};
use iotask::stream::Family;
use iotask::{IoTask, ListenError};

use listen_addr::{Bound, ListenAddr};

/// Serves echo on `listener`, of either family, until it is killed or its I/O task shuts
/// down.
///
/// `on_bound` runs once connections are accepted; its [`KillChan`] tells the bound address
/// and stops the server.
pub fn serve<F: Family>(
    listener: Listener<F>,
    on_bound: impl FnOnce(KillChan<F>),
) -> Result<(), ListenError> {
    listener.serve(on_bound, |new_conn, _kill| {
        // Accepting in the client's own thread keeps the listener free for the next client.
        std::thread::spawn(move || {
            let Ok(sock) = new_conn.accept() else { return };
            let Ok(port) = sock.read_start() else { return };
            // The port ends with EOF when the client closes; dropping `sock` then closes
            // the connection.
            while let Ok(chunk) = port.recv() {
                // Waiting for each write gives backpressure: a client that does not read
                // its echoes stops being read, instead of making the server queue them.
                if sock.write_future(chunk).get().is_err() {
                    break;
                }
            }
        });
    })
}

fn main() -> Result<(), Box<dyn Error>> {
    let arg = std::env::args().nth(1);
    let addr: ListenAddr = arg.as_deref().unwrap_or("127.0.0.1:7000").parse()?;
    let iotask = IoTask::spawn()?;
    let listener = addr
        .bind(&ListenOptions::new(), &iotask)
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    println!("listening on {listener}");
    std::io::stdout().flush()?;
    match listener {
        Bound::Tcp(listener) => serve(listener, |_kill| {})?,
        Bound::Unix(listener) => serve(listener, |_kill| {})?,
    }
    Ok(())
}
