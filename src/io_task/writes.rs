//! `WriteState`: how a stream's writers learn that their writes completed, without a
//! one-shot channel (an allocation, and a lock for the loop) per write.
//!
//! Writes complete in the order they were queued, so a stream needs only counters: each
//! write is numbered as it is queued, the loop counts the writes that completed, and write
//! number `n` succeeded once that count passed `n`. A failure fails every write from the
//! first one still queued onwards, and is kept, so later writes fail with it. A writer that
//! waits registers itself; the loop takes the lock to wake anybody only when someone waits.
//! A write whose future is dropped at once (the common case of an actor's reply) thus costs
//! one uncontended lock on the user side and two atomic operations on the loop's.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::error::Error;

/// Set in `queued` once the stream left its slab: the count is then meaningless and
/// reported as zero.
pub(crate) const QUEUED_CLOSED: usize = 1 << (usize::BITS - 1);

/// The write side of a stream, shared by its user handle (which numbers and queues writes)
/// and its slab entry (which completes them).
#[derive(Debug, Default)]
pub(crate) struct WriteState {
    /// Bytes handed to `write` and not yet in the kernel: the user side adds, the loop
    /// subtracts; `QUEUED_CLOSED` once the stream is gone.
    pub(crate) queued: AtomicUsize,
    /// What the user set beyond reading and writing, made on first use: a socket that
    /// uses none of it carries one pointer, and checks it with one load.
    controls: OnceLock<Box<Controls>>,
    /// The number the next write gets. Held while the write command is sent, so that
    /// numbers follow the order in which the loop receives the writes.
    next: Mutex<u64>,
    /// How many writes completed, all of them successfully (the first `done` numbers).
    done: AtomicU64,
    /// Threads and tasks waiting for a write of this stream.
    waiting: AtomicUsize,
    /// Guards `failed` and `wakers`; `changed` is signalled under it.
    inner: Mutex<Waiting>,
    changed: Condvar,
}

/// A socket's optional controls (see `WriteState::controls`).
#[derive(Debug, Default)]
pub(crate) struct Controls {
    /// Set by the user (`SO_LINGER` 0): closing the stream resets it instead of flushing.
    pub(crate) reset_on_close: AtomicBool,
    /// The high and low watermarks of the queue, in bytes (`high` 0: none): once more than
    /// `high` bytes were queued, the stream's mailbox hears when no more than `low` are.
    pub(crate) high: AtomicUsize,
    pub(crate) low: AtomicUsize,
    /// Set by the writer whose bytes took the queue past `high` (before its write reaches
    /// the loop, so the loop cannot miss it); cleared by the loop, which then tells the
    /// mailbox, once no more than `low` are queued. Both sides count with `queued`, the
    /// figure an actor reads.
    pub(crate) above_high: AtomicBool,
    /// How long, in milliseconds, queued bytes may wait before the stream fails (0: no
    /// limit).
    pub(crate) age_limit_ms: AtomicU64,
    /// The socket's deadline, shared by all its handles, which bounds blocking reads on the
    /// user's side; the loop keeps its own copy, for the writes.
    pub(crate) deadline: Mutex<Option<std::time::Instant>>,
    /// Whether `deadline` is set, so that reads and writes take no lock to find out.
    pub(crate) has_deadline: AtomicBool,
}

#[derive(Debug, Default)]
struct Waiting {
    /// Every write numbered at or above `.0` fails with `.1`.
    failed: Option<(u64, Box<Error>)>,
    /// Tasks awaiting write number `.0`.
    /// Boxed: most streams never have an async waiter, and a `Vec` inline would cost each of
    /// them 16 bytes more.
    #[allow(clippy::box_collection)]
    wakers: Option<Box<Vec<(u64, Waker)>>>,
}

/// The outcome of write number `seq`, once it is known.
fn outcome(done: u64, failed: &Option<(u64, Box<Error>)>, seq: u64) -> Option<Result<(), Error>> {
    match failed {
        Some((from, error)) if seq >= *from => Some(Err((**error).clone())),
        _ if seq < done => Some(Ok(())),
        _ => None,
    }
}

impl WriteState {
    pub(crate) fn new() -> WriteState {
        WriteState::default()
    }

    /// The socket's controls, if the user set any.
    pub(crate) fn controls(&self) -> Option<&Controls> {
        self.controls.get().map(|c| &**c)
    }

    /// The socket's controls, made now if need be.
    pub(crate) fn controls_or_init(&self) -> &Controls {
        self.controls.get_or_init(Box::default)
    }

    /// Numbers a write and queues it through `send` (which sends the command), holding
    /// the numbering lock across the send so that numbers follow the loop's order.
    pub(crate) fn queue<E>(&self, send: impl FnOnce() -> Result<(), E>) -> Result<u64, E> {
        let mut next = lock(&self.next);
        send()?;
        let seq = *next;
        *next += 1;
        Ok(seq)
    }

    /// The loop completed the oldest write still queued.
    pub(crate) fn complete_one(&self) {
        self.done.fetch_add(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.wake();
        }
    }

    /// Every write not yet completed, and every later one, fails with `error` (a failure
    /// recorded earlier is kept).
    pub(crate) fn fail(&self, error: Error) {
        let mut inner = self.lock();
        if inner.failed.is_none() {
            inner.failed = Some((self.done.load(Ordering::SeqCst), Box::new(error)));
        }
        drop(inner);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.wake();
        }
    }

    fn wake(&self) {
        let mut inner = self.lock();
        let done = self.done.load(Ordering::SeqCst);
        let mut woken = Vec::new();
        let failed = inner.failed.clone();
        if let Some(wakers) = &mut inner.wakers {
            wakers.retain(|(seq, waker)| {
                if outcome(done, &failed, *seq).is_some() {
                    woken.push(waker.clone());
                    false
                } else {
                    true
                }
            });
        }
        drop(inner);
        // Each woken task was counted as waiting when it registered.
        self.waiting.fetch_sub(woken.len(), Ordering::SeqCst);
        self.changed.notify_all();
        for waker in woken {
            waker.wake();
        }
    }

    /// Blocks until write number `seq` completed or `deadline` passed (`None` on timeout).
    pub(crate) fn wait(&self, seq: u64, deadline: Option<Instant>) -> Option<Result<(), Error>> {
        let mut inner = self.lock();
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let result = loop {
            if let Some(result) = outcome(self.done.load(Ordering::SeqCst), &inner.failed, seq) {
                break Some(result);
            }
            inner = match deadline {
                None => self.changed.wait(inner).unwrap_or_else(|p| p.into_inner()),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        break None;
                    }
                    self.changed
                        .wait_timeout(inner, deadline - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        };
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        result
    }

    /// Polls write number `seq` from async code.
    pub(crate) fn poll(&self, seq: u64, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let mut inner = self.lock();
        if let Some(result) = outcome(self.done.load(Ordering::SeqCst), &inner.failed, seq) {
            return Poll::Ready(result);
        }
        let wakers = inner.wakers.get_or_insert_with(Box::default);
        let known = wakers
            .iter()
            .any(|(s, w)| *s == seq && w.will_wake(cx.waker()));
        if !known {
            wakers.push((seq, cx.waker().clone()));
            // Counted until the loop wakes it (it is then removed from `wakers`).
            self.waiting.fetch_add(1, Ordering::SeqCst);
        }
        // The loop may have completed the write between the check and the registration.
        if let Some(result) = outcome(self.done.load(Ordering::SeqCst), &inner.failed, seq) {
            return Poll::Ready(result);
        }
        Poll::Pending
    }

    fn lock(&self) -> MutexGuard<'_, Waiting> {
        lock(&self.inner)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a few assignments: a panic cannot leave them half done.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn writes_complete_in_order_and_fail_from_the_first_pending_one() {
        let state = WriteState::new();
        let seqs: Vec<u64> = (0..4)
            .map(|_| state.queue(|| Ok::<(), ()>(())).unwrap())
            .collect();
        assert_eq!(seqs, [0, 1, 2, 3]);
        state.complete_one();
        assert_eq!(state.wait(0, None), Some(Ok(())));
        let soon = Some(Instant::now() + Duration::from_millis(10));
        assert_eq!(state.wait(1, soon), None, "write 1 is still pending");
        state.fail(Error::closed());
        assert_eq!(state.wait(1, None), Some(Err(Error::closed())));
        assert_eq!(state.wait(3, None), Some(Err(Error::closed())));
        state.fail(Error::shutdown());
        assert_eq!(
            state.wait(2, None),
            Some(Err(Error::closed())),
            "the first failure is kept"
        );
    }

    #[test]
    fn an_awaiting_task_is_woken_once_and_no_longer_counted() {
        use std::sync::atomic::AtomicBool;
        use std::task::Wake;
        struct Flag(AtomicBool);
        impl Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let state = WriteState::new();
        let seq = state.queue(|| Ok::<(), ()>(())).unwrap();
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(state.poll(seq, &mut cx).is_pending());
        assert!(
            state.poll(seq, &mut cx).is_pending(),
            "polled again, registered once"
        );
        assert_eq!(state.waiting.load(Ordering::SeqCst), 1);
        state.complete_one();
        assert!(flag.0.load(Ordering::SeqCst));
        assert_eq!(
            state.waiting.load(Ordering::SeqCst),
            0,
            "the loop stops locking"
        );
        assert_eq!(state.poll(seq, &mut cx), Poll::Ready(Ok(())));
    }

    #[test]
    fn a_waiting_thread_is_woken() {
        let state = Arc::new(WriteState::new());
        let seq = state.queue(|| Ok::<(), ()>(())).unwrap();
        let waiter = {
            let state = state.clone();
            std::thread::spawn(move || state.wait(seq, None))
        };
        while state.waiting.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        state.complete_one();
        assert_eq!(waiter.join().unwrap(), Some(Ok(())));
    }
}
