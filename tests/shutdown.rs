//! A graceful stop delivers: on SIGTERM the readers' last samples (`Lst`) are committed and the
//! exports deliver what is queued before the process exits, so a decommissioned gateway leaves
//! nothing behind. An export whose destination fails is not waited for.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Gateway;

const TAGS: [&str; 3] = ["a", "b", "c"];

fn config(dir: &Path, exports: &str) -> String {
    let tags: String = TAGS
        .iter()
        .map(|t| format!("[[sources.tags]]\nname = \"{t}\"\n"))
        .collect();
    format!(
        r#"
[gateway]
data_dir = "{dir}/data"
equipment_id = "stop"
shutdown_timeout = "20s"
{exports}
[[sources]]
kind = "simulator"
id = "sim"
interval = "10ms"

{tags}"#,
        dir = common::toml_path(dir)
    )
}

fn backlog(cfg: &Path) -> Vec<(String, i64)> {
    let out = Command::new(env!("CARGO_BIN_EXE_streamgate"))
        .args(["status", "--json", "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    let mut v = Vec::new();
    for s in report["streams"].as_array().unwrap() {
        for e in s["exports"].as_array().unwrap() {
            v.push((
                format!(
                    "{}/{}",
                    s["name"].as_str().unwrap(),
                    e["name"].as_str().unwrap()
                ),
                e["backlog"].as_i64().unwrap(),
            ));
        }
    }
    v
}

fn stop(gw: &mut Gateway) -> Duration {
    let t = Instant::now();
    gw.sigterm();
    let exit = gw.wait_exit(Duration::from_secs(60));
    assert_eq!(exit.code(), Some(0), "clean stop:\n{}", gw.log().join("\n"));
    t.elapsed()
}

#[test]
fn sigterm_delivers_the_last_samples_before_exit() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // A long batch interval: at the stop, the export still holds back what it read last.
    let exports = format!(
        "[[streams]]\nname = \"line\"\n\n[[streams.exports]]\nname = \"file\"\nkind = \"file\"\npath = \"{}\"\nbatch_interval = \"2s\"\n",
        common::toml_path(&out)
    );
    let cfg = dir.path().join("gw.toml");
    std::fs::write(&cfg, config(dir.path(), &exports)).unwrap();
    let mut gw = Gateway::start(&cfg, "info");
    assert!(gw.wait_for("streamgate running", 1, Duration::from_secs(30)));
    // Samples flow; some were exported already.
    let start = Instant::now();
    while common::exported_json(&out).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "nothing exported"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stop(&mut gw);
    let records = common::exported_json(&out);
    for tag in TAGS {
        let last = records
            .iter()
            .filter(|r| r["tag"] == tag)
            .max_by_key(|r| r["meta"]["sequenceNumber"].as_u64())
            .unwrap_or_else(|| panic!("no sample of {tag}"));
        let flags: Vec<&str> = last["meta"]["flags"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f.as_str())
            .collect();
        assert!(
            flags.contains(&"Lst"),
            "the last sample of {tag} reached the export before exit: {last}"
        );
    }
    assert_eq!(
        backlog(&cfg),
        [("line/file".to_string(), 0)],
        "nothing left in the queue"
    );
}

#[test]
fn a_failing_export_is_not_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    // A file export whose directory cannot be created: every send fails.
    let exports = "[[streams]]\nname = \"line\"\n\n[[streams.exports]]\nname = \"broken\"\nkind = \"file\"\npath = \"/proc/streamgate-cannot-write-here\"\n";
    let cfg = dir.path().join("gw.toml");
    std::fs::write(&cfg, config(dir.path(), exports)).unwrap();
    let mut gw = Gateway::start(&cfg, "info");
    gw.wait_running();
    // The export is failing: its first send failed (one WARN line) and records are queued.
    assert!(
        gw.wait_for("export failing", 1, Duration::from_secs(30)),
        "{}",
        gw.log().join("\n")
    );
    common::wait_until("records queued", Duration::from_secs(30), || {
        backlog(&cfg).iter().any(|(_, n)| *n > 0)
    });
    let took = stop(&mut gw);
    assert!(
        gw.count("not waiting for failing exports at shutdown") == 1,
        "{}",
        gw.log().join("\n")
    );
    assert!(
        took < Duration::from_secs(15),
        "stopped without waiting for shutdown_timeout (20 s): {took:?}"
    );
    assert!(
        backlog(&cfg).iter().all(|(_, n)| *n > 0),
        "the failing export's records stay queued"
    );
}
