#![cfg(feature = "s7")]

//! The S7 reader against a real S7 server: python-snap7 3.x's pure-Python `snap7.server.Server`
//! (tests/peers/s7/server.py), started per test on 127.0.0.1 on a free port.

mod common;
#[path = "peers/s7/peer.rs"]
mod peer;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{free_port, poll_until_async, stop_sources_and_drain};
use peer::Peer;
use serde_json::Value as Json;
use streamgate::app::{Pipeline, StartOptions};
use streamgate::readers::s7::codec::Item;
use streamgate::readers::s7::{Client, ConnectOptions};

/// Log lines of every test in this binary (the reader logs from runtime worker threads).
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter("streamgate=info")
            .with_writer(move || LogWriter(writer.clone()))
            .try_init();
        buf
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(b);
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn config(dir: &Path, source: &str) -> streamgate::app::config::Config {
    let text = format!(
        r#"
[gateway]
data_dir = "{data}"
equipment_id = "line-1"

[[streams]]
name = "plc"

[[streams.exports]]
name = "out"
kind = "file"
path = "{out}"
batch_interval = "50ms"

[[sources]]
kind = "s7"
id = "filler"
stream = "plc"
host = "127.0.0.1"
{source}
"#,
        data = dir.join("data").display(),
        out = dir.join("out").display(),
    );
    match streamgate::app::config::parse(&text) {
        Ok(c) => c,
        Err(errs) => panic!(
            "config rejected: {}",
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}

/// Every payload the file export wrote, in file order.
fn delivered(dir: &Path) -> Vec<Json> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("out"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        // A line being written may be incomplete; the parse error skips it.
        out.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
    }
    out
}

fn by_tag(records: &[Json]) -> BTreeMap<String, Vec<Json>> {
    let mut map: BTreeMap<String, Vec<Json>> = BTreeMap::new();
    for r in records {
        map.entry(r["tag"].as_str().unwrap_or("").to_string())
            .or_default()
            .push(r.clone());
    }
    map
}

fn flags(r: &Json) -> Vec<String> {
    r["meta"]["flags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// How long a test waits for a condition before it fails.
const T: Duration = Duration::from_secs(30);

/// Waits until `cond` holds on what was delivered (or panics with the last samples).
async fn wait_for(dir: &Path, what: &str, cond: impl Fn(&BTreeMap<String, Vec<Json>>) -> bool) {
    if poll_until_async(T, async || cond(&by_tag(&delivered(dir)))).await {
        return;
    }
    let last: Vec<String> = by_tag(&delivered(dir))
        .iter()
        .map(|(tag, s)| {
            format!(
                "{tag}: {}",
                s.last().map(|r| r.to_string()).unwrap_or_default()
            )
        })
        .collect();
    panic!(
        "timed out after {T:?} waiting for {what}; last samples:\n{}",
        last.join("\n")
    );
}

/// Stops the readers, waits until the export delivered everything they read, stops the rest.
async fn finish(mut pipeline: Pipeline) {
    stop_sources_and_drain(&mut pipeline, T).await;
    pipeline.stop().await;
}

fn has_value(tags: &BTreeMap<String, Vec<Json>>, tag: &str, v: &Json) -> bool {
    tags.get(tag)
        .is_some_and(|s| s.iter().any(|r| &r["value"] == v && r["quality"] == "Ok"))
}

/// Distinct consecutive Ok values of a tag, in arrival order.
fn values(samples: &[Json]) -> Vec<Json> {
    let mut out: Vec<Json> = Vec::new();
    for r in samples.iter().filter(|r| r["quality"] == "Ok") {
        if out.last() != Some(&r["value"]) {
            out.push(r["value"].clone());
        }
    }
    out
}

/// S7 DATE_AND_TIME in BCD.
#[allow(clippy::too_many_arguments)]
fn dt(y: u32, mo: u32, d: u32, h: u32, mi: u32, s: u32, ms: u32, weekday: u32) -> Vec<u8> {
    let bcd = |v: u32| (((v / 10) << 4) | (v % 10)) as u8;
    vec![
        bcd(y % 100),
        bcd(mo),
        bcd(d),
        bcd(h),
        bcd(mi),
        bcd(s),
        bcd(ms / 10),
        (((ms % 10) << 4) | weekday) as u8,
    ]
}

fn s7_string(max: u8, s: &str) -> Vec<u8> {
    let mut v = vec![max, s.len() as u8];
    v.extend_from_slice(s.as_bytes());
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_address_form_and_type_decodes() {
    let _logs = logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut plc = Peer::start(free_port());
    // Phase 1 values.
    plc.set("db", 1, 0, &[0b1010_0101]);
    plc.set("db", 1, 2, &[0xAB]);
    plc.set("db", 1, 4, &0xBEEFu16.to_be_bytes());
    plc.set("db", 2, 6, &0xDEAD_BEEFu32.to_be_bytes());
    plc.set("db", 1, 8, &12.5f32.to_be_bytes());
    plc.set("db", 1, 12, &(-1234i16).to_be_bytes());
    plc.set("db", 1, 14, &(-123_456_789i32).to_be_bytes());
    plc.set("db", 1, 20, &s7_string(10, "hello"));
    plc.set("db", 1, 32, &std::f64::consts::E.to_be_bytes());
    plc.set("db", 1, 40, b"Z");
    plc.set("db", 1, 42, &12477u16.to_be_bytes()); // 2024-02-29
    plc.set("db", 1, 44, &(-5000i32).to_be_bytes());
    plc.set("db", 1, 48, &dt(2026, 11, 26, 13, 45, 7, 123, 5));
    plc.set("db", 1, 56, &45_296_789u32.to_be_bytes());
    plc.set("db", 1, 60, &7u16.to_be_bytes());
    plc.set("db", 1, 62, &[9]);
    plc.set("db", 1, 64, &100_000u32.to_be_bytes());
    plc.set("db", 1, 68, &250i16.to_be_bytes());
    plc.set("db", 1, 72, &11.4f32.to_be_bytes());
    plc.set("db", 2, 0, &100i16.to_be_bytes());
    plc.set("mk", 0, 10, &[0x02]);
    plc.set("mk", 0, 20, &1000u16.to_be_bytes());
    plc.set("mk", 0, 24, &70_000u32.to_be_bytes());
    plc.set("mk", 0, 28, &1.5f32.to_be_bytes());
    plc.set("mk", 0, 32, &[5]);
    plc.set("pe", 0, 0, &[0x01]);
    plc.set("pe", 0, 64, &4242u16.to_be_bytes());
    plc.set("pe", 0, 66, &(-7i16).to_be_bytes());
    plc.set("pa", 0, 1, &[0x01]);
    plc.set("pa", 0, 2, &[33]);
    plc.set("pa", 0, 4, &444u16.to_be_bytes());

    let tags: &[(&str, &str, Json)] = &[
        ("x0_0", "DB1.DBX0.0", Json::from(true)),
        ("x0_1", "DB1.DBX0.1", Json::from(false)),
        ("x0_7", "db1.dbx0.7", Json::from(true)),
        ("x0_5", "DB1,X0.5", Json::from(true)),
        ("b2", "DB1.DBB2", Json::from(171)),
        ("w4", "DB1.DBW4", Json::from(48879)),
        ("d6", "DB2.DBD6", Json::from(3_735_928_559u64)),
        ("real8", "DB1,REAL8", Json::from(12.5)),
        // The REAL's shortest decimal, not the f32 widened (11.40000057220459).
        ("real72", "DB1,REAL72", Json::from(11.4)),
        ("int12", "DB1,INT12", Json::from(-1234)),
        ("dint14", "DB1,DINT14", Json::from(-123_456_789)),
        ("string20", "DB1,STRING20.10", Json::from("hello")),
        ("lreal32", "DB1,LREAL32", Json::from(std::f64::consts::E)),
        ("char40", "DB1,CHAR40", Json::from("Z")),
        ("date42", "DB1,DATE42", Json::from("2024-02-29")),
        ("time44", "DB1,TIME44", Json::from(-5000)),
        ("dt48", "DB1,DT48", Json::from("2026-11-26T13:45:07.123")),
        ("tod56", "DB1,TOD56", Json::from(45_296_789)),
        ("word60", "DB1,WORD60", Json::from(7)),
        ("byte62", "DB1,BYTE62", Json::from(9)),
        ("dword64", "DB1,DWORD64", Json::from(100_000)),
        ("m10_1", "M10.1", Json::from(true)),
        ("mw20", "MW20", Json::from(1000)),
        ("md24", "MD24", Json::from(70_000)),
        ("mreal28", "M,REAL28", Json::from(1.5)),
        ("mb32", "MB32", Json::from(5)),
        ("i0_0", "I0.0", Json::from(true)),
        ("iw64", "IW64", Json::from(4242)),
        ("iint66", "I,INT66", Json::from(-7)),
        ("q1_0", "Q1.0", Json::from(true)),
        ("qb2", "QB2", Json::from(33)),
        ("qw4", "QW4", Json::from(444)),
    ];
    let mut source = format!("port = {}\ninterval = \"50ms\"\n", plc.port);
    for (name, address, _) in tags {
        source.push_str(&format!(
            "[[sources.tags]]\nname = \"{name}\"\naddress = \"{address}\"\n"
        ));
    }
    source.push_str(
        "[[sources.tags]]\nname = \"scaled\"\naddress = \"DB1,INT68\"\nscale = 0.1\noffset = -5.0\n",
    );
    source
        .push_str("[[sources.tags]]\nname = \"banded\"\naddress = \"DB2,INT0\"\ndeadband = 5.0\n");
    let cfg = config(dir.path(), &source);
    let pipeline = Pipeline::start(&cfg, StartOptions::default()).expect("start");

    wait_for(dir.path(), "phase 1 values", |t| {
        tags.iter().all(|(name, _, v)| has_value(t, name, v)) && has_value(t, "banded", &100.into())
    })
    .await;
    // Phase 2: change values while the server serves.
    plc.set("db", 1, 0, &[0b1010_0100]);
    plc.set("db", 1, 8, &(-0.1f32).to_be_bytes());
    plc.set("db", 1, 12, &42i16.to_be_bytes());
    plc.set("db", 1, 20, &s7_string(10, "world!"));
    plc.set("db", 1, 48, &dt(1999, 12, 31, 23, 59, 59, 999, 6));
    plc.set("mk", 0, 20, &2000u16.to_be_bytes());
    plc.set("pe", 0, 64, &1u16.to_be_bytes());
    plc.set("pa", 0, 4, &555u16.to_be_bytes());
    plc.set("db", 2, 0, &102i16.to_be_bytes()); // within the deadband: not sent
    let changed: &[(&str, Json)] = &[
        ("x0_0", false.into()),
        ("real8", (-0.1).into()),
        ("int12", 42.into()),
        ("string20", "world!".into()),
        ("dt48", "1999-12-31T23:59:59.999".into()),
        ("mw20", 2000.into()),
        ("iw64", 1.into()),
        ("qw4", 555.into()),
    ];
    wait_for(dir.path(), "phase 2 values", |t| {
        changed.iter().all(|(name, v)| has_value(t, name, v))
    })
    .await;
    plc.set("db", 2, 0, &110i16.to_be_bytes());
    wait_for(dir.path(), "deadband crossing", |t| {
        has_value(t, "banded", &110.into())
    })
    .await;
    finish(pipeline).await;

    let records = delivered(dir.path());
    let got = by_tag(&records);
    for (name, address, first) in tags {
        let samples = &got[*name];
        let want = match changed.iter().find(|(n, _)| n == name) {
            Some((_, second)) => vec![first.clone(), second.clone()],
            None => vec![first.clone()],
        };
        assert_eq!(values(samples), want, "{name} ({address})");
        assert!(samples.iter().all(|r| r["quality"] == "Ok"), "{name}");
        assert!(flags(&samples[0]).contains(&"Fst".to_string()), "{name}");
        assert!(
            flags(samples.last().expect("samples")).contains(&"Lst".to_string()),
            "{name}"
        );
        assert!(
            samples
                .iter()
                .all(|r| flags(r).contains(&"Ats".to_string()))
        );
    }
    assert_eq!(
        values(&got["scaled"]),
        [Json::from(250.0 * 0.1 + -5.0)],
        "scale and offset"
    );
    let banded: Vec<Json> = got["banded"].iter().map(|r| r["value"].clone()).collect();
    assert_eq!(
        banded,
        [Json::from(100), 110.into(), 110.into()],
        "deadband"
    );
    // Sequence numbers of the source are contiguous.
    let mut seqs: Vec<u64> = records
        .iter()
        .filter_map(|r| r["meta"]["sequenceNumber"].as_u64())
        .collect();
    seqs.sort_unstable();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "sequence gaps");
}

/// Runs `tags` four-byte tags 8 bytes apart and checks the server answered exactly
/// `per_round` read-var jobs per poll round.
async fn requests_per_round(tags: usize, extra: &str, per_round: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut plc = Peer::start(free_port());
    let mut source = format!("port = {}\ninterval = \"20ms\"\n{extra}\n", plc.port);
    for i in 0..tags {
        plc.set("db", 1, i * 8, &(i as u32).to_be_bytes());
        source.push_str(&format!(
            "[[sources.tags]]\nname = \"t{i}\"\naddress = \"DB1.DBD{}\"\n",
            i * 8
        ));
    }
    let cfg = config(dir.path(), &source);
    let pipeline = Pipeline::start(&cfg, StartOptions::default()).expect("start");
    wait_for(dir.path(), "several rounds", |t| {
        t.get("t0").is_some_and(|s| s.len() >= 5)
    })
    .await;
    finish(pipeline).await;
    let got = by_tag(&delivered(dir.path()));
    let rounds = got["t0"].len() as u64;
    for i in 0..tags {
        let samples = &got[&format!("t{i}")];
        assert_eq!(samples.len() as u64, rounds, "t{i}: one sample per round");
        assert!(
            samples
                .iter()
                .all(|r| r["value"] == i as u64 && r["quality"] == "Ok")
        );
    }
    assert_eq!(
        plc.read_jobs(),
        rounds * per_round,
        "{tags} tags, {extra:?}: {per_round} requests per round over {rounds} rounds"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_variable_reads_fit_the_pdu() {
    let _logs = logs();
    // PDU 480 (python-snap7 grants at most 480): (480 - 12) / 12 = 39 item specs per request.
    requests_per_round(60, "max_items_per_request = 79\nmerge_gap = 0", 2).await;
    // The default item limit of 20 per request.
    requests_per_round(60, "merge_gap = 0", 3).await;
    // PDU 240: (240 - 12) / 12 = 19 per request.
    requests_per_round(
        60,
        "pdu_size = 240\nmax_items_per_request = 79\nmerge_gap = 0",
        4,
    )
    .await;
    // Gaps of 4 bytes merged: 50 tags are one 396-byte range (one item holds up to 462).
    requests_per_round(50, "merge_gap = 4", 1).await;
    // 60 tags make 476 bytes: a 460-byte range fills one answer, the rest needs a second job.
    requests_per_round(60, "merge_gap = 4", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tags_are_bad_and_named_others_keep_flowing() {
    let logs = logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut plc = Peer::start(free_port());
    plc.set("db", 1, 0, &77i16.to_be_bytes());
    plc.set("db", 1, 508, &[0, 0, 0x12, 0x34]);
    let source = format!(
        r#"port = {}
interval = "50ms"
failed_tag_retry = "200ms"
[[sources.tags]]
name = "missing_db"
address = "DB99.DBW0"
[[sources.tags]]
name = "good"
address = "DB1,INT0"
[[sources.tags]]
name = "near_end"
address = "DB1.DBW510"
[[sources.tags]]
name = "past_end"
address = "DB1.DBB514"
"#,
        plc.port
    );
    let cfg = config(dir.path(), &source);
    let pipeline = Pipeline::start(&cfg, StartOptions::default()).expect("start");
    wait_for(dir.path(), "good values and both refusals", |t| {
        t.get("good").is_some_and(|s| s.len() >= 10)
            && t.contains_key("missing_db")
            && t.contains_key("past_end")
            && has_value(t, "near_end", &0x1234.into())
    })
    .await;
    // Let the refused tags be retried a few times (every 200 ms): still reported once. A window
    // in which something must NOT happen (a second report): nothing to wait for.
    tokio::time::sleep(Duration::from_millis(700)).await;
    finish(pipeline).await;
    let got = by_tag(&delivered(dir.path()));

    let missing = &got["missing_db"];
    assert_eq!(missing.len(), 1, "one Bad sample, not one per round");
    assert_eq!(missing[0]["quality"], "Bad");
    assert_eq!(missing[0]["value"], "object does not exist (0x0A)");
    let past = &got["past_end"];
    assert_eq!(past.len(), 1);
    assert_eq!(past[0]["quality"], "Bad");
    assert_eq!(past[0]["value"], "address out of range (0x05)");
    // DBW510 was merged with DBB514; once isolated it reads fine.
    assert!(got["near_end"].iter().all(|r| r["quality"] == "Ok"));
    assert!(
        got["good"]
            .iter()
            .all(|r| r["quality"] == "Ok" && r["value"] == 77)
    );

    let text = String::from_utf8_lossy(&logs.lock().expect("logs")).to_string();
    let refusals: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("the PLC refused the tag") && l.contains("missing_db"))
        .collect();
    assert_eq!(refusals.len(), 1, "logged once: {text}");
    assert!(refusals[0].contains("DB99.DBW0"), "{}", refusals[0]);
    assert!(refusals[0].contains("object does not exist (0x0A)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_and_restarted_gives_lst_then_fst() {
    let _logs = logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut plc = Peer::start(port);
    plc.set("db", 1, 0, &1i16.to_be_bytes());
    let source = format!(
        r#"port = {port}
interval = "50ms"
reconnect_min = "50ms"
reconnect_max = "300ms"
connect_timeout = "1s"
request_timeout = "1s"
[[sources.tags]]
name = "counter"
address = "DB1,INT0"
[[sources.tags]]
name = "flag"
address = "M0.0"
"#
    );
    let cfg = config(dir.path(), &source);
    let pipeline = Pipeline::start(&cfg, StartOptions::default()).expect("start");
    wait_for(dir.path(), "first values", |t| {
        has_value(t, "counter", &1.into())
    })
    .await;
    plc.kill();
    wait_for(dir.path(), "Lst after the server died", |t| {
        t.get("counter")
            .is_some_and(|s| s.iter().any(|r| flags(r).contains(&"Lst".to_string())))
    })
    .await;
    // Down for a while (the outage of the scenario): several failed reconnects.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let two = 2i16.to_be_bytes();
    let _plc = Peer::start_with(port, &[("db", 1, 0, &two), ("mk", 0, 0, &[1])]);
    wait_for(dir.path(), "values after restart", |t| {
        has_value(t, "counter", &2.into()) && has_value(t, "flag", &true.into())
    })
    .await;
    finish(pipeline).await;

    let got = by_tag(&delivered(dir.path()));
    for (tag, before, after) in [
        ("counter", Json::from(1), Json::from(2)),
        ("flag", false.into(), true.into()),
    ] {
        let s = &got[tag];
        let lost: Vec<usize> = (0..s.len()).filter(|&i| s[i]["quality"] == "Bad").collect();
        assert_eq!(lost.len(), 1, "{tag}: one loss marker");
        let l = lost[0];
        assert_eq!(flags(&s[l]), ["Lst", "Syn"], "{tag}");
        assert_eq!(
            s[l]["value"], before,
            "{tag}: the loss marker repeats the last value"
        );
        assert!(flags(&s[0]).contains(&"Fst".to_string()));
        assert!(
            s[..l]
                .iter()
                .all(|r| r["value"] == before && r["quality"] == "Ok")
        );
        assert!(
            flags(&s[l + 1]).contains(&"Fst".to_string()),
            "{tag}: Fst after reconnect"
        );
        assert!(
            s[l + 1..]
                .iter()
                .all(|r| r["value"] == after && r["quality"] == "Ok")
        );
        assert!(flags(s.last().expect("samples")).contains(&"Lst".to_string()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_writes_and_reads_back() {
    let mut plc = Peer::start(free_port());
    let options = ConnectOptions {
        host: "127.0.0.1".into(),
        port: plc.port,
        local_tsap: 0x0100,
        remote_tsap: 0x0102,
        pdu_size: 960,
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(2),
    };
    let mut client = Client::connect(&options).await.expect("connect");
    assert_eq!(client.pdu_size(), 480, "python-snap7 grants 480");
    let item = Item {
        area: 0x84,
        db: 2,
        start: 10,
        len: 5,
    };
    assert_eq!(client.write(&item, b"abcde").await.expect("write"), 0xFF);
    assert_eq!(plc.get("db", 2, 10, 5), b"abcde");
    plc.set("mk", 0, 3, &[1, 2, 3]);
    let items = [
        item,
        Item {
            area: 0x83,
            db: 0,
            start: 3,
            len: 3,
        },
        Item {
            area: 0x84,
            db: 99,
            start: 0,
            len: 2,
        },
    ];
    let results = client.read(&items).await.expect("read");
    assert_eq!(
        results,
        [Ok(b"abcde".to_vec()), Ok(vec![1, 2, 3]), Err(0x0A)]
    );
}

/// `streamgate info s7`: the negotiated PDU size, the module identification the server gives
/// (SZL 0x0011), test reads in the config's notation with a refused one named as the reader
/// names it; exact JSON. A port where nothing listens ends with exit 69 and the reason.
#[test]
fn info_names_the_plc_and_test_reads_addresses() {
    let port = free_port();
    let _peer = Peer::start_with(port, &[("db", 1, 8, &12.5f32.to_be_bytes())]);
    let (code, stdout, stderr) = common::run_cli(&[
        "info",
        "s7",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--rack",
        "0",
        "--slot",
        "2",
        "--read",
        "DB1,REAL8",
        "--read",
        "DB99.DBW0",
        "--json",
    ]);
    assert_eq!(code, Some(69), "a test read failed: {stderr}");
    let mut v: Json = serde_json::from_str(&stdout).unwrap();
    for r in v["reads"].as_array_mut().unwrap() {
        assert!(r["latency_ms"].as_f64().unwrap() >= 0.0);
        assert!(r["timestamp"].as_i64().unwrap() > 1_700_000_000_000);
        r["latency_ms"] = Json::Null;
        r["timestamp"] = Json::Null;
    }
    assert_eq!(
        v,
        serde_json::json!({
            "endpoint": format!("127.0.0.1:{port}"),
            "local_tsap": "0x0100",
            "remote_tsap": "0x0102",
            "pdu_size": 480,
            "identification": [
                {"component": "module", "order_number": "6ES7 315-2EH14-0AB0", "version": "V3.3.0"}
            ],
            "identification_error": null,
            "reads": [
                {"tag": "DB1,REAL8", "value": 12.5, "quality": "Ok", "error": null,
                 "latency_ms": null, "timestamp": null},
                {"tag": "DB99.DBW0", "value": null, "quality": "Bad",
                 "error": "object does not exist (0x0A)", "latency_ms": null, "timestamp": null}
            ]
        })
    );
    let (code, text, stderr) = common::run_cli(&[
        "info",
        "s7",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--read",
        "DB1,REAL8",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(text.contains("PDU size 480 bytes"), "{text}");
    assert!(text.contains("6ES7 315-2EH14-0AB0"), "{text}");

    // A port that accepts and never answers: the connection setup times out.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port().to_string();
    let started = std::time::Instant::now();
    let (code, _, stderr) = common::run_cli(&[
        "info",
        "s7",
        "127.0.0.1",
        "--port",
        &silent_port,
        "--timeout",
        "500ms",
    ]);
    assert_eq!(code, Some(69), "{stderr}");
    assert!(
        stderr.contains("ISO/S7 connection setup timed out"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    drop(silent);
    let closed = free_port();
    let (code, _, stderr) =
        common::run_cli(&["info", "s7", "127.0.0.1", "--port", &closed.to_string()]);
    assert_eq!(code, Some(69), "{stderr}");
    assert!(stderr.contains("cannot connect to 127.0.0.1"), "{stderr}");
    let (code, _, stderr) = common::run_cli(&["info", "s7", "127.0.0.1", "--read", "DB1.XYZ"]);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("--read: "), "{stderr}");
}

/// `streamgate read` on an S7 source: each tag once, decoded and scaled as the reader does.
#[test]
fn read_decodes_and_scales_as_the_reader() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _peer = Peer::start_with(port, &[("db", 1, 8, &12.5f32.to_be_bytes())]);
    let cfg = dir.path().join("gw.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\ndata_dir = \"{d}/data\"\nequipment_id = \"line-1\"\n\n[[streams]]\nname = \"plc\"\n\n[[streams.exports]]\nkind = \"stdout\"\n\n\
             [[sources]]\nkind = \"s7\"\nid = \"filler\"\nhost = \"127.0.0.1\"\nport = {port}\n\n\
             [[sources.tags]]\nname = \"speed\"\naddress = \"DB1,REAL8\"\nscale = 2.0\n\n\
             [[sources.tags]]\nname = \"gone\"\naddress = \"DB99.DBW0\"\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let (code, stdout, stderr) =
        common::run_cli(&["read", "--json", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(69), "{stderr}");
    let lines: Vec<Json> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(lines[0]["tag"], "speed");
    assert_eq!(lines[0]["value"], Json::from(25.0));
    assert_eq!(lines[1]["error"], "object does not exist (0x0A)");
}
