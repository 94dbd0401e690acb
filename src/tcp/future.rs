//! `WriteFuture` and `ReadFuture`: results the I/O task delivers later, waited on by
//! blocking (`get`) or by `.await`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::Arc;

use crate::io_task::Shared;
use crate::io_task::command::Command;
use crate::io_task::entry::Key;
use crate::oneshot;
use crate::tcp::TcpError;

/// The result of a [`write_future`](super::TcpSocket::write_future): resolves when every
/// byte of the write is in the kernel's send buffer, or with the error that stopped it.
///
/// Wait with [`get`](WriteFuture::get) from a thread or with `.await` from async code (the
/// I/O task wakes the task; no runtime is needed). Dropping the future unresolved is safe:
/// the write still happens, in order with the socket's other writes, and only its outcome is
/// not reported.
#[must_use = "the write happens anyway; call `get` or `.await` to learn whether it succeeded"]
pub struct WriteFuture {
    state: State<()>,
}

/// The result of a [`read_future`](super::TcpSocket::read_future): one chunk of bytes, or
/// the error that ended reading (`EOF`, `ETIMEDOUT` when nothing came in time, …).
///
/// Dropping the future unresolved loses nothing: a chunk that arrives for a dropped future
/// is kept for the socket's next reader.
#[must_use = "a read future does nothing useful unless waited on"]
pub struct ReadFuture {
    state: State<Vec<u8>>,
    /// Where a chunk that arrived for a future dropped unread is given back.
    socket: Option<(Key, Arc<Shared>)>,
}

enum State<T> {
    Waiting(oneshot::Receiver<Result<T, TcpError>>),
    Ready(Option<Result<T, TcpError>>),
}

impl<T> State<T> {
    fn get(self) -> Result<T, TcpError> {
        match self {
            State::Waiting(rx) => rx.recv().unwrap_or_else(|_| Err(TcpError::shutdown())),
            State::Ready(result) => result.unwrap_or_else(|| Err(TcpError::shutdown())),
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<T, TcpError>> {
        match self {
            State::Waiting(rx) => match rx.poll_recv(cx) {
                Poll::Ready(result) => {
                    Poll::Ready(result.unwrap_or_else(|_| Err(TcpError::shutdown())))
                }
                Poll::Pending => Poll::Pending,
            },
            // Polling again after completion reports the I/O task as gone rather than
            // panicking.
            State::Ready(result) => {
                Poll::Ready(result.take().unwrap_or_else(|| Err(TcpError::shutdown())))
            }
        }
    }
}

impl WriteFuture {
    pub(crate) fn waiting(rx: oneshot::Receiver<Result<(), TcpError>>) -> WriteFuture {
        WriteFuture {
            state: State::Waiting(rx),
        }
    }

    pub(crate) fn ready(result: Result<(), TcpError>) -> WriteFuture {
        WriteFuture {
            state: State::Ready(Some(result)),
        }
    }

    /// Blocks until the write completed.
    ///
    /// # Errors
    ///
    /// The socket's write error (`"EPIPE"`, `"ECONNRESET"`, …), `"CLOSED"` when the socket
    /// was closed before the bytes went out, `"SHUTDOWN"` when the I/O task stopped.
    pub fn get(self) -> Result<(), TcpError> {
        self.state.get()
    }
}

impl ReadFuture {
    pub(crate) fn waiting(
        rx: oneshot::Receiver<Result<Vec<u8>, TcpError>>,
        key: Key,
        task: Arc<Shared>,
    ) -> ReadFuture {
        ReadFuture {
            state: State::Waiting(rx),
            socket: Some((key, task)),
        }
    }

    pub(crate) fn ready(result: Result<Vec<u8>, TcpError>) -> ReadFuture {
        ReadFuture {
            state: State::Ready(Some(result)),
            socket: None,
        }
    }

    /// Blocks until a chunk arrived, reading ended, or the timeout passed.
    ///
    /// # Errors
    ///
    /// `"ETIMEDOUT"` (with [`is_timeout`](TcpError::is_timeout)) when nothing came in time,
    /// `"EOF"` after the peer closed, `"BUSY"` when a port or mailbox already receives this
    /// socket's reads, `"SHUTDOWN"` when the I/O task stopped, or the socket's read error.
    pub fn get(mut self) -> Result<Vec<u8>, TcpError> {
        self.socket = None;
        std::mem::replace(&mut self.state, State::Ready(None)).get()
    }
}

impl Drop for ReadFuture {
    fn drop(&mut self) {
        // A chunk that arrived but was never taken goes back in front of the socket's next
        // read; one that arrives later is given back by the I/O task itself.
        if let (State::Waiting(rx), Some((key, task))) = (&self.state, &self.socket) {
            if let Some(Ok(data)) = rx.close() {
                let _ = task.send(Command::Unread { key: *key, data });
            }
        }
    }
}

impl Future for WriteFuture {
    type Output = Result<(), TcpError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().state.poll(cx)
    }
}

impl Future for ReadFuture {
    type Output = Result<Vec<u8>, TcpError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let result = this.state.poll(cx);
        if result.is_ready() {
            this.socket = None;
        }
        result
    }
}

impl fmt::Debug for WriteFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteFuture").finish_non_exhaustive()
    }
}

impl fmt::Debug for ReadFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadFuture").finish_non_exhaustive()
    }
}
