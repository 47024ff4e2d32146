//! Restores the indexer's order after the parallel workers: a fixed ring of slots addressed by
//! `seq mod capacity`. Allocated once; inserting and popping never allocate.

use super::job::Item;

/// Items that arrived ahead of the one the writer needs next.
pub struct Reorder {
    slots: Vec<Option<Item>>,
    next: u64,
}

/// An item arrived further ahead than the window can hold: the pipeline's sizing is wrong.
#[derive(Debug, thiserror::Error)]
#[error("item {seq} arrived while waiting for {next}; reorder window of {capacity} exceeded")]
pub struct WindowExceeded {
    /// The item's seq.
    pub seq: u64,
    /// The seq awaited.
    pub next: u64,
    /// The window size.
    pub capacity: usize,
}

impl Reorder {
    /// A window of `capacity` items (rounded up to a power of two).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.next_power_of_two();
        Self {
            slots: (0..capacity).map(|_| None).collect(),
            next: 0,
        }
    }

    /// Stores an item; fails (handing it back) if it lies outside the window or its slot is
    /// taken.
    // The item comes back by value so an error loses nothing (rtrb's `PushError::Full`); a
    // frame's item is a few cache lines, and boxing it would allocate on this path.
    #[allow(clippy::result_large_err)]
    pub fn insert(&mut self, item: Item) -> Result<(), (Item, WindowExceeded)> {
        let cap = self.slots.len();
        let ahead = item.seq.wrapping_sub(self.next);
        let slot = (item.seq as usize) & (cap - 1);
        if ahead >= cap as u64 || self.slots[slot].is_some() {
            let err = WindowExceeded {
                seq: item.seq,
                next: self.next,
                capacity: cap,
            };
            return Err((item, err));
        }
        self.slots[slot] = Some(item);
        Ok(())
    }

    /// The next item in order, if it has arrived.
    pub fn pop(&mut self) -> Option<Item> {
        let cap = self.slots.len();
        let item = self.slots[(self.next as usize) & (cap - 1)].take()?;
        self.next += 1;
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::job::Step;

    fn item(seq: u64) -> Item {
        Item {
            seq,
            stream: 0,
            step: Step::Close,
        }
    }

    #[test]
    fn restores_order() {
        let mut r = Reorder::new(4);
        for s in [2, 0, 3, 1] {
            r.insert(item(s)).map_err(|e| e.1).unwrap();
        }
        let order: Vec<u64> = std::iter::from_fn(|| r.pop()).map(|i| i.seq).collect();
        assert_eq!(order, [0, 1, 2, 3]);
        assert!(r.pop().is_none());
    }

    #[test]
    fn refuses_what_lies_beyond_the_window() {
        let mut r = Reorder::new(4);
        let (back, err) = r.insert(item(4)).unwrap_err();
        assert_eq!(back.seq, 4);
        assert_eq!(err.capacity, 4);
        assert!(r.insert(item(3)).is_ok());
        assert!(r.insert(item(3)).is_err(), "a duplicate seq is refused");
    }
}
