//! A fault-injecting HTTP/1.1 proxy in front of moto: moto never throttles nor fails part of a
//! batch, real Kinesis and Firehose do. For PutRecords / PutRecordBatch the proxy forwards only
//! the entries the policy lets through and forges the service's per-entry error for the others
//! (index-aligned, with the failed count), so moto holds exactly what the service would have
//! accepted. `set_down(true)` makes the endpoint unreachable (connections are dropped) while
//! moto keeps its in-memory streams.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Decides per entry: `Some(error_code)` fails entry `index` of call `call` (0-based) whose
/// data (base64-decoded; empty if it does not decode) is the third argument, and whose shard
/// (Kinesis: learnt from moto's answers for the entry's partition key; `None` until the key was
/// first accepted) is the fourth. A forged error names that shard, as Kinesis's message does.
pub type Policy = Box<dyn FnMut(u64, usize, &[u8], Option<&str>) -> Option<&'static str> + Send>;

/// Partition key -> the shard moto put it on.
type ShardMap = Mutex<std::collections::HashMap<String, String>>;

#[derive(Default)]
pub struct Counters {
    pub calls: AtomicU64,
    pub entries_forwarded: AtomicU64,
    pub entries_failed: AtomicU64,
    pub refused_connections: AtomicU64,
}

pub struct Proxy {
    pub port: u16,
    pub counters: Arc<Counters>,
    shards: Arc<ShardMap>,
    down: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(upstream: u16, policy: Option<Policy>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let counters = Arc::new(Counters::default());
        let down = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let policy = Arc::new(Mutex::new(policy));
        let shards: Arc<ShardMap> = Arc::default();
        let map = shards.clone();
        let (c, d, s) = (counters.clone(), down.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                if d.load(Ordering::SeqCst) {
                    c.refused_connections.fetch_add(1, Ordering::Relaxed);
                    drop(conn);
                    continue;
                }
                let (c, d, p, m) = (c.clone(), d.clone(), policy.clone(), map.clone());
                std::thread::spawn(move || serve(conn, upstream, &c, &d, &p, &m));
            }
        });
        Proxy {
            port,
            counters,
            shards,
            down,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The shard moto put this partition key on (once an entry with it was accepted).
    pub fn shard_of(&self, key: &str) -> Option<String> {
        let map = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key).cloned()
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Serialises PutRecords / PutRecordBatch calls into moto (see `serve`).
static MOTO_WRITES: Mutex<()> = Mutex::new(());

/// Status, headers (lower-case names), body.
pub type Response = (u16, Vec<(String, String)>, Vec<u8>);

struct Request {
    head: Vec<(String, String)>,
    line: String,
    body: Vec<u8>,
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut head = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        head.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let len: usize = header(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Request {
        head,
        line: line.trim_end().to_string(),
        body,
    })
}

fn header<'a>(head: &'a [(String, String)], name: &str) -> Option<&'a str> {
    head.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn serve(
    conn: TcpStream,
    upstream: u16,
    counters: &Counters,
    down: &AtomicBool,
    policy: &Mutex<Option<Policy>>,
    shards: &ShardMap,
) {
    let Ok(write_half) = conn.try_clone() else {
        return;
    };
    let mut out = write_half;
    let mut reader = BufReader::new(conn);
    while let Some(mut req) = read_request(&mut reader) {
        if down.load(Ordering::SeqCst) {
            return;
        }
        let target = header(&req.head, "x-amz-target").unwrap_or("").to_string();
        let batch = target.ends_with(".PutRecords") || target.ends_with(".PutRecordBatch");
        // Per entry: the forged error code and the shard its message names.
        let mut failed: Vec<Option<(&'static str, Option<String>)>> = Vec::new();
        let mut kept_keys: Vec<String> = Vec::new();
        if batch {
            let call = counters.calls.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut json) = serde_json::from_slice::<serde_json::Value>(&req.body)
                && let Some(records) = json.get_mut("Records").and_then(|r| r.as_array_mut())
            {
                let mut guard = policy.lock().unwrap_or_else(|e| e.into_inner());
                let known = shards.lock().unwrap_or_else(|e| e.into_inner()).clone();
                failed = records
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        let data = r
                            .get("Data")
                            .and_then(|d| d.as_str())
                            .and_then(base64_decode)
                            .unwrap_or_default();
                        let shard = r
                            .get("PartitionKey")
                            .and_then(|k| k.as_str())
                            .and_then(|k| known.get(k));
                        guard
                            .as_mut()
                            .and_then(|p| p(call, i, &data, shard.map(String::as_str)))
                            .map(|code| (code, shard.cloned()))
                    })
                    .collect();
                let kept: Vec<serde_json::Value> = records
                    .iter()
                    .zip(&failed)
                    .filter(|(_, f)| f.is_none())
                    .map(|(r, _)| r.clone())
                    .collect();
                kept_keys = kept
                    .iter()
                    .map(|r| {
                        r.get("PartitionKey")
                            .and_then(|k| k.as_str())
                            .unwrap_or("")
                            .to_string()
                    })
                    .collect();
                let n_failed = failed.iter().filter(|f| f.is_some()).count() as u64;
                counters
                    .entries_failed
                    .fetch_add(n_failed, Ordering::Relaxed);
                counters
                    .entries_forwarded
                    .fetch_add(kept.len() as u64, Ordering::Relaxed);
                *records = kept;
                req.body = serde_json::to_vec(&json).unwrap_or_default();
            }
        }
        // moto numbers a shard's records as "highest so far + 1" without a lock: two
        // PutRecords at once can get the same numbers and overwrite each other's records (it
        // answers success for both). The exporter keeps several calls in flight, as against
        // the real service; the proxy hands them to moto one at a time.
        let forwarded = {
            let _one_at_a_time =
                batch.then(|| MOTO_WRITES.lock().unwrap_or_else(|e| e.into_inner()));
            forward(upstream, &req)
        };
        let Some((status, head, body)) = forwarded else {
            return;
        };
        if status == 200 && target.ends_with(".PutRecords") {
            learn_shards(&body, &kept_keys, shards);
        }
        let body = if batch && failed.iter().any(|f| f.is_some()) && status == 200 {
            forge(&body, &failed, &target).unwrap_or(body)
        } else {
            body
        };
        let mut resp = format!("HTTP/1.1 {status} X\r\n");
        for (k, v) in &head {
            if !matches!(
                k.as_str(),
                "content-length" | "connection" | "transfer-encoding"
            ) {
                resp.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        resp.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
        if out
            .write_all(resp.as_bytes())
            .and_then(|_| out.write_all(&body))
            .is_err()
        {
            return;
        }
    }
}

fn forward(upstream: u16, req: &Request) -> Option<Response> {
    let mut s = TcpStream::connect(("127.0.0.1", upstream)).ok()?;
    let mut head = format!("{}\r\n", req.line);
    for (k, v) in &req.head {
        if !matches!(k.as_str(), "content-length" | "connection") {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    head.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        req.body.len()
    ));
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(&req.body).ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    parse_response(&raw)
}

/// Status, headers (lower-case names) and body of a complete HTTP/1.1 response.
pub fn parse_response(raw: &[u8]) -> Option<Response> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let text = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = text.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let head: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if header(&head, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        body = dechunk(&body)?;
    } else if let Some(len) = header(&head, "content-length").and_then(|v| v.parse().ok()) {
        body.truncate(len);
    }
    Some((status, head, body))
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&b[..eol]).ok()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// Remembers the shard moto put each forwarded key on (its answer is aligned with them).
fn learn_shards(body: &[u8], keys: &[String], shards: &ShardMap) {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    let Some(records) = json.get("Records").and_then(|r| r.as_array()) else {
        return;
    };
    let mut map = shards.lock().unwrap_or_else(|e| e.into_inner());
    for (key, r) in keys.iter().zip(records) {
        if let Some(shard) = r.get("ShardId").and_then(|s| s.as_str()) {
            map.insert(key.clone(), shard.to_string());
        }
    }
}

/// Merges moto's results for the forwarded entries with forged errors, index-aligned.
fn forge(
    body: &[u8],
    failed: &[Option<(&'static str, Option<String>)>],
    target: &str,
) -> Option<Vec<u8>> {
    let mut json: serde_json::Value = serde_json::from_slice(body).ok()?;
    let (list, count) = if target.ends_with(".PutRecords") {
        ("Records", "FailedRecordCount")
    } else {
        ("RequestResponses", "FailedPutCount")
    };
    let mut accepted = json.get(list)?.as_array()?.clone().into_iter();
    let mut merged = Vec::with_capacity(failed.len());
    for f in failed {
        match f {
            None => merged.push(accepted.next()?),
            Some((code, shard)) => merged.push(serde_json::json!({
                "ErrorCode": code,
                "ErrorMessage": match shard {
                    Some(shard) => format!("Rate exceeded for shard {shard} in stream target under account 123456789012 (forged by the test proxy)"),
                    None => "Rate exceeded (forged by the test proxy)".to_string(),
                },
            })),
        }
    }
    let n = failed.iter().filter(|f| f.is_some()).count();
    json[list] = serde_json::Value::Array(merged);
    json[count] = serde_json::json!(n);
    serde_json::to_vec(&json).ok()
}

/// Standard base64 (with padding), as the AWS JSON protocol encodes blobs.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}
