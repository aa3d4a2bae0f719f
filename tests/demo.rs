//! The first set-up command: `streamgate run` with no config runs the built-in demo, prints
//! payloads on stdout, and stops cleanly on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

#[test]
fn the_built_in_demo_prints_samples_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_streamgate"))
        .arg("run")
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let mut tags = std::collections::HashSet::new();
    while tags.len() < 2 {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the demo prints samples");
        let p =
            streamgate::payload::decode(line.as_bytes()).expect("each stdout line is a payload");
        assert_eq!(p.version, 1);
        assert_eq!(p.meta.source_id, "filling_machine");
        tags.insert(p.tag);
    }
    assert!(
        tags.contains("water_temperature") && tags.contains("filler_state"),
        "{tags:?}"
    );
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert!(
        dir.path()
            .join("target/streamgate-demo/data/queue.db")
            .exists()
    );
}
