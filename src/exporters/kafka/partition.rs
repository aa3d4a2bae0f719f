//! Which partition a record goes to, the way Apache Kafka's own producer decides it, so that a
//! key lands where a Java, librdkafka or kafka-python producer would put it: keyed records on
//! `toPositive(murmur2(key)) % partitions`; records without a key on one partition per topic and
//! send (sticky), chosen at random. Pure, unit-tested; also the topic name rules.

/// Kafka's murmur2 (the 32-bit MurmurHash2 with Kafka's seed), as its default partitioner uses.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        if rest.len() >= 3 {
            h ^= (rest[2] as u32) << 16;
        }
        if rest.len() >= 2 {
            h ^= (rest[1] as u32) << 8;
        }
        h ^= rest[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of a keyed record among `partitions` (> 0).
pub fn for_key(key: &[u8], partitions: usize) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) as usize % partitions) as i32
}

/// Whether `c` may appear in a Kafka topic name.
fn topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// A topic name as the broker accepts it: 1..=249 characters of `[a-zA-Z0-9._-]`, not "." or "..".
pub fn valid_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(format!("\"{name}\" is not a topic name"));
    }
    if name.chars().count() > super::config::MAX_TOPIC_CHARS {
        return Err(format!(
            "topic \"{name}\" is longer than Kafka's {} characters",
            super::config::MAX_TOPIC_CHARS
        ));
    }
    match name.chars().find(|c| !topic_char(*c)) {
        Some(c) => Err(format!(
            "topic \"{name}\" has '{c}': Kafka topic names are letters, digits, '.', '_' and '-'"
        )),
        None => Ok(()),
    }
}

/// The fixed text of a topic template (placeholders removed): its characters must be valid,
/// and without placeholders it must be a whole valid name.
pub fn valid_topic_literal(literal: &str, has_placeholders: bool) -> Result<(), String> {
    if !has_placeholders {
        return valid_topic_name(literal);
    }
    match literal.chars().find(|c| !topic_char(*c)) {
        Some(c) => Err(format!(
            "has '{c}': Kafka topic names are letters, digits, '.', '_' and '-' (fields filled in are checked per record)"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values Apache Kafka's own tests pin for its murmur2 (clients' UtilsTest); kafka-python
    /// agrees (tests/kafka.rs checks the partitions a consumer sees).
    #[test]
    fn murmur2_matches_kafka() {
        for (data, expected) in [
            (&b"21"[..], -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ] {
            assert_eq!(murmur2(data), expected, "{}", String::from_utf8_lossy(data));
        }
    }

    #[test]
    fn keyed_partition_is_stable_and_in_range() {
        for n in [1, 3, 7, 100] {
            let p = for_key(b"line1/temperature", n);
            assert!((0..n as i32).contains(&p));
            assert_eq!(p, for_key(b"line1/temperature", n));
        }
        assert_eq!(for_key(b"anything", 1), 0);
    }

    #[test]
    fn topic_names() {
        assert!(valid_topic_name("line-1.samples_v2").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "ä"] {
            assert!(valid_topic_name(bad).is_err(), "{bad:?}");
        }
        assert!(valid_topic_name(&"x".repeat(250)).is_err());
        assert!(valid_topic_literal("line-", true).is_ok());
        assert!(valid_topic_literal("lines/", true).is_err());
        assert!(valid_topic_literal("", false).is_err());
    }
}
