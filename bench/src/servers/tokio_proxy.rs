//! tokio's proxy in the shape of tokio's own proxy example: a task per client that connects
//! to the upstream and runs `tokio::io::copy_bidirectional` between the two, on a
//! current-thread runtime.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

pub(super) fn serve(addr: &str, upstream: SocketAddr) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    runtime.block_on(async {
        let listener = TcpListener::bind(addr).await?;
        super::announce(listener.local_addr()?);
        loop {
            let (mut client, _) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    eprintln!("tokio-proxy: accept: {e}");
                    tokio::task::yield_now().await;
                    continue;
                }
            };
            client.set_nodelay(true)?;
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = server.set_nodelay(true);
                // Copies both ways until both have ended, passing each EOF on as a
                // half-close.
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    })
}
