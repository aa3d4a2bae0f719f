//! Kinesis with credentials from the gateway's X.509 certificate (`iot_credentials`): a stand-in
//! for the AWS IoT credentials provider (HTTPS requiring a client certificate of the test CA,
//! the documented request and answer, credentials that expire) and moto behind a front that
//! accepts only calls signed with a key the provider issued, with its current session token
//! (tests/peers/aws/iot_credentials.py). The real daemon: the normal flow with refreshes before
//! expiry, the provider down past expiry (backlog kept, recovered, nothing lost), and a
//! certificate the provider refuses (a clear error, nothing lost).

mod aws_support;
#[path = "peers/certs.rs"]
mod certs;
mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aws_support::{Moto, http};

/// The provider and the checking front, on their own ports.
struct Provider {
    child: Child,
    https: u16,
    front: u16,
}

impl Provider {
    fn start(certs: &certs::Certs, moto: &Moto, lifetime: u64) -> Provider {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/peers/aws/iot_credentials.py"
        );
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--ca", certs.ca.to_str().unwrap()])
            .args(["--cert", certs.server_cert.to_str().unwrap()])
            .args(["--key", certs.server_key.to_str().unwrap()])
            .args(["--alias", "streamgate-kinesis", "--thing", "line1-gateway"])
            .args(["--moto", &moto.url(), "--stream", "line"])
            .args(["--lifetime", &lifetime.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ports: Vec<u16> = line
            .strip_prefix("PORTS ")
            .unwrap_or_else(|| panic!("iot_credentials.py said {line:?}"))
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        Provider {
            child,
            https: ports[0],
            front: ports[1],
        }
    }

    fn control(&self, what: &str) {
        let (status, _) = http(self.front, "POST", &format!("/_control/{what}"), b"").unwrap();
        assert_eq!(status, 200);
    }

    fn get(&self, what: &str) -> serde_json::Value {
        let (status, body) = http(self.front, "GET", &format!("/_control/{what}"), b"").unwrap();
        assert_eq!(status, 200);
        serde_json::from_slice(&body).unwrap()
    }

    /// Sequence numbers in the Kinesis stream (one sample per record).
    fn sequence_numbers(&self) -> Vec<u64> {
        let records = self.get("records");
        records
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let p: serde_json::Value = serde_json::from_str(r.as_str().unwrap()).unwrap();
                p["meta"]["sequenceNumber"].as_u64().unwrap()
            })
            .collect()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(data: &Path, provider: &Provider, cert: &Path, key: &Path, ca: &Path) -> String {
    format!(
        r#"
[gateway]
data_dir = "{data}"
equipment_id = "line1"
report_interval = "1s"

[[streams]]
name = "line"

[[streams.exports]]
name = "kinesis"
kind = "kinesis"
stream_name = "line"
region = "us-east-1"
endpoint_url = "http://127.0.0.1:{front}"
initial_backoff = "100ms"
max_backoff = "1s"

[streams.exports.iot_credentials]
endpoint = "127.0.0.1:{https}"
role_alias = "streamgate-kinesis"
thing_name = "line1-gateway"
client_cert = "{cert}"
client_key = "{key}"
ca_file = "{ca}"

[[sources]]
kind = "simulator"
id = "sim"
interval = "100ms"

[[sources.tags]]
name = "a"
"#,
        data = common::toml_path(data),
        front = provider.front,
        https = provider.https,
        cert = common::toml_path(cert),
        key = common::toml_path(key),
        ca = common::toml_path(ca),
    )
}

/// One test's world: certificates, moto, the provider (credentials living `lifetime` s) and a
/// running gateway whose client certificate is the stranger's when `refused`.
struct World {
    tmp: tempfile::TempDir,
    _moto: Moto,
    provider: Provider,
    data: std::path::PathBuf,
    gw: common::Gateway,
}

fn world(lifetime: u64, refused: bool) -> World {
    let tmp = tempfile::tempdir().unwrap();
    let certs = certs::Certs::generate(&tmp.path().join("certs"));
    let moto = Moto::start();
    let provider = Provider::start(&certs, &moto, lifetime);
    let data = tmp.path().join("data");
    let cfg = tmp.path().join("gw.toml");
    let (cert, key) = if refused {
        (&certs.stranger_cert, &certs.stranger_key)
    } else {
        (&certs.client_cert, &certs.client_key)
    };
    std::fs::write(&cfg, config(&data, &provider, cert, key, &certs.ca)).unwrap();
    let gw = start(&cfg);
    World {
        tmp,
        _moto: moto,
        provider,
        data,
        gw,
    }
}

/// The gateway without any AWS key in its environment: only the provider's credentials exist.
fn start(cfg: &Path) -> common::Gateway {
    let mut cmd = common::Gateway::command();
    cmd.args(["run", "--config"])
        .arg(cfg)
        .env("RUST_LOG", "info")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent");
    common::Gateway::spawn(cmd)
}

fn export(data: &Path) -> streamgate::status::ExportReport {
    common::status(data)
        .expect("status")
        .streams
        .remove(0)
        .exports
        .remove(0)
}

fn next_seq(data: &Path) -> u64 {
    common::status(data).expect("status").sources[0].next_sequence_number as u64
}

fn stop_and_check_all_arrived(gw: common::Gateway, data: &Path, provider: &Provider) -> u64 {
    let mut gw = gw;
    gw.sigterm();
    let status = gw.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{}", gw.log().join("\n"));
    let last = next_seq(data) - 1;
    assert_eq!(export(data).backlog, 0, "{:?}", export(data));
    let mut seen = provider.sequence_numbers();
    seen.sort();
    seen.dedup();
    let missing: Vec<u64> = (1..=last)
        .filter(|s| seen.binary_search(s).is_err())
        .collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    last
}

#[test]
fn credentials_from_the_certificate_are_refreshed_before_they_expire() {
    let World {
        tmp: _tmp,
        _moto,
        provider,
        data,
        gw,
    } = world(20, false);
    // 20 s credentials, refreshed at 70-80 % of their life: three keys within 45 s.
    common::wait_until(
        "three sets of credentials used",
        Duration::from_secs(60),
        || provider.get("stats")["keys_used"].as_u64() >= Some(3),
    );
    let state = export(&data).state.unwrap_or_default();
    assert!(
        state.contains(
            "credentials: AWS IoT role alias streamgate-kinesis for thing line1-gateway, expire 20"
        ),
        "status shows where the credentials come from and when they expire: {state}"
    );
    let last = stop_and_check_all_arrived(gw, &data, &provider);
    let stats = provider.get("stats");
    assert_eq!(
        stats["rejected"], 0,
        "no call was made with expired or unknown credentials: {stats}"
    );
    println!("{last} samples delivered with {stats} (credentials living 20 s)");
}

#[test]
fn the_provider_down_past_expiry_holds_the_backlog_and_recovers() {
    let World {
        tmp: _tmp,
        _moto,
        provider,
        data,
        gw,
    } = world(10, false);
    common::wait_until("delivering", Duration::from_secs(30), || {
        common::status(&data).is_some_and(|r| r.streams[0].exports[0].delivered > 10)
    });
    provider.control("down");
    let mark = gw.log_len();
    gw.wait_line_within(
        mark,
        &["cannot fetch AWS credentials", "503"],
        Duration::from_secs(30),
    );
    // Past the 10 s lifetime nothing valid is left: the export waits with its backlog.
    common::wait_until("no valid credentials left", Duration::from_secs(30), || {
        export(&data)
            .state
            .is_some_and(|s| s.contains("credentials: none valid"))
    });
    let during = export(&data);
    println!(
        "during the outage: state {:?}, last error {:?}",
        during.state, during.last_error
    );
    let held = during.backlog;
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        export(&data).backlog > held,
        "the backlog grows while no credentials hold"
    );
    provider.control("up");
    gw.wait_line_within(
        mark,
        &["AWS credentials from the IoT credentials provider again"],
        Duration::from_secs(90),
    );
    let target = next_seq(&data) + 20;
    common::wait_until("caught up", Duration::from_secs(60), || {
        next_seq(&data) > target && export(&data).backlog < 20
    });
    let last = stop_and_check_all_arrived(gw, &data, &provider);
    let stats = provider.get("stats");
    assert_eq!(stats["rejected"], 0, "{stats}");
    println!("{last} samples, none lost through a provider outage past expiry: {stats}");
}

#[test]
fn a_certificate_the_provider_refuses_is_named_and_nothing_is_lost() {
    let World {
        tmp: _tmp,
        _moto,
        provider,
        data,
        gw,
    } = world(3600, true);
    let line = gw.wait_line_within(
        0,
        &["cannot fetch AWS credentials"],
        Duration::from_secs(30),
    );
    assert!(
        line.contains("refuses this client certificate"),
        "the log says the certificate was refused: {line}"
    );
    println!("{line}");
    std::thread::sleep(Duration::from_secs(2));
    let e = export(&data);
    assert_eq!(e.delivered, 0);
    assert!(
        e.last_error
            .as_deref()
            .is_some_and(|m| m.contains("refuses this client certificate")),
        "{e:?}"
    );
    let mut gw = gw;
    gw.sigterm();
    gw.wait_exit(Duration::from_secs(30));
    let r = common::status(&data).unwrap();
    assert!(r.streams[0].records > 0, "the samples stay queued");
    assert_eq!(provider.get("stats")["forwarded"], 0);
}

/// `validate` checks the certificate files: they exist, and the key is the certificate's.
#[test]
fn validation_names_a_key_that_is_not_the_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = certs::Certs::generate(&tmp.path().join("certs"));
    let fake = Provider {
        child: Command::new("true").spawn().unwrap(),
        https: 1,
        front: 1,
    };
    let cfg = tmp.path().join("gw.toml");
    let data = tmp.path().join("data");
    let validate = |cert: &Path, key: &Path| {
        std::fs::write(&cfg, config(&data, &fake, cert, key, &certs.ca)).unwrap();
        let (code, _, stderr) = common::run_cli(&["validate", "--config", cfg.to_str().unwrap()]);
        (code, stderr)
    };
    let (code, stderr) = validate(&certs.stranger_cert, &certs.client_key);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        stderr.contains("streams[0].exports[0].iot_credentials.client_key: client_cert/client_key do not fit together"),
        "{stderr}"
    );
    let (code, stderr) = validate(&tmp.path().join("missing.pem"), &certs.client_key);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        stderr.contains("streams[0].exports[0].iot_credentials.client_cert: cannot read"),
        "{stderr}"
    );
    let (code, stderr) = validate(&certs.client_cert, &certs.client_key);
    assert_eq!(code, Some(0), "{stderr}");
}
