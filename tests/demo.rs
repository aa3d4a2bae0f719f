//! The first set-up command: `streamgate run` with no config runs the built-in demo, prints
//! payloads on stdout, and stops cleanly on SIGTERM.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::Gateway;

#[test]
fn the_built_in_demo_prints_samples_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Gateway::command();
    cmd.arg("run").current_dir(dir.path());
    let mut gw = Gateway::spawn(cmd);
    let tags = || -> HashSet<String> {
        gw.stdout()
            .iter()
            .map(|line| {
                let p = streamgate::payload::decode(line.as_bytes())
                    .expect("each stdout line is a payload");
                assert_eq!(p.version, 1);
                assert_eq!(p.meta.source_id, "filling_machine");
                p.tag
            })
            .collect()
    };
    common::wait_until(
        "samples of two tags on stdout",
        Duration::from_secs(30),
        || tags().len() >= 2,
    );
    let tags = tags();
    assert!(
        tags.contains("water_temperature") && tags.contains("filler_state"),
        "{tags:?}"
    );
    gw.sigterm();
    assert!(gw.wait_exit(Duration::from_secs(30)).success());
    assert!(
        dir.path()
            .join("target/streamgate-demo/data/queue.db")
            .exists()
    );
}
