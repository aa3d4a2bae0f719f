//! Which publish a PUBACK acknowledges. Pure state machine, no I/O.
//!
//! rumqttc assigns packet ids inside its event loop, in the order requests leave its channel
//! (see rumqttc `state.rs`: ids count 1..=max_inflight and wrap). We submit publishes in order
//! and rumqttc reports each one as `Outgoing::Publish(pkid)` once it is written (or, when the
//! id is still taken because the broker acked out of order, as `Outgoing::AwaitAck(pkid)`
//! first and `Outgoing::Publish(pkid)` when it finally goes out). So: a FIFO of submitted
//! tags waiting for their id, and per id a FIFO of tags waiting for their PUBACK.
//!
//! Each tag leaves exactly once: by a PUBACK (QoS 1), by being written (QoS 0), or by
//! [`InFlight::connection_lost`]. Nothing is reported acknowledged without its PUBACK.

use std::collections::{HashMap, VecDeque};

/// Identifies one message of one send: `(send generation, message index)`.
pub type Tag = (u64, u32);

#[derive(Debug, Default)]
pub struct InFlight {
    /// Submitted to rumqttc, no packet id seen yet (in submission order).
    unassigned: VecDeque<Tag>,
    /// Written with a packet id, waiting for the PUBACK.
    by_pkid: HashMap<u16, VecDeque<Tag>>,
    assigned: usize,
    /// A publish parked by rumqttc on a packet id collision: its later
    /// `Outgoing::Publish(pkid)` is not a new publish.
    collided: Option<u16>,
}

/// Tags dropped by a lost connection.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Lost {
    /// Written to the connection without a PUBACK: the broker may have them (duplicates).
    pub sent: Vec<Tag>,
    /// Never written.
    pub unsent: Vec<Tag>,
}

impl InFlight {
    /// Publishes submitted and not settled.
    pub fn len(&self) -> usize {
        self.unassigned.len() + self.assigned
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A publish was handed to rumqttc.
    pub fn submitted(&mut self, tag: Tag) {
        self.unassigned.push_back(tag);
    }

    /// `Outgoing::Publish(pkid)`: the oldest submitted publish was written with `pkid`.
    /// Returns the tag when that settles it (QoS 0, `pkid == 0`).
    pub fn written(&mut self, pkid: u16) -> Option<Tag> {
        if pkid != 0 && self.collided == Some(pkid) {
            self.collided = None;
            return None;
        }
        let tag = self.unassigned.pop_front()?;
        if pkid == 0 {
            return Some(tag);
        }
        self.by_pkid.entry(pkid).or_default().push_back(tag);
        self.assigned += 1;
        None
    }

    /// `Outgoing::AwaitAck(pkid)`: the oldest submitted publish got `pkid`, which is still
    /// waiting for the broker's PUBACK; rumqttc sends it after that PUBACK.
    pub fn parked(&mut self, pkid: u16) {
        if let Some(tag) = self.unassigned.pop_front() {
            self.by_pkid.entry(pkid).or_default().push_back(tag);
            self.assigned += 1;
            self.collided = Some(pkid);
        }
    }

    /// A PUBACK: returns the acknowledged tag (`None` for an id we do not wait for).
    pub fn puback(&mut self, pkid: u16) -> Option<Tag> {
        let queue = self.by_pkid.get_mut(&pkid)?;
        let tag = queue.pop_front();
        if queue.is_empty() {
            self.by_pkid.remove(&pkid);
        }
        if tag.is_some() {
            self.assigned -= 1;
        }
        tag
    }

    /// The connection is gone: every publish without PUBACK leaves, split by whether it
    /// was written. The caller decides their outcome (retry) exactly once.
    pub fn connection_lost(&mut self) -> Lost {
        let mut sent: Vec<Tag> = self.by_pkid.drain().flat_map(|(_, q)| q).collect();
        sent.sort_unstable();
        let unsent = self.unassigned.drain(..).collect();
        self.assigned = 0;
        self.collided = None;
        Lost { sent, unsent }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pubacks_map_to_submissions_in_order() {
        let mut f = InFlight::default();
        for i in 0..3 {
            f.submitted((1, i));
        }
        assert_eq!(f.len(), 3);
        assert_eq!(f.written(1), None);
        assert_eq!(f.written(2), None);
        assert_eq!(f.puback(2), Some((1, 1)));
        assert_eq!(f.puback(2), None, "an id is acknowledged once");
        assert_eq!(f.written(3), None);
        assert_eq!(f.puback(1), Some((1, 0)));
        assert_eq!(f.puback(3), Some((1, 2)));
        assert!(f.is_empty());
    }

    #[test]
    fn qos0_settles_when_written() {
        let mut f = InFlight::default();
        f.submitted((1, 0));
        assert_eq!(f.written(0), Some((1, 0)));
        assert!(f.is_empty());
    }

    #[test]
    fn wrapped_ids_and_collisions() {
        // Window 2: ids 1, 2, then 1 again while the broker has not acked the first 1.
        let mut f = InFlight::default();
        f.submitted((1, 0));
        f.submitted((1, 1));
        f.written(1);
        f.written(2);
        assert_eq!(f.puback(2), Some((1, 1)));
        f.submitted((1, 2));
        f.parked(1); // id 1 still taken by (1, 0)
        assert_eq!(f.len(), 2);
        assert_eq!(f.puback(1), Some((1, 0)));
        assert_eq!(f.written(1), None, "the parked publish goes out now");
        assert_eq!(f.len(), 1);
        f.submitted((1, 3));
        f.written(2);
        assert_eq!(f.puback(1), Some((1, 2)));
        assert_eq!(f.puback(2), Some((1, 3)));
        assert!(f.is_empty());
    }

    #[test]
    fn connection_loss_returns_everything_once() {
        let mut f = InFlight::default();
        for i in 0..4 {
            f.submitted((7, i));
        }
        f.written(1);
        f.written(2);
        assert_eq!(f.puback(1), Some((7, 0)));
        let lost = f.connection_lost();
        assert_eq!(
            lost,
            Lost {
                sent: vec![(7, 1)],
                unsent: vec![(7, 2), (7, 3)]
            }
        );
        assert!(f.is_empty());
        assert_eq!(f.connection_lost(), Lost::default());
        assert_eq!(f.puback(2), None, "a late PUBACK settles nothing");
    }
}
