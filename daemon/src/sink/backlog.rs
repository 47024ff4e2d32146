//! The starts and ends a sink's feed could not hand to its thread: a bounded channel may drop
//! per-frame messages when full, but never a stream's start or end (a scan left open, a file
//! set without its hand-off). They wait here, oldest first, and go before anything else.

use std::collections::VecDeque;
use std::time::Duration;

use crossbeam::channel::{Sender, TrySendError};

/// Messages waiting for room in a channel.
pub struct Backlog<M> {
    waiting: VecDeque<M>,
}

impl<M> Default for Backlog<M> {
    fn default() -> Self {
        Self {
            waiting: VecDeque::new(),
        }
    }
}

impl<M> Backlog<M> {
    /// Nothing waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Keeps `m` behind what waits, without trying to send.
    pub fn hold(&mut self, m: M) {
        self.waiting.push_back(m);
    }

    /// Sends what waits while `tx` has room (a closed channel takes and discards); returns
    /// how many went.
    pub fn retry(&mut self, tx: &Sender<M>) -> usize {
        let mut sent = 0;
        while let Some(m) = self.waiting.pop_front() {
            match tx.try_send(m) {
                Ok(()) => sent += 1,
                Err(TrySendError::Full(m)) => {
                    self.waiting.push_front(m);
                    break;
                }
                Err(TrySendError::Disconnected(_)) => {}
            }
        }
        sent
    }

    /// At a run's end: each waiting message gets up to `timeout` for room, `before_each`
    /// called first (to wake the receiver); returns how many could not be sent.
    pub fn drain(
        &mut self,
        tx: &Sender<M>,
        timeout: Duration,
        mut before_each: impl FnMut(),
    ) -> usize {
        let mut lost = 0;
        while let Some(m) = self.waiting.pop_front() {
            before_each();
            if tx.send_timeout(m, timeout).is_err() {
                lost += 1;
            }
        }
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_waits_goes_first_and_in_order() {
        let (tx, rx) = crossbeam::channel::bounded(1);
        let mut b = Backlog::default();
        tx.send(0).unwrap();
        b.hold(1);
        b.hold(2);
        assert_eq!(b.retry(&tx), 0, "no room");
        assert_eq!(rx.recv().unwrap(), 0);
        assert_eq!(b.retry(&tx), 1);
        assert!(!b.is_empty());
        let reader = std::thread::spawn(move || rx.iter().collect::<Vec<_>>());
        assert_eq!(b.drain(&tx, Duration::from_secs(2), || {}), 0);
        drop(tx);
        assert_eq!(reader.join().unwrap(), [1, 2]);
    }
}
