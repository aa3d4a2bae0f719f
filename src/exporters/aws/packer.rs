//! Samples -> service records -> calls, without I/O.
//!
//! A driver batch holds queue records (one sample each). [`plan`] turns it into the calls to
//! make: each call is a list of [`PackedRecord`]s within the service's per-call limits (count,
//! bytes with partition keys counted), each record within the per-record limit, and each record
//! remembers the batch indexes of ALL the samples in it, so one record's outcome can be given to
//! every sample it carries. Samples that can never fit are returned as rejected.
//!
//! Packing (off by default) puts many samples into one record as newline-delimited JSON, each
//! line newline-terminated, optionally gzip- or zstd-compressed; [`unpack`] reverses it (gzip
//! and zstd are told apart by their magic bytes, plain NDJSON starts with `{`).

use std::io::{Read, Write};

/// The key template the planner takes (its home is the exports' template module).
pub use crate::exporters::template::KeyTemplate;

/// How packed records are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Limits and settings the planner works to (from the config and the service's constants).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackLimits {
    pub packing: bool,
    /// Uncompressed bytes of NDJSON per packed record.
    pub pack_record_size: usize,
    pub compression: Compression,
    /// Per record: data + partition key.
    pub max_record_bytes: usize,
    pub max_records_per_call: usize,
    /// Per call: data + partition keys.
    pub max_bytes_per_call: usize,
    /// Firehose: every record ends with a newline so its S3 objects are NDJSON.
    pub newline_terminated: bool,
    pub max_key_chars: usize,
}

/// One record of a call, with the batch indexes of the samples it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedRecord {
    pub data: Vec<u8>,
    pub key: Option<String>,
    pub samples: Vec<usize>,
}

impl PackedRecord {
    /// Bytes the service counts against its limits.
    pub fn size(&self) -> usize {
        self.data.len() + self.key.as_ref().map_or(0, |k| k.len())
    }
}

/// What to send for one batch.
#[derive(Debug, Default)]
pub struct Plan {
    pub calls: Vec<Vec<PackedRecord>>,
    /// Samples no record can hold: (batch index, reason).
    pub rejected: Vec<(usize, String)>,
}

impl Plan {
    pub fn records(&self) -> usize {
        self.calls.iter().map(|c| c.len()).sum()
    }
}

/// Plans the calls for `payloads` (one sample each). `random_key` makes a random partition key.
pub fn plan(
    payloads: &[&[u8]],
    limits: &PackLimits,
    key: &KeyTemplate,
    random_key: &mut dyn FnMut() -> String,
) -> Plan {
    let mut plan = Plan::default();
    let mut records = Vec::new();
    if limits.packing {
        // Group by key (in order of first appearance) so a record holds one key's samples.
        let mut groups: Vec<(Option<String>, Vec<usize>)> = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            let k = key.render(p, limits.max_key_chars);
            match groups.iter_mut().find(|(gk, _)| *gk == k) {
                Some((_, g)) => g.push(i),
                None => groups.push((k, vec![i])),
            }
        }
        for (k, members) in groups {
            let mut current: Vec<usize> = Vec::new();
            let mut len = 0;
            for i in members {
                let n = payloads[i].len() + 1;
                if !current.is_empty() && len + n > limits.pack_record_size {
                    pack_into(
                        payloads,
                        std::mem::take(&mut current),
                        &k,
                        limits,
                        key,
                        random_key,
                        &mut records,
                        &mut plan.rejected,
                    );
                    len = 0;
                }
                current.push(i);
                len += n;
            }
            if !current.is_empty() {
                pack_into(
                    payloads,
                    current,
                    &k,
                    limits,
                    key,
                    random_key,
                    &mut records,
                    &mut plan.rejected,
                );
            }
        }
    } else {
        for (i, p) in payloads.iter().enumerate() {
            let mut data = Vec::with_capacity(p.len() + 1);
            data.extend_from_slice(p);
            if limits.newline_terminated {
                data.push(b'\n');
            }
            let k = record_key(key.render(p, limits.max_key_chars), key, random_key);
            let record = PackedRecord {
                data,
                key: k,
                samples: vec![i],
            };
            if record.size() > limits.max_record_bytes {
                plan.rejected.push((i, too_large(record.size(), limits)));
            } else {
                records.push(record);
            }
        }
    }
    // Cut the records into calls.
    let mut call: Vec<PackedRecord> = Vec::new();
    let mut bytes = 0;
    for r in records {
        if !call.is_empty()
            && (call.len() >= limits.max_records_per_call
                || bytes + r.size() > limits.max_bytes_per_call)
        {
            plan.calls.push(std::mem::take(&mut call));
            bytes = 0;
        }
        bytes += r.size();
        call.push(r);
    }
    if !call.is_empty() {
        plan.calls.push(call);
    }
    plan
}

fn record_key(
    rendered: Option<String>,
    key: &KeyTemplate,
    random_key: &mut dyn FnMut() -> String,
) -> Option<String> {
    match key {
        KeyTemplate::None => None,
        _ => Some(rendered.unwrap_or_else(random_key)),
    }
}

fn too_large(size: usize, limits: &PackLimits) -> String {
    format!(
        "record of {size} bytes is above the service's limit of {} bytes per record",
        limits.max_record_bytes
    )
}

/// Packs `members` into one record; splits it in halves when it ends up above the record limit
/// (incompressible data), rejects a single sample that cannot fit.
#[allow(clippy::too_many_arguments)]
fn pack_into(
    payloads: &[&[u8]],
    members: Vec<usize>,
    k: &Option<String>,
    limits: &PackLimits,
    key: &KeyTemplate,
    random_key: &mut dyn FnMut() -> String,
    records: &mut Vec<PackedRecord>,
    rejected: &mut Vec<(usize, String)>,
) {
    let mut ndjson = Vec::with_capacity(members.iter().map(|&i| payloads[i].len() + 1).sum());
    for &i in &members {
        ndjson.extend_from_slice(payloads[i]);
        ndjson.push(b'\n');
    }
    let data = match compress(&ndjson, limits.compression) {
        Ok(d) => d,
        Err(e) => {
            // Compressing into memory does not fail; should it, the samples are not lost.
            for i in members {
                rejected.push((i, format!("cannot compress: {e}")));
            }
            return;
        }
    };
    let record = PackedRecord {
        data,
        key: record_key(k.clone(), key, random_key),
        samples: members,
    };
    if record.size() <= limits.max_record_bytes {
        records.push(record);
    } else if record.samples.len() > 1 {
        let mut first = record.samples;
        let second = first.split_off(first.len() / 2);
        pack_into(
            payloads, first, k, limits, key, random_key, records, rejected,
        );
        pack_into(
            payloads, second, k, limits, key, random_key, records, rejected,
        );
    } else {
        rejected.push((record.samples[0], too_large(record.size(), limits)));
    }
}

/// Compresses one packed record.
pub fn compress(data: &[u8], compression: Compression) -> std::io::Result<Vec<u8>> {
    match compression {
        Compression::None => Ok(data.to_vec()),
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(data.len() / 4),
                flate2::Compression::default(),
            );
            enc.write_all(data)?;
            enc.finish()
        }
        Compression::Zstd => zstd::bulk::compress(data, 3),
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The samples in one record's data (or a Firehose object: records concatenated), for
/// consumers and tests: decompresses gzip or zstd (told by their magic bytes), splits lines.
pub fn unpack(data: &[u8]) -> std::io::Result<Vec<Vec<u8>>> {
    let plain = if data.starts_with(&GZIP_MAGIC) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(data).read_to_end(&mut out)?;
        out
    } else if data.starts_with(&ZSTD_MAGIC) {
        zstd::stream::decode_all(data)?
    } else {
        data.to_vec()
    };
    Ok(plain
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| l.to_vec())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(i: usize, tag: &str) -> Vec<u8> {
        format!(
            r#"{{"version":1,"timestamp":{i},"equipmentId":"eq","tag":"{tag}","value":{i},"quality":"Ok","meta":{{"sequenceNumber":{i},"flags":[],"createdAt":{i},"sourceId":"src"}}}}"#
        )
        .into_bytes()
    }

    fn limits(packing: bool) -> PackLimits {
        PackLimits {
            packing,
            pack_record_size: 4096,
            compression: Compression::None,
            max_record_bytes: 1 << 20,
            max_records_per_call: 500,
            max_bytes_per_call: 5 << 20,
            newline_terminated: false,
            max_key_chars: 256,
        }
    }

    fn counter() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("r{n}")
        }
    }

    /// Every sample is in exactly one record or rejected, and each record's data is its samples.
    fn check_covers(payloads: &[Vec<u8>], plan: &Plan) {
        let mut seen = vec![0; payloads.len()];
        for call in &plan.calls {
            for r in call {
                let lines = unpack(&r.data).unwrap();
                assert_eq!(lines.len(), r.samples.len());
                for (line, &i) in lines.iter().zip(&r.samples) {
                    assert_eq!(line, &payloads[i]);
                    seen[i] += 1;
                }
            }
        }
        for (i, _) in &plan.rejected {
            seen[*i] += 1;
        }
        assert!(seen.iter().all(|&n| n == 1), "{seen:?}");
    }

    #[test]
    fn one_sample_per_record_without_packing() {
        let payloads: Vec<Vec<u8>> = (0..1200).map(|i| sample(i, "t")).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(|p| p.as_slice()).collect();
        let plan = plan(&refs, &limits(false), &KeyTemplate::Random, &mut counter());
        assert_eq!(
            plan.calls.iter().map(|c| c.len()).collect::<Vec<_>>(),
            [500, 500, 200]
        );
        assert_eq!(plan.calls[0][0].data, payloads[0]);
        // A random key per record.
        assert_eq!(plan.calls[0][0].key.as_deref(), Some("r1"));
        assert_eq!(plan.calls[0][1].key.as_deref(), Some("r2"));
        check_covers(&payloads, &plan);
    }

    #[test]
    fn firehose_records_are_newline_terminated_and_keyless() {
        let payloads: Vec<Vec<u8>> = (0..3).map(|i| sample(i, "t")).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(|p| p.as_slice()).collect();
        let mut l = limits(false);
        l.newline_terminated = true;
        let plan = plan(&refs, &l, &KeyTemplate::None, &mut counter());
        assert!(
            plan.calls[0]
                .iter()
                .all(|r| r.key.is_none() && r.data.ends_with(b"\n"))
        );
        check_covers(&payloads, &plan);
    }

    #[test]
    fn partition_keys_count_against_the_call_limit() {
        // 10 records of 100 bytes + a 100-byte key: 200 bytes each, 1000-byte calls -> 5 per call.
        let payloads: Vec<Vec<u8>> = (0..10).map(|_| vec![b'x'; 100]).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(|p| p.as_slice()).collect();
        let mut l = limits(false);
        l.max_bytes_per_call = 1000;
        let plan = plan(&refs, &l, &KeyTemplate::Random, &mut || "k".repeat(100));
        assert_eq!(plan.calls.len(), 2);
        assert_eq!(plan.calls[0].len(), 5);
        assert!(plan.calls[0].iter().map(|r| r.size()).sum::<usize>() <= 1000);
    }

    #[test]
    fn oversized_samples_are_rejected_alone() {
        let payloads = [vec![b'a'; 10], vec![b'b'; 2000], vec![b'c'; 10]];
        let refs: Vec<&[u8]> = payloads.iter().map(|p| p.as_slice()).collect();
        let mut l = limits(false);
        l.max_record_bytes = 1000;
        let plan = plan(&refs, &l, &KeyTemplate::Random, &mut counter());
        assert_eq!(plan.records(), 2);
        assert_eq!(plan.rejected.len(), 1);
        assert_eq!(plan.rejected[0].0, 1);
        assert!(plan.rejected[0].1.contains("above the service's limit"));
        check_covers(&payloads, &plan);

        let mut l = limits(true);
        l.max_record_bytes = 1000;
        let plan = super::plan(&refs, &l, &KeyTemplate::Random, &mut counter());
        assert_eq!(plan.rejected.iter().map(|r| r.0).collect::<Vec<_>>(), [1]);
        check_covers(&payloads, &plan);
    }

    #[test]
    fn packing_fills_records_up_to_the_configured_size() {
        let payloads: Vec<Vec<u8>> = (0..1000).map(|i| sample(i, "t")).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(|p| p.as_slice()).collect();
        let plan = plan(&refs, &limits(true), &KeyTemplate::Random, &mut counter());
        let records = &plan.calls[0];
        assert!(records.len() > 10);
        for (r, next) in records.iter().zip(records.iter().skip(1)) {
            assert!(r.data.len() <= 4096);
            assert!(r.data.ends_with(b"\n"));
            // Greedy: the next record's first sample would not have fitted.
            assert!(r.data.len() + payloads[next.samples[0]].len() + 1 > 4096);
        }
        check_covers(&payloads, &plan);
    }

    #[test]
    fn packing_keeps_one_key_per_record_and_order_per_key() {
        let payloads: Vec<Vec<u8>> = (0..300)
            .map(|i| sample(i, ["a", "b", "c"][i % 3]))
            .collect();
        let refs: Vec<&[u8]> = payloads.iter().map(|p| p.as_slice()).collect();
        let key = KeyTemplate::parse("{equipmentId}/{tag}").unwrap();
        let plan = plan(&refs, &limits(true), &key, &mut counter());
        for r in plan.calls.iter().flatten() {
            let k = r.key.as_deref().unwrap();
            assert!(["eq/a", "eq/b", "eq/c"].contains(&k), "{k}");
            assert!(r.samples.windows(2).all(|w| w[0] < w[1]));
            for &i in &r.samples {
                assert_eq!(format!("eq/{}", ["a", "b", "c"][i % 3]), k);
            }
        }
        check_covers(&payloads, &plan);
    }

    #[test]
    fn compressed_records_unpack_to_the_samples() {
        let payloads: Vec<Vec<u8>> = (0..2000).map(|i| sample(i, "t")).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(|p| p.as_slice()).collect();
        for c in [Compression::Gzip, Compression::Zstd] {
            let mut l = limits(true);
            l.compression = c;
            l.pack_record_size = 64 << 10;
            let plan = plan(&refs, &l, &KeyTemplate::Random, &mut counter());
            let raw: usize = payloads.iter().map(|p| p.len() + 1).sum();
            let sent: usize = plan.calls.iter().flatten().map(|r| r.data.len()).sum();
            assert!(sent * 4 < raw, "{c:?}: {sent} of {raw}");
            check_covers(&payloads, &plan);
        }
    }

    #[test]
    fn incompressible_records_are_split_to_fit() {
        // Pseudo-random bytes do not compress; a record that grows past the limit is halved.
        let mut x: u32 = 1;
        let payloads: Vec<Vec<u8>> = (0..8)
            .map(|_| {
                (0..300)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        match x as u8 {
                            b'\n' => b'x',
                            b => b,
                        }
                    })
                    .collect()
            })
            .collect();
        let refs: Vec<&[u8]> = payloads.iter().map(|p| p.as_slice()).collect();
        let mut l = limits(true);
        l.compression = Compression::Gzip;
        l.pack_record_size = 2408;
        l.max_record_bytes = 2410;
        let plan = plan(&refs, &l, &KeyTemplate::None, &mut counter());
        assert!(plan.records() >= 2);
        assert!(plan.calls.iter().flatten().all(|r| r.size() <= 2410));
        check_covers(&payloads, &plan);
    }

    #[test]
    fn key_templates() {
        let p = sample(1, "water_temperature");
        let t = KeyTemplate::parse("{equipmentId}/{tag}").unwrap();
        assert_eq!(t.render(&p, 256).as_deref(), Some("eq/water_temperature"));
        let t = KeyTemplate::parse("line1-{sourceId}").unwrap();
        assert_eq!(t.render(&p, 256).as_deref(), Some("line1-src"));
        assert_eq!(t.render(&p, 4).as_deref(), Some("line"));
        assert_eq!(
            KeyTemplate::parse("{nope}/{quality}").unwrap_err(),
            [
                "unknown placeholder {nope}; use {equipmentId}, {tag}, {sourceId}",
                "unknown placeholder {quality}; use {equipmentId}, {tag}, {sourceId}"
            ]
        );
        assert!(KeyTemplate::parse("fixed").unwrap_err()[0].contains("one shard"));
        assert!(KeyTemplate::parse("{tag").is_err());
        assert!(KeyTemplate::parse("tag}").is_err());
        assert_eq!(KeyTemplate::Random.render(&p, 256), None);
    }
}
