//! Turns a batch of records into MQTT messages: one sample per message, or samples packed as
//! NDJSON (one message per topic, up to `max_payload` bytes). Records that can never be
//! published (too large, no topic) come back as rejections. Pure: no I/O.

use std::collections::HashMap;

use super::config::Packing;
use super::topic::{TopicTemplate, check_topic};
use crate::queue::Record;

/// One MQTT publish and the batch indexes of the records it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub records: Vec<u32>,
}

/// What packing made of a batch.
#[derive(Debug, Default)]
pub struct Packed {
    pub messages: Vec<Message>,
    /// `(batch index, reason)` of records that can never be published.
    pub rejected: Vec<(usize, String)>,
}

pub struct Packer<'a> {
    pub template: &'a TopicTemplate,
    pub packing: Packing,
    pub max_payload: usize,
    pub aws_iot: bool,
}

impl Packer<'_> {
    pub fn pack(&self, batch: &[Record]) -> Packed {
        let mut packed = Packed::default();
        let mut topic = String::new();
        // Topic -> index of the message still open for more samples (NDJSON only).
        let mut open: HashMap<String, usize> = HashMap::new();
        for (i, record) in batch.iter().enumerate() {
            if let Err(e) = self.template.render(&record.payload, &mut topic) {
                packed.rejected.push((i, format!("no topic: {e}")));
                continue;
            }
            if let Err(reason) = check_topic(&topic, self.aws_iot) {
                packed.rejected.push((i, reason.to_string()));
                continue;
            }
            let len = record.payload.len();
            if len > self.max_payload {
                packed.rejected.push((
                    i,
                    format!(
                        "payload of {len} bytes is above max_payload_size ({} bytes)",
                        self.max_payload
                    ),
                ));
                continue;
            }
            if self.packing == Packing::Ndjson
                && let Some(&m) = open.get(topic.as_str())
            {
                let msg = &mut packed.messages[m];
                if msg.payload.len() + 1 + len <= self.max_payload {
                    msg.payload.push(b'\n');
                    msg.payload.extend_from_slice(&record.payload);
                    msg.records.push(i as u32);
                    continue;
                }
            }
            if self.packing == Packing::Ndjson {
                open.insert(topic.clone(), packed.messages.len());
            }
            packed.messages.push(Message {
                topic: topic.clone(),
                payload: record.payload.clone(),
                records: vec![i as u32],
            });
        }
        packed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: i64, tag: &str, pad: usize) -> Record {
        let payload = format!(
            r#"{{"version":1,"timestamp":1,"equipmentId":"eq","tag":"{tag}","value":"{}","quality":"Ok","meta":{{"sequenceNumber":{id},"flags":[],"createdAt":2,"sourceId":"s"}}}}"#,
            "x".repeat(pad)
        );
        Record {
            id,
            at_ms: 0,
            payload: payload.into_bytes(),
        }
    }

    #[test]
    fn one_sample_per_message() {
        let t = TopicTemplate::parse("l/{tag}").unwrap();
        let p = Packer {
            template: &t,
            packing: Packing::Sample,
            max_payload: 1 << 20,
            aws_iot: false,
        };
        let batch = vec![rec(1, "a", 0), rec(2, "b", 0), rec(3, "a", 0)];
        let out = p.pack(&batch);
        assert!(out.rejected.is_empty());
        assert_eq!(out.messages.len(), 3);
        assert_eq!(out.messages[1].topic, "l/b");
        assert_eq!(out.messages[2].records, vec![2]);
        assert_eq!(out.messages[0].payload, batch[0].payload);
    }

    #[test]
    fn ndjson_packs_per_topic_up_to_the_size() {
        let t = TopicTemplate::parse("l/{tag}").unwrap();
        let one = rec(0, "a", 0).payload.len();
        let p = Packer {
            template: &t,
            packing: Packing::Ndjson,
            max_payload: 2 * one + 1,
            aws_iot: false,
        };
        let batch = vec![
            rec(1, "a", 0),
            rec(2, "b", 0),
            rec(3, "a", 0),
            rec(4, "a", 0),
            rec(5, "b", 0),
        ];
        let out = p.pack(&batch);
        assert!(out.rejected.is_empty());
        let shape: Vec<(&str, Vec<u32>)> = out
            .messages
            .iter()
            .map(|m| (m.topic.as_str(), m.records.clone()))
            .collect();
        assert_eq!(
            shape,
            vec![("l/a", vec![0, 2]), ("l/b", vec![1, 4]), ("l/a", vec![3])]
        );
        for m in &out.messages {
            assert!(m.payload.len() <= 2 * one + 1);
            let lines: Vec<&[u8]> = m.payload.split(|b| *b == b'\n').collect();
            assert_eq!(lines.len(), m.records.len());
            for (line, r) in lines.iter().zip(&m.records) {
                assert_eq!(*line, batch[*r as usize].payload.as_slice());
            }
        }
    }

    #[test]
    fn rejects_what_can_never_be_published() {
        let t = TopicTemplate::parse("a/b/c/d/e/f/g/{tag}").unwrap();
        let p = Packer {
            template: &t,
            packing: Packing::Sample,
            max_payload: 300,
            aws_iot: true,
        };
        let batch = vec![
            rec(1, "ok", 0),
            rec(2, "too/deep", 0),
            rec(3, "big", 400),
            rec(4, "wild+", 0),
            Record {
                id: 5,
                at_ms: 0,
                payload: b"not json".to_vec(),
            },
        ];
        let out = p.pack(&batch);
        assert_eq!(out.messages.len(), 1);
        let idx: Vec<usize> = out.rejected.iter().map(|r| r.0).collect();
        assert_eq!(idx, vec![1, 2, 3, 4]);
        assert!(out.rejected[0].1.contains("slashes"));
        assert!(out.rejected[1].1.contains("max_payload_size"));
        assert!(out.rejected[2].1.contains("wildcard"));
    }
}
