//! Peers for the AWS exporter tests: moto's server (Kinesis, Firehose, S3) started per test on
//! a free port, a fault-injecting proxy in front of it, and a minimal HTTP client for S3.

#![allow(dead_code)] // each test binary uses a part

pub mod proxy;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::Duration;

/// Sets dummy credentials in the environment, once per test binary, before any runtime or
/// SDK reads the environment (every test calls this first, so nothing reads concurrently).
pub fn init_env() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: run once, first thing in every test, before threads of ours read the env.
        unsafe {
            std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
            std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
            std::env::remove_var("AWS_PROFILE");
        }
    });
}

/// A running moto_server; killed on drop (also when the test panics).
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    pub fn start() -> Moto {
        let port = crate::common::free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server not found: run tests/peers/setup.sh (pip install 'moto[server]')");
        let moto = Moto { child, port };
        let up =
            crate::common::poll_every(Duration::from_millis(100), Duration::from_secs(30), || {
                matches!(http(port, "GET", "/moto-api/data.json", b""), Ok((200, _)))
            });
        assert!(up, "moto_server did not start on port {port}");
        moto
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One plain HTTP/1.1 request to 127.0.0.1:`port` (unsigned: moto does not check signatures).
pub fn http(port: u16, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        // moto reads the access key from the header but does not check the signature; an
        // anonymous GET of an object is refused by its ACL check.
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let (status, _, body) = proxy::parse_response(&raw)
        .ok_or_else(|| std::io::Error::other("malformed HTTP response"))?;
    Ok((status, body))
}

/// Creates an S3 bucket on moto.
pub fn create_bucket(port: u16, bucket: &str) {
    let (status, body) = http(port, "PUT", &format!("/{bucket}"), b"").expect("create bucket");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

/// Every object of a bucket, in key order.
pub fn bucket_objects(port: u16, bucket: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let path = match &token {
            Some(t) => format!("/{bucket}?list-type=2&continuation-token={t}"),
            None => format!("/{bucket}?list-type=2"),
        };
        let (status, body) = http(port, "GET", &path, b"").expect("list objects");
        assert_eq!(status, 200);
        let xml = String::from_utf8_lossy(&body).to_string();
        for key in tags(&xml, "Key") {
            let (status, data) = http(port, "GET", &format!("/{bucket}/{key}"), b"").expect("get");
            assert_eq!(status, 200, "GET {key}");
            out.push((key, data));
        }
        token = tags(&xml, "NextContinuationToken").into_iter().next();
        if token.is_none() {
            return out;
        }
    }
}

fn tags(xml: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    xml.split(&open)
        .skip(1)
        .filter_map(|s| s.split(&close).next().map(|v| v.to_string()))
        .collect()
}
