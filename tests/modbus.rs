//! Modbus reader against a real third-party server: pymodbus 3.16 (tests/peers/modbus/server.py)
//! over TCP on 127.0.0.1 and over RTU through a socat pseudo-terminal pair. The server encodes
//! its values with Python's struct module; the tests compare what reaches the queue (through a
//! file export) with what the server holds, and count requests on the server side.
#![cfg(feature = "modbus")]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{free_port, wait_until, wait_until_async};
use serde_json::json;
use streamgate::app::{Pipeline, StartOptions};
use streamgate::payload::{self, Flags, Payload, Quality, Value};

const SERVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/modbus/server.py");

/// A child process killed on drop (also when the test panics).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts server.py with `args` and waits for its READY line.
fn start_server(dir: &Path, name: &str, args: &[String]) -> Guard {
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new("python3")
        .arg(SERVER)
        .args(args)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .expect("python3 with pymodbus (tests/peers/setup.d/modbus.sh installs it)");
    let guard = Guard(child);
    let ready = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .any(|l| l == "READY")
    };
    if !common::poll_until(T, ready) {
        panic!(
            "modbus server did not start:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    guard
}

fn tcp_server(dir: &Path, port: u16, spec: &serde_json::Value) -> Guard {
    let spec_path = dir.join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    start_server(
        dir,
        "server",
        &[
            "--tcp".into(),
            port.to_string(),
            "--spec".into(),
            spec_path.display().to_string(),
            "--counts".into(),
            dir.join("counts.json").display().to_string(),
        ],
    )
}

fn config(dir: &Path, sources: &str) -> String {
    format!(
        r#"
[gateway]
data_dir = "{data}"
equipment_id = "line-1"
report_interval = "0s"

[[streams]]
name = "s"

[[streams.exports]]
kind = "file"
path = "{out}"
batch_interval = "10ms"

{sources}
"#,
        data = dir.join("data").display(),
        out = dir.join("out").display(),
    )
}

/// How long a test waits for a condition before it fails.
const T: Duration = Duration::from_secs(30);

/// Runs the pipeline until `cond` holds for what the file export wrote so far (by tag), then
/// stops it.
async fn run_until(
    cfg: &str,
    dir: &Path,
    what: &str,
    cond: impl Fn(&HashMap<String, Vec<Payload>>) -> bool,
) {
    let cfg = streamgate::app::config::parse(cfg).unwrap_or_else(|e| panic!("config: {e:?}"));
    let pipeline = Pipeline::start(&cfg, StartOptions::default()).unwrap();
    wait_until_async(what, T, async || cond(&by_tag(&delivered_so_far(dir)))).await;
    pipeline.stop().await;
}

/// Every payload the file export wrote, in sequence order.
fn delivered(dir: &Path) -> Vec<Payload> {
    read_out(dir, false)
}

/// [`delivered`] while the export is still writing: a last line without its newline yet is
/// left out.
fn delivered_so_far(dir: &Path) -> Vec<Payload> {
    read_out(dir, true)
}

fn read_out(dir: &Path, running: bool) -> Vec<Payload> {
    let mut all = Vec::new();
    let entries = match std::fs::read_dir(dir.join("out")) {
        Ok(entries) => entries,
        Err(_) if running => return all,
        Err(e) => panic!("no output directory: {e}"),
    };
    for entry in entries {
        let mut text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        if running {
            text.truncate(text.rfind('\n').map_or(0, |i| i + 1));
        }
        for line in text.lines().filter(|l| !l.is_empty()) {
            all.push(payload::decode(line.as_bytes()).unwrap());
        }
    }
    all.sort_by_key(|p| (p.meta.source_id.clone(), p.meta.sequence_number));
    all
}

fn by_tag(all: &[Payload]) -> HashMap<String, Vec<Payload>> {
    let mut m: HashMap<String, Vec<Payload>> = HashMap::new();
    for p in all {
        m.entry(p.tag.clone()).or_default().push(p.clone());
    }
    m
}

fn counts(dir: &Path) -> HashMap<String, HashMap<String, u64>> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("counts.json")).unwrap_or_default())
        .unwrap_or_default()
}

const ORDERS: [&str; 4] = ["ABCD", "CDAB", "BADC", "DCBA"];

/// Every numeric type in every order, plus strings, bits, coils and discrete inputs: the value
/// the server holds is the value that arrives, typed as documented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_and_byte_order_decodes_like_the_server_encodes() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cases: Vec<(&str, serde_json::Value, Value)> = vec![
        ("u16", json!(65534), Value::Int(65534)),
        ("i16", json!(-12345), Value::Int(-12345)),
        ("u32", json!(4_000_000_000u64), Value::Int(4_000_000_000)),
        ("i32", json!(-2_000_000_001i64), Value::Int(-2_000_000_001)),
        (
            "u64",
            json!(9_000_000_000_000_000_001u64),
            Value::Int(9_000_000_000_000_000_001),
        ),
        (
            "i64",
            json!(-9_000_000_000_000_000_001i64),
            Value::Int(-9_000_000_000_000_000_001),
        ),
        ("f32", json!(-1234.5), Value::Float(-1234.5)),
        (
            "f64",
            json!(std::f64::consts::PI),
            Value::Float(std::f64::consts::PI),
        ),
    ];
    let mut values = Vec::new();
    let mut tags = String::new();
    let mut expected: Vec<(String, Value, Quality)> = Vec::new();
    let mut address = 0;
    for (ty, server_value, want) in &cases {
        for order in ORDERS {
            let name = format!("{ty}_{order}");
            values.push(json!({"area": "holding_register", "address": address, "type": ty, "order": order, "value": server_value}));
            tags += &format!(
                "[[sources.tags]]\nname = \"{name}\"\narea = \"holding_register\"\naddress = {address}\ntype = \"{ty}\"\nbyte_order = \"{order}\"\n\n"
            );
            expected.push((name, want.clone(), Quality::Ok));
            address += 4;
        }
    }
    // u64 above i64::MAX: the nearest float, Uncertain (never wrapped).
    values.push(json!({"area": "input_register", "address": 0, "type": "u64", "order": "ABCD", "value": u64::MAX}));
    tags += "[[sources.tags]]\nname = \"u64_huge\"\naddress = \"300001\"\ntype = \"u64\"\n\n";
    expected.push((
        "u64_huge".into(),
        Value::Float(u64::MAX as f64),
        Quality::Uncertain,
    ));
    // A 32-bit float is written with its own shortest decimal (11.4), not widened to f64
    // (11.40000057220459).
    values.push(json!({"area": "input_register", "address": 20, "type": "f32", "order": "ABCD", "value": 11.4}));
    tags += "[[sources.tags]]\nname = \"f32_decimal\"\naddress = \"300021\"\ntype = \"f32\"\n\n";
    expected.push(("f32_decimal".into(), Value::Float(11.4), Quality::Ok));
    // Strings: ASCII and UTF-8, trailing NULs trimmed; byte-swapped string.
    values.push(json!({"area": "input_register", "address": 10, "type": "string", "registers": 5, "value": "Füller"}));
    tags += "[[sources.tags]]\nname = \"text\"\narea = \"input_register\"\naddress = 10\ntype = \"string\"\nregisters = 5\n\n";
    expected.push(("text".into(), Value::Text("Füller".into()), Quality::Ok));
    // Bits of a register (0 = least significant), Modicon notation.
    values.push(json!({"area": "holding_register", "address": 150, "type": "bits", "value": 0b1000_0000_0000_0101}));
    for (bit, want) in [(0, true), (1, false), (2, true), (15, true)] {
        tags += &format!(
            "[[sources.tags]]\nname = \"bit{bit}\"\naddress = \"40151\"\ntype = \"bit\"\nbit = {bit}\n\n"
        );
        expected.push((format!("bit{bit}"), Value::Bool(want), Quality::Ok));
    }
    // Scale and offset: raw 215 * 0.1 - 2 = 19.5.
    values.push(json!({"area": "holding_register", "address": 151, "type": "i16", "value": 215}));
    tags += "[[sources.tags]]\nname = \"scaled\"\naddress = \"40152\"\ntype = \"i16\"\nscale = 0.1\noffset = -2.0\nunit = \"degC\"\n\n";
    expected.push((
        "scaled".into(),
        Value::Float(215.0 * 0.1 - 2.0),
        Quality::Ok,
    ));
    // Coils and discrete inputs.
    for (area, modicon, addr, on) in [
        ("coil", "00004", 3, true),
        ("coil", "00005", 4, false),
        ("discrete_input", "10018", 17, true),
    ] {
        if on {
            values.push(json!({"area": area, "address": addr, "type": "bool", "value": true}));
        }
        tags += &format!("[[sources.tags]]\nname = \"{area}{addr}\"\naddress = \"{modicon}\"\n\n");
        expected.push((format!("{area}{addr}"), Value::Bool(on), Quality::Ok));
    }
    let spec = json!({"devices": [{"id": 3, "size": 208, "values": values}]});
    let _server = tcp_server(dir.path(), port, &spec);
    let cfg = config(
        dir.path(),
        &format!(
            "[[sources]]\nkind = \"modbus_tcp\"\nid = \"plc\"\nhost = \"127.0.0.1\"\nport = {port}\nunit_id = 3\ninterval = \"100ms\"\n\n{tags}"
        ),
    );
    run_until(&cfg, dir.path(), "two samples of every tag", |got| {
        expected
            .iter()
            .all(|(name, _, _)| got.get(name).is_some_and(|s| s.len() >= 2))
    })
    .await;
    let got = by_tag(&delivered(dir.path()));
    for (name, want, quality) in &expected {
        let samples = got
            .get(name)
            .unwrap_or_else(|| panic!("no sample for {name}"));
        let first = &samples[0];
        assert!(
            first.meta.flags.contains(Flags::FST),
            "{name}: first sample lacks Fst"
        );
        assert!(
            first.meta.flags.contains(Flags::ATS),
            "{name}: Modbus has no device time: samples are flagged Ats"
        );
        assert_eq!((&first.value, first.quality), (want, *quality), "{name}");
        assert!(samples.len() >= 2, "{name}: polled only once");
    }
}

/// N tags cost the planned number of requests, counted by the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalescing_reads_many_tags_in_few_requests() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut values = Vec::new();
    let mut tags = String::new();
    let mut n = 0;
    let mut tag =
        |tags: &mut String, values: &mut Vec<serde_json::Value>, area: &str, address: u32| {
            let v = (address * 7 % 1000) as i64;
            if area == "coil" {
                if v % 2 == 1 {
                    values.push(
                        json!({"area": area, "address": address, "type": "bool", "value": true}),
                    );
                }
            } else {
                values.push(json!({"area": area, "address": address, "type": "u16", "value": v}));
            }
            *tags += &format!(
                "[[sources.tags]]\nname = \"t{n}\"\narea = \"{area}\"\naddress = {address}\n\n"
            );
            n += 1;
        };
    // 40 registers with gaps of 2 (< max_gap 10): 1 read. 130 contiguous: 2 reads (125 + 5).
    // 5 registers far away: 1 read. 100 coils spaced 10 apart: 1 read (990 bits < 2000).
    for i in 0..40 {
        tag(&mut tags, &mut values, "holding_register", i * 3);
    }
    for i in 0..130 {
        tag(&mut tags, &mut values, "holding_register", 300 + i);
    }
    for i in 0..5 {
        tag(&mut tags, &mut values, "holding_register", 1000 + i);
    }
    for i in 0..100 {
        tag(&mut tags, &mut values, "coil", i * 10);
    }
    let tag_count = n;
    let spec = json!({"devices": [{"id": 1, "size": 1024, "values": values}]});
    let _server = tcp_server(dir.path(), port, &spec);
    // One poll round only: the interval is long.
    let cfg = config(
        dir.path(),
        &format!(
            "[[sources]]\nkind = \"modbus_tcp\"\nid = \"plc\"\nhost = \"127.0.0.1\"\nport = {port}\ninterval = \"1h\"\n\n{tags}"
        ),
    );
    run_until(&cfg, dir.path(), "a sample of every tag", |got| {
        got.len() == tag_count
    })
    .await;
    let c = counts(dir.path());
    let dev = c.get("1").expect("the server counted no request");
    assert_eq!(
        dev.get("3").copied(),
        Some(4),
        "holding register reads: {dev:?}"
    );
    assert_eq!(dev.get("1").copied(), Some(1), "coil reads: {dev:?}");
    let got = delivered(dir.path());
    let fresh: Vec<&Payload> = got
        .iter()
        .filter(|p| !p.meta.flags.contains(Flags::LST))
        .collect();
    assert_eq!(fresh.len(), tag_count, "one sample per tag");
    for p in fresh {
        assert_eq!(p.quality, Quality::Ok, "{}", p.tag);
    }
}

/// A tag at an address the device does not have: Bad with the exception, the neighbours it
/// was coalesced with keep flowing, and the gateway does not hammer the device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn illegal_address_is_bad_for_that_tag_only() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let spec = json!({"devices": [{"id": 1, "size": 96, "values": [
        {"area": "holding_register", "address": 94, "type": "u16", "value": 94},
        {"area": "holding_register", "address": 95, "type": "u16", "value": 95}]}]});
    let _server = tcp_server(dir.path(), port, &spec);
    let tags = "[[sources.tags]]\nname = \"a\"\narea = \"holding_register\"\naddress = 94\n\n\
                [[sources.tags]]\nname = \"b\"\narea = \"holding_register\"\naddress = 95\n\n\
                [[sources.tags]]\nname = \"missing\"\narea = \"holding_register\"\naddress = 97\n\n";
    let cfg = config(
        dir.path(),
        &format!(
            "[[sources]]\nkind = \"modbus_tcp\"\nid = \"plc\"\nhost = \"127.0.0.1\"\nport = {port}\ninterval = \"50ms\"\n\n{tags}"
        ),
    );
    let ok = |s: &[Payload]| s.iter().filter(|p| p.quality == Quality::Ok).count();
    run_until(&cfg, dir.path(), "25 rounds with the missing tag", |got| {
        got.contains_key("missing")
            && ["a", "b"]
                .iter()
                .all(|t| got.get(*t).is_some_and(|s| ok(s) >= 25))
    })
    .await;
    let got = by_tag(&delivered(dir.path()));
    for (name, v) in [("a", 94), ("b", 95)] {
        let ok: Vec<&Payload> = got[name]
            .iter()
            .filter(|p| p.quality == Quality::Ok)
            .collect();
        assert!(ok.len() >= 10, "{name} kept flowing: {} samples", ok.len());
        assert!(ok.iter().all(|p| p.value == Value::Int(v)));
    }
    let missing = &got["missing"];
    assert_eq!(missing[0].quality, Quality::Bad);
    assert_eq!(
        missing[0].value,
        Value::Text("exception: Illegal data address".into())
    );
    // One exception sample per retry period (60 s), plus the final Lst: not a hot loop.
    assert!(missing.len() <= 2, "{missing:?}");
    let c = counts(dir.path());
    let reads = c["1"]["3"];
    // Round 1: the coalesced read, then 3 single reads; later rounds: one read of a and b
    // (a few more rounds than delivered ran while the pipeline stopped).
    let rounds = got["a"].len() as u64;
    assert!(reads < 4 + rounds + 10, "{reads} reads in {rounds} rounds");
}

/// Server killed and restarted: every tag gets one Bad/Lst, then Fst after reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_restart_gives_lst_then_fst() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let spec = json!({"devices": [{"id": 1, "size": 16, "values": [
        {"area": "holding_register", "address": 0, "type": "f32", "value": 21.5},
        {"area": "coil", "address": 1, "type": "bool", "value": true}]}]});
    let server = tcp_server(dir.path(), port, &spec);
    let tags = "[[sources.tags]]\nname = \"temp\"\naddress = \"40001\"\ntype = \"f32\"\n\n\
                [[sources.tags]]\nname = \"run\"\naddress = \"00002\"\n\n";
    let cfg = config(
        dir.path(),
        &format!(
            "[[sources]]\nkind = \"modbus_tcp\"\nid = \"plc\"\nhost = \"127.0.0.1\"\nport = {port}\ninterval = \"50ms\"\nrequest_timeout = \"300ms\"\nreconnect_min = \"100ms\"\nreconnect_max = \"400ms\"\n\n{tags}"
        ),
    );
    let cfg = streamgate::app::config::parse(&cfg).unwrap();
    let pipeline = Pipeline::start(&cfg, StartOptions::default()).unwrap();
    let both = |cond: &dyn Fn(&[Payload]) -> bool| {
        let got = by_tag(&delivered_so_far(dir.path()));
        ["temp", "run"]
            .iter()
            .all(|t| got.get(*t).is_some_and(|s| cond(s)))
    };
    let lst = |p: &Payload| p.meta.flags.contains(Flags::LST);
    wait_until_async("samples of both tags", T, async || both(&|s| s.len() >= 3)).await;
    drop(server);
    wait_until_async("Lst of both tags after the device died", T, async || {
        both(&|s| s.iter().any(lst))
    })
    .await;
    // The device stays away for a second (the outage of the scenario): the reconnects fail
    // and the backoff grows to its ceiling.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let _server = tcp_server(dir.path(), port, &spec);
    let restarted = streamgate::time::now_ms();
    wait_until_async(
        "Fst of both tags after the device came back",
        T,
        async || {
            both(&|s| {
                s.iter()
                    .skip_while(|p| !lst(p))
                    .any(|p| p.meta.flags.contains(Flags::FST))
            })
        },
    )
    .await;
    pipeline.stop().await;
    let got = by_tag(&delivered(dir.path()));
    for (name, want) in [("temp", Value::Float(21.5)), ("run", Value::Bool(true))] {
        let s = &got[name];
        let marks: Vec<(bool, bool, Quality)> = s
            .iter()
            .map(|p| {
                (
                    p.meta.flags.contains(Flags::FST),
                    p.meta.flags.contains(Flags::LST),
                    p.quality,
                )
            })
            .collect();
        let lost: Vec<usize> = marks
            .iter()
            .enumerate()
            .filter(|(_, m)| m.1)
            .map(|(i, _)| i)
            .collect();
        // One Lst for the outage (the one at shutdown stays queued: exports stop first).
        assert!(!lost.is_empty(), "{name}: {marks:?}");
        let end = lost.get(1).copied().unwrap_or(s.len());
        assert_eq!(s[lost[0]].quality, Quality::Bad);
        assert!(s[0].meta.flags.contains(Flags::FST));
        let after = &s[lost[0] + 1];
        assert!(
            after.meta.flags.contains(Flags::FST),
            "{name}: no Fst after reconnect: {marks:?}"
        );
        assert_eq!((&after.value, after.quality), (&want, Quality::Ok));
        // Reconnected within the backoff ceiling (400 ms) plus a poll interval and slack.
        assert!(
            after.timestamp - restarted < 1500,
            "{name}: reconnect took {} ms",
            after.timestamp - restarted
        );
        assert!(
            s[lost[0] + 1..end]
                .iter()
                .all(|p| p.quality == Quality::Ok && p.value == want)
        );
    }
}

/// A serial line made of a pseudo-terminal pair (socat): the gateway's end and the device's.
fn pty_pair(dir: &Path) -> (Guard, PathBuf, PathBuf) {
    let gw: PathBuf = dir.join("gw");
    let dev: PathBuf = dir.join("dev");
    let socat = Command::new("socat")
        .arg(format!("pty,raw,echo=0,link={}", gw.display()))
        .arg(format!("pty,raw,echo=0,link={}", dev.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("socat (tests/peers/setup.d/modbus.sh installs it)");
    let socat = Guard(socat);
    wait_until("socat's pty pair", T, || gw.exists() && dev.exists());
    (socat, gw, dev)
}

/// server.py on the device's end of a [`pty_pair`], 115200 8N2, counting requests.
fn rtu_server(dir: &Path, dev: &Path, spec: &serde_json::Value) -> Guard {
    let spec_path = dir.join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    start_server(
        dir,
        "server",
        &[
            "--rtu".into(),
            dev.display().to_string(),
            "--baud".into(),
            "115200".into(),
            "--stopbits".into(),
            "2".into(),
            "--spec".into(),
            spec_path.display().to_string(),
            "--counts".into(),
            dir.join("counts.json").display().to_string(),
        ],
    )
}

/// RTU over a pseudo-terminal pair (socat): two unit ids on one serial line, two sources
/// sharing the line without stepping on each other. (Linux pseudo-terminals reject parity
/// and 7 data bits, so this test uses 8N2; parity is passed to the serial port the same way.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtu_two_units_share_one_serial_line() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let dir = tempfile::tempdir().unwrap();
    let (_socat, gw, dev) = pty_pair(dir.path());
    let spec = json!({"devices": [
        {"id": 1, "size": 16, "values": [{"area": "input_register", "address": 2, "type": "i32", "order": "CDAB", "value": -70000}]},
        {"id": 2, "size": 16, "values": [{"area": "input_register", "address": 2, "type": "f32", "order": "DCBA", "value": 0.25}]}]});
    let _server = rtu_server(dir.path(), &dev, &spec);
    let mut sources = String::new();
    for (unit, ty, order) in [(1, "i32", "CDAB"), (2, "f32", "DCBA")] {
        sources += &format!(
            "[[sources]]\nkind = \"modbus_rtu\"\nid = \"unit{unit}\"\ndevice = \"{}\"\nbaud = 115200\nstop_bits = 2\nunit_id = {unit}\ninterval = \"100ms\"\n\n[[sources.tags]]\nname = \"value{unit}\"\naddress = \"300003\"\ntype = \"{ty}\"\nbyte_order = \"{order}\"\n\n",
            gw.display()
        );
    }
    // About 12 rounds each, in which the two must not step on each other.
    run_until(
        &config(dir.path(), &sources),
        dir.path(),
        "12 samples of each unit",
        |got| {
            ["value1", "value2"]
                .iter()
                .all(|t| got.get(*t).is_some_and(|s| s.len() >= 12))
        },
    )
    .await;
    let got = by_tag(&delivered(dir.path()));
    for (name, want) in [
        ("value1", Value::Int(-70000)),
        ("value2", Value::Float(0.25)),
    ] {
        let s = got
            .get(name)
            .unwrap_or_else(|| panic!("no sample of {name}"));
        let ok: Vec<&Payload> = s.iter().filter(|p| p.quality == Quality::Ok).collect();
        assert!(ok.len() >= 3, "{name}: {s:?}");
        assert!(ok.iter().all(|p| p.value == want), "{name}: {s:?}");
        // No Bad sample but a Lst at shutdown: no timeouts from talking over each other.
        assert!(
            s.iter()
                .all(|p| p.quality == Quality::Ok || p.meta.flags.contains(Flags::LST)),
            "{name}: {s:?}"
        );
    }
}

/// Report by exception against values that change at runtime (the server's action callback
/// adds 3 to a register on every read): only moves beyond the deadband are sent, and an
/// unchanged value is re-sent flagged `Syn` after `max_silence`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadband_and_max_silence_against_changing_values() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let spec = json!({"devices": [{"id": 1, "size": 16,
        "ramps": [{"area": "holding_register", "address": 5, "step": 3}],
        "values": [
            {"area": "holding_register", "address": 5, "type": "u16", "value": 100},
            {"area": "holding_register", "address": 6, "type": "u16", "value": 42}]}]});
    let _server = tcp_server(dir.path(), port, &spec);
    let tags = "[[sources.tags]]\nname = \"ramp\"\naddress = \"40006\"\ndeadband = 5.0\n\n\
                [[sources.tags]]\nname = \"still\"\naddress = \"40007\"\ndeadband = 0.0\nmax_silence = \"300ms\"\n\n\
                [[sources.tags]]\nname = \"every\"\naddress = \"40007\"\n\n";
    let cfg = config(
        dir.path(),
        &format!(
            "[[sources]]\nkind = \"modbus_tcp\"\nid = \"plc\"\nhost = \"127.0.0.1\"\nport = {port}\ninterval = \"50ms\"\n\n{tags}"
        ),
    );
    let fresh_count = |s: &[Payload]| {
        s.iter()
            .filter(|p| !p.meta.flags.contains(Flags::LST))
            .count()
    };
    run_until(&cfg, dir.path(), "4 ramp moves and 4 re-sends", |got| {
        got.get("ramp").is_some_and(|s| fresh_count(s) >= 4)
            && got.get("still").is_some_and(|s| fresh_count(s) >= 5)
    })
    .await;
    let got = by_tag(&delivered(dir.path()));
    let fresh = |name: &str| -> Vec<Payload> {
        got[name]
            .iter()
            .filter(|p| !p.meta.flags.contains(Flags::LST))
            .cloned()
            .collect()
    };
    // One read per round serves all three tags, so the ramp moves by 3 per round: every
    // second reading (a move of 6 > 5) is sent.
    let ramp = fresh("ramp");
    assert!(ramp.len() >= 4, "{ramp:?}");
    let values: Vec<i64> = ramp
        .iter()
        .map(|p| match p.value {
            Value::Int(i) => i,
            _ => panic!("{p:?}"),
        })
        .collect();
    assert_eq!(values[0], 103);
    assert!(values.windows(2).all(|w| w[1] - w[0] == 6), "{values:?}");
    let still = fresh("still");
    assert!(still[0].meta.flags.contains(Flags::FST) && !still[0].meta.flags.contains(Flags::SYN));
    // Re-sent every max_silence (300 ms) give or take a poll, not more rarely.
    let span = still.last().unwrap().timestamp - still[0].timestamp;
    let resends = still.len() as i64 - 1;
    assert!(
        resends >= 4 && span / resends <= 500,
        "{resends} re-sends in {span} ms"
    );
    for w in still.windows(2) {
        assert!(w[1].meta.flags.contains(Flags::SYN));
        assert_eq!(w[1].value, Value::Int(42));
        assert!(
            w[1].timestamp - w[0].timestamp >= 300,
            "re-sent before max_silence"
        );
    }
    let every = fresh("every");
    assert!(
        every.len() >= 2 * ramp.len() - 1,
        "every poll is sent without a deadband"
    );
}

/// The log line of an illegal address names the tag, its address and the exception, once.
/// Runs the real binary and reads its log (JSON lines).
#[test]
fn illegal_address_log_names_the_tag_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let spec = json!({"devices": [{"id": 1, "size": 16, "values": []}]});
    let _server = tcp_server(dir.path(), port, &spec);
    let tags = "[[sources.tags]]\nname = \"good\"\naddress = \"40001\"\n\n\
                [[sources.tags]]\nname = \"boiler_pressure\"\naddress = \"40101\"\ntype = \"f32\"\n\n";
    let cfg = config(
        dir.path(),
        &format!("[[sources]]\nkind = \"modbus_tcp\"\nid = \"plc\"\nhost = \"127.0.0.1\"\nport = {port}\ninterval = \"20ms\"\n\n{tags}"),
    )
    .replace("report_interval = \"0s\"", "report_interval = \"0s\"\nlog_format = \"json\"");
    let cfg_path = dir.path().join("gw.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let gw = common::Gateway::start_json(&cfg_path, "info");
    let logged = || {
        gw.log()
            .iter()
            .any(|l| l.contains("boiler_pressure") && l.contains("ERROR"))
    };
    wait_until("the error line of the tag", T, logged);
    // Then 50 more polls (20 ms apart), in which it must not be logged again.
    let good = || {
        by_tag(&delivered_so_far(dir.path()))
            .get("good")
            .map_or(0, Vec::len)
    };
    let polled = good();
    wait_until("50 more polls", T, || good() >= polled + 50);
    let text = gw.log().join("\n");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("boiler_pressure") && l.contains("ERROR"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "one error line for the tag, not one per poll:\n{text}"
    );
    let line = lines[0];
    for needle in [
        "\"address\":100",
        "Illegal data address",
        "holding_register",
        "plc",
    ] {
        assert!(line.contains(needle), "{needle} not in {line}");
    }
}

/// `streamgate read`: every tag of a source once, against pymodbus with a hole in its map
/// (16 registers; address 100 does not exist): the JSON lines carry the value, quality,
/// timestamp and latency of each tag, the hole's error is the device's exception as the
/// daemon would log it, and the exit code says a read failed (69). `--tag` selects.
#[test]
fn read_prints_each_tag_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let spec = json!({"devices": [{"id": 1, "size": 16, "values": [
        {"area": "holding_register", "address": 0, "type": "f32", "value": 11.4},
        {"area": "holding_register", "address": 2, "type": "u16", "value": 42}]}]});
    let _server = tcp_server(dir.path(), port, &spec);
    let tags = "[[sources.tags]]\nname = \"temp\"\naddress = \"40001\"\ntype = \"f32\"\n\n\
                [[sources.tags]]\nname = \"count\"\naddress = \"40003\"\nscale = 0.5\n\n\
                [[sources.tags]]\nname = \"hole\"\naddress = \"40101\"\n";
    let cfg = dir.path().join("gw.toml");
    std::fs::write(
        &cfg,
        config(
            dir.path(),
            &format!("[[sources]]\nkind = \"modbus_tcp\"\nid = \"plc\"\nhost = \"127.0.0.1\"\nport = {port}\n\n{tags}"),
        ),
    )
    .unwrap();
    let read = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_streamgate"))
            .args(["read", "--json", "--config"])
            .arg(&cfg)
            .args(args)
            .output()
            .unwrap();
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (
            out.status.code(),
            lines,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, lines, stderr) = read(&[]);
    assert_eq!(code, Some(69), "a read failed: {stderr}");
    assert_eq!(lines.len(), 3, "{lines:?}");
    let by = |tag: &str| lines.iter().find(|l| l["tag"] == tag).unwrap().clone();
    assert_eq!(
        (by("temp")["value"].clone(), by("temp")["quality"].clone()),
        (json!(11.4), json!("Ok"))
    );
    assert_eq!(
        by("count")["value"],
        json!(21.0),
        "scaled as the daemon scales"
    );
    assert_eq!(by("temp")["source"], "plc");
    assert!(by("temp")["timestamp"].as_i64().unwrap() > 1_700_000_000_000);
    assert!(by("temp")["latency_ms"].as_f64().unwrap() >= 0.0);
    let hole = by("hole");
    assert_eq!(
        (hole["value"].clone(), hole["quality"].clone()),
        (json!(null), json!("Bad"))
    );
    assert_eq!(
        hole["error"], "device exception Illegal data address",
        "{hole}"
    );
    // Selected tags only; all good: exit 0.
    let (code, lines, stderr) = read(&["--tag", "count", "--count", "2", "--interval", "10ms"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(lines.len(), 2, "two rounds of one tag: {lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| l["tag"] == "count" && l["value"] == json!(21.0))
    );
    // A tag the config does not have.
    let (code, _, stderr) = read(&["--tag", "nope"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("no tag \"nope\""), "{stderr}");
}

/// `streamgate read` against a port that accepts but never answers ends within the request
/// timeout, exit 69, saying so.
#[test]
fn read_of_a_silent_device_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let cfg = dir.path().join("gw.toml");
    std::fs::write(
        &cfg,
        config(
            dir.path(),
            &format!("[[sources]]\nkind = \"modbus_tcp\"\nid = \"plc\"\nhost = \"127.0.0.1\"\nport = {port}\nrequest_timeout = \"500ms\"\n\n[[sources.tags]]\nname = \"t\"\naddress = \"40001\"\n"),
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_streamgate"))
        .args(["read", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(69), "{stdout}");
    assert!(stdout.contains("no response within 500ms"), "{stdout}");
    drop(silent);
}

/// `streamgate scan modbus` against pymodbus with holes in its map (10-19 and 57 of 0-99 do
/// not exist): every address that answers is listed once with its value in the common types
/// (exact JSON for the registers around the values the server encoded), the holes are named,
/// and bisection needs far fewer requests than addresses (counted by the server). The `--toml`
/// output, pasted into a config, validates and reads the same values through the daemon.
#[test]
fn scan_lists_what_answers_and_its_toml_reads_the_same_values() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let spec = json!({"devices": [{"id": 3, "size": 100,
        "holes": [{"area": "holding_register", "from": 10, "to": 19},
                  {"area": "holding_register", "from": 57, "to": 57}],
        "values": [
            {"area": "holding_register", "address": 0, "type": "f32", "value": 11.4},
            {"area": "holding_register", "address": 9, "type": "u16", "value": 1234},
            {"area": "holding_register", "address": 30, "type": "f32", "order": "CDAB", "value": 2.5},
            {"area": "holding_register", "address": 40, "type": "i16", "value": -5}]}]});
    let _server = tcp_server(dir.path(), port, &spec);
    let target = format!("127.0.0.1:{port}");
    let (code, stdout, stderr) = common::run_cli(&[
        "scan", "modbus", &target, "--unit", "3", "--area", "holding", "--range", "0-99", "--json",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let addresses: Vec<u64> = lines
        .iter()
        .map(|l| l["address"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (0..100)
        .filter(|a| !(10..=19).contains(a) && *a != 57)
        .collect();
    assert_eq!(addresses, expected);
    let at = |a: u64| lines.iter().find(|l| l["address"] == a).unwrap().clone();
    // Register 9 has no answering neighbour above it: 16-bit forms only.
    assert_eq!(
        at(9),
        json!({"address": 9, "modicon": "400010", "raw": "0x04D2", "u16": 1234, "i16": 1234})
    );
    assert_eq!(at(40)["i16"], json!(-5));
    assert_eq!(at(40)["u16"], json!(65531));
    let bits = 11.4f32.to_bits();
    assert_eq!(at(0)["f32"]["ABCD"], json!(11.4));
    assert_eq!(at(0)["u32"]["ABCD"], json!(bits));
    assert_eq!(at(0)["u32"]["CDAB"], json!(bits.rotate_left(16)));
    assert_eq!(at(0)["i32"]["DCBA"], json!(bits.swap_bytes() as i32));
    assert_eq!(at(30)["f32"]["CDAB"], json!(2.5));
    assert!(
        stderr.contains("89 answered, missing: 10-19, 57;"),
        "the summary names the holes: {stderr}"
    );
    // The server counts the reads it answered (exceptions bypass its counter).
    let answered = counts(dir.path())["3"]["3"];
    // "...; 45 requests (12 answered) in 0.02 s"
    let words: Vec<&str> = stderr
        .rsplit_once("; ")
        .map(|(_, tail)| tail.split_whitespace().collect())
        .unwrap_or_default();
    let (requests, said): (u64, u64) = match words.as_slice() {
        [n, "requests", m, "answered)", ..] => (
            n.parse().unwrap(),
            m.trim_start_matches('(').parse().unwrap(),
        ),
        _ => panic!("no request count in {stderr}"),
    };
    assert_eq!(said, answered, "{stderr}");
    // One read per address would be 100; 11 holes cost about 2 reads each.
    assert!(
        requests < 50,
        "bisection, not one read per address: {stderr}"
    );

    // --toml: registers 0-9 as u16 tags, and the word-swapped float at 30 as an f32 tag.
    let (code, u16_toml, stderr) = common::run_cli(&[
        "scan", "modbus", &target, "--unit", "3", "--range", "0-9", "--toml",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let (code, f32_toml, stderr) = common::run_cli(&[
        "scan",
        "modbus",
        &target,
        "--unit",
        "3",
        "--range",
        "30-31",
        "--toml",
        "--type",
        "f32",
        "--byte-order",
        "CDAB",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let f32_toml = f32_toml.replace("id = \"scan_unit3\"", "id = \"floats\"");
    let cfg_text = config(dir.path(), &format!("{u16_toml}\n{f32_toml}"));
    let cfg = dir.path().join("scanned.toml");
    std::fs::write(&cfg, &cfg_text).unwrap();
    let (code, stdout, stderr) = common::run_cli(&["validate", "--config", cfg.to_str().unwrap()]);
    assert_eq!(
        code,
        Some(0),
        "the pasted --toml validates: {stdout}{stderr}\n{cfg_text}"
    );
    let want: HashMap<String, Value> = (0..10u64)
        .map(|a| {
            let u = at(a)["u16"].as_i64().unwrap();
            (format!("holding_register_{a}"), Value::Int(u))
        })
        .chain([("holding_register_30".to_string(), Value::Float(2.5))])
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(run_until(
        &cfg_text,
        dir.path(),
        "every scanned tag",
        |got| want.keys().all(|t| got.contains_key(t)),
    ));
    let got = by_tag(&delivered(dir.path()));
    for (tag, value) in &want {
        assert_eq!(&got[tag][0].value, value, "{tag}");
    }
    assert_eq!(
        got.len(),
        want.len(),
        "one tag per scanned address: {:?}",
        got.keys()
    );
}

/// `scan modbus` against a port that accepts but never answers: ends after the first
/// request's timeout, exit 69, naming the unit; an area the device does not serve and a device
/// that refuses connections end the same way, each with its reason.
#[test]
fn scan_of_a_silent_or_absent_device_ends_with_the_reason() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let started = std::time::Instant::now();
    let (code, _, stderr) = common::run_cli(&[
        "scan",
        "modbus",
        &format!("127.0.0.1:{port}"),
        "--timeout",
        "300ms",
        "--range",
        "0-999",
    ]);
    assert_eq!(code, Some(69), "{stderr}");
    assert!(
        stderr.contains("no answer from unit 1 to the first read (no response within 300ms)"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "it must not try the other addresses of a silent device"
    );
    drop(silent);
    let closed = free_port();
    let (code, _, stderr) = common::run_cli(&["scan", "modbus", &format!("127.0.0.1:{closed}")]);
    assert_eq!(code, Some(69), "{stderr}");
    assert!(
        stderr.contains("cannot connect to tcp://127.0.0.1"),
        "{stderr}"
    );
    let (code, _, stderr) = common::run_cli(&["scan", "modbus", "--range", "9-3", "127.0.0.1"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("ends before it starts"), "{stderr}");
}

/// `scan modbus --serial` over an RTU line (socat pseudo-terminal pair, 8N2 as in
/// `rtu_two_units_share_one_serial_line`): input registers of unit 2, past the end of its map.
#[test]
fn scan_over_rtu_reads_input_registers_of_one_unit() {
    let dir = tempfile::tempdir().unwrap();
    let (_socat, gw, dev) = pty_pair(dir.path());
    let spec = json!({"devices": [{"id": 2, "size": 8, "values": [
        {"area": "input_register", "address": 2, "type": "f32", "order": "DCBA", "value": 0.25}]}]});
    let _server = rtu_server(dir.path(), &dev, &spec);
    let (code, stdout, stderr) = common::run_cli(&[
        "scan",
        "modbus",
        "--serial",
        gw.to_str().unwrap(),
        "--baud",
        "115200",
        "--stop-bits",
        "2",
        "--unit",
        "2",
        "--area",
        "input",
        "--range",
        "0-11",
        "--json",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 8, "{stdout}");
    assert_eq!(lines[2]["modicon"], "300003");
    assert_eq!(lines[2]["f32"]["DCBA"], json!(0.25));
    assert!(stderr.contains("missing: 8-11"), "{stderr}");
}
