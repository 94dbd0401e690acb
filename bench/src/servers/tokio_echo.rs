//! tokio's echo server in the shape of tokio's own README: a task per connection that
//! reads into a buffer and writes it all back; on TCP, or on a Unix-domain socket.

use std::io;
use std::path::Path;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};

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
            let (socket, _) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    eprintln!("tokio: accept: {e}");
                    tokio::task::yield_now().await;
                    continue;
                }
            };
            socket.set_nodelay(true)?;
            tokio::spawn(echo(socket));
        }
    })
}

/// The same server on a Unix-domain socket at `path`, on a current-thread runtime.
pub(super) fn serve_unix(path: &Path) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    runtime.block_on(async {
        let listener = UnixListener::bind(path)?;
        super::announce_unix(path);
        loop {
            let (socket, _) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    eprintln!("tokio: accept: {e}");
                    tokio::task::yield_now().await;
                    continue;
                }
            };
            tokio::spawn(echo(socket));
        }
    })
}

/// One connection's task: echoes until the peer closes or an error.
async fn echo(mut socket: impl AsyncRead + AsyncWrite + Unpin) {
    // `read_buf` fills spare capacity without zeroing it first, so an idle connection's
    // buffer costs address space, not resident memory.
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
}
