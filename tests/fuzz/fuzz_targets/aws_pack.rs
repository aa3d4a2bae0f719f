//! The Kinesis/Firehose packer: arbitrary JSON samples and limits in, calls out. Checked: each
//! sample is in exactly one record or rejected; records and calls keep the service limits;
//! unpacking a record (gzip, zstd or plain NDJSON) gives back exactly its samples, in order.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use streamgate::fuzzing::packer::{self, Compression, KeyTemplate, PackLimits};

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    key: &'a str,
    key_kind: u8,
    packing: bool,
    compression: u8,
    pack_record_size: u16,
    max_record_bytes: u16,
    max_records_per_call: u8,
    extra_call_bytes: u16,
    newline_terminated: bool,
    max_key_chars: u8,
    samples: Vec<(&'a str, &'a str, u32)>,
}

fn json(eq: &str, tag: &str, filler: u32) -> Vec<u8> {
    let s = |t: &str| serde_json::to_string(t).unwrap_or_default();
    // Repetitive filler so compression has something to do, capped to keep runs fast.
    let pad = "x".repeat((filler % 4096) as usize);
    format!(
        r#"{{"version":1,"timestamp":1,"equipmentId":{},"tag":{},"value":"{pad}","quality":"Ok","meta":{{"sequenceNumber":{filler},"flags":[],"createdAt":2,"sourceId":"s"}}}}"#,
        s(eq),
        s(tag),
    )
    .into_bytes()
}

fuzz_target!(|input: Input| {
    let key = match input.key_kind % 3 {
        0 => KeyTemplate::None,
        1 => KeyTemplate::Random,
        _ => match KeyTemplate::parse(input.key) {
            Ok(k) => k,
            Err(reason) => {
                assert!(!reason.is_empty());
                return;
            }
        },
    };
    let compression = match input.compression % 3 {
        0 => Compression::None,
        1 => Compression::Gzip,
        _ => Compression::Zstd,
    };
    let max_record_bytes = usize::from(input.max_record_bytes).max(64);
    let limits = PackLimits {
        packing: input.packing,
        pack_record_size: usize::from(input.pack_record_size).max(1),
        compression,
        max_record_bytes,
        max_records_per_call: usize::from(input.max_records_per_call).max(1),
        max_bytes_per_call: max_record_bytes + usize::from(input.extra_call_bytes),
        newline_terminated: input.newline_terminated,
        max_key_chars: usize::from(input.max_key_chars).max(1),
    };
    let owned: Vec<Vec<u8>> = input
        .samples
        .iter()
        .take(300)
        .map(|(e, t, f)| json(e, t, *f))
        .collect();
    let payloads: Vec<&[u8]> = owned.iter().map(|p| p.as_slice()).collect();
    let mut n = 0u32;
    let mut random_key = || {
        n += 1;
        format!("r{n}")
    };
    let plan = packer::plan(&payloads, &limits, &key, &mut random_key);

    let mut seen = vec![0u32; payloads.len()];
    for call in &plan.calls {
        assert!(!call.is_empty());
        assert!(call.len() <= limits.max_records_per_call);
        let bytes: usize = call.iter().map(|r| r.size()).sum();
        assert!(
            bytes <= limits.max_bytes_per_call,
            "{bytes} bytes in one call"
        );
        for r in call {
            assert!(r.size() <= limits.max_record_bytes);
            match (&key, &r.key) {
                (KeyTemplate::None, None) => {}
                (KeyTemplate::None, Some(k)) => panic!("Firehose record with key {k}"),
                (_, Some(k)) => {
                    assert!(!k.is_empty());
                    assert!(k.chars().count() <= limits.max_key_chars.max(4));
                }
                (_, None) => panic!("Kinesis record without partition key"),
            }
            let lines = packer::unpack(&r.data).expect("our own records unpack");
            let want: Vec<&[u8]> = r.samples.iter().map(|&i| payloads[i]).collect();
            assert_eq!(lines, want, "record does not unpack to its samples");
            if !limits.packing {
                assert_eq!(r.samples.len(), 1);
            }
            for &i in &r.samples {
                seen[i] += 1;
            }
        }
    }
    for (i, reason) in &plan.rejected {
        assert!(!reason.is_empty());
        seen[*i] += 1;
    }
    assert!(seen.iter().all(|&n| n == 1), "each sample once: {seen:?}");
});
