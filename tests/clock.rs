//! Clock sanity: once a cloud endpoint shows the gateway clock is far off, samples carry `Ats`
//! and the health endpoint says so; when the clock is right again, they do not. The verdict is
//! one `Clock` the app hands to readers, exporters and the metrics (no process-wide state).

use std::sync::Arc;

use streamgate::clock::{Clock, Verdict};
use streamgate::payload::{Flags, Quality, Value, decode};
use streamgate::queue::Appender;
use streamgate::readers::{Sample, SourceContext, SourceStats};

async fn one_sample_flags(clock: &Clock) -> Flags {
    let (appender, mut rx) = Appender::detached(4);
    let mut ctx = SourceContext::new(
        0,
        "src",
        "eq",
        0,
        vec![("t".to_string(), None)],
        1,
        None,
        appender,
        Arc::new(SourceStats::default()),
    )
    .with_clock(clock.clone());
    ctx.push(Sample {
        tag: 0,
        value: Value::Int(1),
        quality: Quality::Ok,
        timestamp_ms: streamgate::time::now_ms(),
        flags: Flags::empty(),
    });
    ctx.flush().await.unwrap();
    let batch = rx.recv().await.unwrap();
    decode(&batch.records[0].payload).unwrap().meta.flags
}

#[tokio::test]
async fn samples_carry_ats_while_the_clock_is_known_wrong() {
    let clock = Clock::default();
    assert_eq!(
        clock.check(),
        Verdict::Plausible,
        "this machine's clock is fine"
    );
    assert_eq!(one_sample_flags(&clock).await, Flags::FST);

    // Kinesis answers with a Date one hour behind ours: our clock is an hour ahead.
    clock.report_peer_time("Kinesis", streamgate::time::now_ms() - 3_600_000);
    assert!(clock.known_wrong());
    let verdict = clock.last_verdict().unwrap();
    assert!(
        verdict.to_string().contains("s ahead against Kinesis"),
        "{verdict}"
    );
    assert_eq!(one_sample_flags(&clock).await, Flags::FST | Flags::ATS);
    // Another clock (another gateway in this process) is not affected.
    assert!(!Clock::default().known_wrong());
    let registry = streamgate::metrics::Registry::default();
    registry.publish(streamgate::metrics::Published {
        clock: Some(clock.clone()),
        ..Default::default()
    });
    let snapshot = registry.snapshot().await;
    let (ok, body) =
        streamgate::metrics::render::health(&snapshot, std::time::Duration::from_secs(60));
    assert!(!ok && body.contains("the gateway clock is wrong"), "{body}");
    assert!(
        streamgate::metrics::render::prometheus(&snapshot).contains("streamgate_clock_suspect 1")
    );

    // The endpoint agrees with us again (NTP fixed it).
    clock.report_peer_time("Kinesis", streamgate::time::now_ms());
    assert!(!clock.known_wrong());
    assert_eq!(one_sample_flags(&clock).await, Flags::FST);
}
