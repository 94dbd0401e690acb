//! The seed's echo server: a thread per client, each echoing what its client sends.
//!
//! ```sh
//! cargo run --example echo_server -- 127.0.0.1:7000
//! socat - TCP:127.0.0.1:7000
//! ```
//!
//! The first argument is the address to listen on (default `127.0.0.1:7000`; give
//! `127.0.0.1:0` for any free port). The server prints the address it bound and serves
//! until killed.

use std::error::Error;
use std::io::Write;

use iotask::IoTask;
use iotask::tcp::{self, KillChan, ListenError};

/// Serves echo on `addr` until the listener is killed or `iotask` shuts down.
///
/// `on_bound` runs once the port is bound; its [`KillChan`] tells the bound address and
/// stops the server.
pub fn serve(
    addr: &str,
    iotask: &IoTask,
    on_bound: impl FnOnce(KillChan),
) -> Result<(), ListenError> {
    tcp::listen(addr, 128, iotask, on_bound, |new_conn, _kill| {
        // Accepting in the client's own thread keeps the listener free for the next client.
        std::thread::spawn(move || {
            let Ok(sock) = tcp::accept(new_conn) else {
                return;
            };
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
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7000".to_owned());
    let iotask = IoTask::spawn()?;
    serve(&addr, &iotask, |kill| {
        println!("listening on {}", kill.local_addr());
        let _ = std::io::stdout().flush();
    })
    .map_err(|e| format!("cannot serve on {addr}: {e}"))?;
    Ok(())
}
