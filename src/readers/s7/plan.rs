//! The request planner: which bytes of which area go into which multi-variable read, under the
//! negotiated PDU size. Pure: tags in, requests out.
//!
//! 1. Tags of one area (and DB) are sorted by address and merged into one range when they
//!    overlap or the gap between them is at most `merge_gap` bytes (reading a few unused bytes
//!    is cheaper than the 16 bytes of framing a separate item costs), as long as the range still
//!    fits one item. Tags marked `isolated` (their range failed: find out which tag is at fault)
//!    get a range of their own.
//! 2. A range larger than one item can carry (a long STRING under a small PDU) is split into
//!    chunks, read as several items and joined again.
//! 3. Items are packed first-fit into requests. A request is full when it has `max_items`
//!    items, or its item specifications (12 bytes each) would not fit the PDU, or the answer
//!    (4 bytes per item plus the data, padded to even lengths) would not fit the PDU.

use super::codec::{
    ACK_HEADER_LEN, ITEM_DATA_HEADER_LEN, ITEM_SPEC_LEN, Item, JOB_HEADER_LEN, READ_PARAM_LEN,
};

/// What the planner needs to know of one tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TagSpan {
    pub area: u8,
    pub db: u16,
    pub start: u32,
    pub len: u32,
    /// Not merged with other tags.
    pub isolated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The PDU size the PLC granted.
    pub pdu_size: u16,
    /// Most items per request (S7 CPUs refuse more than about 20).
    pub max_items: usize,
    /// Largest gap in bytes bridged when merging two tags into one range.
    pub merge_gap: u32,
}

/// A contiguous byte range, read as one or more items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub area: u8,
    pub db: u16,
    pub start: u32,
    pub len: u32,
    /// (request index, item index) of each chunk, in address order.
    pub chunks: Vec<(usize, usize)>,
    /// The tags (indices into the planner's input) this range serves.
    pub tags: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub requests: Vec<Vec<Item>>,
    pub ranges: Vec<Range>,
    /// Per input tag: (range index, byte offset in the range); `None` for tags not planned.
    pub tags: Vec<Option<(usize, u32)>>,
}

/// The largest item data one answer can carry: the PDU minus the ack header, the parameter
/// header and the item header, rounded down to an even length.
pub fn max_item_len(pdu_size: u16) -> u32 {
    let overhead = (ACK_HEADER_LEN + READ_PARAM_LEN + ITEM_DATA_HEADER_LEN) as u32;
    u32::from(pdu_size).saturating_sub(overhead) & !1
}

/// Plans the reads of `tags` (those with `Some`); see the module documentation.
pub fn plan(tags: &[Option<TagSpan>], limits: Limits) -> Plan {
    let max_len = max_item_len(limits.pdu_size).max(2);
    let mut order: Vec<usize> = (0..tags.len()).filter(|&i| tags[i].is_some()).collect();
    order.sort_by_key(|&i| tags[i].map(|t| (t.area, t.db, t.start, t.len)));

    let mut ranges: Vec<Range> = Vec::new();
    let mut tag_loc: Vec<Option<(usize, u32)>> = vec![None; tags.len()];
    let mut open: Option<usize> = None; // the last range that may still take tags
    for i in order {
        let Some(t) = tags[i] else { continue };
        let merge = open.and_then(|r| {
            let range = &ranges[r];
            let end = range.start + range.len;
            let same = range.area == t.area && range.db == t.db;
            let new_end = end.max(t.start + t.len);
            let fits = new_end - range.start <= max_len;
            let close = t.start <= end.saturating_add(limits.merge_gap);
            (same && fits && close && !t.isolated).then_some((r, new_end))
        });
        match merge {
            Some((r, new_end)) => {
                let range = &mut ranges[r];
                range.len = new_end - range.start;
                range.tags.push(i);
                tag_loc[i] = Some((r, t.start - range.start));
            }
            None => {
                ranges.push(Range {
                    area: t.area,
                    db: t.db,
                    start: t.start,
                    len: t.len,
                    chunks: Vec::new(),
                    tags: vec![i],
                });
                let r = ranges.len() - 1;
                tag_loc[i] = Some((r, 0));
                open = (!t.isolated).then_some(r);
            }
        }
    }

    let mut requests: Vec<Vec<Item>> = Vec::new();
    // Bytes used so far per request: (request bytes, response bytes).
    let mut used: Vec<(usize, usize)> = Vec::new();
    let pdu = usize::from(limits.pdu_size);
    let max_items = limits.max_items.max(1);
    for range in &mut ranges {
        let mut offset = 0;
        while offset < range.len {
            let len = (range.len - offset).min(max_len);
            let item = Item {
                area: range.area,
                db: range.db,
                start: range.start + offset,
                len: len as u16,
            };
            let req_cost = ITEM_SPEC_LEN;
            let resp_cost = ITEM_DATA_HEADER_LEN + len as usize + (len as usize & 1);
            let slot = (0..requests.len()).find(|&r| {
                requests[r].len() < max_items
                    && used[r].0 + req_cost <= pdu
                    && used[r].1 + resp_cost <= pdu
            });
            let r = match slot {
                Some(r) => r,
                None => {
                    requests.push(Vec::new());
                    used.push((
                        JOB_HEADER_LEN + READ_PARAM_LEN,
                        ACK_HEADER_LEN + READ_PARAM_LEN,
                    ));
                    requests.len() - 1
                }
            };
            requests[r].push(item);
            used[r].0 += req_cost;
            used[r].1 += resp_cost;
            range.chunks.push((r, requests[r].len() - 1));
            offset += len;
        }
    }
    Plan {
        requests,
        ranges,
        tags: tag_loc,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(db: u16, start: u32, len: u32) -> Option<TagSpan> {
        Some(TagSpan {
            area: 0x84,
            db,
            start,
            len,
            isolated: false,
        })
    }

    const L480: Limits = Limits {
        pdu_size: 480,
        max_items: 20,
        merge_gap: 0,
    };

    /// The request and response sizes of a plan, to check it against the PDU.
    fn sizes(plan: &Plan) -> Vec<(usize, usize)> {
        plan.requests
            .iter()
            .map(|items| {
                let req = JOB_HEADER_LEN + READ_PARAM_LEN + ITEM_SPEC_LEN * items.len();
                let resp = ACK_HEADER_LEN
                    + READ_PARAM_LEN
                    + items
                        .iter()
                        .map(|i| ITEM_DATA_HEADER_LEN + i.len as usize + (i.len as usize & 1))
                        .sum::<usize>();
                (req, resp)
            })
            .collect()
    }

    #[test]
    fn max_items_bounds_requests() {
        // 100 four-byte tags 10 bytes apart, no merging: 20 items per request.
        let tags: Vec<_> = (0..100).map(|i| db(1, i * 10, 4)).collect();
        let p = plan(&tags, L480);
        assert_eq!(p.requests.len(), 5);
        assert!(p.requests.iter().all(|r| r.len() == 20));
    }

    #[test]
    fn request_size_bounds_requests() {
        // Without an item limit, 480 bytes hold (480 - 12) / 12 = 39 item specifications.
        let tags: Vec<_> = (0..100).map(|i| db(1, i * 10, 4)).collect();
        let limits = Limits {
            max_items: 1000,
            ..L480
        };
        let p = plan(&tags, limits);
        assert_eq!(
            p.requests.iter().map(Vec::len).collect::<Vec<_>>(),
            [39, 39, 22]
        );
        assert!(sizes(&p).iter().all(|&(q, a)| q <= 480 && a <= 480));
    }

    #[test]
    fn response_size_bounds_requests() {
        // 40-byte strings: each answer item costs 44 bytes; (480 - 14) / 44 = 10 per request.
        let tags: Vec<_> = (0..25).map(|i| db(1, i * 100, 40)).collect();
        let p = plan(&tags, L480);
        assert_eq!(
            p.requests.iter().map(Vec::len).collect::<Vec<_>>(),
            [10, 10, 5]
        );
        assert!(sizes(&p).iter().all(|&(q, a)| q <= 480 && a <= 480));
        // Odd lengths are padded: 9 bytes cost 14; (480 - 14) / 14 = 33.
        let tags: Vec<_> = (0..40).map(|i| db(1, i * 100, 9)).collect();
        let p = plan(
            &tags,
            Limits {
                max_items: 1000,
                ..L480
            },
        );
        assert_eq!(p.requests[0].len(), 33);
    }

    #[test]
    fn close_tags_merge() {
        // DBX0.0, DBB1, DBW2, DBD4 and a REAL at 12 (gap of 4 after DBD4 ends at 8).
        let tags = vec![
            db(1, 0, 1),
            db(1, 1, 1),
            db(1, 2, 2),
            db(1, 4, 4),
            db(1, 12, 4),
        ];
        let p = plan(
            &tags,
            Limits {
                merge_gap: 4,
                ..L480
            },
        );
        assert_eq!(p.ranges.len(), 1);
        assert_eq!(
            p.requests,
            [vec![Item {
                area: 0x84,
                db: 1,
                start: 0,
                len: 16
            }]]
        );
        assert_eq!(p.tags[4], Some((0, 12)));
        // With no gap allowed the REAL gets its own item.
        let p = plan(&tags, L480);
        assert_eq!(p.ranges.len(), 2);
        assert_eq!(p.requests[0].len(), 2);
    }

    #[test]
    fn overlapping_tags_share_bytes() {
        // Two bits of one byte and the byte itself: one byte read.
        let tags = vec![db(1, 3, 1), db(1, 3, 1), db(1, 2, 2)];
        let p = plan(&tags, L480);
        assert_eq!(p.requests[0].len(), 1);
        assert_eq!(p.requests[0][0].len, 2);
        assert_eq!(p.tags, [Some((0, 1)), Some((0, 1)), Some((0, 0))]);
    }

    #[test]
    fn areas_and_dbs_do_not_merge() {
        let mut tags = vec![db(1, 0, 2), db(2, 2, 2)];
        tags.push(Some(TagSpan {
            area: 0x83,
            db: 0,
            start: 4,
            len: 2,
            isolated: false,
        }));
        let p = plan(
            &tags,
            Limits {
                merge_gap: 100,
                ..L480
            },
        );
        assert_eq!(p.ranges.len(), 3);
        assert_eq!(p.requests.len(), 1);
    }

    #[test]
    fn isolated_tags_get_their_own_range() {
        let mut tags = vec![db(1, 0, 2), db(1, 2, 2), db(1, 4, 2)];
        if let Some(t) = tags[1].as_mut() {
            t.isolated = true;
        }
        let p = plan(
            &tags,
            Limits {
                merge_gap: 100,
                ..L480
            },
        );
        assert_eq!(p.ranges.len(), 3);
        assert_eq!(p.tags, [Some((0, 0)), Some((1, 0)), Some((2, 0))]);
    }

    #[test]
    fn skipped_tags_are_not_planned() {
        let tags = vec![db(1, 0, 2), None, db(1, 2, 2)];
        let p = plan(&tags, L480);
        assert_eq!(p.tags[1], None);
        assert_eq!(p.requests[0].len(), 1);
    }

    #[test]
    fn long_ranges_split_into_chunks() {
        // A 256-byte STRING under a 240-byte PDU: chunks of 222 and 34 bytes; the first fills
        // an answer (14 + 4 + 222 = 240), so the second goes into a second request.
        let tags = vec![db(1, 0, 256)];
        let limits = Limits {
            pdu_size: 240,
            ..L480
        };
        assert_eq!(max_item_len(240), 222);
        let p = plan(&tags, limits);
        assert_eq!(p.ranges[0].chunks, [(0, 0), (1, 0)]);
        assert_eq!(p.requests[0][0].len, 222);
        assert_eq!(p.requests[1][0].start, 222);
        assert_eq!(p.requests[1][0].len, 34);
        assert!(sizes(&p).iter().all(|&(q, a)| q <= 240 && a <= 240));
    }

    #[test]
    fn merged_ranges_stay_within_one_item() {
        // 300 adjacent bytes under PDU 240: ranges of at most 222 bytes.
        let tags: Vec<_> = (0..300).map(|i| db(1, i, 1)).collect();
        let p = plan(
            &tags,
            Limits {
                pdu_size: 240,
                ..L480
            },
        );
        assert_eq!(p.ranges.len(), 2);
        assert_eq!(p.ranges[0].len, 222);
        assert_eq!(p.ranges[1].len, 78);
        assert!(sizes(&p).iter().all(|&(q, a)| q <= 240 && a <= 240));
    }
}
