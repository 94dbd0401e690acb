//! `WriteFuture` and `ReadFuture`: results the I/O task delivers later, waited on by
//! blocking (`get`) or by `.await`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::marker::PhantomData;
use std::sync::Arc;

use crate::error::{ConnectError, Error};
use crate::io_task::handle::RawStream;
use crate::io_task::writes::WriteState;
use crate::oneshot;
use crate::stream::{Family, Stream};

/// The result of a [`write_future`](super::Stream::write_future): resolves when every
/// byte of the write is in the kernel's send buffer, or with the error that stopped it.
///
/// Wait with [`get`](WriteFuture::get) from a thread or with `.await` from async code (the
/// I/O task wakes the task; no runtime is needed). Dropping the future unresolved is safe:
/// the write still happens, in order with the socket's other writes, and only its outcome is
/// not reported.
#[must_use = "the write happens anyway; call `get` or `.await` to learn whether it succeeded"]
pub struct WriteFuture {
    state: WriteWait,
}

/// A write's number in its stream's `WriteState`, or an outcome known at once.
enum WriteWait {
    Queued(Arc<WriteState>, u64),
    Ready(Option<Result<(), Error>>),
}

/// The result of a [`read_future`](super::Stream::read_future): one chunk of bytes, or
/// the error that ended reading (`EOF`, `ETIMEDOUT` when nothing came in time, …).
///
/// Dropping the future unresolved loses nothing: a chunk that arrived for it, or arrives
/// later, is kept for the socket's next reader, in order. Until the future is resolved and
/// its chunk taken (or it is dropped), it is the socket's reader: another reader gets
/// `"BUSY"`.
#[must_use = "a read future does nothing useful unless waited on"]
pub struct ReadFuture {
    state: State<Vec<u8>>,
}

/// A connect in progress, made by [`tcp::connect_future`](crate::tcp::connect_future) or
/// [`unix::connect_future`](crate::unix::connect_future): resolves with the connected
/// socket. The I/O task runs the connect without blocking any thread; dropping the future
/// abandons it (a socket that connects anyway is closed).
#[must_use = "a connect future does nothing useful unless waited on"]
pub struct ConnectFuture<F: Family> {
    rx: oneshot::Receiver<Result<RawStream, Error>>,
    family: PhantomData<fn() -> F>,
}

enum State<T> {
    Waiting(oneshot::Receiver<Result<T, Error>>),
    Ready(Option<Result<T, Error>>),
}

impl<T> State<T> {
    fn get(self) -> Result<T, Error> {
        match self {
            State::Waiting(rx) => rx.recv().unwrap_or_else(|_| Err(Error::shutdown())),
            State::Ready(result) => result.unwrap_or_else(|| Err(Error::shutdown())),
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<T, Error>> {
        match self {
            State::Waiting(rx) => match rx.poll_recv(cx) {
                Poll::Ready(result) => {
                    Poll::Ready(result.unwrap_or_else(|_| Err(Error::shutdown())))
                }
                Poll::Pending => Poll::Pending,
            },
            // Polling again after completion reports the I/O task as gone rather than
            // panicking.
            State::Ready(result) => {
                Poll::Ready(result.take().unwrap_or_else(|| Err(Error::shutdown())))
            }
        }
    }
}

impl WriteFuture {
    pub(crate) fn queued(writes: Arc<WriteState>, seq: u64) -> WriteFuture {
        WriteFuture {
            state: WriteWait::Queued(writes, seq),
        }
    }

    pub(crate) fn ready(result: Result<(), Error>) -> WriteFuture {
        WriteFuture {
            state: WriteWait::Ready(Some(result)),
        }
    }

    /// Blocks until the write completed.
    ///
    /// # Errors
    ///
    /// The socket's write error (`"EPIPE"`, `"ECONNRESET"`, …), `"CLOSED"` when the socket
    /// was closed before the bytes went out, `"SHUTDOWN"` when the I/O task stopped.
    pub fn get(self) -> Result<(), Error> {
        self.wait(None).unwrap_or_else(|| Err(Error::shutdown()))
    }

    /// Blocks until the write completed or `timeout` passed. The write stays queued either
    /// way; the future can be waited on again.
    ///
    /// # Errors
    ///
    /// `"ETIMEDOUT"` (with [`is_timeout`](Error::is_timeout)) when the write did not
    /// complete in time; otherwise as [`get`](WriteFuture::get).
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use iotask::tcp;
    /// # let iotask = iotask::IoTask::spawn()?;
    /// # let server = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// # let sock = tcp::connect(server.local_addr()?, &iotask)?;
    /// // Far more than the kernel buffers while the peer does not read.
    /// let write = sock.write_future(vec![0u8; 64 << 20]);
    /// assert!(write.get_timeout(Duration::from_millis(50)).unwrap_err().is_timeout());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_timeout(&self, timeout: std::time::Duration) -> Result<(), Error> {
        let deadline = std::time::Instant::now().checked_add(timeout);
        self.wait(deadline).unwrap_or_else(|| Err(Error::timeout()))
    }

    /// Blocks until the write completed, at most until `deadline`; `None` when it passed
    /// first (the write stays queued).
    fn wait(&self, deadline: Option<std::time::Instant>) -> Option<Result<(), Error>> {
        match &self.state {
            WriteWait::Queued(writes, seq) => writes.wait(*seq, deadline),
            WriteWait::Ready(result) => {
                Some(result.clone().unwrap_or_else(|| Err(Error::shutdown())))
            }
        }
    }
}

impl ReadFuture {
    pub(crate) fn waiting(rx: oneshot::Receiver<Result<Vec<u8>, Error>>) -> ReadFuture {
        ReadFuture {
            state: State::Waiting(rx),
        }
    }

    pub(crate) fn ready(result: Result<Vec<u8>, Error>) -> ReadFuture {
        ReadFuture {
            state: State::Ready(Some(result)),
        }
    }

    /// Blocks until a chunk arrived, reading ended, or the timeout passed.
    ///
    /// # Errors
    ///
    /// `"ETIMEDOUT"` (with [`is_timeout`](Error::is_timeout)) when nothing came in time,
    /// `"EOF"` after the peer closed, `"BUSY"` when a port or mailbox already receives this
    /// socket's reads, `"SHUTDOWN"` when the I/O task stopped, or the socket's read error.
    pub fn get(self) -> Result<Vec<u8>, Error> {
        self.state.get()
    }
}

impl<F: Family> ConnectFuture<F> {
    pub(crate) fn new(rx: oneshot::Receiver<Result<RawStream, Error>>) -> ConnectFuture<F> {
        ConnectFuture {
            rx,
            family: PhantomData,
        }
    }

    /// A connect that failed before it started (the address did not resolve).
    pub(crate) fn failed(error: Error) -> ConnectFuture<F> {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(Err(error));
        ConnectFuture::new(rx)
    }

    /// Blocks until the connect completed.
    ///
    /// # Errors
    ///
    /// `ConnectionRefused` when nobody listens; `Generic` for everything else, named after
    /// the kernel's error (`"ENOENT"` for a Unix-domain path nobody bound, `"ETIMEDOUT"`),
    /// `"SHUTDOWN"` when the I/O task stopped.
    pub fn get(self) -> Result<Stream<F>, ConnectError> {
        let raw = self.rx.recv().unwrap_or_else(|_| Err(Error::shutdown()))?;
        Ok(Stream::from_raw(raw))
    }
}

impl<F: Family> Future for ConnectFuture<F> {
    type Output = Result<Stream<F>, ConnectError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Ok(Ok(raw))) => Poll::Ready(Ok(Stream::from_raw(raw))),
            Poll::Ready(Ok(Err(e))) => Poll::Ready(Err(e.into())),
            Poll::Ready(Err(_)) => Poll::Ready(Err(Error::shutdown().into())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<F: Family> fmt::Debug for ConnectFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectFuture").finish_non_exhaustive()
    }
}

impl Future for WriteFuture {
    type Output = Result<(), Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().state {
            WriteWait::Queued(writes, seq) => writes.poll(*seq, cx),
            // Polling again after completion reports the I/O task as gone rather than
            // panicking.
            WriteWait::Ready(result) => {
                Poll::Ready(result.take().unwrap_or_else(|| Err(Error::shutdown())))
            }
        }
    }
}

impl Future for ReadFuture {
    type Output = Result<Vec<u8>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().state.poll(cx)
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
