//! `WriteFuture` and `ReadFuture` are ordinary `std` futures: async code awaits them like any
//! other, here on tokio's single-threaded runtime, next to tokio's own timers and tasks.
//!
//! ```sh
//! cargo run --example async_interop
//! ```
//!
//! The I/O task wakes the awaiting task itself, so no runtime integration is needed. The
//! example starts the actor echo server (examples/echo_actor.rs) on a free loopback port,
//! talks to it from async code, and exits.

#[path = "echo_actor.rs"]
#[allow(dead_code)]
mod echo_actor;

use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

use iotask::IoTask;
use iotask::tcp::{self, ListenOptions, TcpError, TcpSocket};

/// How long any read in this example may take.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    run().await
}

/// Starts an echo server, then talks to it in four ways.
pub async fn run() -> Result<(), Box<dyn Error>> {
    let iotask = IoTask::spawn()?;
    let (bound_tx, bound) = tokio::sync::oneshot::channel();
    let listener = tcp::bind("127.0.0.1:0", &ListenOptions::new(), &iotask)?;
    let server = std::thread::spawn(move || {
        echo_actor::serve(listener, |kill| {
            let _ = bound_tx.send(kill);
        })
    });
    let kill = tokio::time::timeout(Duration::from_secs(5), bound).await??;
    let addr = kill.local_addr();
    println!("echo server on {addr}");

    // 1. Await a write, then a read.
    let sock = connect(addr, &iotask).await?;
    sock.write_future(b"hello".to_vec()).await?;
    let echo = read_exactly(&sock, 5).await?;
    println!(
        "1. awaited a write and a read: {:?}",
        String::from_utf8_lossy(&echo)
    );

    // 2. Several writes in flight at once; they go out in the order they were made.
    let (first, second, third) = tokio::join!(
        sock.write_future(b"one ".to_vec()),
        sock.write_future(b"two ".to_vec()),
        sock.write_future(b"three".to_vec()),
    );
    first?;
    second?;
    third?;
    let echo = read_exactly(&sock, 13).await?;
    println!(
        "2. joined three writes: {:?}",
        String::from_utf8_lossy(&echo)
    );

    // 3. Many connections, each served by its own tokio task on this one thread.
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..10 {
        let sock = connect(addr, &iotask).await?;
        tasks.spawn(async move {
            for i in 0..20 {
                let message = format!("connection {n} message {i}\n").into_bytes();
                sock.write_future(message.clone()).await?;
                if read_exactly(&sock, message.len()).await? != message {
                    return Err(TcpError::other("MISMATCH", "the echo differs"));
                }
            }
            Ok::<_, TcpError>(())
        });
    }
    while let Some(task) = tasks.join_next().await {
        task??;
    }
    println!("3. ten tasks made twenty round trips each");

    // 4. An iotask read racing a tokio timer. The server sends nothing unasked, so the timer
    //    wins and the read future is dropped; a dropped read loses nothing.
    tokio::select! {
        chunk = sock.read_future(READ_TIMEOUT) => {
            return Err(format!("nothing was sent, yet the read returned {chunk:?}").into());
        }
        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
    }
    sock.write_future(b"still here".to_vec()).await?;
    let echo = read_exactly(&sock, 10).await?;
    println!(
        "4. a timer beat a read, then: {:?}",
        String::from_utf8_lossy(&echo)
    );

    // Stop the server; joining its thread blocks, so do it off the runtime's thread.
    let _ = kill.send(None);
    tokio::task::spawn_blocking(move || server.join())
        .await?
        .map_err(|_| "the echo server panicked")??;
    iotask.shutdown();
    Ok(())
}

/// Connects to `addr`. `tcp::connect` blocks until the connection is made, so it runs on
/// tokio's blocking pool rather than on the runtime's thread.
async fn connect(addr: SocketAddr, iotask: &IoTask) -> Result<TcpSocket, Box<dyn Error>> {
    let iotask = iotask.clone();
    Ok(tokio::task::spawn_blocking(move || tcp::connect(addr, &iotask)).await??)
}

/// Reads until `n` bytes came: each read future resolves with one chunk, which may be only
/// part of what the peer sent.
async fn read_exactly(sock: &TcpSocket, n: usize) -> Result<Vec<u8>, TcpError> {
    let mut got = Vec::new();
    while got.len() < n {
        got.extend(sock.read_future(READ_TIMEOUT).await?);
    }
    Ok(got)
}
