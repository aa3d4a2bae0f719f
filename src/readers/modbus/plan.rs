//! Request coalescing: which reads cover a set of tags. Pure, no I/O.
//!
//! Tags of one area are sorted by address and merged greedily into one read while the next
//! tag starts at most `max_gap` registers (bits) after the end of the current read and the
//! read stays within `max_count` (125 registers / 2,000 bits by the Modbus spec). The gap is
//! read and thrown away: fewer round trips for a few wasted bytes, but every register in the
//! gap must exist on the device or the whole read fails with IllegalDataAddress (set
//! `max_gap = 0` for devices with holes in their map; the reader also splits a failed read).

use super::address::Area;

/// Spec limit of registers per read (function codes 3 and 4).
pub const MAX_REGISTERS: u16 = 125;
/// Spec limit of bits per read (function codes 1 and 2).
pub const MAX_BITS: u16 = 2_000;

/// What one tag needs read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub tag: usize,
    pub area: Area,
    pub address: u16,
    /// Registers (or bits) from `address`; at least 1.
    pub count: u16,
}

/// One read request and the tags it serves, with each tag's offset into the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub area: Area,
    pub address: u16,
    pub count: u16,
    pub tags: Vec<(usize, u16)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_gap_registers: u16,
    pub max_gap_bits: u16,
    pub max_registers: u16,
    pub max_bits: u16,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_gap_registers: 10,
            max_gap_bits: 64,
            max_registers: MAX_REGISTERS,
            max_bits: MAX_BITS,
        }
    }
}

/// Plans the reads for `needs`. Every need ends up in exactly one read; a need wider than
/// the limit (validation prevents it) gets a read of its own.
pub fn plan(needs: &[Need], limits: Limits) -> Vec<Read> {
    let mut sorted: Vec<Need> = needs.to_vec();
    sorted.sort_by_key(|n| (n.area, n.address, n.tag));
    let mut reads: Vec<Read> = Vec::new();
    for n in sorted {
        let (gap, max) = if n.area.is_bits() {
            (limits.max_gap_bits as u32, limits.max_bits as u32)
        } else {
            (limits.max_gap_registers as u32, limits.max_registers as u32)
        };
        let start = n.address as u32;
        let end = start + n.count.max(1) as u32;
        if let Some(r) = reads.last_mut()
            && r.area == n.area
        {
            let r_start = r.address as u32;
            let r_end = r_start + r.count as u32;
            let new_end = r_end.max(end);
            if start <= r_end + gap && new_end - r_start <= max {
                r.count = (new_end - r_start) as u16;
                r.tags.push((n.tag, (start - r_start) as u16));
                continue;
            }
        }
        reads.push(Read {
            area: n.area,
            address: n.address,
            count: (end - start) as u16,
            tags: vec![(n.tag, 0)],
        });
    }
    reads
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn need(tag: usize, area: Area, address: u16, count: u16) -> Need {
        Need {
            tag,
            area,
            address,
            count,
        }
    }

    #[test]
    fn merges_close_tags_and_splits_far_ones() {
        let hr = Area::HoldingRegister;
        let needs = [
            need(0, hr, 0, 2),
            need(1, hr, 2, 1),
            need(2, hr, 10, 4),  // gap of 7 after register 2: merged (max_gap 10)
            need(3, hr, 100, 1), // gap of 86: new read
            need(4, Area::Coil, 0, 1),
            need(5, Area::Coil, 50, 1),
            need(6, hr, 1, 1), // overlaps tag 0: same read
        ];
        let reads = plan(&needs, Limits::default());
        assert_eq!(reads.len(), 3, "{reads:?}");
        assert_eq!(reads[0].area, Area::Coil);
        assert_eq!((reads[0].address, reads[0].count), (0, 51));
        assert_eq!(reads[0].tags, vec![(4, 0), (5, 50)]);
        assert_eq!((reads[1].address, reads[1].count), (0, 14));
        assert_eq!(reads[1].tags, vec![(0, 0), (6, 1), (1, 2), (2, 10)]);
        assert_eq!((reads[2].address, reads[2].count), (100, 1));
    }

    #[test]
    fn respects_the_request_size_limit() {
        let needs: Vec<Need> = (0..300)
            .map(|i| need(i, Area::InputRegister, i as u16, 1))
            .collect();
        let reads = plan(&needs, Limits::default());
        let counts: Vec<u16> = reads.iter().map(|r| r.count).collect();
        assert_eq!(counts, vec![125, 125, 50]);
        let limits = Limits {
            max_gap_registers: 0,
            ..Limits::default()
        };
        let sparse: Vec<Need> = (0..10)
            .map(|i| need(i, Area::InputRegister, i as u16 * 2, 1))
            .collect();
        assert_eq!(plan(&sparse, limits).len(), 10);
    }

    fn areas() -> impl Strategy<Value = Area> {
        prop_oneof![
            Just(Area::Coil),
            Just(Area::DiscreteInput),
            Just(Area::InputRegister),
            Just(Area::HoldingRegister)
        ]
    }

    proptest! {
        /// Every tag is in exactly one read of its area that covers all of it, and no read
        /// exceeds the limit.
        #[test]
        fn every_tag_covered_once(raw in prop::collection::vec((areas(), 0u16..3000, 1u16..5), 0..200),
                                  gap in 0u16..20, max in 4u16..126) {
            let needs: Vec<Need> = raw.iter().enumerate()
                .map(|(i, (a, addr, c))| need(i, *a, *addr, *c)).collect();
            let limits = Limits { max_gap_registers: gap, max_gap_bits: gap, max_registers: max, max_bits: max };
            let reads = plan(&needs, limits);
            let mut seen = vec![0; needs.len()];
            for r in &reads {
                prop_assert!(r.count <= max);
                for (tag, off) in &r.tags {
                    let n = needs[*tag];
                    seen[*tag] += 1;
                    prop_assert_eq!(n.area, r.area);
                    prop_assert_eq!(r.address as u32 + *off as u32, n.address as u32);
                    prop_assert!(*off as u32 + n.count as u32 <= r.count as u32);
                }
            }
            prop_assert!(seen.iter().all(|s| *s == 1));
        }
    }
}
