//! The python-snap7 S7 server (tests/peers/s7/server.py) as a child process, killed on drop.
//! Shared by tests/s7.rs and examples/bench_s7.rs (included with `#[path]`).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Peer {
    pub port: u16,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    pub fn start(port: u16) -> Peer {
        Peer::start_with(port, &[])
    }

    /// Starts with initial values `(area, index, offset, bytes)` in place before it serves.
    pub fn start_with(port: u16, initial: &[(&str, u16, usize, &[u8])]) -> Peer {
        let args = initial.iter().map(|(area, index, offset, bytes)| {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            format!("{area}:{index}:{offset}:{hex}")
        });
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/s7/server.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start python3 tests/peers/s7/server.py (run tests/peers/setup.sh)");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut peer = Peer {
            port,
            child,
            stdin,
            stdout,
        };
        let line = peer.line();
        assert_eq!(line, format!("ready {port}"), "S7 server did not start");
        // Wait until it accepts connections.
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "S7 server not listening on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        peer
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read from S7 server");
        line.trim().to_string()
    }

    fn command(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").expect("write to S7 server");
        self.stdin.flush().expect("flush");
        self.line()
    }

    /// Writes `bytes` at `offset` of an area: "db" (index = DB number), "mk", "pe", "pa".
    pub fn set(&mut self, area: &str, index: u16, offset: usize, bytes: &[u8]) {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let answer = self.command(&format!("set {area} {index} {offset} {hex}"));
        assert_eq!(answer, "ok");
    }

    pub fn get(&mut self, area: &str, index: u16, offset: usize, len: usize) -> Vec<u8> {
        let answer = self.command(&format!("get {area} {index} {offset} {len}"));
        let hex = answer.strip_prefix("data ").expect("data answer");
        (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
            .collect()
    }

    /// Read-var jobs the server answered.
    pub fn read_jobs(&mut self) -> u64 {
        let answer = self.command("count");
        answer
            .strip_prefix("count ")
            .and_then(|n| n.parse().ok())
            .expect("count answer")
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
