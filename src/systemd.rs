//! systemd integration without a library: `sd_notify` datagrams (READY, STATUS, STOPPING,
//! WATCHDOG) to `$NOTIFY_SOCKET`, and a watchdog that pings only while the queue thread answers.
//! Outside systemd (no `$NOTIFY_SOCKET`) everything here is a no-op.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::queue::QueueHandle;

/// Sends one notification (e.g. `"READY=1"`); `Ok(false)` when not run by systemd.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let path = path.to_string_lossy().into_owned();
    let addr = if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name.as_bytes())?
    } else {
        SocketAddr::from_pathname(&path)?
    };
    let socket = UnixDatagram::unbound()?;
    socket.send_to_addr(state.as_bytes(), &addr)?;
    Ok(true)
}

/// Logs instead of failing: the daemon must not stop because systemd is unreachable.
pub fn notify_or_log(state: &str) {
    if let Err(e) = notify(state) {
        tracing::warn!(error = %e, state, "cannot notify systemd");
    }
}

/// The watchdog interval systemd asked for (`WatchdogSec=`), if it is meant for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok()? != std::process::id()
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Pings the watchdog at half its interval, but only while the queue thread answers a status
/// request in time: a stuck queue (the heart of the daemon) stops the pings and systemd
/// restarts the service.
pub fn spawn_watchdog(queue: QueueHandle, stop: CancellationToken) {
    let Some(interval) = watchdog_interval() else {
        return;
    };
    let half = interval / 2;
    tracing::info!(interval = ?interval, "systemd watchdog enabled");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(half);
        loop {
            tokio::select! { _ = tick.tick() => {}, _ = stop.cancelled() => return }
            match tokio::time::timeout(half, queue.status()).await {
                Ok(Ok(_)) => notify_or_log("WATCHDOG=1"),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "queue unavailable; not feeding the watchdog")
                }
                Err(_) => {
                    tracing::error!(timeout = ?half, "queue thread did not answer in time; not feeding the watchdog")
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        // SAFETY: this test is the only one in the crate touching NOTIFY_SOCKET.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &path) };
        assert!(notify("READY=1\nSTATUS=running").unwrap());
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=running");
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        assert!(!notify("READY=1").unwrap());
    }
}
