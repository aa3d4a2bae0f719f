//! MQTT export against a real mosquitto broker (started by each test on its own port) and a
//! real subscriber (mosquitto_sub). Every stream also has a file export: it is the reference
//! of what the queue held, and every one of its lines must arrive through the broker.

#![cfg(feature = "mqtt")]

mod common;
#[path = "peers/mqtt/mod.rs"]
mod peers;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{free_port, poll_until_async, stop_sources_and_drain, wait_until_async};
use peers::{Broker, Certs, Subscriber};
use std::sync::Arc;
use streamgate::app::{Pipeline, StartOptions};
use streamgate::exporters::stats::ConnectionStats;

fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("info,rumqttc=warn")
        .try_init();
}

#[derive(Clone, Copy)]
struct Setup<'a> {
    data: &'a Path,
    out: &'a Path,
    port: u16,
    client_id: &'a str,
    /// Extra keys of the mqtt export.
    extra: &'a str,
    interval: &'a str,
    tags: usize,
}

fn config(s: &Setup) -> streamgate::app::config::Config {
    let text = r#"
[gateway]
data_dir = "@DATA@"
equipment_id = "eq-test"
status_interval = "200ms"
shutdown_timeout = "10s"

[[streams]]
name = "line"

[[streams.exports]]
name = "mqtt"
kind = "mqtt"
host = "127.0.0.1"
port = @PORT@
client_id = "@CLIENT@"
topic = "lines/{sourceId}/{equipmentId}/{tag}"
batch_size = 2000
batch_interval = "20ms"
initial_backoff = "50ms"
max_backoff = "500ms"
reconnect_min = "50ms"
reconnect_max = "500ms"
connect_timeout = "2s"
@EXTRA@

[[streams.exports]]
name = "reference"
kind = "file"
path = "@OUT@"

[[sources]]
kind = "simulator"
id = "filler"
stream = "line"
interval = "@INTERVAL@"

[[sources.tags]]
name = "temperature"
waveform = "sine"
min = 1.0
max = 2.0
repeat = @TAGS@
"#
    .replace("@DATA@", &s.data.display().to_string())
    .replace("@OUT@", &s.out.display().to_string())
    .replace("@PORT@", &s.port.to_string())
    .replace("@CLIENT@", s.client_id)
    .replace("@EXTRA@", s.extra)
    .replace("@INTERVAL@", s.interval)
    .replace("@TAGS@", &s.tags.to_string());
    streamgate::app::config::parse(&text).unwrap_or_else(|e| panic!("config: {e:?}"))
}

fn mqtt_stats(p: &Pipeline) -> Arc<ConnectionStats> {
    p.export_stats[0]
        .1
        .connection
        .clone()
        .expect("an MQTT export has connection counters")
}

/// The export's last error, "" when none.
fn last_error(stats: &ConnectionStats) -> String {
    stats.last_error.lock().unwrap().clone().unwrap_or_default()
}

/// Waits until the readers produced `n` samples.
async fn produced(p: &Pipeline, n: u64) {
    wait_until_async(&format!("{n} samples read"), T, async || {
        p.samples_read() >= n
    })
    .await;
}

/// How long a test waits for a condition before it fails.
const T: Duration = Duration::from_secs(30);

/// Every line the reference file export wrote.
fn reference(out: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for e in std::fs::read_dir(out).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        lines.extend(text.lines().map(str::to_string));
    }
    lines
}

/// Waits until every reference line arrived at the subscriber; returns the duplicates.
fn all_arrived(expected: &[String], sub: &Subscriber) -> usize {
    let want: HashSet<&String> = expected.iter().collect();
    assert_eq!(want.len(), expected.len(), "reference has duplicates");
    let arrived = |got: &[String]| got.iter().collect::<HashSet<&String>>().is_superset(&want);
    common::poll_until(T, || arrived(&sub.lines()));
    let got = sub.lines();
    let have: HashSet<&String> = got.iter().collect();
    let missing: Vec<&&String> = want.difference(&have).collect();
    assert!(
        missing.is_empty(),
        "{} of {} samples never arrived, e.g. {:?}",
        missing.len(),
        want.len(),
        missing.iter().take(3).collect::<Vec<_>>()
    );
    let extra: Vec<&&String> = have.difference(&want).collect();
    assert!(extra.is_empty(), "received samples never queued: {extra:?}");
    got.len() - have.len()
}

/// Sequence numbers of the source must be contiguous: nothing lost between queue and broker.
fn contiguous(lines: &[String]) {
    let mut seqs: Vec<u64> = lines
        .iter()
        .map(|l| {
            let p = streamgate::payload::decode(l.as_bytes()).unwrap();
            p.meta.sequence_number
        })
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    let first = seqs[0];
    for (i, s) in seqs.iter().enumerate() {
        assert_eq!(*s, first + i as u64, "gap in sequence numbers");
    }
}

fn dirs(base: &Path) -> (PathBuf, PathBuf) {
    (base.join("data"), base.join("out"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_every_sample_arrives_with_its_topic() {
    logs();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = Broker::start(
        &tmp.path().join("broker"),
        &format!("listener {port} 127.0.0.1\nallow_anonymous true"),
        &[port],
    );
    let port_s = port.to_string();
    let sub = Subscriber::start(tmp.path(), "e2e-sub", &["-p", &port_s], &["-v"]);
    let (data, out) = dirs(tmp.path());
    let cfg = config(&Setup {
        data: &data,
        out: &out,
        port,
        client_id: "e2e",
        extra: "",
        interval: "5ms",
        tags: 20,
    });
    let mut p = Pipeline::start(&cfg, StartOptions::default()).unwrap();
    produced(&p, 4_000).await;
    stop_sources_and_drain(&mut p, T).await;
    let stats = mqtt_stats(&p);
    p.stop().await;

    let expected = reference(&out);
    assert!(expected.len() > 1000, "only {} samples", expected.len());
    let dups = all_arrived(&expected, &sub);
    assert_eq!(dups, 0, "duplicates without any broker failure");
    contiguous(&expected);
    // Topic = lines/{sourceId}/{equipmentId}/{tag} of the payload it carries.
    let with_topics = sub.topic_lines();
    assert_eq!(with_topics.len(), expected.len());
    for (topic, payload) in &with_topics {
        let p = streamgate::payload::decode(payload.as_bytes()).unwrap();
        assert_eq!(
            topic,
            &format!("lines/{}/{}/{}", p.meta.source_id, p.equipment_id, p.tag)
        );
    }
    assert_eq!(stats.acked.load(Ordering::Relaxed), expected.len() as u64);
    assert_eq!(stats.late_acks.load(Ordering::Relaxed), 0);
    assert_eq!(stats.connects.load(Ordering::Relaxed), 1);
    // `streamgate status` shows the connection state the export reported.
    let report = streamgate::status::read(&data).unwrap();
    let mqtt = report.streams[0]
        .exports
        .iter()
        .find(|e| e.kind == "mqtt")
        .expect("the mqtt export");
    let state = mqtt.state.clone().unwrap_or_default();
    assert!(
        state.starts_with(&format!("connected to 127.0.0.1:{port}, 0 in flight")),
        "{state}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packed_ndjson_with_a_small_window_and_a_rate_limit() {
    logs();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = Broker::start(
        &tmp.path().join("broker"),
        &format!("listener {port} 127.0.0.1\nallow_anonymous true"),
        &[port],
    );
    let port_s = port.to_string();
    let sub = Subscriber::start(tmp.path(), "ndjson-sub", &["-p", &port_s], &[]);
    let (data, out) = dirs(tmp.path());
    let cfg = config(&Setup {
        data: &data,
        out: &out,
        port,
        client_id: "ndjson",
        extra: "payload = \"ndjson\"\nmax_payload_size = \"4KiB\"\nmax_in_flight = 3\npublish_rate = 200",
        interval: "10ms",
        tags: 10,
    });
    let mut p = Pipeline::start(&cfg, StartOptions::default()).unwrap();
    produced(&p, 1_500).await;
    stop_sources_and_drain(&mut p, T).await;
    let stats = mqtt_stats(&p);
    p.stop().await;
    let expected = reference(&out);
    assert_eq!(all_arrived(&expected, &sub), 0);
    let messages = stats.acked.load(Ordering::Relaxed);
    // 10 tags, one topic each: a batch packs its samples of a tag into one message. Unpacked
    // would be one message per sample; batches of ~50 ms (batch_interval, or the length of the
    // send before them) give 4 to 7 samples per message.
    assert!(
        messages * 3 < expected.len() as u64,
        "{messages} messages for {} samples: not packed",
        expected.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_stream_loses_nothing() {
    logs();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut broker = Broker::start(
        &tmp.path().join("broker"),
        &format!("listener {port} 127.0.0.1\nallow_anonymous true"),
        &[port],
    );
    let port_s = port.to_string();
    let mut sub = Subscriber::start(tmp.path(), "restart-sub", &["-p", &port_s], &[]);
    let (data, out) = dirs(tmp.path());
    let cfg = config(&Setup {
        data: &data,
        out: &out,
        port,
        client_id: "restart",
        extra: "",
        interval: "2ms",
        tags: 20,
    });
    let mut p = Pipeline::start(&cfg, StartOptions::default()).unwrap();
    let stats = mqtt_stats(&p);
    wait_until_async("samples published before the restart", T, async || {
        stats.acked.load(Ordering::Relaxed) >= 2_000
    })
    .await;
    broker.stop();
    wait_until_async("the export noticing the broker is gone", T, async || {
        !stats.connected.load(Ordering::Relaxed)
    })
    .await;
    // The outage lasts until a backlog of 5,000 records waits for the broker.
    wait_until_async("a backlog during the outage", T, async || {
        p.handle.status().await.unwrap()[0].exports[0].backlog >= 5_000
    })
    .await;
    let acked_before = stats.acked.load(Ordering::Relaxed);
    broker.restart();
    sub.restart();
    wait_until_async("publishing again after the restart", T, async || {
        stats.acked.load(Ordering::Relaxed) >= acked_before + 2_000
    })
    .await;
    stop_sources_and_drain(&mut p, Duration::from_secs(60)).await;
    p.stop().await;

    let expected = reference(&out);
    let dups = all_arrived(&expected, &sub);
    contiguous(&expected);
    let possible = stats.possible_duplicates.load(Ordering::Relaxed);
    println!(
        "broker restart: {} samples, {} duplicates at the subscriber, {} records re-sent after a lost PUBACK, {} connects",
        expected.len(),
        dups,
        possible,
        stats.connects.load(Ordering::Relaxed)
    );
    assert!(stats.connects.load(Ordering::Relaxed) >= 2);
    assert!(stats.connection_losses.load(Ordering::Relaxed) >= 1);
    assert_eq!(stats.late_acks.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_broker_hits_ack_timeout_and_nothing_is_lost() {
    logs();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker = Broker::start(
        &tmp.path().join("broker"),
        &format!("listener {port} 127.0.0.1\nallow_anonymous true"),
        &[port],
    );
    let port_s = port.to_string();
    let sub = Subscriber::start(tmp.path(), "frozen-sub", &["-p", &port_s], &[]);
    let (data, out) = dirs(tmp.path());
    let cfg = config(&Setup {
        data: &data,
        out: &out,
        port,
        client_id: "frozen",
        extra: "ack_timeout = \"1s\"",
        interval: "5ms",
        tags: 10,
    });
    let mut p = Pipeline::start(&cfg, StartOptions::default()).unwrap();
    let stats = mqtt_stats(&p);
    wait_until_async("samples published before the freeze", T, async || {
        stats.acked.load(Ordering::Relaxed) >= 500
    })
    .await;
    // Frozen: the TCP connection stays open, but no PUBACK comes.
    broker.signal("STOP");
    let dropped = poll_until_async(T, async || {
        stats.connection_losses.load(Ordering::Relaxed) >= 1
    })
    .await;
    assert!(
        dropped,
        "ack_timeout did not drop the connection (last error: {})",
        last_error(&stats)
    );
    let acked_frozen = stats.acked.load(Ordering::Relaxed);
    // A window in which nothing may be acknowledged: no condition to wait for.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        stats.acked.load(Ordering::Relaxed),
        acked_frozen,
        "acknowledged while the broker was frozen"
    );
    broker.signal("CONT");
    stop_sources_and_drain(&mut p, Duration::from_secs(60)).await;
    p.stop().await;
    let error = last_error(&stats);
    assert!(
        stats.connection_losses.load(Ordering::Relaxed) >= 1,
        "ack_timeout did not drop the connection (last error: {error})"
    );
    let expected = reference(&out);
    all_arrived(&expected, &sub);
    contiguous(&expected);
    assert_eq!(stats.late_acks.load(Ordering::Relaxed), 0);
}

fn tls_broker_conf(certs: &Certs, plain: u16, tls: u16) -> String {
    format!(
        "per_listener_settings false\nallow_anonymous true\nlistener {plain} 127.0.0.1\nlistener {tls} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
        certs.ca.display(),
        certs.server_cert.display(),
        certs.server_key.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_works_and_a_wrong_ca_loses_nothing() {
    logs();
    let tmp = tempfile::tempdir().unwrap();
    let certs = Certs::generate(&tmp.path().join("certs"));
    let (plain, tls) = (free_port(), free_port());
    let _broker = Broker::start(
        &tmp.path().join("broker"),
        &tls_broker_conf(&certs, plain, tls),
        &[plain, tls],
    );
    let plain_s = plain.to_string();
    let sub = Subscriber::start(tmp.path(), "tls-sub", &["-p", &plain_s], &[]);
    let (data, out) = dirs(tmp.path());
    let tls_keys = |ca: &Path, with_cert: bool| {
        let mut s = format!("tls = true\nca_file = \"{}\"\n", ca.display());
        if with_cert {
            s += &format!(
                "client_cert = \"{}\"\nclient_key = \"{}\"\n",
                certs.client_cert.display(),
                certs.client_key.display()
            );
        }
        s
    };

    // 1. A wrong CA: a clear error, nothing acknowledged, everything stays queued.
    let extra = tls_keys(&certs.other_ca, true);
    let setup = Setup {
        data: &data,
        out: &out,
        port: tls,
        client_id: "tls",
        extra: &extra,
        interval: "10ms",
        tags: 10,
    };
    let mut p = Pipeline::start(&config(&setup), StartOptions::default()).unwrap();
    let stats = mqtt_stats(&p);
    poll_until_async(T, async || {
        last_error(&stats).contains("not signed by a CA we trust") && p.samples_read() >= 100
    })
    .await;
    p.stop_sources(Duration::from_secs(5)).await;
    let error = last_error(&stats);
    assert!(
        error.contains("not signed by a CA we trust"),
        "unclear error: {error}"
    );
    assert_eq!(stats.acked.load(Ordering::Relaxed), 0);
    // The queue's status carries the export's last error (driver acks).
    let mut status = Vec::new();
    poll_until_async(T, async || {
        status = p.handle.status().await.unwrap();
        status[0].exports[0].last_error.is_some()
    })
    .await;
    let mqtt = &status[0].exports[0];
    assert_eq!(mqtt.delivered, 0);
    assert!(mqtt.backlog > 0, "nothing queued");
    let e = mqtt.last_error.as_deref().expect("an error in the status");
    assert!(
        e.contains("not signed by a CA we trust"),
        "status shows {e}"
    );
    p.stop().await;

    // 2. The right CA but no client certificate: the broker refuses the handshake.
    let extra = tls_keys(&certs.ca, false);
    let p = Pipeline::start(
        &config(&Setup {
            extra: &extra,
            ..setup
        }),
        StartOptions {
            sources: false,
            exports: true,
        },
    )
    .unwrap();
    let stats = mqtt_stats(&p);
    let clear = |e: &str| e.contains("TLS") && e.contains("client_cert");
    poll_until_async(T, async || clear(&last_error(&stats))).await;
    let error = last_error(&stats);
    assert!(clear(&error), "unclear error: {error}");
    assert_eq!(mqtt_stats(&p).acked.load(Ordering::Relaxed), 0);
    p.stop().await;

    // 3. Mutual TLS as it should be: the backlog of run 1 and new samples all arrive.
    let extra = tls_keys(&certs.ca, true);
    let mut p = Pipeline::start(
        &config(&Setup {
            extra: &extra,
            ..setup
        }),
        StartOptions::default(),
    )
    .unwrap();
    // New samples beside the backlog of run 1.
    produced(&p, 100).await;
    stop_sources_and_drain(&mut p, T).await;
    p.stop().await;
    let expected = reference(&out);
    assert_eq!(all_arrived(&expected, &sub), 0);
    contiguous(&expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_file_refused_then_accepted_and_late_broker() {
    logs();
    let tmp = tempfile::tempdir().unwrap();
    let bdir = tmp.path().join("broker");
    std::fs::create_dir_all(&bdir).unwrap();
    let pwfile = bdir.join("passwd");
    let st = std::process::Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&pwfile)
        .args(["gateway", "s3cret-pa55"])
        .status()
        .expect("mosquitto_passwd");
    assert!(st.success());
    let port = free_port();
    let (data, out) = dirs(tmp.path());

    // 0. No broker yet: connection refused, retried with backoff.
    let wrong = "username = \"gateway\"\npassword = \"wrong-one\"";
    let setup = Setup {
        data: &data,
        out: &out,
        port,
        client_id: "pw",
        extra: wrong,
        interval: "10ms",
        tags: 5,
    };
    let mut p = Pipeline::start(&config(&setup), StartOptions::default()).unwrap();
    let stats = mqtt_stats(&p);
    poll_until_async(T, async || {
        last_error(&stats).contains("connection refused by")
    })
    .await;
    let error = last_error(&stats);
    assert!(
        error.contains("connection refused by"),
        "unclear error: {error}"
    );

    // 1. The broker comes up, the password is wrong: not authorised, nothing acknowledged.
    let _broker = Broker::start(
        &bdir,
        &format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}",
            pwfile.display()
        ),
        &[port],
    );
    let port_s = port.to_string();
    let sub = Subscriber::start(
        tmp.path(),
        "pw-sub",
        &["-p", &port_s, "-u", "gateway", "-P", "s3cret-pa55"],
        &[],
    );
    let refused = |e: &str| e.contains("refused the connection") && e.contains("password");
    poll_until_async(T, async || refused(&last_error(&stats))).await;
    p.stop_sources(Duration::from_secs(5)).await;
    let error = last_error(&stats);
    assert!(refused(&error), "unclear error: {error}");
    assert!(!error.contains("wrong-one"), "the password leaked: {error}");
    assert_eq!(stats.acked.load(Ordering::Relaxed), 0);
    p.stop().await;

    // 2. The right password (from the environment): everything arrives.
    // SAFETY: set before the pipeline starts; no other thread of this test reads it yet.
    unsafe { std::env::set_var("STREAMGATE_TEST_MQTT_PASSWORD", "s3cret-pa55") };
    let mut p = Pipeline::start(
        &config(&Setup {
            extra: "username = \"gateway\"\npassword_env = \"STREAMGATE_TEST_MQTT_PASSWORD\"",
            ..setup
        }),
        StartOptions::default(),
    )
    .unwrap();
    produced(&p, 100).await;
    stop_sources_and_drain(&mut p, T).await;
    p.stop().await;
    let expected = reference(&out);
    assert_eq!(all_arrived(&expected, &sub), 0);
    contiguous(&expected);
}
