//! Hostile peers: small in-test TCP servers that misbehave (accept and never answer, answer
//! garbage, answer one byte at a time, reset mid-response, flood endless bytes or huge length
//! fields), with the real `streamgate` binary pointed at them. For each, checked:
//! - the component gives up on the connection and reconnects with backoff: the server counts
//!   the connections it accepted over the test window; more than one (it does reconnect) and
//!   fewer than a loop without backoff would make;
//! - the daemon's memory stays bounded (VmRSS from /proc, sampled while it is attacked);
//! - a simulator source with a file export in the same config keeps delivering every sample,
//!   in order, up to its last (Lst) sample at shutdown: sequence numbers, not timing;
//! - the log line says what happened and where (key words plus the endpoint).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long the gateway is exposed to the hostile peer.
const WINDOW: Duration = Duration::from_secs(8);
/// Resident memory the daemon must stay under while attacked (it idles at ~10-20 MiB).
const RSS_LIMIT_KIB: u64 = 150 * 1024;

#[derive(Debug, Clone)]
enum Behaviour {
    /// Accepts, reads what comes, never answers.
    Silent,
    /// Answers every read with bytes that are no protocol at all.
    Garbage,
    /// Answers with these bytes, one byte every 150 ms.
    Drip(Vec<u8>),
    /// Sends these bytes (a frame's beginning), then resets the connection (RST).
    Reset(Vec<u8>),
    /// Sends this header, then endless bytes as fast as the peer takes them.
    Flood(Vec<u8>),
    /// An S7 PLC that completes the ISO and S7 handshake, then never answers a read.
    S7HandshakeThenSilent,
}

/// A misbehaving TCP server on 127.0.0.1; counts connections. Stops when dropped.
struct Hostile {
    port: u16,
    accepts: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn hostile(behaviour: Behaviour) -> Hostile {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let accepts = Arc::new(AtomicUsize::new(0));
    let counter = accepts.clone();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            conns.spawn(serve(stream, behaviour.clone()));
        }
    });
    Hostile {
        port,
        accepts,
        task,
    }
}

/// Pseudo-random bytes (xorshift): no protocol's valid frame, reproducible.
fn garbage(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 7) as u8
        })
        .collect()
}

async fn serve(mut stream: TcpStream, behaviour: Behaviour) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; 4096];
    match behaviour {
        Behaviour::Silent => {
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    return;
                }
            }
        }
        Behaviour::Garbage => {
            let mut seed = 7;
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    return;
                }
                seed += 1;
                if stream.write_all(&garbage(64, seed)).await.is_err() {
                    return;
                }
            }
        }
        Behaviour::Drip(bytes) => {
            if !matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {
                return;
            }
            for b in bytes.iter().cycle() {
                if stream.write_all(&[*b]).await.is_err() {
                    return;
                }
                // The peer's misbehaviour: one byte every 150 ms.
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }
        Behaviour::Reset(prefix) => {
            if !matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {
                return;
            }
            let _ = stream.write_all(&prefix).await;
            // The peer's misbehaviour: the bytes go out, then the reset.
            tokio::time::sleep(Duration::from_millis(20)).await;
            // Linger 0: close() sends RST instead of FIN.
            let _ = stream.set_zero_linger();
            drop(stream);
        }
        Behaviour::S7HandshakeThenSilent => {
            // Connection request -> connection confirm.
            if read_tpkt(&mut stream).await.is_none() {
                return;
            }
            let cc = [
                3, 0, 0, 22, 17, 0xD0, 0, 1, 0, 1, 0, 0xC0, 1, 0x0A, 0xC1, 2, 1, 0, 0xC2, 2, 1, 2,
            ];
            if stream.write_all(&cc).await.is_err() {
                return;
            }
            // Setup communication -> its ack (same PDU reference), PDU size 480.
            let Some(setup) = read_tpkt(&mut stream).await else {
                return;
            };
            let (r0, r1) = (setup.get(11).copied(), setup.get(12).copied());
            let (Some(r0), Some(r1)) = (r0, r1) else {
                return;
            };
            let ack = [
                3, 0, 0, 27, 2, 0xF0, 0x80, 0x32, 3, 0, 0, r0, r1, 0, 8, 0, 0, 0, 0, 0xF0, 0, 0, 1,
                0, 1, 1, 0xE0,
            ];
            if stream.write_all(&ack).await.is_err() {
                return;
            }
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    return;
                }
            }
        }
        Behaviour::Flood(header) => {
            let (mut rd, mut wr) = stream.into_split();
            // Keep reading so the peer's writes never block on us.
            tokio::spawn(async move {
                let mut sink = vec![0u8; 4096];
                while let Ok(n) = rd.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            });
            if wr.write_all(&header).await.is_err() {
                return;
            }
            let chunk = garbage(64 * 1024, 99);
            while wr.write_all(&chunk).await.is_ok() {}
        }
    }
}

/// One TPKT frame, header included.
async fn read_tpkt(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut frame = vec![0u8; 4];
    stream.read_exact(&mut frame).await.ok()?;
    let len = usize::from(u16::from_be_bytes([frame[2], frame[3]]));
    frame.resize(len.max(4), 0);
    stream.read_exact(&mut frame[4..]).await.ok()?;
    Some(frame)
}

/// A config with a simulator on its own stream (`side`, exported to files) beside the
/// component under attack (`source_or_export`, on stream `plc`); returns its path.
fn write_config(dir: &Path, source_or_export: &str) -> std::path::PathBuf {
    let config = format!(
        r#"
[gateway]
data_dir = "{data}"
equipment_id = "line-1"
report_interval = "0s"

[[streams]]
name = "side"

[[streams.exports]]
name = "side_out"
kind = "file"
path = "{side}"
batch_interval = "50ms"

[[streams]]
name = "plc"

[[streams.exports]]
name = "plc_out"
kind = "file"
path = "{plc}"
batch_interval = "50ms"

[[sources]]
kind = "simulator"
id = "sim"
stream = "side"
interval = "20ms"

[[sources.tags]]
name = "counter"
waveform = "ramp"
min = 0.0
max = 100.0
period = "1s"

{source_or_export}
"#,
        data = dir.join("data").display(),
        side = dir.join("side").display(),
        plc = dir.join("plc").display(),
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, config).expect("write config");
    path
}

const LOG: &str = "streamgate=debug";

/// SIGTERM, then waits for a clean exit: a hostile peer must not hold shutdown up.
fn stop(gw: &mut Gateway) {
    gw.sigterm();
    let status = gw.wait_exit(Duration::from_secs(20));
    assert!(
        status.success(),
        "gateway exited with {status}; log:\n{}",
        gw.log().join("\n")
    );
}

/// `next_sequence` of the simulator `sim` when it stopped (from its log line).
fn sim_next_sequence(log: &str) -> Option<u64> {
    log.lines()
        .filter(|l| l.contains("simulator stopped") && l.contains("id=sim "))
        .find_map(|l| l.split("next_sequence=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Every payload the file export under `dir` wrote, in file order (while it writes: a last
/// line without its newline yet is left out).
fn delivered(dir: &Path) -> Vec<serde_json::Value> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            let mut text = std::fs::read_to_string(f).unwrap_or_default();
            text.truncate(text.rfind('\n').map_or(0, |i| i + 1));
            text.lines()
                .map(|l| serde_json::from_str(l).expect("a complete JSON line"))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// What a scenario expects of the gateway.
struct Expect {
    /// A loop that does not back off would connect at least this often in the window.
    no_backoff_attempts: usize,
    /// Words that must appear together on one log line (the endpoint is added).
    log_words: &'static [&'static str],
}

/// Runs the gateway against `behaviour` for the window and checks everything.
async fn scenario(behaviour: Behaviour, component: impl Fn(u16) -> String, expect: Expect) {
    let server = hostile(behaviour.clone()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = write_config(dir.path(), &component(server.port));
    let mut gw = Gateway::start(&cfg, LOG);
    let started = Instant::now();
    let mut max_rss = 0;
    // The exposure is a fixed window (reconnects are counted over it), with the memory
    // sampled every 100 ms: the time is the measurement, not synchronisation.
    while started.elapsed() < WINDOW {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(rss) = gw.rss_kib() {
            max_rss = max_rss.max(rss);
        }
        if let Ok(Some(status)) = gw.child.try_wait() {
            panic!(
                "gateway exited early with {status}; log:\n{}",
                gw.log().join("\n")
            );
        }
    }
    let attempts = server.accepts.load(Ordering::SeqCst);
    stop(&mut gw);
    let log = gw.log().join("\n");
    let context = format!(
        "{behaviour:?}: {attempts} connections, max RSS {max_rss} KiB; log:\n{}",
        log.lines()
            .filter(|l| !l.contains("DEBUG"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    eprintln!("hostile {behaviour:?}: {attempts} connections in {WINDOW:?}, max RSS {max_rss} KiB");
    assert!(attempts >= 2, "never reconnected: {context}");
    assert!(
        attempts < expect.no_backoff_attempts,
        "reconnects as fast as a loop without backoff (>= {}): {context}",
        expect.no_backoff_attempts
    );
    assert!(max_rss > 0, "could not read VmRSS");
    assert!(max_rss < RSS_LIMIT_KIB, "memory not bounded: {context}");

    let endpoint = format!("127.0.0.1:{}", server.port);
    let line = log
        .lines()
        .find(|l| l.contains(&endpoint) && expect.log_words.iter().all(|w| l.contains(w)));
    assert!(
        line.is_some(),
        "no log line with {endpoint} and {:?}: {context}",
        expect.log_words
    );

    // The simulator's stream was not held up: every sample it read, in order. Records still
    // queued at shutdown are delivered by the next start (same queue), so start again and
    // wait for the rest.
    let produced =
        sim_next_sequence(&log).unwrap_or_else(|| panic!("no simulator stop line: {context}"));
    assert!(
        produced >= 20,
        "simulator read only {produced} samples: {context}"
    );
    let mut gw = Gateway::start(&cfg, LOG);
    gw.wait_running();
    let side = dir.path().join("side");
    let sim_seqs = || -> Vec<u64> {
        delivered(&side)
            .iter()
            .filter(|p| p["meta"]["sourceId"] == "sim")
            .map(|p| {
                p["meta"]["sequenceNumber"]
                    .as_u64()
                    .expect("sequence number")
            })
            .collect()
    };
    let caught_up = common::poll_until_async(Duration::from_secs(30), async || {
        sim_seqs().last().is_some_and(|&l| l + 1 >= produced)
    })
    .await;
    let seqs = sim_seqs();
    assert!(
        caught_up,
        "the simulator's samples up to {produced} were not delivered after a restart; last {:?}",
        seqs.last()
    );
    stop(&mut gw);
    assert!(seqs[0] <= 1, "first sample {} missing", seqs[0]);
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "simulator samples missing, duplicated or out of order: {seqs:?}"
    );
}

// ---- Modbus TCP ------------------------------------------------------------------------

/// A Modbus source: 200 ms timeout, backoff from 100 ms doubling to 3 s.
fn modbus(port: u16) -> String {
    format!(
        r#"
[[sources]]
kind = "modbus_tcp"
id = "meter"
stream = "plc"
host = "127.0.0.1"
port = {port}
interval = "100ms"
request_timeout = "200ms"
reconnect_min = "100ms"
reconnect_max = "3s"

[[sources.tags]]
name = "power"
address = "40001"
"#
    )
}

/// Without backoff a reader reconnects every poll interval (or timeout).
fn modbus_expect(words: &'static [&'static str]) -> Expect {
    Expect {
        no_backoff_attempts: (WINDOW.as_millis() / 300) as usize,
        log_words: words,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_silent_device() {
    scenario(
        Behaviour::Silent,
        modbus,
        modbus_expect(&["device unreachable", "no response within"]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_garbage() {
    scenario(
        Behaviour::Garbage,
        modbus,
        modbus_expect(&["device unreachable"]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_one_byte_at_a_time() {
    // A well-formed answer to transaction 1 (one register), too slow to arrive in time.
    let answer = vec![0, 1, 0, 0, 0, 5, 1, 3, 2, 0, 42];
    scenario(
        Behaviour::Drip(answer),
        modbus,
        modbus_expect(&["device unreachable", "no response within"]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_reset_mid_response() {
    scenario(
        Behaviour::Reset(vec![0, 1, 0, 0, 0, 5, 1]),
        modbus,
        modbus_expect(&["device unreachable"]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_flood_with_huge_length() {
    // MBAP header announcing the largest length, then endless bytes.
    scenario(
        Behaviour::Flood(vec![0, 1, 0, 0, 0xFF, 0xFF, 1]),
        modbus,
        modbus_expect(&["device unreachable"]),
    )
    .await;
}

// ---- S7 (ISO-on-TCP) -------------------------------------------------------------------

fn s7(port: u16) -> String {
    format!(
        r#"
[[sources]]
kind = "s7"
id = "filler"
stream = "plc"
host = "127.0.0.1"
port = {port}
interval = "100ms"
connect_timeout = "300ms"
request_timeout = "300ms"
reconnect_min = "100ms"
reconnect_max = "3s"

[[sources.tags]]
name = "temperature"
address = "DB1,REAL0"
"#
    )
}

fn s7_expect(words: &'static [&'static str]) -> Expect {
    Expect {
        // A loop without backoff would reconnect after every connect timeout at least.
        no_backoff_attempts: (WINDOW.as_millis() / 400) as usize,
        log_words: words,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_silent_plc() {
    scenario(
        Behaviour::Silent,
        s7,
        s7_expect(&["cannot connect to the PLC", "timed out"]),
    )
    .await;
}

/// The backoff must grow although every connect succeeds (it was reset at each connect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_plc_that_connects_but_never_answers_a_read() {
    scenario(
        Behaviour::S7HandshakeThenSilent,
        s7,
        s7_expect(&["connection to the PLC lost", "read var timed out"]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_garbage() {
    scenario(
        Behaviour::Garbage,
        s7,
        s7_expect(&["cannot connect to the PLC", "protocol"]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_one_byte_at_a_time() {
    // A connection confirm, too slow to arrive in time.
    let cc = vec![3, 0, 0, 22, 17, 0xD0, 0, 1, 0, 1, 0, 0xC0, 1, 0x0A];
    scenario(
        Behaviour::Drip(cc),
        s7,
        s7_expect(&["cannot connect to the PLC", "timed out"]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_reset_mid_response() {
    scenario(
        Behaviour::Reset(vec![3, 0, 0, 22, 17, 0xD0]),
        s7,
        s7_expect(&["cannot connect to the PLC"]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_flood_with_huge_length() {
    // A TPKT header announcing 65535 bytes, a COTP DT that is never the last fragment, then
    // endless bytes: the client must not reassemble without limit.
    scenario(
        Behaviour::Flood(vec![3, 0, 0xFF, 0xFF, 2, 0xF0, 0x00]),
        s7,
        s7_expect(&["cannot connect to the PLC"]),
    )
    .await;
}

// ---- OPC UA ----------------------------------------------------------------------------

fn opcua(port: u16) -> String {
    format!(
        r#"
[[sources]]
kind = "opcua"
id = "mixer"
stream = "plc"
endpoint = "opc.tcp://127.0.0.1:{port}"
request_timeout = "500ms"
reconnect_min = "100ms"
reconnect_max = "3s"

[[sources.tags]]
name = "speed"
node = "ns=2;s=Speed"
"#
    )
}

fn opcua_expect(words: &'static [&'static str]) -> Expect {
    Expect {
        no_backoff_attempts: (WINDOW.as_millis() / 600) as usize,
        log_words: words,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opcua_silent_server() {
    scenario(Behaviour::Silent, opcua, opcua_expect(&["OPC UA"])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opcua_garbage() {
    scenario(Behaviour::Garbage, opcua, opcua_expect(&["OPC UA"])).await;
}

/// async-opcua 0.19's TcpCodec would buffer the whole announced message (up to 4 GiB); the
/// reader's connector (src/readers/opcua/limit.rs) refuses the header above max_message_size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opcua_flood_with_huge_length() {
    // An ACK header announcing a 2 GiB message, then endless bytes.
    scenario(
        Behaviour::Flood(b"ACKF\xff\xff\xff\x7f".to_vec()),
        opcua,
        opcua_expect(&[
            "OPC UA server announced a 2147483647-byte message",
            "above the limit",
        ]),
    )
    .await;
}

// ---- MQTT export -----------------------------------------------------------------------

/// A simulator feeding an MQTT export on its own stream, so the broker's misbehaviour is
/// the export's problem only.
fn mqtt(port: u16) -> String {
    format!(
        r#"
[[streams]]
name = "cloud"

[[streams.exports]]
name = "broker"
kind = "mqtt"
host = "127.0.0.1"
port = {port}
client_id = "hostile-test"
topic = "t/{{tag}}"
connect_timeout = "1s"
reconnect_min = "200ms"
reconnect_max = "3s"

[[sources]]
kind = "simulator"
id = "cloudsim"
stream = "cloud"
interval = "50ms"

[[sources.tags]]
name = "level"
waveform = "sine"
min = 0.0
max = 1.0
period = "1s"
"#
    )
}

fn mqtt_expect(per_attempt: Duration, words: &'static [&'static str]) -> Expect {
    Expect {
        no_backoff_attempts: (WINDOW.as_millis() / per_attempt.as_millis()) as usize,
        log_words: words,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_broker_never_connacks() {
    scenario(
        Behaviour::Silent,
        mqtt,
        mqtt_expect(Duration::from_secs(1), &["mqtt broker connection failed"]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_broker_sends_garbage() {
    scenario(
        Behaviour::Garbage,
        mqtt,
        mqtt_expect(
            Duration::from_millis(300),
            &["mqtt broker connection failed"],
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_broker_floods_a_huge_packet() {
    // CONNACK, then a PUBLISH announcing 256 MiB (the largest remaining length), then endless
    // bytes: the export must refuse the packet, not buffer it.
    scenario(
        Behaviour::Flood(vec![0x20, 2, 0, 0, 0x30, 0xFF, 0xFF, 0xFF, 0x7F]),
        mqtt,
        mqtt_expect(
            Duration::from_millis(300),
            &["mqtt broker connection failed"],
        ),
    )
    .await;
}
