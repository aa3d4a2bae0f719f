//! Reconnect order across exports: when a shared uplink comes back, the exports of the
//! higher-priority streams reconnect first.
//!
//! Every export whose destination is down registers here ([`Reconnects::down`]). Before a
//! connect attempt it asks for its [`Reconnects::turn`]: the turn comes once every export of a
//! better priority (a lower number) that is down has finished an attempt since the ask, or has
//! come up, or after [`ORDER_WAIT_MAX`]. So a low-priority export never connects ahead of a
//! high-priority one that is about to try, and never waits on one more than one attempt (a
//! high-priority destination that stays down delays the others by at most that bound).
//!
//! [`Order`] is the state machine (no I/O, no clock); [`Reconnects`] is its async front.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// The longest an export waits for its turn: as long as the longest pause between two
/// attempts of an export whose destination is down (the driver's
/// [`super::driver::UNREACHABLE_RETRY_CAP`]; MQTT's default `reconnect_max` is shorter), so a
/// better-priority export gets its next attempt in first; one whose attempts take longer (a
/// connect timeout) holds the others back no further.
pub const ORDER_WAIT_MAX: Duration = super::driver::UNREACHABLE_RETRY_CAP;

/// Exports whose destination is down, with their priority and finished attempts.
#[derive(Debug, Default)]
pub struct Order {
    down: HashMap<u64, Down>,
}

#[derive(Debug, Clone, Copy)]
struct Down {
    priority: u8,
    attempts: u64,
}

/// Who an export waits for: the better-priority exports down at the ask, with their attempt
/// counts then.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ticket {
    ahead: Vec<(u64, u64)>,
}

impl Order {
    /// `export` could not reach its destination (kept if already down).
    pub fn down(&mut self, export: u64, priority: u8) {
        self.down.entry(export).or_insert(Down {
            priority,
            attempts: 0,
        });
    }

    /// `export` finished an attempt that did not connect.
    pub fn attempted(&mut self, export: u64) {
        if let Some(d) = self.down.get_mut(&export) {
            d.attempts += 1;
        }
    }

    /// `export` reaches its destination again (or stopped).
    pub fn up(&mut self, export: u64) {
        self.down.remove(&export);
    }

    /// The exports `export` of `priority` waits for before its next attempt.
    pub fn ask(&self, export: u64, priority: u8) -> Ticket {
        let mut ahead: Vec<(u64, u64)> = self
            .down
            .iter()
            .filter(|&(&k, d)| k != export && d.priority < priority)
            .map(|(&k, d)| (k, d.attempts))
            .collect();
        ahead.sort_unstable();
        Ticket { ahead }
    }

    /// Whether every export of the ticket has come up or finished an attempt since.
    pub fn clear(&self, ticket: &Ticket) -> bool {
        ticket
            .ahead
            .iter()
            .all(|(k, then)| self.down.get(k).is_none_or(|d| d.attempts > *then))
    }

    pub fn is_down(&self, export: u64) -> bool {
        self.down.contains_key(&export)
    }
}

/// The gateway-wide reconnect order, shared by every export (cheap to clone).
#[derive(Clone, Default)]
pub struct Reconnects {
    inner: Arc<(Mutex<Order>, Notify)>,
}

impl Reconnects {
    /// The place of `export` (any number unique per export) of stream `priority` in the order.
    pub fn slot(&self, export: u64, priority: u8) -> Slot {
        Slot {
            order: self.clone(),
            export,
            priority,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Order> {
        self.inner.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn change(&self, f: impl FnOnce(&mut Order)) {
        f(&mut self.lock());
        self.inner.1.notify_waiters();
    }
}

/// One export's place in the [`Reconnects`] order: the code that attempts to reach the
/// destination asks for its [`Slot::turn`] before an attempt after a failure and reports how
/// each attempt went.
#[derive(Clone)]
pub struct Slot {
    order: Reconnects,
    export: u64,
    priority: u8,
}

impl Slot {
    /// An attempt to reach the destination failed (the export is down).
    pub fn failed(&self) {
        let (export, priority) = (self.export, self.priority);
        self.order.change(|o| {
            o.down(export, priority);
            o.attempted(export);
        });
    }

    /// The destination is reached (or the export stops): nobody waits for it any more.
    pub fn up(&self) {
        if self.order.lock().is_down(self.export) {
            let export = self.export;
            self.order.change(|o| o.up(export));
        }
    }

    /// Waits for this export's turn to attempt a connect (see the module doc). Returns at
    /// once when no better-priority export is down.
    pub async fn turn(&self) {
        let ticket = self.order.lock().ask(self.export, self.priority);
        if ticket.ahead.is_empty() {
            return;
        }
        tracing::debug!(
            waiting_for = ticket.ahead.len(),
            "letting higher-priority exports reconnect first"
        );
        let wait = async {
            loop {
                let notified = self.order.inner.1.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.order.lock().clear(&ticket) {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(ORDER_WAIT_MAX, wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nobody_ahead_when_no_better_priority_is_down() {
        let mut o = Order::default();
        o.down(1, 5);
        o.down(2, 9);
        assert!(o.ask(1, 5).ahead.is_empty(), "equal priority does not wait");
        assert!(o.clear(&o.ask(1, 5)));
        assert_eq!(o.ask(2, 9).ahead, vec![(1, 0)]);
    }

    #[test]
    fn a_lower_priority_waits_for_one_attempt_of_each_better_one() {
        let mut o = Order::default();
        o.down(1, 1);
        o.down(2, 3);
        o.down(10, 10);
        let t = o.ask(10, 10);
        assert_eq!(t.ahead, vec![(1, 0), (2, 0)]);
        assert!(!o.clear(&t));
        o.attempted(1);
        assert!(!o.clear(&t), "export 2 has not tried yet");
        o.up(2);
        assert!(o.clear(&t), "one attempted, the other is up");
        // The next ask waits for the next attempt of the one still down, not the old one.
        let t = o.ask(10, 10);
        assert_eq!(t.ahead, vec![(1, 1)]);
        assert!(!o.clear(&t));
        o.attempted(1);
        assert!(o.clear(&t));
    }

    #[test]
    fn down_twice_keeps_the_attempt_count_and_up_forgets() {
        let mut o = Order::default();
        o.down(1, 1);
        o.attempted(1);
        o.down(1, 1);
        assert_eq!(o.ask(2, 2).ahead, vec![(1, 1)]);
        o.up(1);
        assert!(!o.is_down(1));
        o.attempted(1);
        assert!(
            o.ask(2, 2).ahead.is_empty(),
            "an attempt of an up export is ignored"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn turn_comes_after_the_better_export_attempts_or_after_the_bound() {
        let r = Reconnects::default();
        let (high, low) = (r.slot(1, 1), r.slot(2, 5));
        high.failed();
        low.failed();
        let waiter = {
            let low = low.clone();
            tokio::spawn(async move {
                let start = tokio::time::Instant::now();
                low.turn().await;
                start.elapsed()
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiter.is_finished());
        high.failed();
        assert_eq!(waiter.await.unwrap(), Duration::from_millis(300));
        // The high one never attempts again: the turn comes after the bound.
        let start = tokio::time::Instant::now();
        low.turn().await;
        assert_eq!(start.elapsed(), ORDER_WAIT_MAX);
        // The better one does not wait for the worse one.
        let start = tokio::time::Instant::now();
        high.turn().await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        // Up: nobody waits for it.
        high.up();
        let start = tokio::time::Instant::now();
        low.turn().await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
