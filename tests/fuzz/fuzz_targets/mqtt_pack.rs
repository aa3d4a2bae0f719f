//! The MQTT export's packing: topic templates parsed from arbitrary text, batches of arbitrary
//! payloads packed one per message or as NDJSON. Checked for every batch: each record ends up
//! in exactly one message or is rejected, no message is above max_payload, a message's payload
//! is exactly its records' payloads joined by newlines (so unpacking gives back the input),
//! and every topic passes MQTT's (and with aws_iot, AWS IoT Core's) topic rules.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use streamgate::exporters::mqtt::config::Packing;
use streamgate::exporters::mqtt::pack::Packer;
use streamgate::exporters::mqtt::topic::{TopicTemplate, check_topic};
use streamgate::queue::Record;

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    template: &'a str,
    ndjson: bool,
    aws_iot: bool,
    max_payload: u16,
    /// Raw payloads, or JSON payloads built from (equipmentId, tag, sourceId).
    raw: Vec<&'a [u8]>,
    fields: Vec<(&'a str, &'a str, &'a str)>,
}

fn json(eq: &str, tag: &str, src: &str, seq: usize) -> Vec<u8> {
    let s = |t: &str| serde_json::to_string(t).unwrap_or_default();
    format!(
        r#"{{"version":1,"timestamp":1,"equipmentId":{},"tag":{},"value":1.5,"quality":"Ok","meta":{{"sequenceNumber":{seq},"flags":[],"createdAt":2,"sourceId":{}}}}}"#,
        s(eq),
        s(tag),
        s(src)
    )
    .into_bytes()
}

fuzz_target!(|input: Input| {
    let template = match TopicTemplate::parse(input.template) {
        Ok(t) => t,
        Err(problems) => {
            assert!(!problems.is_empty());
            return;
        }
    };
    let mut batch: Vec<Record> = input
        .raw
        .iter()
        .map(|p| p.to_vec())
        .chain(
            input
                .fields
                .iter()
                .enumerate()
                .map(|(i, (e, t, s))| json(e, t, s, i)),
        )
        .enumerate()
        .map(|(i, payload)| Record {
            id: i as i64,
            at_ms: 0,
            payload,
        })
        .collect();
    batch.truncate(600);
    let packer = Packer {
        template: &template,
        packing: if input.ndjson {
            Packing::Ndjson
        } else {
            Packing::Sample
        },
        max_payload: usize::from(input.max_payload).max(1),
        aws_iot: input.aws_iot,
    };
    let packed = packer.pack(&batch);
    let mut seen = vec![0u32; batch.len()];
    for m in &packed.messages {
        assert!(!m.records.is_empty());
        assert!(m.payload.len() <= packer.max_payload);
        check_topic(&m.topic, input.aws_iot).expect("a published topic passes the topic rules");
        if !input.ndjson {
            assert_eq!(m.records.len(), 1);
        }
        let joined: Vec<u8> = m
            .records
            .iter()
            .map(|&i| batch[i as usize].payload.as_slice())
            .collect::<Vec<_>>()
            .join(&b'\n');
        assert_eq!(m.payload, joined);
        for &i in &m.records {
            seen[i as usize] += 1;
        }
        // Records of one message keep their batch order.
        assert!(m.records.windows(2).all(|w| w[0] < w[1]));
    }
    for (i, reason) in &packed.rejected {
        assert!(!reason.is_empty());
        seen[*i] += 1;
    }
    assert!(seen.iter().all(|&n| n == 1), "each record once: {seen:?}");
});
