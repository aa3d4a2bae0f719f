//! Prompt recovery: when the broker comes back after an outage long enough to grow every
//! backoff, the MQTT export publishes again within seconds of the broker's return, not after
//! a backoff grown towards `max_backoff` (60 s); and the exports of the higher-priority
//! stream reconnect first. A real mosquitto, stopped and restarted.

#![cfg(feature = "mqtt")]

mod common;
#[path = "peers/mqtt/mod.rs"]
mod peers;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::free_port;
use peers::Broker;
use streamgate::app::{Pipeline, StartOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_publishes_again_within_seconds_of_the_brokers_return() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut broker = Broker::start(
        &tmp.path().join("broker"),
        &format!("listener {port} 127.0.0.1\nallow_anonymous true"),
        &[port],
    );
    let text = format!(
        r#"
[gateway]
data_dir = "{data}"
equipment_id = "recovery"

[[streams]]
name = "line"

[[streams.exports]]
name = "broker"
kind = "mqtt"
host = "127.0.0.1"
port = {port}
client_id = "recovery"
topic = "line/{{tag}}"
tls = false
connect_timeout = "1s"
# As if the backoff had grown during a long outage: a failed send pauses the export 15-30 s.
initial_backoff = "30s"

[[sources]]
kind = "simulator"
id = "sim"
interval = "50ms"

[[sources.tags]]
name = "t"
"#,
        data = tmp.path().join("data").display()
    );
    let cfg = streamgate::app::config::parse(&text).unwrap_or_else(|e| panic!("{e:?}"));
    let p = Pipeline::start(&cfg, StartOptions::default()).unwrap();
    let stats = p.export_stats[0]
        .1
        .connection
        .clone()
        .expect("connection counters");
    let acked = || stats.acked.load(Ordering::Relaxed);
    common::wait_until_async("first PUBACK", Duration::from_secs(30), async || {
        acked() > 0
    })
    .await;

    broker.stop();
    // `status` shows the lost connection at once, although nothing was sent since.
    common::wait_until_async(
        "status says disconnected",
        Duration::from_secs(5),
        async || {
            let status = p.handle.status().await.unwrap();
            status[0].exports[0]
                .state
                .as_deref()
                .is_some_and(|s| s.starts_with("disconnected from"))
        },
    )
    .await;
    // The outage itself (the scenario, not a synchronisation): a send fails (no connection
    // within connect_timeout), the export pauses for its backoff (at least 15 s), and the
    // connection's reconnect backoff grows.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let failed = p.export_stats[0].1.failed_sends.load(Ordering::Relaxed);
    assert!(failed >= 1, "sends failed during the outage: {failed}");
    let before = acked();
    broker.restart();
    let back = Instant::now();
    common::wait_until_async(
        "a PUBACK after the restart",
        Duration::from_secs(60),
        async || acked() > before,
    )
    .await;
    let took = back.elapsed();
    println!("publishing again {took:?} after the broker's return ({failed} failed sends)");
    assert!(
        took < Duration::from_secs(5),
        "the export must publish again within 5 s of the broker's return, took {took:?}"
    );
    p.stop().await;
}

/// Two streams on one broker, priority 1 and 10. The low-priority export retries ten times as
/// often (`reconnect_max = "200ms"` against the default 2 s), so without the reconnect order it
/// would be the first back nearly every time; with it, it waits for the high-priority export's
/// attempt and connects after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_higher_priority_export_reconnects_first() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut broker = Broker::start(
        &tmp.path().join("broker"),
        &format!("listener {port} 127.0.0.1\nallow_anonymous true"),
        &[port],
    );
    let export = |client: &str, extra: &str| {
        format!(
            r#"
[[streams.exports]]
name = "broker"
kind = "mqtt"
host = "127.0.0.1"
port = {port}
client_id = "{client}"
topic = "{client}/{{tag}}"
tls = false
connect_timeout = "1s"
{extra}
"#
        )
    };
    let text = format!(
        r#"
[gateway]
data_dir = "{data}"
equipment_id = "recovery"

[[streams]]
name = "critical"
priority = 1
{critical}
[[streams]]
name = "bulk"
priority = 10
{bulk}
[[sources]]
kind = "simulator"
id = "crit-sim"
stream = "critical"
interval = "50ms"

[[sources.tags]]
name = "t"

[[sources]]
kind = "simulator"
id = "bulk-sim"
stream = "bulk"
interval = "50ms"

[[sources.tags]]
name = "t"
"#,
        data = tmp.path().join("data").display(),
        critical = export("crit", ""),
        bulk = export("bulk", "reconnect_max = \"200ms\""),
    );
    let cfg = streamgate::app::config::parse(&text).unwrap_or_else(|e| panic!("{e:?}"));
    let p = Pipeline::start(&cfg, StartOptions::default()).unwrap();
    let stats: Vec<_> = p
        .export_stats
        .iter()
        .map(|(_, s)| s.connection.clone().expect("connection counters"))
        .collect();
    let connects = |i: usize| stats[i].connects.load(Ordering::Relaxed);
    common::wait_until_async("both connected", Duration::from_secs(30), async || {
        connects(0) > 0 && connects(1) > 0
    })
    .await;

    broker.stop();
    let log_len = broker.log().len();
    // The outage (the scenario): both exports fail several reconnect attempts.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = (connects(0), connects(1));
    broker.restart();
    common::wait_until_async("both reconnected", Duration::from_secs(30), async || {
        connects(0) > before.0 && connects(1) > before.1
    })
    .await;
    let log = broker.log();
    let after = &log[log_len.min(log.len())..];
    let at = |client: &str| {
        after
            .find(&format!(" as {client} "))
            .unwrap_or_else(|| panic!("{client} connected after the restart: {after}"))
    };
    assert!(
        at("crit") < at("bulk"),
        "the priority-1 export reconnects first: {after}"
    );
    p.stop().await;
}
