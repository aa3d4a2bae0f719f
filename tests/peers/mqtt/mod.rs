//! Test peers for the MQTT export: a real mosquitto broker on 127.0.0.1 with its own config,
//! mosquitto_sub as a real subscriber, and certificates made with the openssl command line.
//! Every process is killed when its guard drops (also on panic).
#![allow(dead_code)]

#[path = "../certs.rs"]
mod certs;
#[allow(unused_imports)]
pub use certs::Certs;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{poll_until, wait_until};

fn wait_port(port: u16, what: &str) {
    wait_until(
        &format!("{what} listening on {port}"),
        Duration::from_secs(10),
        || TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );
}

/// A mosquitto broker; `conf` is the body of its config (listeners included).
pub struct Broker {
    child: Option<Child>,
    pub dir: PathBuf,
    conf: PathBuf,
    ports: Vec<u16>,
}

impl Broker {
    pub fn start(dir: &Path, conf: &str, ports: &[u16]) -> Broker {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("mosquitto.conf");
        let body = format!(
            "{conf}\nuser root\npersistence true\npersistence_location {}/\nmax_queued_messages 0\nlog_dest file {}/mosquitto.log\n",
            dir.display(),
            dir.display()
        );
        std::fs::write(&path, body).unwrap();
        let mut b = Broker {
            child: None,
            dir: dir.to_path_buf(),
            conf: path,
            ports: ports.to_vec(),
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto not installed: run tests/peers/setup.sh");
        self.child = Some(child);
        for p in self.ports.clone() {
            wait_port(p, "mosquitto");
        }
    }

    /// SIGTERM (mosquitto saves its persistence file and exits), then wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            poll_until(Duration::from_secs(10), || {
                c.try_wait().ok().flatten().is_some()
            });
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal (`STOP` freezes the broker with its connections open, `CONT` thaws it).
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(c.id().to_string())
                .status();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// mosquitto_sub with a persistent session (QoS 1), writing what arrives to a file.
pub struct Subscriber {
    child: Option<Child>,
    out: PathBuf,
    /// Connection arguments shared with mosquitto_pub (-p, -u/-P, TLS options ...).
    conn: Vec<String>,
    args: Vec<String>,
    runs: usize,
}

/// Published by the tests to see that the subscription is active; not a sample.
const PROBE_TOPIC: &str = "lines/probe";

impl Subscriber {
    /// `conn`: connection arguments (-p, -u/-P, TLS options ...); `extra`: more mosquitto_sub
    /// options (-v). The topic filter is `lines/#`.
    pub fn start(dir: &Path, id: &str, conn: &[&str], extra: &[&str]) -> Subscriber {
        let conn: Vec<String> = ["-h", "127.0.0.1"]
            .iter()
            .chain(conn)
            .map(|a| a.to_string())
            .collect();
        let mut args = conn.clone();
        args.extend(
            ["-t", "lines/#", "-q", "1", "-c", "-i", id]
                .iter()
                .chain(extra)
                .map(|a| a.to_string()),
        );
        let mut s = Subscriber {
            child: None,
            out: dir.join(format!("{id}.out")),
            conn,
            args,
            runs: 0,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        self.runs += 1;
        let out = self.out.with_extension(format!("out{}", self.runs));
        let file = std::fs::File::create(&out).unwrap();
        let child = Command::new("mosquitto_sub")
            .args(&self.args)
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub not installed: run tests/peers/setup.sh");
        self.child = Some(child);
        // mosquitto_sub says nothing when it has subscribed: publish probes until one arrives
        // (each given 100 ms).
        let arrived = || {
            std::fs::read_to_string(&out)
                .unwrap_or_default()
                .contains("probe")
        };
        wait_until("mosquitto_sub subscribed", Duration::from_secs(10), || {
            let _ = Command::new("mosquitto_pub")
                .args(&self.conn)
                .args(["-t", PROBE_TOPIC, "-q", "1", "-m", "probe"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            poll_until(Duration::from_millis(100), arrived)
        });
    }

    /// Starts it again (after a broker restart: mosquitto_sub does not reconnect by itself).
    /// Sends a signal (`STOP` freezes the broker with its connections open, `CONT` thaws it).
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(c.id().to_string())
                .status();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every payload line received so far (probes left out), over all runs.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for run in 1..=self.runs {
            let path = self.out.with_extension(format!("out{run}"));
            let text = std::fs::read_to_string(path).unwrap_or_default();
            for l in text.lines() {
                if l.starts_with('{') {
                    lines.push(l.to_string());
                } else if l.starts_with("lines/")
                    && !l.starts_with(PROBE_TOPIC)
                    && let Some((_, payload)) = l.split_once(' ')
                {
                    // `-v`: "topic payload"
                    lines.push(payload.to_string());
                }
            }
        }
        lines
    }

    /// Lines as `topic payload` pairs (with `-v`).
    pub fn topic_lines(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for run in 1..=self.runs {
            let path = self.out.with_extension(format!("out{run}"));
            let text = std::fs::read_to_string(path).unwrap_or_default();
            for l in text
                .lines()
                .filter(|l| l.starts_with("lines/") && !l.starts_with(PROBE_TOPIC))
            {
                if let Some((t, p)) = l.split_once(' ') {
                    out.push((t.to_string(), p.to_string()));
                }
            }
        }
        out
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.kill();
    }
}
