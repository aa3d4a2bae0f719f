//! Security basics: a config file holding secrets must not be world-readable (warning, or
//! refusal with --strict-permissions); secrets never appear in logs or `status`; the metrics
//! listener binds to loopback unless told otherwise.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const MQTT_SECRET: &str = "Mq77-S3cr3t-never-logged";
const OPCUA_SECRET: &str = "Ua-S3cr3t-never-logged";

fn config(dir: &Path) -> String {
    let port = common::free_port();
    format!(
        r#"
[gateway]
data_dir = "{dir}/data"
equipment_id = "security-test"
status_interval = "100ms"
report_interval = "0"

[[streams]]
name = "line"

[[streams.exports]]
name = "broker"
kind = "mqtt"
host = "127.0.0.1"
port = {port}
client_id = "security-test"
topic = "t/{{tag}}"
username = "gateway"
password = "{MQTT_SECRET}"
initial_backoff = "50ms"
max_backoff = "200ms"

[[sources]]
kind = "simulator"
id = "sim"
interval = "20ms"

[[sources.tags]]
name = "x"
waveform = "counter"

[[sources]]
kind = "opcua"
id = "plc"
stream = "line"
endpoint = "opc.tcp://127.0.0.1:{port}"
username = "gateway"
password = "{OPCUA_SECRET}"

[[sources.tags]]
name = "y"
node = "ns=2;s=Y"
"#,
        dir = dir.display()
    )
}

fn streamgate(args: &[&str], cfg: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_streamgate"))
        .args(args)
        .arg("--config")
        .arg(cfg)
        .env("RUST_LOG", "debug")
        .output()
        .unwrap()
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn world_readable_secrets_warn_or_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(&cfg, config(dir.path())).unwrap();
    chmod(&cfg, 0o644);

    let out = streamgate(&["validate"], &cfg);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "a warning only: {err}");
    for words in [
        "holds secrets",
        "streams[0].exports[0].password",
        "sources[1].password",
        "mode 0644",
        "chmod o-rwx",
    ] {
        assert!(err.contains(words), "`{words}` missing in: {err}");
    }
    let strict = streamgate(&["validate", "--strict-permissions"], &cfg);
    assert_eq!(strict.status.code(), Some(78));
    let strict = streamgate(&["run", "--strict-permissions"], &cfg);
    assert_eq!(strict.status.code(), Some(78), "run refuses too");
    assert!(String::from_utf8_lossy(&strict.stderr).contains("--strict-permissions"));

    chmod(&cfg, 0o640);
    let ok = streamgate(&["validate", "--strict-permissions"], &cfg);
    assert!(ok.status.success());
    assert!(!String::from_utf8_lossy(&ok.stderr).contains("holds secrets"));

    // Without inline secrets (password_env), a readable file is fine.
    let env_only = dir.path().join("env.toml");
    std::fs::write(
        &env_only,
        config(dir.path())
            .replace(
                &format!("password = \"{MQTT_SECRET}\""),
                "password_env = \"SG_TEST_PW\"",
            )
            .replace(
                &format!("username = \"gateway\"\npassword = \"{OPCUA_SECRET}\"\n"),
                "",
            ),
    )
    .unwrap();
    chmod(&env_only, 0o644);
    let ok = streamgate(&["validate", "--strict-permissions"], &env_only);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[test]
fn secrets_never_reach_logs_or_status() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(&cfg, config(dir.path())).unwrap();
    chmod(&cfg, 0o600);
    // Run with debug logs while both connections are refused again and again.
    let mut gw = common::Gateway::start(&cfg, "debug");
    common::wait_until(
        "both connections refused twice",
        Duration::from_secs(30),
        // One WARN per outage, the attempts after it at DEBUG: both count.
        || {
            gw.count("mqtt broker connection failed") + gw.count("mqtt broker still unreachable")
                >= 2
                && gw.count("OPC UA: ") + gw.count("OPC UA (again): ") >= 2
        },
    );
    let status = streamgate(&["status"], &cfg);
    let status_json = streamgate(&["status", "--json"], &cfg);
    gw.sigterm();
    gw.wait_exit(Duration::from_secs(30));
    let log = gw.log().join("\n");
    let stdout = gw.stdout().join("\n");
    assert!(
        log.contains("broker") && log.lines().count() > 10,
        "the run logged its connection failures: {log}"
    );
    let status_text = String::from_utf8_lossy(&status.stdout);
    assert!(status_text.contains("broker"), "{status_text}");
    for (what, text) in [
        ("log", log.clone()),
        ("stdout", stdout.clone()),
        ("status", status_text.to_string()),
        (
            "status --json",
            String::from_utf8_lossy(&status_json.stdout).to_string(),
        ),
    ] {
        for secret in [MQTT_SECRET, OPCUA_SECRET] {
            assert!(!text.contains(secret), "{what} shows a secret:\n{text}");
        }
    }
}

#[test]
fn metrics_listen_on_loopback_unless_told_otherwise() {
    let base = "[[streams]]\nname = \"s\"\n[[streams.exports]]\nkind = \"stdout\"\n";
    let off = streamgate::app::config::parse(base).unwrap();
    assert!(!off.metrics.enabled, "off by default");
    let on = streamgate::app::config::parse(&format!("[metrics]\n{base}")).unwrap();
    assert!(on.metrics.enabled);
    assert!(
        on.metrics.listen.ip().is_loopback(),
        "{}",
        on.metrics.listen
    );
    let wide =
        streamgate::app::config::parse(&format!("[metrics]\nlisten = \"0.0.0.0:9464\"\n{base}"))
            .unwrap();
    assert!(!wide.metrics.listen.ip().is_loopback());
    let bad = streamgate::app::config::parse(&format!("[metrics]\nlisten = \"localhost\"\n{base}"))
        .unwrap_err();
    assert_eq!(bad[0].path, "metrics.listen");
}
