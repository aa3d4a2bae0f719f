//! Shared by the tests that run the real binary (crash, powerloss, diskfull, corruption, reload,
//! metrics, security): the binary as a child process with its log captured, and the accounting
//! of sequence numbers across the queue database and the `file` export's output.
#![allow(dead_code)] // each test binary uses a different part

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

/// The real `streamgate run`, killed when dropped (also on panic).
pub struct Gateway {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    /// Starts `streamgate run --config cfg` with `RUST_LOG=rust_log`; stderr is captured.
    pub fn start(cfg: &Path, rust_log: &str) -> Gateway {
        let mut child = Command::new(env!("CARGO_BIN_EXE_streamgate"))
            .args(["run", "--log-format", "human", "--config"])
            .arg(cfg)
            .env("RUST_LOG", rust_log)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start streamgate");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Gateway { child, lines }
    }

    /// Every log line so far.
    pub fn log(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until `n` log lines contain `needle`; false on timeout.
    pub fn wait_for(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.count(needle) >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    /// How many log lines there are so far (a mark for [`Self::wait_line`]).
    pub fn log_len(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// Waits for a log line after line `from` that contains every one of `words`; panics with
    /// the log after 20 s.
    pub fn wait_line(&self, from: usize, words: &[&str]) -> String {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(l) = self.lines.lock().unwrap()[from..]
                .iter()
                .find(|l| words.iter().all(|w| l.contains(w)))
            {
                return l.clone();
            }
            assert!(
                Instant::now() < end,
                "no log line with {words:?}; log:\n{}",
                self.log().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits for the process to exit (up to `timeout`, then SIGKILL and panic).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let end = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                // Let the reader thread drain the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return s;
            }
            if Instant::now() > end {
                self.sigkill();
                panic!(
                    "streamgate did not exit within {timeout:?}; log:\n{}",
                    self.log().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hash(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Sequence numbers of one source and which sample (payload hash) each carried, gathered
/// from the exported files incrementally (files are only appended to, or renamed when rotated:
/// they are tracked by inode) and from the queue.
#[derive(Default)]
pub struct Ledger {
    pub exported: BTreeMap<u64, u64>,
    /// inode -> bytes of the file already read (up to its last complete line).
    read_upto: HashMap<u64, u64>,
    pub duplicates: u64,
}

impl Ledger {
    /// Records `seq -> payload`; panics when a sequence number carries two different samples.
    fn add(map: &mut BTreeMap<u64, u64>, dups: &mut u64, bytes: &[u8], what: &str) {
        let p = streamgate::payload::decode(bytes).expect("every stored line is a full payload");
        let seq = p.meta.sequence_number;
        let h = hash(bytes);
        match map.get(&seq) {
            Some(prev) => {
                assert_eq!(
                    *prev,
                    h,
                    "sequence number {seq} was reused for a different sample ({what}): {}",
                    String::from_utf8_lossy(bytes)
                );
                *dups += 1;
            }
            None => {
                map.insert(seq, h);
            }
        }
    }

    /// Reads what the file export appended to the files in `out` since the last call.
    pub fn read_exports(&mut self, out: &Path) {
        use std::os::unix::fs::MetadataExt;
        let Ok(entries) = std::fs::read_dir(out) else {
            return;
        };
        for e in entries {
            let path = e.unwrap().path();
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let from = self.read_upto.get(&meta.ino()).copied().unwrap_or(0);
            if meta.len() <= from {
                continue;
            }
            let text = std::fs::read(&path).unwrap();
            let text = &text[from.min(text.len() as u64) as usize..];
            // A write cut by a kill may leave half a line at the end: it was never
            // acknowledged (the export cuts it off at its next start); read it next time.
            let complete = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            for l in text[..complete]
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
            {
                Self::add(&mut self.exported, &mut self.duplicates, l, "exported");
            }
            self.read_upto.insert(meta.ino(), from + complete as u64);
        }
    }

    /// Sequence numbers present now (exported or queued); checks the queued ones against the
    /// exported ones.
    pub fn present(&mut self, db: &Path, out: &Path) -> BTreeMap<u64, u64> {
        self.read_exports(out);
        let mut all = self.exported.clone();
        let mut dups = 0;
        for p in queued(db) {
            Self::add(&mut all, &mut dups, &p, "queued");
        }
        all
    }
}

/// Every payload in the queue database (all streams), read-only.
pub fn queued(db: &Path) -> Vec<Vec<u8>> {
    let Some(conn) = open_if_created(db) else {
        return Vec::new();
    };
    let tables: Vec<i64> = conn
        .prepare("SELECT tbl FROM streams")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    let mut out = Vec::new();
    for t in tables {
        let mut stmt = conn
            .prepare(&format!("SELECT payload FROM q_{t} ORDER BY id"))
            .unwrap();
        out.extend(
            stmt.query_map([], |r| r.get(0))
                .unwrap()
                .map(|r| r.unwrap()),
        );
    }
    out
}

/// The queue database read-only, or None if the gateway was killed before it created it.
fn open_if_created(db: &Path) -> Option<Connection> {
    if !db.exists() {
        return None;
    }
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let has_schema: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name IN ('streams', 'sources')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    (has_schema == 2).then_some(conn)
}

/// The source's next sequence number as committed in the queue database.
pub fn next_seq(db: &Path, source: &str) -> u64 {
    let Some(conn) = open_if_created(db) else {
        return 1;
    };
    conn.query_row(
        "SELECT next_seq FROM sources WHERE id = ?1",
        [source],
        |r| r.get::<_, i64>(0),
    )
    .unwrap_or(1) as u64
}

/// Sequence number -> payload from the queue and the exported files, the source's committed
/// next sequence number, and how many sequence numbers were seen more than once (always with
/// the same sample, or this panics).
pub fn collect(db: &Path, out: &Path, source: &str) -> (BTreeMap<u64, u64>, u64, u64) {
    let mut ledger = Ledger::default();
    let present = ledger.present(db, out);
    (present, next_seq(db, source), ledger.duplicates)
}

/// Asserts that every committed sequence number `1..next_seq` is present and nothing beyond.
pub fn assert_all_committed_present(present: &BTreeMap<u64, u64>, next_seq: u64, what: &str) {
    let committed = next_seq - 1;
    let missing: Vec<u64> = (1..=committed)
        .filter(|s| !present.contains_key(s))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "{what}: committed samples lost: {missing:?} (committed up to {committed})"
    );
    if let Some(last) = present.keys().next_back() {
        assert!(
            *last <= committed,
            "{what}: sequence number {last} left the queue but only {committed} were committed"
        );
    }
}

/// A per-test directory path as a string for TOML.
pub fn toml_path(p: &Path) -> String {
    p.display().to_string()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A tmpfs mounted for one test, unmounted when dropped.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. "64m") at `path`; `options` are extra mount options.
    pub fn mount(path: &Path, size: &str, options: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).unwrap();
        let mut opts = format!("size={size}");
        if !options.is_empty() {
            opts = format!("{opts},{options}");
        }
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &opts, "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs -o {opts} tmpfs {} failed: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            path: path.to_owned(),
        })
    }

    pub fn remount(&self, options: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "remount {options}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Tests that need root (mount) call this first: skipped with a reason when not root (tests/run
/// runs as root in CI, so there they always run); when root, a failing mount fails the test.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    eprintln!(
        "SKIPPED {test}: needs root to mount a tmpfs (tests/run runs as root in CI); run `sudo -E cargo test --test {test}`"
    );
    false
}

/// A 127.0.0.1 port that was free a moment ago (bound and released): for a listener the test
/// starts, or as a port where connections are refused.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
