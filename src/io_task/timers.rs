//! The loop's one timer structure: a min-heap of deadlines, swept of dead timers as it grows.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use crate::io_task::entry::Key;

/// Timers are swept when the heap reaches this size, or twice its size after the last sweep.
const MIN_PRUNE: usize = 1024;

/// What a timer does when it fires. Each names its target by key, so a timer outliving its
/// target does nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// A `ReadFuture`'s timeout.
    ReadDeadline(Key),
    /// A closing stream's flush or linger time ran out.
    DrainDeadline(Key),
    /// Accept again after running out of descriptors.
    AcceptRetry(Key),
    /// A stream's deadline: its queued writes fail.
    WriteDeadline(Key),
    /// The oldest queued write of a stream with an age limit may have waited too long.
    WriteAge(Key),
    /// A connect attempt's timeout.
    ConnectDeadline(Key),
    /// Try a Unix-domain connect again whose listener's backlog was full.
    ConnectRetry(Key),
    /// Close what is left of a draining listener's connections (by listener id).
    DrainListener(u64),
    /// A datagram `RecvFuture`'s timeout.
    RecvDeadline(Key),
    /// A closed datagram socket's queued sends ran out of time.
    DatagramLinger(Key),
}

/// Deadlines, soonest first.
///
/// # Invariant
///
/// The heap holds at most about twice the number of live timers once it is past
/// `MIN_PRUNE`: a read that resolves before its deadline leaves its timer behind (a heap
/// cannot remove from the middle), so `push` sweeps out the timers that can no longer fire.
#[derive(Debug)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, Timer)>>,
    /// The heap size at which dead timers are swept out.
    prune_at: usize,
}

impl Timers {
    pub(crate) fn new() -> Timers {
        Timers {
            heap: BinaryHeap::new(),
            prune_at: MIN_PRUNE,
        }
    }

    /// Schedules `timer` at `at`; `None` (a deadline past the end of time) schedules nothing.
    /// `is_live` says whether an older timer would still do something when it fires.
    pub(crate) fn push(
        &mut self,
        at: Option<Instant>,
        timer: Timer,
        is_live: impl Fn(Instant, Timer) -> bool,
    ) {
        let Some(at) = at else { return };
        self.heap.push(Reverse((at, timer)));
        if self.heap.len() >= self.prune_at {
            let heap = std::mem::take(&mut self.heap);
            self.heap = heap
                .into_iter()
                .filter(|Reverse((at, timer))| is_live(*at, *timer))
                .collect();
            self.prune_at = (self.heap.len() * 2).max(MIN_PRUNE);
        }
    }

    /// How long until the next timer is due (`None`: no timer).
    pub(crate) fn next_timeout(&self) -> Option<Duration> {
        self.heap
            .peek()
            .map(|Reverse((at, _))| at.saturating_duration_since(Instant::now()))
    }

    /// Takes the next timer due at or before `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(Instant, Timer)> {
        let Reverse((at, _)) = self.heap.peek()?;
        if *at > now {
            return None;
        }
        self.heap.pop().map(|Reverse(t)| t)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}

/// `now + after`, or `None` when that lies beyond what `Instant` can hold (a timeout of
/// `Duration::MAX` means "never").
pub(crate) fn deadline_after(after: std::time::Duration) -> Option<Instant> {
    Instant::now().checked_add(after)
}
