//! `Stats`: what an I/O task has done, counted by its loop and published once per cycle.

/// Counters of one I/O task, read with [`IoTask::stats`](crate::IoTask::stats).
///
/// The loop counts in plain integers as it goes, which costs it nothing per message, and
/// answers `stats` between two cycles. Totals count from the task's start.
///
/// # Examples
///
/// ```
/// let iotask = iotask::IoTask::spawn()?;
/// let server = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let sock = iotask::tcp::connect(server.local_addr()?, &iotask)?;
/// sock.write(b"ping".to_vec())?;
/// let stats = iotask.stats();
/// assert_eq!(stats.streams, 1);
/// assert_eq!(stats.bytes_written, 4);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connected sockets open now (closing ones included until they are closed).
    pub streams: u64,
    /// Listening sockets open now.
    pub listeners: u64,
    /// Connects in progress now.
    pub connecting: u64,
    /// Connections accepted.
    pub accepted: u64,
    /// Connects that succeeded.
    pub connected: u64,
    /// Bytes received from the kernel.
    pub bytes_read: u64,
    /// Bytes handed to the kernel.
    pub bytes_written: u64,
    /// `recv` calls that returned bytes.
    pub reads: u64,
    /// `send`/`sendmsg` calls that wrote bytes.
    pub writes: u64,
    /// Waits on the poller.
    pub waits: u64,
    /// Commands handled (reads started, writes queued, closes, ...).
    pub commands: u64,
    /// Reads or writes that met a connection reset by the peer (`ECONNRESET`).
    pub resets: u64,
    /// Datagram (UDP) sockets open now.
    pub datagram_sockets: u64,
    /// Datagrams received (their bytes count in `bytes_read`).
    pub datagrams_received: u64,
    /// Datagrams sent (their bytes count in `bytes_written`).
    pub datagrams_sent: u64,
    /// Datagrams received and dropped because their reader's window was full.
    pub datagrams_dropped: u64,
}
