//! `SocketBuf`: a stream socket as a buffered `Read + BufRead + Write` stream.

use std::fmt;
use std::io::{self, BufRead, Read, Write};
use std::time::Duration;

use crate::error::Error;
use crate::stream::{Family, ReadPort, Stream};

/// Writes are gathered up to this size before they are handed to the I/O task.
const WRITE_BUFFER: usize = 64 * 1024;

/// A stream socket ([`TcpSocket`](crate::tcp::TcpSocket), or a Unix-domain one) as a
/// blocking, buffered stream: [`Read`], [`BufRead`] and [`Write`].
///
/// Made by [`tcp::socket_buf`](crate::tcp::socket_buf) or [`SocketBuf::new`]. Reads start a port on first use and return
/// `Ok(0)` at the end of the stream; writes are buffered and handed to the I/O task on
/// [`flush`](Write::flush) or when 64 KiB have gathered. Dropping the buffer hands the
/// unflushed bytes to the socket, which writes them before it closes; call `flush` to learn
/// whether they were written.
///
/// # Examples
///
/// ```
/// use std::io::{BufRead, Write};
/// use iotask::tcp;
///
/// let iotask = iotask::IoTask::spawn()?;
/// let server = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let mut buf = tcp::socket_buf(tcp::connect(server.local_addr()?, &iotask)?);
/// let (peer, _) = server.accept()?;
/// std::thread::spawn(move || {
///     // Echo one line back.
///     let mut line = String::new();
///     std::io::BufReader::new(&peer).read_line(&mut line).unwrap();
///     (&peer).write_all(line.as_bytes()).unwrap();
/// });
///
/// writeln!(buf, "hello")?;
/// buf.flush()?;
/// let mut line = String::new();
/// buf.read_line(&mut line)?;
/// assert_eq!(line, "hello\n");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SocketBuf<F: Family> {
    socket: Option<Stream<F>>,
    port: Option<ReadPort>,
    /// The chunk being read, and how much of it was consumed.
    chunk: Vec<u8>,
    pos: usize,
    out: Vec<u8>,
    eof: bool,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

impl<F: Family> SocketBuf<F> {
    /// Wraps a socket.
    pub fn new(socket: Stream<F>) -> SocketBuf<F> {
        SocketBuf {
            socket: Some(socket),
            port: None,
            chunk: Vec::new(),
            pos: 0,
            out: Vec::new(),
            eof: false,
            read_timeout: None,
            write_timeout: None,
        }
    }

    /// Makes reads fail with [`io::ErrorKind::TimedOut`] when no byte comes within
    /// `timeout`; `None` (the default) waits forever.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read_timeout = timeout;
    }

    /// Another buffered socket on the same connection, with buffers of its own: one for a
    /// thread that reads, one for a thread that writes (see [`Stream::try_clone`] for the
    /// rule: one reader at a time, any number of writers).
    ///
    /// # Errors
    ///
    /// As [`Stream::try_clone`].
    pub fn try_clone(&self) -> Result<SocketBuf<F>, Error> {
        let mut clone = SocketBuf::new(self.get_ref().try_clone()?);
        clone.read_timeout = self.read_timeout;
        clone.write_timeout = self.write_timeout;
        Ok(clone)
    }

    /// Makes flushes fail with [`io::ErrorKind::TimedOut`] when the kernel has not taken the
    /// bytes within `timeout`; `None` (the default) waits forever (or until the socket's
    /// deadline). The bytes stay queued and still go out.
    pub fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.write_timeout = timeout;
    }

    /// The socket inside.
    pub fn get_ref(&self) -> &Stream<F> {
        self.socket
            .as_ref()
            .expect("the socket is present until into_inner")
    }

    /// Flushes, stops reading, and gives the socket back. Bytes received but not yet read
    /// through the buffer are put back in front of the socket's next read.
    ///
    /// # Errors
    ///
    /// The error of the flush; the socket is then dropped (its writes had failed anyway).
    pub fn into_inner(mut self) -> Result<Stream<F>, Error> {
        self.flush_out()?;
        let socket = self
            .socket
            .take()
            .expect("the socket is present until into_inner");
        if let Some(port) = self.port.take() {
            socket.read_stop(port)?;
        }
        let rest = self.chunk.split_off(self.pos);
        if !rest.is_empty() {
            socket.raw().unread(rest);
        }
        Ok(socket)
    }

    /// Flushes the buffer, then shuts down the sending side: the peer reads every byte
    /// written before this call, then the end of the stream.
    ///
    /// # Errors
    ///
    /// The error of the flush or of the shutdown.
    pub fn shutdown_write(&mut self) -> Result<(), Error> {
        self.flush_out()?;
        self.get_ref().shutdown_write()
    }

    /// Shuts down the reading half (see [`Stream::shutdown_read`]); bytes already in this
    /// buffer can still be read.
    ///
    /// # Errors
    ///
    /// As [`Stream::shutdown_read`].
    pub fn shutdown_read(&mut self) -> Result<(), Error> {
        self.get_ref().shutdown_read()
    }

    /// Flushes the buffer, then shuts down both halves (see [`Stream::shutdown`]).
    ///
    /// # Errors
    ///
    /// The error of the flush or of the shutdown.
    pub fn shutdown(&mut self) -> Result<(), Error> {
        self.flush_out()?;
        self.get_ref().shutdown()
    }

    /// Resets the connection now, discarding this buffer's unflushed bytes along with the
    /// socket's queued writes (see [`Stream::abort`]).
    ///
    /// # Errors
    ///
    /// As [`Stream::abort`].
    pub fn abort(&mut self) -> Result<(), Error> {
        self.out.clear();
        self.get_ref().abort()
    }

    fn flush_out(&mut self) -> Result<(), Error> {
        if self.out.is_empty() {
            return Ok(());
        }
        let data = std::mem::take(&mut self.out);
        let write = self.get_ref().write_future(data);
        match self.write_timeout {
            Some(timeout) => write.get_timeout(timeout),
            None => write.get(),
        }
    }
}

impl<F: Family> Read for SocketBuf<F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<F: Family> BufRead for SocketBuf<F> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.pos == self.chunk.len() && !self.eof {
            if self.port.is_none() {
                self.port = Some(self.get_ref().read_start()?);
            }
            let port = self.port.as_ref().expect("started above");
            let socket_left = self
                .get_ref()
                .deadline()
                .map(|d| d.saturating_duration_since(std::time::Instant::now()));
            let bound = match (self.read_timeout, socket_left) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let next = match bound {
                Some(t) => port.recv_timeout(t),
                None => port.recv(),
            };
            match next {
                Ok(chunk) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Err(e) if e.is_eof() => self.eof = true,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(&self.chunk[self.pos..])
    }

    fn consume(&mut self, amt: usize) {
        self.pos = (self.pos + amt).min(self.chunk.len());
    }
}

impl<F: Family> Write for SocketBuf<F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.extend_from_slice(buf);
        if self.out.len() >= WRITE_BUFFER {
            self.flush_out()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(self.flush_out()?)
    }
}

impl<F: Family> Drop for SocketBuf<F> {
    fn drop(&mut self) {
        if let Some(socket) = &self.socket {
            if !self.out.is_empty() {
                // The socket flushes its queue before closing; nobody waits for the outcome.
                drop(socket.write_future(std::mem::take(&mut self.out)));
            }
        }
    }
}

impl<F: Family> fmt::Debug for SocketBuf<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SocketBuf")
            .field("socket", &self.socket)
            .field("buffered_in", &(self.chunk.len() - self.pos))
            .field("buffered_out", &self.out.len())
            .finish()
    }
}
