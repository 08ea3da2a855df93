//! A bounded channel that holds memory only for what it holds (issue 14).
//!
//! crossbeam's `bounded(n)` allocates and writes its n slots when it is made: the append
//! queue's 65,536 `WalCmd`s were ≈ 12 MB of every process, idle or not. This is crossbeam's
//! list-flavoured `unbounded` channel (blocks of 31 slots, allocated as messages come and
//! freed as they are taken) with the bound kept as a count beside it: `try_send` refuses
//! with `Full` past it, exactly as before, and never blocks.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub(crate) use crossbeam_channel::{RecvError, RecvTimeoutError, TryRecvError, TrySendError};

/// A channel of at most `max` messages waiting (a `send` may pass the bound: see there).
pub(crate) fn bounded<T>(max: usize) -> (Sender<T>, Receiver<T>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let len = Arc::new(AtomicUsize::new(0));
    (
        Sender {
            tx,
            len: len.clone(),
            max,
        },
        Receiver { rx, len },
    )
}

pub(crate) struct Sender<T> {
    tx: crossbeam_channel::Sender<T>,
    len: Arc<AtomicUsize>,
    max: usize,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender {
            tx: self.tx.clone(),
            len: self.len.clone(),
            max: self.max,
        }
    }
}

impl<T> Sender<T> {
    /// Queues `msg` unless `max` messages wait (`Full`) or the receiver is gone.
    pub(crate) fn try_send(&self, msg: T) -> Result<(), TrySendError<T>> {
        if self.len.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.len.fetch_sub(1, Ordering::AcqRel);
            return Err(TrySendError::Full(msg));
        }
        self.tx.send(msg).map_err(|e| {
            self.len.fetch_sub(1, Ordering::AcqRel);
            TrySendError::Disconnected(e.into_inner())
        })
    }

    /// Queues `msg` whatever the count (shutdown commands, which must not be refused by a
    /// full queue); never blocks. Fails only when the receiver is gone.
    pub(crate) fn send(&self, msg: T) -> Result<(), T> {
        self.len.fetch_add(1, Ordering::AcqRel);
        self.tx.send(msg).map_err(|e| {
            self.len.fetch_sub(1, Ordering::AcqRel);
            e.into_inner()
        })
    }
}

pub(crate) struct Receiver<T> {
    rx: crossbeam_channel::Receiver<T>,
    len: Arc<AtomicUsize>,
}

impl<T> Receiver<T> {
    fn took<E>(&self, got: Result<T, E>) -> Result<T, E> {
        if got.is_ok() {
            self.len.fetch_sub(1, Ordering::AcqRel);
        }
        got
    }

    pub(crate) fn recv(&self) -> Result<T, RecvError> {
        self.took(self.rx.recv())
    }

    pub(crate) fn try_recv(&self) -> Result<T, TryRecvError> {
        self.took(self.rx.try_recv())
    }

    pub(crate) fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.took(self.rx.recv_timeout(timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_the_bound_and_frees_a_place_per_message_taken() {
        let (tx, rx) = bounded::<u32>(2);
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        assert!(matches!(tx.try_send(3), Err(TrySendError::Full(3))));
        assert_eq!(rx.try_recv(), Ok(1));
        tx.try_send(4).unwrap();
        assert!(matches!(tx.try_send(5), Err(TrySendError::Full(5))));
        // A shutdown command passes a full queue.
        tx.send(6).unwrap();
        let rest: Vec<u32> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(rest, [2, 4, 6]);
        tx.try_send(7).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(7));
        drop(rx);
        assert!(matches!(tx.try_send(8), Err(TrySendError::Disconnected(8))));
        assert_eq!(tx.send(9), Err(9));
    }

    #[test]
    fn the_bound_holds_across_threads() {
        let (tx, rx) = bounded::<u32>(64);
        let senders: Vec<_> = (0..4)
            .map(|t| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut sent = 0;
                    for i in 0..10_000 {
                        let mut msg = t * 100_000 + i;
                        loop {
                            match tx.try_send(msg) {
                                Ok(()) => break,
                                Err(TrySendError::Full(back)) => msg = back,
                                Err(TrySendError::Disconnected(_)) => unreachable!(),
                            }
                            std::thread::yield_now();
                        }
                        sent += 1;
                    }
                    sent
                })
            })
            .collect();
        let mut got = 0;
        while got < 40_000 {
            assert!(rx.len.load(Ordering::Acquire) <= 64 + 4);
            if rx.recv_timeout(Duration::from_secs(10)).is_ok() {
                got += 1;
            }
        }
        let sent: u32 = senders.into_iter().map(|s| s.join().unwrap()).sum();
        assert_eq!(sent, 40_000);
    }
}
