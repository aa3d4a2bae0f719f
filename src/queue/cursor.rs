//! A cursor per export: folds per-record acknowledgements, which may arrive out of order,
//! into the highest id below which every record is acknowledged, and keeps the acks above
//! that prefix as compact ranges.
//!
//! The ranges are persisted with the prefix (same transaction, see `sqlite.rs`), so after a
//! crash an export resends only what was really unacknowledged: a record stuck in retry for
//! minutes no longer drags every later acknowledged record back into the resend.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    acked_upto: i64,
    /// Acknowledged ids above `acked_upto + 1`, as disjoint, non-adjacent inclusive ranges
    /// `start -> end`, waiting for the gap below them to close.
    ranges: BTreeMap<i64, i64>,
}

/// Ranges text longer than this is not believed (a damaged row): the export resends instead.
const MAX_RANGES_TEXT: usize = 16 << 20;

impl Cursor {
    /// A cursor at which every id `<= acked_upto` is acknowledged.
    pub fn new(acked_upto: i64) -> Cursor {
        Cursor {
            acked_upto,
            ranges: BTreeMap::new(),
        }
    }

    /// A cursor restored from its persisted prefix and ranges text ([`Cursor::ranges_text`]).
    /// Text that does not parse is ignored: those records are sent again (at least once).
    pub fn restore(acked_upto: i64, ranges: &str) -> Cursor {
        let mut c = Cursor::new(acked_upto);
        if ranges.len() > MAX_RANGES_TEXT {
            return c;
        }
        let mut parsed = Vec::new();
        for part in ranges.split(',').filter(|p| !p.is_empty()) {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            match (a.parse::<i64>(), b.parse::<i64>()) {
                (Ok(a), Ok(b)) if a <= b => parsed.push((a, b)),
                _ => return c,
            }
        }
        for (a, b) in parsed {
            c.ack_range(a, b);
        }
        c
    }

    /// Every id up to and including this one is acknowledged.
    pub fn acked_upto(&self) -> i64 {
        self.acked_upto
    }

    /// How many ids above the prefix are acknowledged.
    pub fn acked_above(&self) -> u64 {
        self.ranges.iter().map(|(a, b)| (b - a + 1) as u64).sum()
    }

    /// Disjoint ranges of acknowledged ids above the prefix.
    pub fn pending_ranges(&self) -> usize {
        self.ranges.len()
    }

    /// Whether `id` is acknowledged.
    pub fn is_acked(&self, id: i64) -> bool {
        id <= self.acked_upto
            || self
                .ranges
                .range(..=id)
                .next_back()
                .is_some_and(|(_, &end)| id <= end)
    }

    /// The first id `>= from` that is not acknowledged.
    pub fn next_unacked(&self, from: i64) -> i64 {
        let from = from.max(self.acked_upto + 1);
        match self.ranges.range(..=from).next_back() {
            Some((_, &end)) if from <= end => end + 1,
            _ => from,
        }
    }

    /// The first acknowledged id `> id` above the prefix, if any (where an unacknowledged run
    /// starting at `id` ends).
    pub fn next_acked_after(&self, id: i64) -> Option<i64> {
        self.ranges.range(id + 1..).next().map(|(&a, _)| a)
    }

    /// Records an acknowledgement; returns true if the prefix moved.
    pub fn ack(&mut self, id: i64) -> bool {
        self.ack_range(id, id)
    }

    /// Acknowledges every id in `start..=end`; returns true if the prefix moved.
    pub fn ack_range(&mut self, start: i64, end: i64) -> bool {
        let start = start.max(self.acked_upto + 1);
        if start > end {
            return false;
        }
        let (mut a, mut b) = (start, end);
        // Merge with a range that starts at or before `a` and reaches `a - 1`.
        if let Some((&s, &e)) = self.ranges.range(..=a).next_back()
            && e >= a - 1
        {
            a = s;
            b = b.max(e);
            self.ranges.remove(&s);
        }
        // Swallow ranges that start inside `a..=b + 1`.
        while let Some((&s, &e)) = self.ranges.range(a..=b.saturating_add(1)).next() {
            b = b.max(e);
            self.ranges.remove(&s);
        }
        if a == self.acked_upto + 1 {
            self.acked_upto = b;
            true
        } else {
            self.ranges.insert(a, b);
            false
        }
    }

    /// Records up to `id` no longer exist (expired or overwritten): the cursor moves past them.
    pub fn skip_to(&mut self, id: i64) {
        if id <= self.acked_upto {
            return;
        }
        self.acked_upto = id;
        let above = self.ranges.split_off(&(id + 1));
        let straddling = self
            .ranges
            .last_key_value()
            .map(|(_, &e)| e)
            .filter(|&e| e > id);
        self.ranges = above;
        if let Some(e) = straddling {
            self.acked_upto = e;
        }
        if let Some((&s, &e)) = self.ranges.first_key_value()
            && s == self.acked_upto + 1
        {
            self.ranges.remove(&s);
            self.acked_upto = e;
        }
    }

    /// The ranges above the prefix as text, `a-b,c-d,e` (a single id has no dash).
    pub fn ranges_text(&self) -> String {
        let mut out = String::new();
        for (i, (a, b)) in self.ranges.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            if a == b {
                out.push_str(&a.to_string());
            } else {
                out.push_str(&format!("{a}-{b}"));
            }
        }
        out
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
        assert_eq!(c.pending_ranges(), 1, "2 and 3 merge into one range");
        assert!(c.ack(1));
        assert_eq!(c.acked_upto(), 3);
        assert_eq!(c.pending_ranges(), 0);
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
        assert_eq!(c.pending_ranges(), 0);
    }

    #[test]
    fn skip_into_a_range_takes_its_end() {
        let mut c = Cursor::new(0);
        c.ack_range(3, 9);
        c.ack(12);
        c.skip_to(5);
        assert_eq!(c.acked_upto(), 9);
        assert_eq!(c.ranges_text(), "12");
    }

    #[test]
    fn text_round_trip_and_lookups() {
        let mut c = Cursor::new(10);
        for id in [12, 13, 14, 20, 30, 31] {
            c.ack(id);
        }
        assert_eq!(c.ranges_text(), "12-14,20,30-31");
        let r = Cursor::restore(10, &c.ranges_text());
        assert_eq!(r, c);
        assert!(r.is_acked(9) && r.is_acked(13) && r.is_acked(20));
        assert!(!r.is_acked(11) && !r.is_acked(15) && !r.is_acked(32));
        assert_eq!(r.next_unacked(0), 11);
        assert_eq!(r.next_unacked(12), 15);
        assert_eq!(r.next_unacked(20), 21);
        assert_eq!(r.next_acked_after(15), Some(20));
        assert_eq!(r.next_acked_after(31), None);
        assert_eq!(r.acked_above(), 6);
    }

    #[test]
    fn damaged_text_is_ignored() {
        for bad in ["x", "5-3", "1-", "7,a-9"] {
            assert_eq!(Cursor::restore(4, bad), Cursor::new(4), "{bad}");
        }
        // Ranges at or below the prefix fold into it.
        let c = Cursor::restore(4, "2-3,5-8");
        assert_eq!((c.acked_upto(), c.pending_ranges()), (8, 0));
    }

    proptest! {
        /// Whatever the order, the cursor ends at the longest acknowledged prefix, knows every
        /// acknowledged id above it, and its ranges survive a save and restore unchanged.
        #[test]
        fn cursor_is_longest_acked_prefix(
            ids in proptest::collection::vec(1i64..80, 0..120),
            skip in proptest::option::of(0i64..80),
        ) {
            let mut c = Cursor::new(0);
            let mut set = std::collections::BTreeSet::new();
            for (n, id) in ids.iter().enumerate() {
                c.ack(*id);
                set.insert(*id);
                if n == ids.len() / 2 && let Some(s) = skip {
                    c.skip_to(s);
                    set.extend(1..=s);
                }
            }
            let mut expect = 0;
            while set.contains(&(expect + 1)) { expect += 1; }
            prop_assert_eq!(c.acked_upto(), expect);
            for id in 1..90 {
                prop_assert_eq!(c.is_acked(id), set.contains(&id), "id {}", id);
            }
            prop_assert_eq!(c.acked_above(), set.iter().filter(|i| **i > expect).count() as u64);
            let unacked: Vec<i64> = (1..90).filter(|i| !set.contains(i)).collect();
            prop_assert_eq!(c.next_unacked(1), unacked[0]);
            let restored = Cursor::restore(c.acked_upto(), &c.ranges_text());
            prop_assert_eq!(restored, c);
        }
    }
}
