//! The unit file passes `systemd-analyze verify` with no warnings (its Documentation= man page
//! included), and its exposure score is reported; `Type=notify` readiness reaches a notify socket from the real binary.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

#[test]
fn unit_file_verifies_without_warnings() {
    let unit = std::fs::read_to_string("systemd/streamgate.service").unwrap();
    let dir = tempfile::tempdir().unwrap();
    // verify checks that ExecStart's binary exists: point it at the one cargo built.
    let path = dir.path().join("streamgate.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/streamgate",
            env!("CARGO_BIN_EXE_streamgate"),
        ),
    )
    .unwrap();
    // Documentation=man:streamgate(1): verify runs `man` on it; the page is the package's.
    let man1 = dir.path().join("man/man1");
    std::fs::create_dir_all(&man1).unwrap();
    let page = std::fs::read_to_string("cross/debian/streamgate.1").unwrap();
    std::fs::write(
        man1.join("streamgate.1"),
        page.replace("@VERSION@", env!("CARGO_PKG_VERSION")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .env("MANPATH", dir.path().join("man"))
        .output()
        .expect("systemd-analyze is installed by tests/peers/setup.d/systemd.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify warned:\n{stderr}"
    );

    let sec = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&sec.stdout);
    let score = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or("")
        .to_string();
    eprintln!("{score}");
    let value: f64 = score
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .expect("an exposure score");
    assert!(value <= 2.5, "the unit should stay hardened: {score}");
}

#[test]
fn readiness_is_sent_after_start_and_stopping_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut cmd = common::Gateway::command();
    cmd.arg("run")
        .current_dir(dir.path())
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000");
    let mut gw = common::Gateway::spawn(cmd);
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 arrives");
    let first = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(first.starts_with("READY=1"), "{first}");
    let n = sock.recv(&mut buf).expect("the watchdog is fed");
    assert_eq!(&buf[..n], b"WATCHDOG=1");
    gw.sigterm();
    let mut saw_stopping = false;
    while let Ok(n) = sock.recv(&mut buf) {
        if &buf[..n] == b"STOPPING=1" {
            saw_stopping = true;
            break;
        }
    }
    assert!(saw_stopping);
    assert!(gw.wait_exit(Duration::from_secs(30)).success());
}
