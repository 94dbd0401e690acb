//! What a slab slot holds, and the generation-checked `Key` that names it.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::io_task::connect::ConnectEntry;
use crate::io_task::datagram::DatagramEntry;
use crate::io_task::listener::ListenerEntry;
use crate::io_task::stream::StreamEntry;

/// A slab index plus the unique id of the socket that held it when the key was
/// made. Slab indices are reused; ids never are, so a late command for a closed stream can
/// never reach the stream that got its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Key {
    pub(crate) index: usize,
    pub(crate) id: u64,
}

/// Hands out ids that are unique in the process, so ids from two I/O tasks never clash.
pub(crate) fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A slab slot.
///
/// Streams far outnumber listeners, so the size difference is kept rather than boxing every
/// stream.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Entry {
    Listener(ListenerEntry),
    Stream(StreamEntry),
    /// A stream whose non-blocking connect has not completed yet (boxed: it holds an
    /// address and the request, and every slot of the slab is as large as its largest
    /// kind).
    Connecting(Box<ConnectEntry>),
    /// A datagram (UDP) socket.
    Datagram(DatagramEntry),
}

impl Entry {
    pub(crate) fn id(&self) -> u64 {
        match self {
            Entry::Listener(l) => l.id,
            Entry::Stream(s) => s.id,
            Entry::Connecting(c) => c.id,
            Entry::Datagram(d) => d.id,
        }
    }
}
