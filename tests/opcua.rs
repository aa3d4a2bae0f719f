//! OPC UA reader against a real server: the asyncua peer in tests/peers/opcua/server.py
//! (installed by tests/peers/setup.d/opcua.sh). Each test starts its own server on a free
//! port, compares what reached the queue (through a file export) with the server's own log of
//! what it wrote, value by value, source timestamps and status codes included.
#![cfg(feature = "opcua")]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Gateway, free_port, wait_until_async};
use streamgate::app::{Pipeline, StartOptions};
use streamgate::payload::{Flags, Payload, Quality, Value, decode};

/// The asyncua server, killed on drop (also when a test panics).
struct Peer {
    child: Child,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_peer(port: u16, log: &Path, extra: &[&str]) -> Peer {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/opcua/server.py");
    let mut child = Command::new("python3")
        .arg("-u")
        .arg(script)
        .args(["--port", &port.to_string(), "--log"])
        .arg(log)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs (tests/peers/setup.d/opcua.sh installs asyncua)");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let peer = Peer { child };
    loop {
        match rx.recv_timeout(Duration::from_secs(90)) {
            Ok(line) if line.starts_with("READY") => return peer,
            Ok(_) => {}
            Err(_) => panic!("the asyncua server did not start on port {port}"),
        }
    }
}

/// One write the server logged.
#[derive(Debug, Clone, PartialEq)]
struct Written {
    value: Value,
    source_ms: i64,
    quality: Quality,
}

fn server_log(path: &Path) -> HashMap<String, Vec<Written>> {
    let mut out: HashMap<String, Vec<Written>> = HashMap::new();
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let value = match &v["value"] {
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::String(s) => Value::Text(s.clone()),
            n if n.is_i64() => Value::Int(n.as_i64().unwrap()),
            n => Value::Float(n.as_f64().unwrap()),
        };
        let quality = match v["status"].as_str().unwrap() {
            "Good" => Quality::Ok,
            "Uncertain" => Quality::Uncertain,
            _ => Quality::Bad,
        };
        // With a Bad status no value travels (OPC UA Part 4: the value should be null); the
        // sample then carries the status name. The peer's only Bad status is BadSensorFailure.
        let value = if quality == Quality::Bad {
            Value::Text("BadSensorFailure".into())
        } else {
            value
        };
        out.entry(v["tag"].as_str().unwrap().to_string())
            .or_default()
            .push(Written {
                value,
                source_ms: v["source_ms"].as_i64().unwrap(),
                quality,
            });
    }
    out
}

fn exported(dir: &Path) -> Vec<Payload> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        for line in std::fs::read_to_string(&f).unwrap().lines() {
            out.push(decode(line.as_bytes()).unwrap());
        }
    }
    out.sort_by_key(|p| p.meta.sequence_number);
    out
}

fn config(dir: &Path, port: u16, source_extra: &str, tags: &str) -> String {
    format!(
        r#"
[gateway]
data_dir = "{dir}/data"
equipment_id = "ua-test"
status_interval = "100ms"
report_interval = "0"
shutdown_timeout = "5s"

[[streams]]
name = "line"

[[streams.exports]]
name = "files"
kind = "file"
path = "{dir}/out"
batch_size = 100
batch_interval = "10ms"

[[sources]]
kind = "opcua"
id = "plc"
endpoint = "opc.tcp://127.0.0.1:{port}/streamgate/"
publishing_interval = "50ms"
sampling_interval = "20ms"
interval = "150ms"
reconnect_min = "200ms"
reconnect_max = "1s"
keep_alive_interval = "500ms"
request_timeout = "2s"
pki_dir = "{dir}/pki"
{source_extra}
{tags}
"#,
        dir = dir.display()
    )
}

const TAGS: &str = r#"
[[sources.tags]]
name = "temp"
node = "nsu=urn:streamgate:test;s=Line1.Temp"
[[sources.tags]]
name = "counter"
node = "nsu=urn:streamgate:test;i=1001"
[[sources.tags]]
name = "running"
node = "nsu=urn:streamgate:test;s=Line1.Running"
[[sources.tags]]
name = "recipe"
node = "nsu=urn:streamgate:test;s=Line1.Recipe"
[[sources.tags]]
name = "arr1"
node = "nsu=urn:streamgate:test;s=Line1.Arr"
index = 1
[[sources.tags]]
name = "ftemp"
node = "nsu=urn:streamgate:test;s=Line1.FloatTemp"
[[sources.tags]]
name = "matrix10"
node = "nsu=urn:streamgate:test;s=Line1.Matrix"
index = "1,0"
[[sources.tags]]
name = "counter_polled"
node = "nsu=urn:streamgate:test;i=1001"
mode = "poll"
[[sources.tags]]
name = "missing"
node = "nsu=urn:streamgate:test;s=No.Such.Node"
"#;

/// How long a test waits for a condition before it fails (a secure channel to the Python
/// server can take a while).
const T: Duration = Duration::from_secs(60);

/// Waits until `pred` holds for what the file export wrote.
async fn wait_for(out: &Path, what: &str, pred: impl Fn(&[Payload]) -> bool) {
    wait_until_async(what, T, async || pred(&exported(out))).await;
}

fn real(p: &Payload) -> bool {
    !p.meta.flags.contains(Flags::SYN) && p.tag != "missing"
}

/// The samples of a subscribed tag must be the server's writes in order, without gaps:
/// one contiguous run of its log (the first sample may be the value the node had before the
/// test's writes, which the log does not hold).
fn assert_matches_log(tag: &str, got: &[&Payload], log: &[Written]) {
    let got: Vec<Written> = got
        .iter()
        .map(|p| Written {
            value: p.value.clone(),
            source_ms: p.timestamp,
            quality: p.quality,
        })
        .collect();
    assert!(got.len() >= 3, "{tag}: only {} samples", got.len());
    let skip = usize::from(!log.contains(&got[0]));
    let first = log
        .iter()
        .position(|w| *w == got[skip])
        .unwrap_or_else(|| panic!("{tag}: {:?} is not a value the server wrote", got[skip]));
    for (i, g) in got[skip..].iter().enumerate() {
        assert_eq!(
            Some(g),
            log.get(first + i),
            "{tag}: sample {i} differs from the server's write"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribed_values_carry_source_timestamps_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let port = free_port();
    // Filler namespaces move ours to index 4: only `nsu=` resolution finds the nodes.
    let _peer = start_peer(
        port,
        &log,
        &["--interval-ms", "150", "--extra-namespaces", "3"],
    );
    let cfg = streamgate::app::config::parse(&config(dir.path(), port, "", TAGS)).unwrap();
    let p = Pipeline::start(&cfg, StartOptions::default()).unwrap();
    let out = dir.path().join("out");
    wait_for(&out, "20 temp samples", |s| {
        s.iter().filter(|p| p.tag == "temp").count() >= 20
    })
    .await;
    p.stop().await;
    common::drain_exports(&cfg).await;

    let samples = exported(&out);
    let log = server_log(&log);
    for tag in [
        "temp", "counter", "running", "recipe", "arr1", "ftemp", "matrix10",
    ] {
        let got: Vec<&Payload> = samples.iter().filter(|p| p.tag == tag && real(p)).collect();
        assert_matches_log(tag, &got, &log[tag]);
        assert!(
            got[0].meta.flags.contains(Flags::FST),
            "{tag}: first is Fst"
        );
        assert!(got[1..].iter().all(|p| p.meta.flags.is_empty()), "{tag}");
    }
    // Status codes: the server cycles Good, Good, UncertainLastUsableValue, BadSensorFailure.
    let temp: Vec<&Payload> = samples
        .iter()
        .filter(|p| p.tag == "temp" && real(p))
        .collect();
    for q in [Quality::Ok, Quality::Uncertain, Quality::Bad] {
        assert!(
            temp.iter().any(|p| p.quality == q),
            "temp has a {q:?} sample"
        );
    }
    // Polled: every read is a value the server wrote, with its source timestamp.
    let polled: Vec<&Payload> = samples
        .iter()
        .filter(|p| p.tag == "counter_polled" && real(p))
        .collect();
    assert!(polled.len() >= 3, "polled {}", polled.len());
    let counter_log = &log["counter"];
    for p in &polled[1..] {
        assert!(
            counter_log
                .iter()
                .any(|w| w.value == p.value && w.source_ms == p.timestamp),
            "polled {:?} at {} was not written",
            p.value,
            p.timestamp
        );
    }
    // A node the server does not have: one Bad sample naming the status, flagged Ats.
    let missing: Vec<&Payload> = samples
        .iter()
        .filter(|p| p.tag == "missing" && !p.meta.flags.contains(Flags::SYN))
        .collect();
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert_eq!(missing[0].quality, Quality::Bad);
    assert!(matches!(&missing[0].value, Value::Text(t) if t.starts_with("Bad")));
    // Stop: each tag that sent ends with a Bad Lst+Syn sample.
    for tag in ["temp", "counter", "counter_polled"] {
        let last = samples.iter().rev().find(|p| p.tag == tag).unwrap();
        assert_eq!(last.meta.flags, Flags::LST | Flags::SYN, "{tag}");
        assert_eq!(last.quality, Quality::Bad);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_brings_subscriptions_back_with_lst_and_fst() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let port = free_port();
    let tags = r#"
[[sources.tags]]
name = "counter"
node = "nsu=urn:streamgate:test;i=1001"
[[sources.tags]]
name = "temp"
node = "nsu=urn:streamgate:test;s=Line1.Temp"
"#;
    let peer = start_peer(port, &log, &["--interval-ms", "100"]);
    let cfg = streamgate::app::config::parse(&config(dir.path(), port, "", tags)).unwrap();
    let p = Pipeline::start(&cfg, StartOptions::default()).unwrap();
    let out = dir.path().join("out");
    wait_for(&out, "counter samples", |s| {
        s.iter().filter(|p| p.tag == "counter").count() >= 5
    })
    .await;
    drop(peer); // the server dies
    wait_for(&out, "Lst after the server died", |s| {
        s.iter()
            .any(|p| p.tag == "counter" && p.meta.flags.contains(Flags::LST))
    })
    .await;
    // Same port, a new process; namespace index moves (2 fillers), ticks continue at 1000.
    let _peer = start_peer(
        port,
        &log,
        &[
            "--interval-ms",
            "100",
            "--start",
            "1000",
            "--extra-namespaces",
            "2",
        ],
    );
    wait_for(&out, "counter values of the restarted server", |s| {
        s.iter()
            .filter(|p| p.tag == "counter" && matches!(p.value, Value::Int(v) if v >= 1000))
            .count()
            >= 5
    })
    .await;
    p.stop().await;
    common::drain_exports(&cfg).await;

    let samples = exported(&out);
    let counter: Vec<&Payload> = samples.iter().filter(|p| p.tag == "counter").collect();
    let lst: Vec<usize> = counter
        .iter()
        .enumerate()
        .filter(|(_, p)| p.meta.flags.contains(Flags::LST))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        lst.len(),
        2,
        "one Lst at the loss, one at stop: {counter:?}"
    );
    let lost = counter[lst[0]];
    assert_eq!(
        (lost.quality, lost.meta.flags),
        (Quality::Bad, Flags::LST | Flags::SYN)
    );
    assert_eq!(
        lost.value,
        counter[lst[0] - 1].value,
        "Lst carries the last value"
    );
    let back = counter[lst[0] + 1];
    assert!(
        back.meta.flags.contains(Flags::FST),
        "first after return is Fst: {back:?}"
    );
    assert!(
        counter[..lst[0]]
            .iter()
            .all(|p| matches!(p.value, Value::Int(v) if v < 1000))
    );
    // After the return, values are the new server's writes, in order.
    let log = server_log(&log);
    let after: Vec<&Payload> = counter[lst[0] + 1..lst[1]].to_vec();
    let new_log: Vec<Written> = log["counter"]
        .iter()
        .filter(|w| matches!(w.value, Value::Int(v) if v >= 1000))
        .cloned()
        .collect();
    assert_matches_log("counter after restart", &after, &new_log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_connection_needs_the_server_certificate_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let port = free_port();
    let certs = dir.path().join("server-certs");
    let _peer = start_peer(
        port,
        &log,
        &["--interval-ms", "100", "--secure", certs.to_str().unwrap()],
    );
    let cfg = config(
        dir.path(),
        port,
        "security_policy = \"Basic256Sha256\"\nsecurity_mode = \"SignAndEncrypt\"",
        r#"
[[sources.tags]]
name = "counter"
node = "nsu=urn:streamgate:test;i=1001"
"#,
    );
    let cfg_path = dir.path().join("gateway.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let gw = Gateway::start(&cfg_path, "info");
    // The untrusted server certificate: a message naming the file and where to move it.
    let message = gw.wait_line_within(0, &["is not trusted"], T);
    let rejected_dir = dir.path().join("pki/rejected");
    let trusted_dir = dir.path().join("pki/trusted");
    assert!(
        message.contains(&trusted_dir.display().to_string()),
        "{message}"
    );
    let rejected: Vec<PathBuf> = std::fs::read_dir(&rejected_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(
        message.contains(&rejected[0].display().to_string()),
        "{message}"
    );
    assert!(
        exported(&dir.path().join("out")).is_empty(),
        "no data while untrusted"
    );
    // Do what it says: the reader's next attempt connects.
    let name = rejected[0].file_name().unwrap();
    std::fs::rename(&rejected[0], trusted_dir.join(name)).unwrap();
    let out = dir.path().join("out");
    wait_for(&out, "counter samples over the secure channel", |s| {
        s.iter().filter(|p| p.tag == "counter").count() >= 5
    })
    .await;
    drop(gw);
    let samples = exported(&out);
    let got: Vec<&Payload> = samples
        .iter()
        .filter(|p| p.tag == "counter" && real(p))
        .collect();
    assert_matches_log("counter (secure)", &got, &server_log(&log)["counter"]);
    assert!(
        dir.path().join("pki/own/cert.der").exists(),
        "client certificate created on first start"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_on_first_use_trusts_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let port = free_port();
    let secure = "security_policy = \"Basic256Sha256\"\ntrust_on_first_use = true";
    let tags = "[[sources.tags]]\nname = \"counter\"\nnode = \"nsu=urn:streamgate:test;i=1001\"\n";
    let cfg = streamgate::app::config::parse(&config(dir.path(), port, secure, tags)).unwrap();
    let out = dir.path().join("out");
    {
        let _peer = start_peer(
            port,
            &log,
            &["--secure", dir.path().join("certs-a").to_str().unwrap()],
        );
        let p = Pipeline::start(&cfg, StartOptions::default()).unwrap();
        wait_for(&out, "samples after first use", |s| {
            s.iter().filter(|p| p.tag == "counter").count() >= 3
        })
        .await;
        p.stop().await;
        common::drain_exports(&cfg).await;
    }
    assert_eq!(
        std::fs::read_dir(dir.path().join("pki/trusted"))
            .unwrap()
            .count(),
        1
    );
    assert!(dir.path().join("pki/first-use/plc.txt").exists());
    // Another server certificate on the same endpoint: rejected, no data.
    let before = exported(&out).len();
    let _peer = start_peer(
        port,
        &log,
        &["--secure", dir.path().join("certs-b").to_str().unwrap()],
    );
    let p = Pipeline::start(&cfg, StartOptions::default()).unwrap();
    wait_until_async("the second certificate rejected", T, async || {
        std::fs::read_dir(dir.path().join("pki/rejected"))
            .unwrap()
            .count()
            > 0
    })
    .await;
    // A window in which no data may arrive: nothing to wait for.
    tokio::time::sleep(Duration::from_millis(500)).await;
    p.stop().await;
    // What arrived since: only the source's "never connected" Bad samples (flagged Syn, the
    // reason as value), no data read from the server with the unknown certificate.
    let after = exported(&out);
    let new = &after[before..];
    assert!(
        new.iter()
            .all(|p| p.quality == Quality::Bad && p.meta.flags.contains(Flags::SYN)),
        "no data from an unknown certificate: {new:?}"
    );
    assert!(
        new.iter().any(
            |p| matches!(&p.value, streamgate::payload::Value::Text(t) if t.contains("certificate"))
        ),
        "the Bad samples say why: {new:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_notices_a_frozen_server() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let port = free_port();
    let tags = "[[sources.tags]]\nname = \"counter\"\nnode = \"nsu=urn:streamgate:test;i=1001\"\n";
    let peer = start_peer(port, &log, &["--interval-ms", "100"]);
    let cfg = streamgate::app::config::parse(&config(dir.path(), port, "", tags)).unwrap();
    let p = Pipeline::start(&cfg, StartOptions::default()).unwrap();
    let out = dir.path().join("out");
    wait_for(&out, "counter samples", |s| s.len() >= 5).await;
    // The process stops answering but its socket stays open: only the keep-alive can tell.
    let pid = peer.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    wait_for(&out, "Lst from the keep-alive", |s| {
        s.iter().any(|p| p.meta.flags.contains(Flags::LST))
    })
    .await;
    assert!(
        Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    wait_for(&out, "values again after the server thawed", |s| {
        let lst = s
            .iter()
            .position(|p| p.meta.flags.contains(Flags::LST))
            .unwrap();
        s[lst + 1..].iter().filter(|p| real(p)).count() >= 3
    })
    .await;
    p.stop().await;
    let samples = exported(&out);
    let lst = samples
        .iter()
        .position(|p| p.meta.flags.contains(Flags::LST))
        .unwrap();
    assert!(
        samples[lst + 1].meta.flags.contains(Flags::FST),
        "{:?}",
        samples[lst + 1]
    );
    drop(peer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_policies_and_sign_mode_work() {
    for (policy, mode, peer_policy) in [
        (
            "Aes128_Sha256_RsaOaep",
            "SignAndEncrypt",
            "Aes128Sha256RsaOaep_SignAndEncrypt",
        ),
        ("Aes256_Sha256_RsaPss", "Sign", "Aes256Sha256RsaPss_Sign"),
        ("Basic256Sha256", "Sign", "Basic256Sha256_Sign"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        let port = free_port();
        let certs = dir.path().join("certs");
        let _peer = start_peer(
            port,
            &log,
            &["--secure", certs.to_str().unwrap(), "--policy", peer_policy],
        );
        let source = format!(
            "security_policy = \"{policy}\"\nsecurity_mode = \"{mode}\"\ntrust_on_first_use = true"
        );
        let tags =
            "[[sources.tags]]\nname = \"counter\"\nnode = \"nsu=urn:streamgate:test;i=1001\"\n";
        let cfg = streamgate::app::config::parse(&config(dir.path(), port, &source, tags)).unwrap();
        let p = Pipeline::start(&cfg, StartOptions::default()).unwrap();
        let out = dir.path().join("out");
        wait_for(&out, policy, |s| s.iter().filter(|p| real(p)).count() >= 5).await;
        p.stop().await;
        let samples = exported(&out);
        let got: Vec<&Payload> = samples.iter().filter(|p| real(p)).collect();
        assert_matches_log(policy, &got, &server_log(&log)["counter"]);
    }
}

/// `streamgate browse opcua` below a nested folder of the asyncua peer (its namespace moved to
/// index 5: 0 is OPC UA's, 1 the server's, 2-4 the fillers): exact JSON per node, node ids in both forms, data type, access level, the value
/// of scalars and the length of arrays. The `--toml` output, pasted into a config, validates
/// and the daemon reads the same values from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browse_lists_the_tree_and_its_toml_reads_the_same_values() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _peer = start_peer(
        port,
        &dir.path().join("server.log"),
        &["--ticks", "0", "--extra-namespaces", "3"],
    );
    let endpoint = format!("opc.tcp://127.0.0.1:{port}/streamgate/");
    let pki = dir.path().join("pki");
    let browse = |extra: &[&str]| {
        let mut args = vec![
            "browse",
            "opcua",
            endpoint.as_str(),
            "--node",
            "nsu=urn:streamgate:test;s=Plant",
            "--pki-dir",
            pki.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        common::run_cli(&args)
    };
    let (code, stdout, stderr) = browse(&["--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let node = |path: &[&str], id: &str, class: &str| {
        serde_json::json!({
            "depth": path.len(),
            "path": path,
            "node_id": format!("ns=5;s={id}"),
            "node_id_uri": format!("nsu=urn:streamgate:test;s={id}"),
            // The peer names its nodes without a namespace ("Area1" is 0:Area1).
            "browse_name": path.last().unwrap(),
            "display_name": path.last().unwrap(),
            "node_class": class,
            "expandable": false,
        })
    };
    let variable = |name: &str, data_type: &str, access: &str, value: serde_json::Value| {
        let mut v = node(
            &["Area1", "Filler", name],
            &format!("Plant.Area1.Filler.{name}"),
            "Variable",
        );
        v["data_type"] = data_type.into();
        v["access"] = access.into();
        if value.is_number() {
            v["value"] = value;
        } else {
            v["array"] = 3.into();
        }
        v
    };
    let expected = vec![
        node(&["Area1"], "Plant.Area1", "Object"),
        node(&["Area1", "Filler"], "Plant.Area1.Filler", "Object"),
        variable("Speed", "Double", "read,write", serde_json::json!(12.5)),
        variable("Count", "UInt32", "read", serde_json::json!(7)),
        variable("Levels", "Double", "read", serde_json::Value::Null),
    ];
    assert_eq!(lines, expected, "{stdout}");

    // The tree: indented, the config form of each id first.
    let (code, tree, stderr) = browse(&[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        tree.contains("    - Speed  [Variable]  nsu=urn:streamgate:test;s=Plant.Area1.Filler.Speed  (ns=5;s=Plant.Area1.Filler.Speed)  Double  read,write  = 12.5"),
        "{tree}"
    );

    // --depth 1 marks what has more below.
    let (_, shallow, _) = browse(&["--depth", "1", "--json"]);
    let shallow: Vec<serde_json::Value> = shallow
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(shallow.len(), 1);
    assert_eq!(shallow[0]["expandable"], true);

    // --toml, pasted into a config: validates, and the daemon reads the same values.
    let (code, toml, stderr) = browse(&["--toml"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        toml.contains("# Area1.Filler.Levels (nsu=urn:streamgate:test;s=Plant.Area1.Filler.Levels) is an array of 3"),
        "{toml}"
    );
    let text = format!(
        "[gateway]\ndata_dir = \"{d}/data\"\nequipment_id = \"ua-test\"\n\n[[streams]]\nname = \"line\"\n\n\
         [[streams.exports]]\nkind = \"file\"\npath = \"{d}/out\"\nbatch_interval = \"10ms\"\n\n{toml}",
        d = dir.path().display()
    );
    let cfg_path = dir.path().join("browsed.toml");
    std::fs::write(&cfg_path, &text).unwrap();
    let (code, out, err) = common::run_cli(&["validate", "--config", cfg_path.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}\n{text}");
    let cfg = streamgate::app::config::parse(&text).unwrap();
    let p = Pipeline::start(&cfg, StartOptions::default()).unwrap();
    let out = dir.path().join("out");
    wait_for(&out, "both scalars", |s| {
        ["Area1.Filler.Speed", "Area1.Filler.Count"]
            .iter()
            .all(|t| {
                s.iter()
                    .any(|p| p.tag == *t && !p.meta.flags.contains(Flags::SYN))
            })
    })
    .await;
    p.stop().await;
    let got = exported(&out);
    let first = |tag: &str| got.iter().find(|p| p.tag == tag).unwrap().value.clone();
    assert_eq!(first("Area1.Filler.Speed"), Value::Float(12.5));
    assert_eq!(first("Area1.Filler.Count"), Value::Int(7));
    assert!(got.iter().all(|p| p.tag != "Area1.Filler.Levels"));
}

/// `streamgate read` on an OPC UA source: one Read of the selected tags on a session of its
/// own, the values the server holds (its writes are off), an unknown node as its status.
#[test]
fn read_gives_the_servers_values_and_unknown_nodes_as_errors() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _peer = start_peer(
        port,
        &dir.path().join("server.log"),
        &["--ticks", "0", "--extra-namespaces", "2"],
    );
    let cfg = dir.path().join("gw.toml");
    std::fs::write(&cfg, config(dir.path(), port, "", TAGS)).unwrap();
    let (code, stdout, stderr) = common::run_cli(&[
        "read",
        "--json",
        "--config",
        cfg.to_str().unwrap(),
        "--tag",
        "temp",
        "--tag",
        "recipe",
        "--tag",
        "arr1",
        "--tag",
        "missing",
    ]);
    assert_eq!(code, Some(69), "a read failed: {stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by = |tag: &str| lines.iter().find(|l| l["tag"] == tag).unwrap().clone();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert_eq!(
        (by("temp")["value"].clone(), by("temp")["quality"].clone()),
        (serde_json::json!(0.0), serde_json::json!("Ok"))
    );
    assert_eq!(by("recipe")["value"], "none");
    assert_eq!(by("arr1")["value"], serde_json::json!(0.0), "{stdout}");
    let missing = by("missing");
    assert_eq!(missing["value"], serde_json::Value::Null);
    assert_eq!(missing["error"], "BadNodeIdUnknown", "{missing}");
}

/// Browse and read of a server that is not there, or that accepts and never answers: exit
/// 69 with the reason, within the request timeout.
#[test]
fn browse_and_read_of_an_absent_or_silent_server_end_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let closed = free_port();
    let (code, _, stderr) = common::run_cli(&[
        "browse",
        "opcua",
        &format!("opc.tcp://127.0.0.1:{closed}/"),
        "--pki-dir",
        dir.path().join("pki").to_str().unwrap(),
    ]);
    assert_eq!(code, Some(69), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "GetEndpoints from opc.tcp://127.0.0.1:{closed}/ failed"
        )),
        "{stderr}"
    );
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let started = std::time::Instant::now();
    let (code, _, stderr) = common::run_cli(&[
        "browse",
        "opcua",
        &format!("opc.tcp://127.0.0.1:{port}/"),
        "--request-timeout",
        "500ms",
        "--pki-dir",
        dir.path().join("pki").to_str().unwrap(),
    ]);
    assert_eq!(code, Some(69), "{stderr}");
    assert!(stderr.contains("timed out after 1s"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(20));
    // Options are checked by the source's own rules, named as options.
    let (code, _, stderr) = common::run_cli(&[
        "browse",
        "opcua",
        "opc.tcp://127.0.0.1:4840/",
        "--security-policy",
        "Basic128",
    ]);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("--security-policy: "), "{stderr}");
    drop(silent);
}

/// `browse opcua` on a secure server goes through the reader's trust flow: an untrusted server
/// certificate is refused with the reader's message (the file saved in rejected/, where to move
/// it); moved to trusted/, the same command browses. With `--config`/`--source` it takes the
/// source's security and PKI folder.
#[test]
fn browse_a_secure_server_follows_the_readers_trust_flow() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let certs = dir.path().join("server-certs");
    let _peer = start_peer(
        port,
        &dir.path().join("server.log"),
        &["--ticks", "0", "--secure", certs.to_str().unwrap()],
    );
    let endpoint = format!("opc.tcp://127.0.0.1:{port}/streamgate/");
    let pki = dir.path().join("pki");
    let args = [
        "browse",
        "opcua",
        endpoint.as_str(),
        "--security-policy",
        "Basic256Sha256",
        "--security-mode",
        "SignAndEncrypt",
        "--pki-dir",
        pki.to_str().unwrap(),
        "--node",
        "nsu=urn:streamgate:test;s=Line1",
        "--json",
    ];
    let (code, _, stderr) = common::run_cli(&args);
    assert_eq!(code, Some(69), "{stderr}");
    assert!(stderr.contains("is not trusted"), "{stderr}");
    let rejected: Vec<PathBuf> = std::fs::read_dir(pki.join("rejected"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(
        stderr.contains(&pki.join("trusted").display().to_string()),
        "{stderr}"
    );
    std::fs::rename(
        &rejected[0],
        pki.join("trusted").join(rejected[0].file_name().unwrap()),
    )
    .unwrap();
    let (code, stdout, stderr) = common::run_cli(&args);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("\"node_id_uri\":\"nsu=urn:streamgate:test;i=1001\""),
        "{stdout}"
    );
    // The same from a config's source: its security settings and PKI folder (pki_dir).
    let cfg = dir.path().join("gw.toml");
    std::fs::write(
        &cfg,
        config(
            dir.path(),
            port,
            "security_policy = \"Basic256Sha256\"\nsecurity_mode = \"SignAndEncrypt\"",
            TAGS,
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = common::run_cli(&[
        "browse",
        "opcua",
        "--config",
        cfg.to_str().unwrap(),
        "--source",
        "plc",
        "--node",
        "nsu=urn:streamgate:test;s=Line1",
        "--json",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("Line1.Temp"), "{stdout}");
}
