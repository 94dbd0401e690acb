//! tokio's echo server in the shape of tokio's own README: a task per connection that
//! reads into a buffer and writes it all back.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Serves on a current-thread runtime (`workers` is `None`) or a multi-thread one.
pub(super) fn serve(addr: &str, workers: Option<usize>) -> io::Result<()> {
    let runtime = match workers {
        None => tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?,
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_io()
            .build()?,
    };
    runtime.block_on(async {
        let listener = TcpListener::bind(addr).await?;
        super::announce(listener.local_addr()?);
        loop {
            let (mut socket, _) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    eprintln!("tokio: accept: {e}");
                    tokio::task::yield_now().await;
                    continue;
                }
            };
            socket.set_nodelay(true)?;
            tokio::spawn(async move {
                // `read_buf` fills spare capacity without zeroing it first, so an idle
                // connection's buffer costs address space, not resident memory.
                let mut buf = Vec::with_capacity(super::ECHO_BUFFER);
                loop {
                    buf.clear();
                    match socket.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    if socket.write_all(&buf).await.is_err() {
                        return;
                    }
                }
            });
        }
    })
}
