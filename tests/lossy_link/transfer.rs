//! Moving a known byte stream through an iotask socket and checking it on the other side:
//! a deterministic pattern per stream, a checksum of what went out and what came in, and a
//! bounded wait for the futures iotask returns.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use iotask::tcp::{ReadPort, TcpSocket};

/// The size of each write.
pub const CHUNK: usize = 256 * 1024;
/// Writes queued at once: enough to keep the kernel's send buffer full, bounded memory.
const IN_FLIGHT: usize = 8;

/// The byte at `offset` of stream `key`: not periodic at any small period and different
/// for every stream, so a lost, repeated, reordered or crossed segment shows.
pub fn pattern_byte(key: u64, offset: u64) -> u8 {
    let x = (offset ^ key.rotate_left(40)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 56) as u8 ^ offset as u8
}

/// FNV-1a, 64 bits: the checksum both ends compute over the stream.
#[derive(Debug, Clone, Copy)]
pub struct Checksum(u64);

impl Checksum {
    pub fn new() -> Checksum {
        Checksum(0xCBF2_9CE4_8422_2325)
    }

    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3);
        }
    }

    pub fn value(self) -> u64 {
        self.0
    }
}

/// What one end sent.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub bytes: u64,
    pub checksum: u64,
    /// From the first write to the last write future resolved.
    pub elapsed: Duration,
}

/// What one end received.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub bytes: u64,
    pub checksum: u64,
    /// From the start of the transfer to the end of the stream.
    pub elapsed: Duration,
    /// The longest wait between two chunks, and when it ended.
    pub longest_gap: Duration,
    pub longest_gap_end: Instant,
}

/// Writes `total` bytes of stream `key` to `sock` with at most [`IN_FLIGHT`] writes queued,
/// then shuts its sending side down. Fails when a write fails or one waits longer than
/// `stall`.
pub fn send_stream(
    sock: &TcpSocket,
    key: u64,
    total: u64,
    stall: Duration,
) -> Result<Sent, String> {
    let start = Instant::now();
    let mut checksum = Checksum::new();
    let mut queued = VecDeque::new();
    let mut offset = 0u64;
    while offset < total {
        let len = (total - offset).min(CHUNK as u64) as usize;
        let data: Vec<u8> = (offset..offset + len as u64)
            .map(|i| pattern_byte(key, i))
            .collect();
        checksum.update(&data);
        queued.push_back((offset, sock.write_future(data)));
        offset += len as u64;
        if queued.len() >= IN_FLIGHT {
            let (at, write) = queued.pop_front().expect("not empty");
            finish_write(write, at, stall)?;
        }
    }
    for (at, write) in queued {
        finish_write(write, at, stall)?;
    }
    sock.shutdown_write()
        .map_err(|e| format!("shutdown_write: {e}"))?;
    Ok(Sent {
        bytes: total,
        checksum: checksum.value(),
        elapsed: start.elapsed(),
    })
}

fn finish_write(write: iotask::tcp::WriteFuture, at: u64, stall: Duration) -> Result<(), String> {
    match wait_future(write, stall) {
        Some(Ok(())) => Ok(()),
        Some(Err(e)) => Err(format!("the write at offset {at} failed: {e}")),
        None => Err(format!("the write at offset {at} waited over {stall:?}")),
    }
}

/// Receives stream `key` from `port` until its end, checking every byte against the
/// pattern where it arrives; `progress` follows the byte count. Fails on the first wrong
/// byte, an error other than the end, more or fewer than `total` bytes, or a wait for a
/// chunk longer than `stall`.
pub fn receive_stream(
    port: &ReadPort,
    key: u64,
    total: u64,
    stall: Duration,
    progress: &AtomicU64,
) -> Result<Received, String> {
    let start = Instant::now();
    let mut checksum = Checksum::new();
    let mut offset = 0u64;
    let mut last = start;
    let mut longest_gap = Duration::ZERO;
    let mut longest_gap_end = start;
    loop {
        match port.recv_timeout(stall) {
            Ok(chunk) => {
                let now = Instant::now();
                if now - last > longest_gap {
                    longest_gap = now - last;
                    longest_gap_end = now;
                }
                last = now;
                if let Some(i) =
                    (0..chunk.len()).find(|&i| chunk[i] != pattern_byte(key, offset + i as u64))
                {
                    return Err(format!(
                        "byte {} of stream {key:#x} is wrong (chunk of {} at {offset})",
                        offset + i as u64,
                        chunk.len()
                    ));
                }
                checksum.update(&chunk);
                offset += chunk.len() as u64;
                progress.store(offset, Ordering::Relaxed);
                if offset > total {
                    return Err(format!("{offset} bytes received, {total} sent"));
                }
            }
            Err(e) if e.is_eof() => break,
            Err(e) if e.is_timeout() && e.raw_os_error().is_none() => {
                return Err(format!(
                    "nothing received for {stall:?} after {offset} bytes"
                ));
            }
            Err(e) => return Err(format!("after {offset} bytes: {e}")),
        }
    }
    if offset != total {
        return Err(format!("the stream ended after {offset} of {total} bytes"));
    }
    Ok(Received {
        bytes: offset,
        checksum: checksum.value(),
        elapsed: start.elapsed(),
        longest_gap,
        longest_gap_end,
    })
}

/// Waits for `future` on this thread for at most `limit`; `None` when it did not resolve.
///
/// iotask's futures have a blocking `get` without a deadline; polling them with a waker
/// that unparks this thread gives one.
pub fn wait_future<F: Future + Unpin>(mut future: F, limit: Duration) -> Option<F::Output> {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let deadline = Instant::now() + limit;
    loop {
        if let Poll::Ready(output) = Pin::new(&mut future).poll(&mut cx) {
            return Some(output);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        std::thread::park_timeout(left);
    }
}
