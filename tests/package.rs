//! The Debian package as an admin meets it (issue 18): `cross/deb` builds the amd64 package from
//! the binary cargo built, lintian finds nothing that is not overridden with a reason, `dpkg -i`
//! installs it (this machine has no systemd PID 1: the postinst enables the unit the Debian way
//! without starting it), the files have their owners and modes, the installed config validates,
//! the unit's own ExecStartPre/ExecStart lines run the daemon as the `streamgate` user, an
//! upgrade to a rebuilt package keeps the edited config and the queue (sequence numbers go on),
//! remove keeps the queue and purge deletes it after saying so.
//!
//! Root only (dpkg), and only where no streamgate is installed: the test never touches an
//! existing installation, and purges what it installed (and the user, if it created it).

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const UNIT: &str = "/lib/systemd/system/streamgate.service";
const CONF: &str = "/etc/streamgate/streamgate.toml";
const DEFAULTS: &str = "/etc/default/streamgate";
const STATE: &str = "/var/lib/streamgate";
const WANTS: &str = "/etc/systemd/system/multi-user.target.wants/streamgate.service";

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (tests/peers/setup.d/package.sh installs it)"))
}

/// Runs to success; returns stdout + stderr.
fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?} failed: {text}");
    text
}

fn installed() -> bool {
    let out = run("dpkg-query", &["-W", "-f=${Status}", "streamgate"]);
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains("installed")
}

/// Purges the package on every exit of the test, and the user and group if the test made them.
struct Cleanup {
    created_user: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = run("dpkg", &["--purge", "streamgate"]);
        if self.created_user {
            let _ = run("deluser", &["--system", "--quiet", "streamgate"]);
            let _ = run("delgroup", &["--system", "--quiet", "streamgate"]);
        }
    }
}

/// `cross/deb amd64 --binary <cargo's binary> --revision N`: the packaging command of the
/// README with the binary of this build.
fn build(out: &Path, revision: u32) -> PathBuf {
    let text = ok(
        "env",
        &[
            "DEB_COMPRESS=gzip",
            "cross/deb",
            "amd64",
            "--binary",
            env!("CARGO_BIN_EXE_streamgate"),
            "--revision",
            &revision.to_string(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let deb = out.join(format!(
        "streamgate_{}-{revision}_amd64.deb",
        env!("CARGO_PKG_VERSION")
    ));
    assert!(deb.exists(), "cross/deb made {}: {text}", deb.display());
    deb
}

fn id(flag: &str, name: &str) -> u32 {
    ok("id", &[flag, name]).trim().parse().unwrap()
}

/// (mode bits, uid, gid) of a path.
fn owner_mode(path: &str) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    (m.mode() & 0o7777, m.uid(), m.gid())
}

/// The values of `Key=` lines of the installed unit, in order.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    unit.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(str::to_string)
        .collect()
}

/// Runs `line` (an Exec line of the unit) as the unit does: user and group streamgate with its
/// supplementary groups, the unit's working directory and Environment= lines.
fn as_service(unit: &str, line: &str) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid",
        "streamgate",
        "--regid",
        "streamgate",
        "--init-groups",
        "--",
    ]);
    cmd.args(line.split_whitespace());
    let dir = unit_values(unit, "WorkingDirectory");
    cmd.current_dir(dir.first().expect("WorkingDirectory="));
    for env in unit_values(unit, "Environment") {
        let (k, v) = env.split_once('=').expect("VAR=value");
        cmd.env(k, v);
    }
    cmd.env("NO_COLOR", "1");
    cmd
}

/// Runs the daemon with the unit's ExecStart until `n` payloads of `equipment` were printed,
/// stops it with SIGTERM (the unit's stop) and returns those payloads.
fn run_daemon(unit: &str, equipment: &str, n: usize) -> Vec<serde_json::Value> {
    let exec = unit_values(unit, "ExecStart");
    let gw_cmd = as_service(unit, &exec[0]);
    let mut gw = common::Gateway::spawn(gw_cmd);
    let needle = format!("\"equipmentId\":\"{equipment}\"");
    common::wait_until(
        &format!("{n} payloads of {equipment} from the installed daemon"),
        Duration::from_secs(30),
        || gw.stdout().iter().filter(|l| l.contains(&needle)).count() >= n,
    );
    gw.sigterm();
    let status = gw.wait_exit(Duration::from_secs(30));
    assert!(
        status.success(),
        "SIGTERM ends the service with 0: {status:?}\n{}",
        gw.log().join("\n")
    );
    let payloads: Vec<serde_json::Value> = gw
        .stdout()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    // Samples an earlier run read but had not printed yet come first (at-least-once).
    payloads
        .into_iter()
        .filter(|p| p["equipmentId"] == equipment)
        .collect()
}

fn seqs(payloads: &[serde_json::Value]) -> Vec<u64> {
    payloads
        .iter()
        .map(|p| {
            p["meta"]["sequenceNumber"]
                .as_u64()
                .expect("sequenceNumber")
        })
        .collect()
}

#[test]
fn deb_installs_runs_as_its_user_upgrades_keeping_the_queue_and_purges() {
    if !common::is_root() {
        common::skip("dpkg -i needs root (CI runs tests/run as root)");
        return;
    }
    if Path::new("/run/systemd/system").exists() {
        common::skip(
            "systemd runs on this machine: the postinst would start the real service; run this test in a container or VM without systemd",
        );
        return;
    }
    if installed()
        || [CONF, STATE, "/usr/bin/streamgate", UNIT]
            .iter()
            .any(|p| Path::new(p).exists())
    {
        common::skip("streamgate is installed on this machine: the test leaves it alone");
        return;
    }
    let created_user = !run("getent", &["passwd", "streamgate"]).status.success();
    let _cleanup = Cleanup { created_user };
    let tmp = tempfile::tempdir().unwrap();

    // Build, lint.
    let rev1 = build(tmp.path(), 1);
    let lint = run(
        "lintian",
        &[
            "--allow-root",
            "--pedantic",
            "--display-info",
            "--fail-on",
            "error,warning,info,pedantic",
            rev1.to_str().unwrap(),
        ],
    );
    let tags = String::from_utf8_lossy(&lint.stdout);
    assert!(
        lint.status.success() && tags.lines().all(|l| l.starts_with("N:") || l.is_empty()),
        "lintian reports tags that cross/debian/lintian-overrides does not explain:\n{tags}{}",
        String::from_utf8_lossy(&lint.stderr)
    );

    // Install.
    ok("dpkg", &["-i", rev1.to_str().unwrap()]);
    assert!(installed());
    let (uid, gid) = (id("-u", "streamgate"), id("-g", "streamgate"));
    assert_eq!(owner_mode("/usr/bin/streamgate"), (0o755, 0, 0));
    assert_eq!(owner_mode(UNIT), (0o644, 0, 0));
    assert_eq!(owner_mode("/etc/streamgate"), (0o750, 0, gid));
    assert_eq!(
        owner_mode(CONF),
        (0o640, 0, gid),
        "the config may hold secrets"
    );
    assert_eq!(owner_mode(DEFAULTS), (0o640, 0, gid), "the secrets file");
    assert_eq!(
        owner_mode(STATE),
        (0o750, uid, gid),
        "the queue's directory"
    );
    let groups = ok("id", &["-nG", "streamgate"]);
    assert!(
        groups.split_whitespace().any(|g| g == "dialout"),
        "streamgate is in dialout for serial ports: {groups}"
    );
    assert_eq!(
        std::fs::read_link(WANTS).expect("the unit is enabled (deb-systemd-helper)"),
        Path::new(UNIT)
    );
    let conffiles = ok("dpkg-query", &["-W", "-f=${Conffiles}", "streamgate"]);
    assert!(
        conffiles.contains(CONF) && conffiles.contains(DEFAULTS),
        "{conffiles}"
    );
    for doc in [
        "/usr/share/man/man1/streamgate.1.gz",
        "/usr/share/doc/streamgate/copyright",
        "/usr/share/doc/streamgate/README.md",
        "/usr/share/doc/streamgate/changelog.Debian.gz",
    ] {
        assert!(Path::new(doc).exists(), "{doc}");
    }
    let unit = std::fs::read_to_string(UNIT).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/streamgate run"), "{unit}");

    // The installed config validates, as root and as the unit's ExecStartPre (the service user,
    // --strict-permissions).
    ok("/usr/bin/streamgate", &["validate", "--config", CONF]);
    for pre in unit_values(&unit, "ExecStartPre") {
        let out = as_service(&unit, &pre).output().unwrap();
        assert!(
            out.status.success(),
            "{pre}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The daemon as the service runs it: the starter config's simulator, to stdout.
    let first = run_daemon(&unit, "line1-gateway", 3);
    assert!(
        first.iter().all(|p| p["meta"]["sourceId"] == "demo_line"),
        "{first:?}"
    );
    let last_before = *seqs(&first).iter().max().unwrap();
    let db_inode = std::fs::metadata(Path::new(STATE).join("queue.db"))
        .expect("the queue in /var/lib/streamgate")
        .ino();

    // `status` without --config reads the package's config: as root it shows the stream ...
    let status = ok("/usr/bin/streamgate", &["status"]);
    assert!(
        status.contains("line") && status.contains("journal"),
        "{status}"
    );
    // ... and a user outside group streamgate is told what to do, not shown the demo's queue.
    let denied = Command::new("setpriv")
        .args([
            "--reuid",
            "nobody",
            "--regid",
            "nogroup",
            "--clear-groups",
            "--",
        ])
        .args(["/usr/bin/streamgate", "status"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&denied.stderr).to_lowercase();
    assert_eq!(denied.status.code(), Some(78), "{said}");
    assert!(
        said.contains("permission denied") && said.contains("sudo"),
        "{said}"
    );

    // The admin edits the config; an upgrade keeps the edit and the queue.
    let edited = std::fs::read_to_string(CONF)
        .unwrap()
        .replace("\"line1-gateway\"", "\"upgraded-line\"");
    std::fs::write(CONF, edited).unwrap();
    let rev2 = build(tmp.path(), 2);
    ok("dpkg", &["-i", rev2.to_str().unwrap()]);
    let version = ok("dpkg-query", &["-W", "-f=${Version}", "streamgate"]);
    assert_eq!(version, format!("{}-2", env!("CARGO_PKG_VERSION")));
    assert!(
        std::fs::read_to_string(CONF)
            .unwrap()
            .contains("upgraded-line")
    );
    assert_eq!(
        owner_mode(CONF),
        (0o640, 0, gid),
        "the mode survives the upgrade"
    );
    assert_eq!(
        std::fs::metadata(Path::new(STATE).join("queue.db"))
            .unwrap()
            .ino(),
        db_inode,
        "the queue database is the same file"
    );
    let second = run_daemon(&unit, "upgraded-line", 3);
    let first_after = *seqs(&second).iter().min().unwrap();
    assert!(
        first_after > last_before,
        "sequence numbers go on after the upgrade ({last_before} then {first_after}): the queue's state was kept"
    );

    // Remove keeps the queue and the config, and says so; purge deletes them, and says so.
    let removed = ok("dpkg", &["--remove", "streamgate"]);
    assert!(!Path::new("/usr/bin/streamgate").exists());
    assert!(Path::new(STATE).join("queue.db").exists(), "{removed}");
    assert!(Path::new(CONF).exists());
    assert!(removed.contains("kept /var/lib/streamgate"), "{removed}");
    let purged = ok("dpkg", &["--purge", "streamgate"]);
    assert!(
        purged.contains("deleting /var/lib/streamgate"),
        "purge says what it deletes: {purged}"
    );
    for gone in [STATE, "/etc/streamgate", DEFAULTS, WANTS] {
        assert!(
            std::fs::symlink_metadata(gone).is_err(),
            "{gone} is gone after purge"
        );
    }
    let overrides = ok("dpkg-statoverride", &["--list"]);
    assert!(!overrides.contains("streamgate"), "{overrides}");
}
