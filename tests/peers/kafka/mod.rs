//! Kafka test peers: a real Kafka-protocol broker (Tansu, built by
//! tests/peers/setup.d/kafka.sh) on 127.0.0.1 with its topics in a SQLite file (they survive a
//! kill and restart), socat as its TLS front, and kafka-python reading topics back.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const TANSU_VERSION: &str = "0.6.0";

/// The Tansu binary setup.d/kafka.sh installed.
pub fn tansu_bin() -> PathBuf {
    let peers = std::env::var_os("STREAMGATE_PEERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/streamgate-peers")
        });
    peers.join(format!("tansu-{TANSU_VERSION}/bin/tansu"))
}

fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One Tansu broker. `port` is where it listens; `advertised` is the port it tells clients
/// (the TLS front's, when there is one).
pub struct Tansu {
    child: Option<Child>,
    dir: PathBuf,
    pub port: u16,
    advertised: u16,
    authentication: bool,
}

impl Tansu {
    pub fn start(dir: &Path, port: u16) -> Tansu {
        Self::start_with(dir, port, port, false)
    }

    pub fn start_with(dir: &Path, port: u16, advertised: u16, authentication: bool) -> Tansu {
        std::fs::create_dir_all(dir).unwrap();
        let mut t = Tansu {
            child: None,
            dir: dir.to_path_buf(),
            port,
            advertised,
            authentication,
        };
        t.spawn();
        t
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tansu.log"))
            .unwrap();
        let mut cmd = Command::new(tansu_bin());
        cmd.current_dir(&self.dir)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{}", self.port),
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{}", self.advertised),
                // Relative to the directory: Tansu 0.6.0 joins an absolute path to its own.
                "--storage-engine",
                "sqlite://tansu.db",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if self.authentication {
            cmd.arg("--authentication");
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("{}: {e} (run tests/peers/setup.sh)", tansu_bin().display())
        });
        self.child = Some(child);
        wait_port(self.port, "tansu");
    }

    /// `kill -9` (no clean shutdown), then a new broker on the same port and storage.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    fn cli(&self, args: &[&str]) {
        let out = Command::new(tansu_bin())
            .args(args)
            .args(["--broker", &format!("tcp://127.0.0.1:{}", self.port)])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tansu {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn create_topic(&self, name: &str, partitions: u32) {
        self.cli(&[
            "topic",
            "create",
            name,
            "--partitions",
            &partitions.to_string(),
        ]);
    }

    /// A SCRAM-SHA-512 user (create it before starting the broker with authentication).
    pub fn create_user(&self, name: &str, password: &str) {
        self.cli(&["user", "create", name, password, "--mechanism", "scram512"]);
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// socat terminating TLS on `port` in front of a plain listener.
pub struct TlsFront {
    child: Child,
}

impl TlsFront {
    pub fn start(port: u16, cert: &Path, key: &Path, to: u16) -> TlsFront {
        let child = Command::new("socat")
            .arg(format!(
                "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,verify=0,cert={},key={}",
                cert.display(),
                key.display()
            ))
            .arg(format!("TCP:127.0.0.1:{to}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat not installed: run tests/peers/setup.sh");
        wait_port(port, "socat");
        TlsFront { child }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One record as kafka-python read it.
#[derive(Debug, serde::Deserialize)]
pub struct Consumed {
    pub partition: i32,
    pub key: Option<String>,
    pub value: String,
    /// Apache Kafka's default partitioner's choice for the key (kafka-python's murmur2).
    pub expected_partition: Option<i32>,
}

impl Consumed {
    pub fn payload(&self) -> serde_json::Value {
        serde_json::from_str(&self.value).unwrap_or_else(|e| panic!("{e}: {}", self.value))
    }

    pub fn seq(&self) -> u64 {
        self.payload()["meta"]["sequenceNumber"]
            .as_u64()
            .expect("sequenceNumber")
    }
}

/// Every record of `topic`, read from the beginning by kafka-python.
pub fn consume(bootstrap: &str, topic: &str, extra: &[&str]) -> Vec<Consumed> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/kafka/consume.py");
    let out = Command::new("python3")
        .arg(script)
        .args([bootstrap, topic])
        .args(extra)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "consume.py {topic}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}
