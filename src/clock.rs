//! Clock sanity. Gateways without a real-time clock (most Raspberry Pi boards) boot with a
//! clock that can be days or years off until NTP fixes it. A clock that is *known* wrong —
//! before this binary's build date, or far from the time a cloud endpoint reported — is
//! logged (once per episode), shown by the health endpoint and metrics, and every sample
//! stamped meanwhile carries `Ats`, so consumers know not to trust its times.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// When this binary was built (ms since the epoch; see build.rs).
pub const BUILD_MS: i64 = match i64::from_str_radix(env!("STREAMGATE_BUILD_MS"), 10) {
    Ok(ms) => ms,
    Err(_) => 0,
};

/// A cloud endpoint's time further than this from ours means our clock is wrong (AWS rejects
/// signed requests beyond 5 minutes).
pub const MAX_PEER_OFFSET: Duration = Duration::from_secs(5 * 60);

/// How long a peer's reading counts: after that NTP may have fixed the clock, and the peer
/// will tell us again if not.
pub const PEER_READING_VALID: Duration = Duration::from_secs(10 * 60);

/// What the clock check concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Plausible,
    /// The clock says a time before this binary was built.
    BeforeBuild {
        now_ms: i64,
        build_ms: i64,
    },
    /// A cloud endpoint's time differs by more than [`MAX_PEER_OFFSET`]; positive: we are ahead.
    OffFromPeer {
        peer: String,
        offset_ms: i64,
    },
}

impl Verdict {
    pub fn is_wrong(&self) -> bool {
        !matches!(self, Verdict::Plausible)
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Plausible => write!(f, "the gateway clock looks right"),
            Verdict::BeforeBuild { now_ms, build_ms } => write!(
                f,
                "the gateway clock is wrong: it says {} ms since the epoch, before this streamgate was built ({build_ms}); \
                 {} s behind at least",
                now_ms,
                (build_ms - now_ms) / 1000
            ),
            Verdict::OffFromPeer { peer, offset_ms } => write!(
                f,
                "the gateway clock is wrong: {} s {} against {peer}",
                offset_ms.abs() / 1000,
                if *offset_ms > 0 { "ahead" } else { "behind" }
            ),
        }
    }
}

/// A peer's time as we saw it: `offset_ms` = our clock minus theirs.
#[derive(Debug, Clone)]
pub struct PeerReading {
    pub peer: String,
    pub offset_ms: i64,
    pub at: Instant,
}

/// The pure rule: before the build, or a fresh peer reading too far off.
pub fn judge(now_ms: i64, build_ms: i64, peer: Option<&PeerReading>, now: Instant) -> Verdict {
    if now_ms < build_ms {
        return Verdict::BeforeBuild { now_ms, build_ms };
    }
    if let Some(p) = peer
        && now.saturating_duration_since(p.at) <= PEER_READING_VALID
        && p.offset_ms.unsigned_abs() > MAX_PEER_OFFSET.as_millis() as u64
    {
        return Verdict::OffFromPeer {
            peer: p.peer.clone(),
            offset_ms: p.offset_ms,
        };
    }
    Verdict::Plausible
}

/// The gateway's clock verdict, shared by whoever needs it: created by the app, handed to
/// readers (they flag samples `Ats` while it is wrong), exporters (a cloud endpoint's time is
/// reported to it) and the metrics. Cloning shares the same verdict.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    wrong: AtomicBool,
    /// The last peer reading and the last verdict.
    state: Mutex<(Option<PeerReading>, Option<Verdict>)>,
}

impl Clock {
    /// Whether the clock is known to be wrong right now (cheap: read per sample).
    pub fn known_wrong(&self) -> bool {
        self.inner.wrong.load(Ordering::Relaxed)
    }

    /// Records the time a peer (a cloud endpoint) reported, then re-checks.
    pub fn report_peer_time(&self, peer: &str, peer_ms: i64) {
        let reading = PeerReading {
            peer: peer.to_string(),
            offset_ms: crate::time::now_ms() - peer_ms,
            at: Instant::now(),
        };
        if let Ok(mut st) = self.inner.state.lock() {
            st.0 = Some(reading);
        }
        self.check();
    }

    /// Checks the clock now; logs when the verdict changes. Called at start and periodically.
    pub fn check(&self) -> Verdict {
        let Ok(mut st) = self.inner.state.lock() else {
            return Verdict::Plausible;
        };
        let verdict = judge(
            crate::time::now_ms(),
            BUILD_MS,
            st.0.as_ref(),
            Instant::now(),
        );
        if st.1.as_ref() != Some(&verdict) {
            match &verdict {
                Verdict::Plausible if st.1.is_some() => tracing::info!(
                    "the gateway clock looks right again; samples no longer get Ats for it"
                ),
                Verdict::Plausible => {}
                wrong => tracing::error!(
                    "{wrong}; samples are flagged Ats until it is fixed (enable NTP: `timedatectl set-ntp true`; boards without a real-time clock need network time after boot)"
                ),
            }
            self.inner
                .wrong
                .store(verdict.is_wrong(), Ordering::Relaxed);
            st.1 = Some(verdict.clone());
        }
        verdict
    }

    /// The last verdict, if the clock was checked.
    pub fn last_verdict(&self) -> Option<Verdict> {
        self.inner.state.lock().ok().and_then(|st| st.1.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_the_build_is_wrong() {
        let now = Instant::now();
        assert_eq!(
            judge(1_000, 2_000, None, now),
            Verdict::BeforeBuild {
                now_ms: 1_000,
                build_ms: 2_000
            }
        );
        assert_eq!(judge(2_000, 2_000, None, now), Verdict::Plausible);
    }

    #[test]
    fn a_fresh_peer_reading_beyond_five_minutes_is_wrong() {
        let now = Instant::now();
        let reading = |offset_ms| PeerReading {
            peer: "Kinesis".into(),
            offset_ms,
            at: now,
        };
        let far = reading(-(6 * 60 * 1000));
        assert_eq!(
            judge(10_000, 0, Some(&far), now),
            Verdict::OffFromPeer {
                peer: "Kinesis".into(),
                offset_ms: -360_000
            }
        );
        assert!(
            judge(10_000, 0, Some(&far), now)
                .to_string()
                .contains("360 s behind against Kinesis")
        );
        assert_eq!(
            judge(10_000, 0, Some(&reading(4 * 60 * 1000)), now),
            Verdict::Plausible
        );
        // A stale reading no longer counts.
        let later = now + PEER_READING_VALID + Duration::from_secs(1);
        assert_eq!(judge(10_000, 0, Some(&far), later), Verdict::Plausible);
    }

    #[test]
    fn this_build_has_a_build_date() {
        let build = std::hint::black_box(BUILD_MS);
        assert!(build > 1_700_000_000_000, "{build}");
    }
}
