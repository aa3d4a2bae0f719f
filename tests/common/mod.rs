//! What the integration tests share (`mod common;` in every test file that needs one of these):
//!
//! - [`free_port`]: the one way to get a port for a peer a test starts (or a refused one).
//! - [`Gateway`]: the real `streamgate` binary as a child process, stdout and log captured,
//!   killed when dropped.
//! - Waiting for a condition, never for a guessed time: [`wait_until`] / [`wait_until_async`]
//!   poll a condition every 10 ms and panic naming what was awaited after the timeout;
//!   [`poll_until`] / [`poll_until_async`] return false instead, for a test that asserts with
//!   its own message. [`wait_drained`] / [`stop_sources_and_drain`]: until every export of an
//!   in-process [`Pipeline`] has acknowledged everything queued (the queue's own status).
//! - The accounting of sequence numbers across the queue database and the `file` export's
//!   output ([`Ledger`], [`queued`], [`next_seq`], [`assert_all_committed_present`]).
//! - Root-only tests: [`require_root`] and [`Tmpfs`].
//!
//! Timeouts are generous (10-60 s): a wait returns as soon as its condition holds, so only a
//! failing test pays for them. A test sleeps only when the time itself is the scenario (an
//! outage that lasts, a kill at a random moment, a window measuring a rate, a window in which
//! something must NOT happen), and says so in a comment next to the sleep.
//!
//! Skipped tests: a test that cannot run here (the root-only ones when not root) calls
//! [`skip`] (through [`require_root`]) and returns. `skip` writes
//! `SKIP <binary>::<test>: <reason>` straight to stderr (not captured by the test harness, so
//! it shows in a plain `cargo test` next to the test's `ok`) and appends the same line to
//! [`SKIPS_FILE`] (`target/tmp/test-skips.txt`); `tests/run` empties that file first and lists
//! and counts the skipped tests after the run. CI runs `tests/run` as root: nothing is skipped
//! there. (`#[ignore]` would hide them from CI too: whether a test can run is known only when
//! it runs.)
#![allow(dead_code)] // each test binary uses a different part

mod port;

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use streamgate::app::Pipeline;
use streamgate::queue::StreamStatus;

#[allow(unused_imports)] // not every test binary starts a peer
pub use port::free_port;

/// How often the waiting helpers look at their condition.
pub const POLL: Duration = Duration::from_millis(10);

/// Polls `cond` until it holds (true) or `timeout` has passed (false).
pub fn poll_until(timeout: Duration, cond: impl FnMut() -> bool) -> bool {
    poll_every(POLL, timeout, cond)
}

/// [`poll_until`] looking every `period`.
pub fn poll_every(period: Duration, timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(period);
    }
}

/// Waits until `cond` holds; panics naming `what` when it does not within `timeout`.
#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, cond: impl FnMut() -> bool) {
    if !poll_until(timeout, cond) {
        panic!("timed out after {timeout:?} waiting for {what}");
    }
}

/// [`poll_until`] for async tests: the condition may await (a queue status, a peer's data).
pub async fn poll_until_async(timeout: Duration, mut cond: impl AsyncFnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`wait_until`] for async tests.
pub async fn wait_until_async(what: &str, timeout: Duration, cond: impl AsyncFnMut() -> bool) {
    if !poll_until_async(timeout, cond).await {
        panic!("timed out after {timeout:?} waiting for {what}");
    }
}

/// True when every export of every stream (enabled and in the config: the others never
/// deliver) has acknowledged everything queued.
pub fn drained(status: &[StreamStatus]) -> bool {
    status.iter().all(|s| {
        s.exports
            .iter()
            .filter(|e| e.enabled && e.in_config)
            .all(|e| e.backlog == 0)
    })
}

/// Waits until the pipeline's exports have acknowledged everything queued ([`drained`]);
/// panics with each export's backlog and last error after `timeout`.
pub async fn wait_drained(p: &Pipeline, timeout: Duration) {
    let mut last = Vec::new();
    let done = poll_until_async(timeout, async || {
        last = p.handle.status().await.expect("queue status");
        drained(&last)
    })
    .await;
    if !done {
        let exports: Vec<String> = last
            .iter()
            .flat_map(|s| {
                s.exports.iter().map(move |e| {
                    format!(
                        "{}/{}: backlog {}, last error {:?}",
                        s.name, e.name, e.backlog, e.last_error
                    )
                })
            })
            .collect();
        panic!(
            "exports did not drain within {timeout:?}:\n{}",
            exports.join("\n")
        );
    }
}

/// Stops the readers (they hand over their last samples), then [`wait_drained`].
pub async fn stop_sources_and_drain(p: &mut Pipeline, timeout: Duration) {
    p.stop_sources(Duration::from_secs(10)).await;
    wait_drained(p, timeout).await;
}

/// The status `streamgate status` shows for `data_dir`, read from the queue database while
/// the gateway runs; None while there is no database yet, while it cannot be read right now,
/// or while the starting gateway has created it but not yet registered its streams (seen
/// once in CI: a poll indexing `streams[0]` panicked in that moment).
pub fn status(data_dir: &Path) -> Option<streamgate::status::StatusReport> {
    streamgate::status::read(data_dir)
        .ok()
        .filter(|r| !r.streams.is_empty() && r.streams.iter().all(|s| !s.exports.is_empty()))
}

/// Lines read from a child's pipe, kept for the test.
type Lines = Arc<Mutex<Vec<String>>>;

fn collect_lines(pipe: impl std::io::Read + Send + 'static) -> (Lines, JoinHandle<()>) {
    let lines: Lines = Arc::default();
    let sink = lines.clone();
    let reader = std::thread::spawn(move || {
        let mut pipe = std::io::BufReader::new(pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            match pipe.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    sink.lock()
                        .unwrap()
                        .push(text.trim_end_matches('\n').to_string());
                }
            }
        }
    });
    (lines, reader)
}

/// The real `streamgate` binary, stdout and stderr (the log) captured; killed when dropped
/// (also on panic).
pub struct Gateway {
    pub child: Child,
    lines: Lines,
    stdout: Lines,
    readers: Vec<JoinHandle<()>>,
}

impl Gateway {
    /// `streamgate` with colours off: add arguments and environment, then [`Self::spawn`].
    pub fn command() -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_streamgate"));
        cmd.env("NO_COLOR", "1");
        cmd
    }

    /// Starts `streamgate run --log-format human --config cfg` with `RUST_LOG=rust_log`.
    pub fn start(cfg: &Path, rust_log: &str) -> Gateway {
        Self::start_with_format(cfg, rust_log, "human")
    }

    /// [`Self::start`] with JSON log lines.
    pub fn start_json(cfg: &Path, rust_log: &str) -> Gateway {
        Self::start_with_format(cfg, rust_log, "json")
    }

    fn start_with_format(cfg: &Path, rust_log: &str, format: &str) -> Gateway {
        let mut cmd = Self::command();
        cmd.args(["run", "--log-format", format, "--config"])
            .arg(cfg)
            .env("RUST_LOG", rust_log);
        Self::spawn(cmd)
    }

    /// Starts `cmd` (from [`Self::command`]) with its stdout and stderr captured.
    pub fn spawn(mut cmd: Command) -> Gateway {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start streamgate");
        let (lines, log_reader) = collect_lines(child.stderr.take().expect("piped stderr"));
        let (stdout, out_reader) = collect_lines(child.stdout.take().expect("piped stdout"));
        Gateway {
            child,
            lines,
            stdout,
            readers: vec![log_reader, out_reader],
        }
    }

    /// Every log line so far.
    pub fn log(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Every stdout line so far.
    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until `n` log lines contain `needle`; false on timeout. Looks every 2 ms: a
    /// test may act at once on the line (powerloss kills inside the checkpoint it announces).
    pub fn wait_for(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        poll_every(Duration::from_millis(2), timeout, || {
            self.count(needle) >= n
        })
    }

    /// How many log lines there are so far (a mark for [`Self::wait_line`]).
    pub fn log_len(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// Waits for a log line after line `from` that contains every one of `words`; panics with
    /// the log after 20 s.
    pub fn wait_line(&self, from: usize, words: &[&str]) -> String {
        self.wait_line_within(from, words, Duration::from_secs(20))
    }

    /// [`Self::wait_line`] with another timeout.
    pub fn wait_line_within(&self, from: usize, words: &[&str], timeout: Duration) -> String {
        let find = || {
            self.lines.lock().unwrap()[from..]
                .iter()
                .find(|l| words.iter().all(|w| l.contains(w)))
                .cloned()
        };
        if poll_until(timeout, || find().is_some()) {
            return find().unwrap();
        }
        panic!(
            "no log line with {words:?} within {timeout:?}; log:\n{}",
            self.log().join("\n")
        );
    }

    /// Waits for the "streamgate running" line (the `streamgate::app` target at info level):
    /// the queue is open, readers and exports started, the signal handlers installed (a
    /// SIGTERM before that would kill the process instead of stopping it).
    pub fn wait_running(&self) {
        self.wait_line_within(0, &["streamgate running"], Duration::from_secs(30));
    }

    /// The process's resident memory, from /proc (None once it is gone).
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
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

    /// Waits for the process to exit (up to `timeout`, then SIGKILL and panic); the log is
    /// complete when this returns.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut status = None;
        if !poll_until(timeout, || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        }) {
            self.sigkill();
            panic!(
                "streamgate did not exit within {timeout:?}; log:\n{}",
                self.log().join("\n")
            );
        }
        // The pipes close with the process: the readers end after its last lines.
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        status.unwrap()
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

/// Every payload the `file` export wrote below `dir` so far, as JSON, file by file (lines
/// that do not parse, such as one cut by a kill, are left out).
pub fn exported_json(dir: &Path) -> Vec<serde_json::Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect::<Vec<serde_json::Value>>()
        })
        .collect()
}

/// The smallest gateway: one simulated tag into a stdout export, its queue in `data` (for
/// tests about starting and stopping, not about data).
pub fn minimal_config(data: &Path) -> String {
    format!(
        "[gateway]\ndata_dir = \"{}\"\nequipment_id = \"test\"\n\n[[streams]]\nname = \"line\"\n\n\
         [[streams.exports]]\nname = \"out\"\nkind = \"stdout\"\n\n\
         [[sources]]\nkind = \"simulator\"\nid = \"sim\"\n\n[[sources.tags]]\nname = \"t\"\n",
        toml_path(data)
    )
}

/// A per-test directory path as a string for TOML.
pub fn toml_path(p: &Path) -> String {
    p.display().to_string()
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

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Where [`skip`] notes the tests that did not run (`tests/run` prints and counts them).
pub const SKIPS_FILE: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/test-skips.txt");

/// Notes that the calling test cannot run here and why: `SKIP <binary>::<test>: <reason>` on
/// stderr, uncaptured (visible without `--nocapture`), and in [`SKIPS_FILE`]. The test returns
/// after this.
pub fn skip(reason: &str) {
    // The test harness names each test's thread after the test.
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("?");
    let line = format!("SKIP {}::{test}: {reason}\n", env!("CARGO_CRATE_NAME"));
    // Straight to the stderr file descriptor: the harness captures only `eprintln!`.
    let _ = std::io::stderr().write_all(line.as_bytes());
    let noted = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(SKIPS_FILE)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = noted {
        let _ = writeln!(
            std::io::stderr(),
            "cannot note the skip in {SKIPS_FILE}: {e}"
        );
    }
}

/// Tests that need root (to mount a tmpfs) call this first and return when it is false: the
/// test is then [`skip`]ped visibly. `tests/run` runs as root in CI, so there they always run;
/// when root, a failing mount fails the test.
pub fn require_root() -> bool {
    if is_root() {
        return true;
    }
    skip(concat!(
        "needs root to mount a tmpfs (CI runs tests/run as root): sudo -E cargo test --test ",
        env!("CARGO_CRATE_NAME")
    ));
    false
}

/// Runs the streamgate binary with `args` to its end: (exit code, stdout, stderr).
#[allow(dead_code)]
pub fn run_cli(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_streamgate"))
        .args(args)
        .output()
        .expect("run the streamgate binary");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Exports what is queued (what readers queued before a stop, or an older version's queue):
/// the pipeline of `cfg` with exports only, until the backlog is empty.
#[allow(dead_code)]
pub async fn drain_exports(cfg: &streamgate::app::config::Config) {
    let p = Pipeline::start(
        cfg,
        streamgate::app::StartOptions {
            sources: false,
            exports: true,
        },
    )
    .expect("start the exports");
    wait_drained(&p, Duration::from_secs(30)).await;
    p.stop().await;
}
