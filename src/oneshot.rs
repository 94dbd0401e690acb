//! A one-value channel that a blocked thread and an async task can both wait on.
//!
//! Write and read futures resolve through it. It is one small allocation, a mutex that is
//! never contended for long, and a wake-up only when the receiver actually sleeps.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// Creates a linked sender and receiver.
pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let slot = Arc::new(Slot {
        state: Mutex::new(State {
            value: None,
            sender_gone: false,
            receiver_gone: false,
            waker: None,
            sleeping: false,
        }),
        cond: Condvar::new(),
    });
    (Sender { slot: slot.clone() }, Receiver { slot })
}

/// The sending half; dropping it unsent makes the receiver see `Canceled`.
pub(crate) struct Sender<T> {
    slot: Arc<Slot<T>>,
}

/// The receiving half.
pub(crate) struct Receiver<T> {
    slot: Arc<Slot<T>>,
}

/// The sender went away without sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Canceled;

/// Why a receive with a deadline ended without a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecvTimeoutError {
    Timeout,
    Canceled,
}

struct Slot<T> {
    state: Mutex<State<T>>,
    cond: Condvar,
}

struct State<T> {
    value: Option<T>,
    sender_gone: bool,
    receiver_gone: bool,
    waker: Option<Waker>,
    /// Whether a thread waits on `cond`; the sender signals only then.
    sleeping: bool,
}

impl<T> Slot<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while the lock is held cannot leave the state inconsistent: every critical
        // section is a few field assignments.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<T> Sender<T> {
    /// Delivers the value; gives it back when the receiver is gone.
    pub(crate) fn send(self, value: T) -> Result<(), T> {
        let mut state = self.slot.lock();
        if state.receiver_gone {
            return Err(value);
        }
        state.value = Some(value);
        self.wake(state);
        Ok(())
    }

    /// Delivers the value and keeps a handle through which the sender can take it back if
    /// the receiver is dropped without taking it; gives it back when the receiver is gone.
    pub(crate) fn send_reclaimable(self, value: T) -> Result<Reclaim<T>, T> {
        let slot = self.slot.clone();
        self.send(value)?;
        Ok(Reclaim { slot })
    }

    /// Whether the receiver was dropped, so that a value sent now would be lost.
    pub(crate) fn is_canceled(&self) -> bool {
        self.slot.lock().receiver_gone
    }

    fn wake(&self, mut state: MutexGuard<'_, State<T>>) {
        let waker = state.waker.take();
        let sleeping = state.sleeping;
        drop(state);
        if sleeping {
            self.slot.cond.notify_one();
        }
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The sender's hold on a value it delivered (see `Sender::send_reclaimable`).
pub(crate) struct Reclaim<T> {
    slot: Arc<Slot<T>>,
}

/// Where a delivered value stands, as its sender sees it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Settled<T> {
    /// The receiver may still take it.
    Pending,
    /// The receiver took it.
    Taken,
    /// The receiver was dropped without taking it: here it is back.
    Returned(T),
}

impl<T> Reclaim<T> {
    /// Decides, under one lock, whether the value is still pending, was taken, or comes
    /// back because its receiver was dropped: a receiver dropped between two separate
    /// looks could otherwise take the value with it.
    pub(crate) fn settle(&self) -> Settled<T> {
        let mut state = self.slot.lock();
        match state.value.take() {
            None => Settled::Taken,
            Some(value) if state.receiver_gone => Settled::Returned(value),
            Some(value) => {
                state.value = Some(value);
                Settled::Pending
            }
        }
    }
}

impl<T> std::fmt::Debug for Reclaim<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("oneshot::Reclaim")
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("oneshot::Sender")
    }
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("oneshot::Receiver")
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut state = self.slot.lock();
        if state.value.is_none() {
            state.sender_gone = true;
            self.wake(state);
        }
    }
}

impl<T> Receiver<T> {
    /// Blocks until the value arrives or the sender is dropped.
    pub(crate) fn recv(self) -> Result<T, Canceled> {
        match self.recv_deadline(None) {
            Ok(value) => Ok(value),
            Err(_) => Err(Canceled),
        }
    }

    /// The value if it has arrived, without waiting; `Canceled` when it never will.
    pub(crate) fn try_recv(&self) -> Result<Option<T>, Canceled> {
        let mut state = self.slot.lock();
        match state.value.take() {
            Some(value) => Ok(Some(value)),
            None if state.sender_gone => Err(Canceled),
            None => Ok(None),
        }
    }

    /// Blocks until the value arrives, the sender is dropped, or the deadline passes.
    pub(crate) fn recv_deadline(&self, deadline: Option<Instant>) -> Result<T, RecvTimeoutError> {
        let mut state = self.slot.lock();
        loop {
            if let Some(value) = state.value.take() {
                return Ok(value);
            }
            if state.sender_gone {
                return Err(RecvTimeoutError::Canceled);
            }
            state.sleeping = true;
            state = match deadline {
                None => self
                    .slot
                    .cond
                    .wait(state)
                    .unwrap_or_else(|p| p.into_inner()),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        state.sleeping = false;
                        return Err(RecvTimeoutError::Timeout);
                    }
                    let (guard, _) = self
                        .slot
                        .cond
                        .wait_timeout(state, deadline - now)
                        .unwrap_or_else(|p| p.into_inner());
                    guard
                }
            };
            state.sleeping = false;
        }
    }

    /// Polls for the value from async code.
    pub(crate) fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Result<T, Canceled>> {
        let mut state = self.slot.lock();
        if let Some(value) = state.value.take() {
            return Poll::Ready(Ok(value));
        }
        if state.sender_gone {
            return Poll::Ready(Err(Canceled));
        }
        match &mut state.waker {
            Some(w) => w.clone_from(cx.waker()),
            None => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.slot.lock().receiver_gone = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn value_crosses_threads() {
        let (tx, rx) = channel();
        let t = std::thread::spawn(move || tx.send(7).unwrap());
        assert_eq!(rx.recv(), Ok(7));
        t.join().unwrap();
    }

    #[test]
    fn dropped_sender_cancels() {
        let (tx, rx) = channel::<u8>();
        drop(tx);
        assert_eq!(rx.recv(), Err(Canceled));
    }

    #[test]
    fn dropped_receiver_gives_value_back() {
        let (tx, rx) = channel();
        drop(rx);
        assert_eq!(tx.send(3), Err(3));
    }

    #[test]
    fn a_value_never_taken_can_be_reclaimed() {
        let (tx, rx) = channel();
        let reclaim = tx.send_reclaimable(5).unwrap();
        assert_eq!(
            reclaim.settle(),
            Settled::Pending,
            "the receiver may still take it"
        );
        drop(rx);
        assert_eq!(reclaim.settle(), Settled::Returned(5));

        let (tx, rx) = channel();
        let reclaim = tx.send_reclaimable(6).unwrap();
        assert_eq!(rx.recv(), Ok(6));
        assert_eq!(reclaim.settle(), Settled::Taken);
    }

    /// The complete/drop race: a value sent while its receiver is being dropped is either
    /// received or reclaimed by the sender, exactly once, never both and never neither.
    #[test]
    fn a_value_raced_with_a_drop_is_taken_exactly_once() {
        for round in 0..20_000u32 {
            let (tx, rx) = channel();
            let receiver = std::thread::spawn(move || {
                if round % 2 == 0 {
                    rx.recv_deadline(Some(Instant::now())).ok()
                } else {
                    drop(rx);
                    None
                }
            });
            let reclaim = tx.send_reclaimable(round);
            let received = receiver.join().unwrap();
            let reclaimed = match &reclaim {
                Ok(reclaim) => match reclaim.settle() {
                    Settled::Returned(value) => Some(value),
                    Settled::Taken => None,
                    Settled::Pending => panic!("the receiver is gone"),
                },
                Err(value) => Some(*value),
            };
            let seen = usize::from(received.is_some()) + usize::from(reclaimed.is_some());
            assert_eq!(
                seen, 1,
                "round {round}: received {received:?}, reclaimed {reclaimed:?}"
            );
        }
    }

    #[test]
    fn deadline_passes() {
        let (_tx, rx) = channel::<u8>();
        let deadline = Instant::now() + Duration::from_millis(10);
        assert_eq!(
            rx.recv_deadline(Some(deadline)),
            Err(RecvTimeoutError::Timeout)
        );
    }
}
