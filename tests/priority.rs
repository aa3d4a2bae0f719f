//! Priorities under the gateway-wide bandwidth limit, through the whole pipeline: with a
//! backlog in a priority-1 and a priority-10 stream, the priority-1 stream drains first, and
//! the priority-10 stream is not starved (it drains too, without new input).

mod common;

use std::time::Duration;

use streamgate::app::{Pipeline, StartOptions};

fn config(dir: &std::path::Path) -> String {
    format!(
        r#"
[gateway]
data_dir = "{dir}/data"
equipment_id = "prio-test"
max_export_bandwidth = "400KiB"
status_interval = "100ms"

[[streams]]
name = "high"
priority = 1

[[streams.exports]]
kind = "file"
path = "{dir}/out"
batch_size = 50

[[streams]]
name = "low"
priority = 10

[[streams.exports]]
kind = "file"
path = "{dir}/out"
batch_size = 50

[[sources]]
kind = "simulator"
id = "sim"
stream = "low"
interval = "0"

[[sources.tags]]
name = "critical_temp"
stream = "high"

[[sources.tags]]
name = "bulk_temp"
"#,
        dir = dir.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn high_priority_drains_first_and_low_priority_is_not_starved() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = streamgate::app::config::parse(&config(dir.path())).unwrap();
    // Fill both streams with the exports stopped.
    let mut p = Pipeline::start(
        &cfg,
        StartOptions {
            sources: true,
            exports: false,
        },
    )
    .unwrap();
    common::wait_until_async("6,000 samples", Duration::from_secs(30), async || {
        p.samples_read() >= 6_000
    })
    .await;
    p.stop_sources(Duration::from_secs(10)).await;
    let st = p.handle.status().await.unwrap();
    let (high_total, low_total) = (st[0].records, st[1].records);
    assert!(
        high_total >= 3_000 && low_total >= 3_000,
        "{high_total} / {low_total}"
    );

    p.start_exports();
    // Until the high stream is drained, the low one gets only what aging allows.
    let mut low_when_high_done = None;
    // Polled every 10 ms: notes what the low stream had when the high one was drained.
    common::poll_until_async(Duration::from_secs(60), async || {
        let st = p.handle.status().await.unwrap();
        if low_when_high_done.is_none() && st[0].exports[0].backlog == 0 {
            low_when_high_done = Some(st[1].exports[0].delivered);
        }
        st[1].exports[0].backlog == 0
    })
    .await;
    let low_then = low_when_high_done.expect("the high-priority stream drained");
    assert!(
        low_then * 3 < high_total,
        "while the high stream drained, the low one got {low_then} of {low_total} (high had {high_total})"
    );
    let st = p.handle.status().await.unwrap();
    assert_eq!(
        st[1].exports[0].backlog, 0,
        "the low-priority stream drained as well"
    );
    p.stop().await;
}
