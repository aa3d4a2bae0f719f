//! A cursor per export: folds per-record acknowledgements, which may arrive out of order,
//! into the highest id below which every record is acknowledged.

use std::collections::BTreeSet;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    acked_upto: i64,
    /// Acknowledged ids above `acked_upto + 1`, waiting for the gap below them to close.
    pending: BTreeSet<i64>,
}

impl Cursor {
    /// A cursor at which every id `<= acked_upto` is acknowledged.
    pub fn new(acked_upto: i64) -> Cursor {
        Cursor {
            acked_upto,
            pending: BTreeSet::new(),
        }
    }

    /// Every id up to and including this one is acknowledged.
    pub fn acked_upto(&self) -> i64 {
        self.acked_upto
    }

    /// Acknowledged ids that are not yet contiguous with the cursor.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Records an acknowledgement; returns true if the cursor moved.
    pub fn ack(&mut self, id: i64) -> bool {
        if id <= self.acked_upto {
            return false;
        }
        if id != self.acked_upto + 1 {
            self.pending.insert(id);
            return false;
        }
        self.acked_upto = id;
        while self.pending.first() == Some(&(self.acked_upto + 1)) {
            self.pending.pop_first();
            self.acked_upto += 1;
        }
        true
    }

    /// Records up to `id` no longer exist (expired or overwritten): the cursor moves past them.
    pub fn skip_to(&mut self, id: i64) {
        if id <= self.acked_upto {
            return;
        }
        self.acked_upto = id;
        self.pending = self.pending.split_off(&(id + 1));
        while self.pending.first() == Some(&(self.acked_upto + 1)) {
            self.pending.pop_first();
            self.acked_upto += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn out_of_order_acks_fold() {
        let mut c = Cursor::new(0);
        assert!(!c.ack(3));
        assert!(!c.ack(2));
        assert_eq!(c.acked_upto(), 0);
        assert!(c.ack(1));
        assert_eq!(c.acked_upto(), 3);
        assert_eq!(c.pending(), 0);
        assert!(!c.ack(2), "a repeated ack changes nothing");
    }

    #[test]
    fn skip_drops_pending_below_and_folds_above() {
        let mut c = Cursor::new(0);
        c.ack(2);
        c.ack(6);
        c.ack(7);
        c.skip_to(5);
        assert_eq!(c.acked_upto(), 7);
        assert_eq!(c.pending(), 0);
    }

    proptest! {
        /// Whatever the order, the cursor ends at the longest acknowledged prefix.
        #[test]
        fn cursor_is_longest_acked_prefix(ids in proptest::collection::vec(1i64..60, 0..80)) {
            let mut c = Cursor::new(0);
            for id in &ids { c.ack(*id); }
            let set: std::collections::BTreeSet<i64> = ids.iter().copied().collect();
            let mut expect = 0;
            while set.contains(&(expect + 1)) { expect += 1; }
            prop_assert_eq!(c.acked_upto(), expect);
            prop_assert_eq!(c.pending(), set.iter().filter(|i| **i > expect + 1).count());
        }
    }
}
