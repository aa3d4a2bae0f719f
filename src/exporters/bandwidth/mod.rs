//! The gateway-wide export bandwidth (`gateway.max_export_bandwidth`), shared by every export:
//! an async front for [`scheduler::BandwidthScheduler`], the state machine that picks who goes.

pub mod scheduler;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use scheduler::BandwidthScheduler;

type Request = (u64, u8, u64, oneshot::Sender<()>);

/// A handle exports ask before each send. Unlimited when no bandwidth is configured.
#[derive(Clone, Default)]
pub struct Bandwidth {
    tx: Option<mpsc::UnboundedSender<Request>>,
}

/// How long a waiting request takes to gain one priority level.
pub const AGING: Duration = Duration::from_secs(1);

impl Bandwidth {
    pub fn unlimited() -> Bandwidth {
        Bandwidth { tx: None }
    }

    /// Starts the scheduler task (needs a tokio runtime).
    pub fn limited(bytes_per_sec: u64) -> Bandwidth {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(schedule(rx, bytes_per_sec));
        Bandwidth { tx: Some(tx) }
    }

    /// Waits until `export` (any number unique per export) of `priority` may send `bytes`.
    pub async fn acquire(&self, export: u64, priority: u8, bytes: u64) {
        let Some(tx) = &self.tx else { return };
        let (grant, granted) = oneshot::channel();
        if tx.send((export, priority, bytes, grant)).is_ok() {
            let _ = granted.await;
        }
    }
}

async fn schedule(mut rx: mpsc::UnboundedReceiver<Request>, bytes_per_sec: u64) {
    let start = Instant::now();
    let now_us = || start.elapsed().as_micros() as u64;
    let mut sched = BandwidthScheduler::new(bytes_per_sec, AGING, now_us());
    let mut waiting: HashMap<u64, oneshot::Sender<()>> = HashMap::new();
    let mut next_ticket = 0u64;
    loop {
        let wait = loop {
            match sched.poll(now_us()) {
                Some(Ok(ticket)) => {
                    if let Some(grant) = waiting.remove(&ticket) {
                        let _ = grant.send(());
                    }
                }
                Some(Err(wait)) => break Some(wait),
                None => break None,
            }
        };
        tokio::select! {
            req = rx.recv() => match req {
                Some((export, priority, bytes, grant)) => {
                    next_ticket += 1;
                    sched.request(next_ticket, export, priority, bytes, now_us());
                    waiting.insert(next_ticket, grant);
                }
                None => return,
            },
            _ = tokio::time::sleep(wait.unwrap_or(Duration::ZERO)), if wait.is_some() => {}
        }
    }
}
