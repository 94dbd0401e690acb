//! `ReadPort`: the channel end on which one socket's reads arrive.

use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use crate::error::Error;
use crate::io_task::entry::Key;
use crate::io_task::handle::PortParts;
use crate::io_task::sink::Chunk;

/// Receives the chunks read from one socket, in order; made by
/// [`read_start`](super::Stream::read_start) on a stream socket.
///
/// Each chunk is what one `recv(2)` returned, at its exact length (never empty). When the
/// peer closes, the port yields `Err(e)` with [`e.is_eof()`](Error::is_eof) after the
/// last byte, and keeps yielding that error on every later call; a read error (a reset)
/// ends the port the same way.
///
/// Give the port back with [`read_stop`](super::Stream::read_stop) to stop
/// reading without losing anything. Dropping it instead discards the chunks it holds.
///
/// A port holds at most about one read window of unreceived bytes (see
/// [`Builder::read_window`](crate::Builder::read_window)): beyond that the socket is not
/// read until you receive.
pub struct ReadPort {
    pub(crate) key: Key,
    pub(crate) parts: PortParts,
    /// The error that ended the stream, repeated to every later call.
    end: OnceLock<Error>,
}

impl ReadPort {
    pub(crate) fn new(key: Key, parts: PortParts) -> ReadPort {
        ReadPort {
            key,
            parts,
            end: OnceLock::new(),
        }
    }

    /// Blocks until the next chunk arrives.
    ///
    /// # Errors
    ///
    /// `"EOF"` after the peer closed; the socket's read error (`"ECONNRESET"`, …);
    /// `"CLOSED"` when the socket was dropped; `"SHUTDOWN"` when the I/O task stopped. Once
    /// an error was returned, every later call returns it again.
    pub fn recv(&self) -> Result<Vec<u8>, Error> {
        if let Some(end) = self.end.get() {
            return Err(end.clone());
        }
        self.take(self.parts.rx.recv().ok())
    }

    /// Like [`recv`](ReadPort::recv), but gives up after `timeout`.
    ///
    /// # Errors
    ///
    /// An error with [`is_timeout()`](Error::is_timeout) (named `"ETIMEDOUT"`) when
    /// nothing came in time; this does not end the port. Otherwise as `recv`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Vec<u8>, Error> {
        if let Some(end) = self.end.get() {
            return Err(end.clone());
        }
        match self.parts.rx.recv_timeout(timeout) {
            Ok(chunk) => self.take(Some(chunk)),
            Err(flume::RecvTimeoutError::Timeout) => Err(Error::timeout()),
            Err(flume::RecvTimeoutError::Disconnected) => self.take(None),
        }
    }

    /// Returns the next chunk if one is waiting, without blocking.
    pub fn try_recv(&self) -> Option<Result<Vec<u8>, Error>> {
        if let Some(end) = self.end.get() {
            return Some(Err(end.clone()));
        }
        match self.parts.rx.try_recv() {
            Ok(chunk) => Some(self.take(Some(chunk))),
            Err(flume::TryRecvError::Empty) => None,
            Err(flume::TryRecvError::Disconnected) => Some(self.take(None)),
        }
    }

    fn take(&self, chunk: Option<Chunk>) -> Result<Vec<u8>, Error> {
        match chunk {
            Some(Ok(data)) => {
                self.parts.window.sub(data.len());
                Ok(data)
            }
            Some(Err(e)) => Err(self.end.get_or_init(|| e).clone()),
            // The I/O task dropped the port without a final error: it stopped abnormally.
            None => Err(self.end.get_or_init(Error::shutdown).clone()),
        }
    }
}

impl fmt::Debug for ReadPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadPort")
            .field("queued", &self.parts.rx.len())
            .field("ended", &self.end.get().is_some())
            .finish()
    }
}
