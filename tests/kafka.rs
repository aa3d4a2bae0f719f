//! The Kafka export against a real Kafka-protocol broker (Tansu, Apache Kafka compatible; the
//! real Apache Kafka cannot be fetched here) started by these tests, read back by kafka-python
//! (an independent client): every sample once with its topic, key and the partition Apache
//! Kafka's partitioner gives that key; a record for a topic the cluster lacks dead-lettered and
//! the rest delivered; the broker killed and restarted mid-stream without loss; SCRAM-SHA-512
//! over TLS, and a refused login named in the log and `status` with nothing lost.

#[path = "peers/certs.rs"]
mod certs;
mod common;
#[path = "peers/kafka/mod.rs"]
mod kafka_peer;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::free_port;
use kafka_peer::{Consumed, Tansu, TlsFront, consume};

fn config(data: &Path, export: &str, interval: &str, tags: &[&str]) -> String {
    let tags: String = tags
        .iter()
        .map(|t| format!("\n[[sources.tags]]\nname = \"{t}\"\n"))
        .collect();
    format!(
        r#"
[gateway]
data_dir = "{data}"
equipment_id = "line1"
report_interval = "1s"

[[streams]]
name = "line"

[[streams.exports]]
name = "kafka"
kind = "kafka"
initial_backoff = "50ms"
max_backoff = "1s"
{export}

[[sources]]
kind = "simulator"
id = "sim"
interval = "{interval}"
{tags}"#,
        data = common::toml_path(data),
    )
}

fn report(data: &Path) -> streamgate::status::StatusReport {
    common::status(data).expect("a status in the queue database")
}

fn export_status(data: &Path) -> streamgate::queue::inspect::ExportReport {
    let mut r = report(data);
    r.streams.remove(0).exports.remove(0)
}

fn next_seq(data: &Path) -> u64 {
    report(data).sources[0].next_sequence_number as u64
}

/// Sequence number -> how often it arrived, over every record read back.
fn by_seq(records: &[Consumed]) -> BTreeMap<u64, usize> {
    let mut seen = BTreeMap::new();
    for r in records {
        *seen.entry(r.seq()).or_default() += 1;
    }
    seen
}

/// Waits until `more` samples were read after now and the export has nothing older than the
/// live flow left (fewer than 20 records queued).
fn wait_caught_up(data: &Path, more: u64, what: &str) {
    let target = next_seq(data) + more;
    common::wait_until(what, Duration::from_secs(60), || {
        let r = report(data);
        r.sources[0].next_sequence_number as u64 > target && r.streams[0].exports[0].backlog < 20
    });
}

fn stop(mut gw: common::Gateway) {
    gw.sigterm();
    let status = gw.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{}", gw.log().join("\n"));
}

#[test]
fn every_sample_once_with_its_topic_key_and_partition_and_a_missing_topic_dead_lettered() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker = Tansu::start(&tmp.path().join("tansu"), port);
    broker.create_topic("line-temp", 3);
    broker.create_topic("line-state", 3);
    // No topic for the tag "pressure": its samples are dead-lettered, the others delivered.
    let data = tmp.path().join("data");
    let cfg = tmp.path().join("gw.toml");
    std::fs::write(
        &cfg,
        config(
            &data,
            &format!(
                "bootstrap_servers = [\"127.0.0.1:{port}\"]\ntopic = \"line-{{tag}}\"\npartition_key = \"{{equipmentId}}/{{tag}}\"\ncompression = \"lz4\""
            ),
            "50ms",
            &["temp", "state", "pressure"],
        ),
    )
    .unwrap();
    let gw = common::Gateway::start(&cfg, "info");
    common::wait_until(
        "300 samples read and exported",
        Duration::from_secs(60),
        || {
            common::status(&data).is_some_and(|r| {
                r.sources
                    .first()
                    .is_some_and(|s| s.next_sequence_number > 300)
                    && r.streams[0].exports[0].delivered > 150
            })
        },
    );
    stop(gw);
    let last = next_seq(&data) - 1;
    let export = export_status(&data);
    assert_eq!(export.backlog, 0, "{export:?}");

    let bootstrap = format!("127.0.0.1:{port}");
    let mut read = consume(&bootstrap, "line-temp", &[]);
    read.extend(consume(&bootstrap, "line-state", &[]));
    let seen = by_seq(&read);
    let mut missing = Vec::new();
    // Tags take turns: sequence numbers 1..=last, one tag each.
    for r in &read {
        let p = r.payload();
        let tag = p["tag"].as_str().unwrap();
        assert_eq!(
            r.key.as_deref(),
            Some(format!("line1/{tag}").as_str()),
            "the key is the partition_key template"
        );
        assert_eq!(
            Some(r.partition),
            r.expected_partition,
            "{tag}: streamgate's partition is Apache Kafka's (murmur2) for that key"
        );
    }
    for seq in 1..=last {
        if !seen.contains_key(&seq) {
            missing.push(seq);
        }
    }
    // What is not in Kafka is exactly the pressure samples, each dead-lettered.
    for r in &read {
        assert_ne!(r.payload()["tag"], "pressure");
    }
    let dead = export.dead_lettered as u64;
    assert_eq!(
        missing.len() as u64,
        dead,
        "every sample not in Kafka was dead-lettered ({} missing, {dead} dead-lettered)",
        missing.len()
    );
    assert!(
        dead > 50 && dead < last,
        "about a third dead-lettered: {dead} of {last}"
    );
    let reason = &export.recent_dead_letters[0].1;
    assert!(
        reason.contains("topic \"line-pressure\" does not exist"),
        "{reason}"
    );
    let dups: usize = seen.values().filter(|n| **n > 1).count();
    assert_eq!(dups, 0, "a clean run delivers each sample once");
    assert_eq!(export.delivered as usize, read.len());
    println!(
        "{} samples in Kafka over 2 topics x 3 partitions, {dead} dead-lettered (no topic), 0 duplicates",
        read.len()
    );
}

#[test]
fn broker_killed_and_restarted_mid_stream_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut broker = Tansu::start(&tmp.path().join("tansu"), port);
    broker.create_topic("line", 3);
    let data = tmp.path().join("data");
    let cfg = tmp.path().join("gw.toml");
    std::fs::write(
        &cfg,
        config(
            &data,
            &format!(
                "bootstrap_servers = [\"127.0.0.1:{port}\"]\ntopic = \"line\"\ncompression = \"zstd\""
            ),
            "20ms",
            &["a", "b"],
        ),
    )
    .unwrap();
    let gw = common::Gateway::start(&cfg, "info");
    common::wait_until("200 delivered", Duration::from_secs(60), || {
        common::status(&data).is_some_and(|r| r.streams[0].exports[0].delivered >= 200)
    });
    broker.kill9();
    let mark = gw.log_len();
    gw.wait_line_within(mark, &["export failing"], Duration::from_secs(30));
    // The status the daemon writes (every second) names the outage and its reason.
    common::wait_until("the outage in status", Duration::from_secs(10), || {
        common::status(&data)
            .and_then(|r| r.streams.first()?.exports.first()?.last_error.clone())
            .is_some_and(|e| e.starts_with("kafka"))
    });
    std::thread::sleep(Duration::from_secs(2));
    broker.restart();
    gw.wait_line_within(mark, &["export recovered"], Duration::from_secs(60));
    wait_caught_up(&data, 100, "the backlog drained after the restart");
    stop(gw);
    let last = next_seq(&data) - 1;
    assert_eq!(export_status(&data).backlog, 0);
    let read = consume(&format!("127.0.0.1:{port}"), "line", &[]);
    let seen = by_seq(&read);
    let missing: Vec<u64> = (1..=last).filter(|s| !seen.contains_key(s)).collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    println!(
        "{last} samples, all in Kafka after a kill -9 and restart of the broker; {duplicates} duplicate(s) (at-least-once: sends in flight at the kill)"
    );
}

#[test]
fn scram_over_tls_and_a_refused_login_is_named_without_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = certs::Certs::generate(&tmp.path().join("certs"));
    let (plain, tls) = (free_port(), free_port());
    let dir = tmp.path().join("tansu");
    {
        // Users and topics are made before authentication is switched on.
        let setup = Tansu::start_with(&dir, plain, tls, false);
        setup.create_user("gateway", "right-password");
        setup.create_topic("line", 2);
    }
    let _broker = Tansu::start_with(&dir, plain, tls, true);
    let _front = TlsFront::start(tls, &certs.server_cert, &certs.server_key, plain);
    let data = tmp.path().join("data");
    let cfg = tmp.path().join("gw.toml");
    std::fs::write(
        &cfg,
        config(
            &data,
            &format!(
                "bootstrap_servers = [\"127.0.0.1:{tls}\"]\ntopic = \"line\"\ntls = true\nca_file = \"{}\"\nsasl_mechanism = \"scram-sha-512\"\nusername = \"gateway\"\npassword_env = \"KAFKA_TEST_PASSWORD\"",
                common::toml_path(&certs.ca)
            ),
            "50ms",
            &["a"],
        ),
    )
    .unwrap();
    // A wrong password: the log and status say which login was refused and what to check.
    let mut cmd = common::Gateway::command();
    cmd.args(["run", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .env("KAFKA_TEST_PASSWORD", "wrong-password");
    let gw = common::Gateway::spawn(cmd);
    let line = gw.wait_line_within(0, &["export failing"], Duration::from_secs(30));
    assert!(
        line.contains("SASL SCRAM-SHA-512 login as \\\"gateway\\\" refused")
            && line.contains("check username, password"),
        "{line}"
    );
    assert!(
        !line.contains("wrong-password"),
        "no secret in the log: {line}"
    );
    std::thread::sleep(Duration::from_secs(1));
    let refused = export_status(&data);
    assert_eq!(refused.delivered, 0);
    assert!(
        refused
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("login as \"gateway\" refused")),
        "{refused:?}"
    );
    stop(gw);
    let queued = report(&data).streams[0].records;
    assert!(queued > 0, "the samples stay queued");

    // The right password: what was queued and what follows arrives.
    let mut cmd = common::Gateway::command();
    cmd.args(["run", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .env("KAFKA_TEST_PASSWORD", "right-password");
    let gw = common::Gateway::spawn(cmd);
    wait_caught_up(&data, 40, "delivered over SCRAM and TLS");
    stop(gw);
    let last = next_seq(&data) - 1;
    let read = consume(
        &format!("127.0.0.1:{tls}"),
        "line",
        &[
            "--sasl",
            "SCRAM-SHA-512",
            "gateway",
            "right-password",
            "--cafile",
            certs.ca.to_str().unwrap(),
        ],
    );
    let seen = by_seq(&read);
    let missing: Vec<u64> = (1..=last).filter(|s| !seen.contains_key(s)).collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    println!(
        "{last} samples over SCRAM-SHA-512 + TLS, {queued} of them queued while the login was refused"
    );
}
