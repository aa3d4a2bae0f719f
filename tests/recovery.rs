//! Prompt recovery: when the broker comes back after an outage long enough to grow every
//! backoff, the MQTT export publishes again within seconds of the broker's return, not after
//! a backoff grown towards `max_backoff` (60 s); and the exports of the higher-priority
//! stream reconnect first; and while the backlog of the outage drains, the progress log says
//! how much is left and when it should be done. A real mosquitto, stopped and restarted.

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

/// The real binary, an MQTT export whose broker is down for its first seconds while a
/// simulator produces 100 samples/s, then a broker that takes at most 160 messages/s from it
/// (`publish_rate`): the backlog drains over several seconds, and every second the log says
/// `draining the backlog` with what is left and the ETA at the last second's pace, until the
/// export progress line shows only the live flow left (at most two simulator ticks, lag 0).
#[test]
fn a_draining_backlog_is_reported_with_what_is_left_and_an_eta() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = tmp.path().join("gw.toml");
    let tags: String = (0..10)
        .map(|i| format!("\n[[sources.tags]]\nname = \"t{i}\"\n"))
        .collect();
    std::fs::write(
        &cfg,
        format!(
            r#"
[gateway]
data_dir = "{data}"
equipment_id = "drain"
report_interval = "1s"

[[streams]]
name = "line"

[[streams.exports]]
name = "broker"
kind = "mqtt"
host = "127.0.0.1"
port = {port}
client_id = "drain"
topic = "line/{{tag}}"
tls = false
connect_timeout = "1s"
publish_rate = 160

[[sources]]
kind = "simulator"
id = "sim"
interval = "100ms"
{tags}"#,
            data = common::toml_path(&tmp.path().join("data")),
        ),
    )
    .unwrap();
    let gw = common::Gateway::start_json(&cfg, "info");
    gw.wait_running();
    // The outage (the scenario): about 400 samples queue up while no broker listens.
    std::thread::sleep(Duration::from_secs(4));
    let mark = gw.log_len();
    let _broker = Broker::start(
        &tmp.path().join("broker"),
        &format!("listener {port} 127.0.0.1\nallow_anonymous true"),
        &[port],
    );
    gw.wait_line_within(mark, &["draining the backlog"], Duration::from_secs(30));
    let fields = |line: &String| -> serde_json::Value {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("a JSON log line ({e}): {line}"));
        v["fields"].clone()
    };
    // Caught up: what is queued at a report is the live flow only, at most two simulator ticks
    // (10 samples each; the report may come right after a tick, so "0" depends on the phase of
    // the two timers), and nothing older than a second.
    common::wait_until(
        "an export progress line with the backlog drained",
        Duration::from_secs(60),
        || {
            gw.log()[mark..].iter().map(fields).any(|f| {
                f["message"] == "export progress"
                    && f["backlog"].as_u64().is_some_and(|b| b <= 20)
                    && f["lag_s"] == 0
            })
        },
    );
    // Each report: `export progress` with the backlog, then, while it shrank since the last
    // report (1 s before) and is not gone, `draining the backlog` with what is left and the
    // ETA at that pace: ceil(left / shrink per second).
    let log: Vec<serde_json::Value> = gw.log()[mark..]
        .iter()
        .map(fields)
        .filter(|f| f["export"] == "broker")
        .collect();
    let mut checked = 0;
    let mut previous: Option<u64> = None;
    for (i, f) in log.iter().enumerate() {
        if f["message"] != "export progress" {
            continue;
        }
        let backlog = f["backlog"].as_u64().expect("backlog");
        let next = log
            .get(i + 1)
            .filter(|n| n["message"] == "draining the backlog");
        match previous {
            Some(before) if backlog < before && backlog > 0 => {
                let drain = next.unwrap_or_else(|| panic!("a drain line after {f}: {log:?}"));
                assert_eq!(drain["left"], backlog, "{drain}");
                assert_eq!(
                    drain["eta_s"].as_u64(),
                    Some(backlog.div_ceil(before - backlog)),
                    "{backlog} left, {} drained in the last second: {drain}",
                    before - backlog
                );
                checked += 1;
            }
            _ => assert!(
                next.is_none(),
                "no drain line when the backlog did not shrink: {log:?}"
            ),
        }
        previous = Some(backlog);
    }
    assert!(
        checked >= 2,
        "the drain was reported at least twice: {log:?}"
    );
    println!("{checked} drain lines checked");
}

/// An idle export (nothing to send: no source runs) still shows a lost connection in
/// `status` within seconds: its state line is refreshed every second, not only after a send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_exports_state_follows_its_connection() {
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
equipment_id = "idle"

[[streams]]
name = "line"

[[streams.exports]]
name = "broker"
kind = "mqtt"
host = "127.0.0.1"
port = {port}
client_id = "idle"
topic = "line/{{tag}}"
tls = false
connect_timeout = "1s"
# Keep-alive beyond the test: the loss is seen by the connection itself (a closed socket).
keep_alive = "60s"

[[sources]]
kind = "simulator"
id = "sim"

[[sources.tags]]
name = "t"
"#,
        data = tmp.path().join("data").display()
    );
    let cfg = streamgate::app::config::parse(&text).unwrap_or_else(|e| panic!("{e:?}"));
    let options = StartOptions {
        sources: false,
        exports: true,
    };
    let p = Pipeline::start(&cfg, options).unwrap();
    let state = async || {
        let status = p.handle.status().await.unwrap();
        status[0].exports[0].state.clone().unwrap_or_default()
    };
    common::wait_until_async(
        "status says connected",
        Duration::from_secs(30),
        async || state().await.starts_with("connected"),
    )
    .await;
    broker.stop();
    common::wait_until_async(
        "status says disconnected",
        Duration::from_secs(5),
        async || state().await.starts_with("disconnected from"),
    )
    .await;
    broker.restart();
    common::wait_until_async(
        "status says connected again",
        Duration::from_secs(10),
        async || state().await.starts_with("connected"),
    )
    .await;
    let sends = p.export_stats[0].1.sends.load(Ordering::Relaxed);
    assert_eq!(
        sends, 0,
        "nothing was sent: the state came from the idle refresh"
    );
    p.stop().await;
}
