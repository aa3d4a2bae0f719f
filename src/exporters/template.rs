//! Templates over payload fields, one engine for every export: MQTT topics
//! (`lines/{sourceId}/{tag}`) and Kinesis partition keys (`{equipmentId}/{tag}`). Parsing
//! collects every problem; rendering reads the fields from the encoded payload without
//! decoding it ([`crate::payload::fields`]). What a destination allows on top (MQTT wildcards,
//! AWS IoT limits, key lengths) stays with that destination.

use crate::payload;

/// A payload field a template can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    SourceId,
    EquipmentId,
    Tag,
    Quality,
}

impl Field {
    /// Every field, with its placeholder name.
    pub const ALL: [(&'static str, Field); 4] = [
        ("sourceId", Field::SourceId),
        ("equipmentId", Field::EquipmentId),
        ("tag", Field::Tag),
        ("quality", Field::Quality),
    ];

    pub fn name(self) -> &'static str {
        Field::ALL
            .iter()
            .find(|(_, f)| *f == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(Field),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// Why a payload could not fill a template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the payload lacks a field the template needs (or is not JSON)")]
pub struct MissingFields;

impl Template {
    /// Parses `text` with placeholders from `allowed`; every problem is returned (unknown
    /// placeholder, unclosed or unmatched brace).
    pub fn parse(text: &str, allowed: &[Field]) -> Result<Template, Vec<String>> {
        match Template::parse_partial(text, allowed) {
            (t, problems) if problems.is_empty() => Ok(t),
            (_, problems) => Err(problems),
        }
    }

    /// Like [`Template::parse`], but also returns what could be parsed, so a destination can
    /// check the literal text of a template that has problems too (all errors in one run).
    pub fn parse_partial(text: &str, allowed: &[Field]) -> (Template, Vec<String>) {
        let mut parts = Vec::new();
        let mut problems = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find(['{', '}']) {
            if rest[open..].starts_with('}') {
                problems.push(format!("unmatched '}}' in \"{text}\""));
                rest = &rest[open + 1..];
                continue;
            }
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else {
                problems.push(format!("unclosed '{{' in \"{text}\""));
                rest = "";
                break;
            };
            let name = &after[..close];
            match Field::ALL
                .iter()
                .find(|(n, f)| *n == name && allowed.contains(f))
            {
                Some((_, f)) => parts.push(Part::Field(*f)),
                None => {
                    let known: Vec<String> = allowed
                        .iter()
                        .map(|f| format!("{{{}}}", f.name()))
                        .collect();
                    problems.push(format!(
                        "unknown placeholder {{{name}}}; use {}",
                        known.join(", ")
                    ));
                }
            }
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        (Template { parts }, problems)
    }

    /// A template without placeholders.
    pub fn fixed(text: &str) -> Template {
        Template {
            parts: vec![Part::Text(text.to_string())],
        }
    }

    /// The fixed text of the template, placeholders removed (for limit checks at validation).
    pub fn literal(&self) -> String {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Text(t) => Some(t.as_str()),
                Part::Field(_) => None,
            })
            .collect()
    }

    /// How many placeholders the template has.
    pub fn placeholders(&self) -> usize {
        self.parts
            .iter()
            .filter(|p| matches!(p, Part::Field(_)))
            .count()
    }

    /// True when the result is the same for every payload (no placeholders).
    pub fn is_fixed(&self) -> bool {
        self.placeholders() == 0
    }

    /// Renders the template for one encoded payload into `out` (cleared first). A fixed
    /// template does not look at the payload.
    pub fn render(&self, payload: &[u8], out: &mut String) -> Result<(), MissingFields> {
        out.clear();
        let fields = if self.is_fixed() {
            None
        } else {
            Some(payload::fields(payload).ok_or(MissingFields)?)
        };
        for p in &self.parts {
            match (p, &fields) {
                (Part::Text(t), _) => out.push_str(t),
                (Part::Field(f), Some(v)) => out.push_str(match f {
                    Field::SourceId => &v.source_id,
                    Field::EquipmentId => &v.equipment_id,
                    Field::Tag => &v.tag,
                    Field::Quality => &v.quality,
                }),
                (Part::Field(_), None) => {}
            }
        }
        Ok(())
    }
}

/// The partition key of a record (Kinesis; the message key of a Kafka record): one meaning
/// for every export that has `partition_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyTemplate {
    /// No key (Firehose; Kafka `partition_key = "none"`).
    None,
    /// A random key per record: spreads records evenly over shards.
    Random,
    /// Rendered from payload fields (the exports' one [`Template`] engine): keeps order per
    /// key, caps a key at one shard.
    Template(Template),
}

impl KeyTemplate {
    /// The fields a partition key may name.
    pub const FIELDS: [Field; 3] = [Field::EquipmentId, Field::Tag, Field::SourceId];

    /// Parses `"{equipmentId}/{tag}"`; fields: equipmentId, tag, sourceId. Every problem is
    /// returned.
    pub fn parse(text: &str) -> Result<KeyTemplate, Vec<String>> {
        let (template, mut problems) = Template::parse_partial(text, &Self::FIELDS);
        if problems.is_empty() && template.placeholders() == 0 {
            problems.push(format!(
                "\"{text}\" names no payload field: every record would get the same key and the stream would use one shard; use \"random\" or a template such as \"{{equipmentId}}\""
            ));
        }
        if text.chars().count() > 256 {
            problems.push("a partition key template is at most 256 characters".into());
        }
        if problems.is_empty() {
            Ok(KeyTemplate::Template(template))
        } else {
            Err(problems)
        }
    }

    /// The key of one sample, or `None` when it is random or absent (decided per record).
    pub fn render(&self, payload: &[u8], max_chars: usize) -> Option<String> {
        let KeyTemplate::Template(template) = self else {
            return None;
        };
        // A payload without the fields gets a random key rather than being held back.
        let mut key = String::new();
        template.render(payload, &mut key).ok()?;
        if key.is_empty() {
            key.push('-');
        }
        // Kinesis counts Unicode characters; a longer key is cut (still stable per key).
        if let Some((cut, _)) = key.char_indices().nth(max_chars) {
            key.truncate(cut);
        }
        Some(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = br#"{"version":1,"timestamp":1,"equipmentId":"eq-1","tag":"water_temperature","value":1.5,"quality":"Ok","meta":{"sequenceNumber":7,"flags":[],"createdAt":2,"sourceId":"filler"}}"#;

    const ALL: [Field; 4] = [
        Field::SourceId,
        Field::EquipmentId,
        Field::Tag,
        Field::Quality,
    ];

    #[test]
    fn renders_fields() {
        let t = Template::parse("lines/{sourceId}/{equipmentId}/{tag}/{quality}", &ALL).unwrap();
        let mut out = String::new();
        t.render(SAMPLE, &mut out).unwrap();
        assert_eq!(out, "lines/filler/eq-1/water_temperature/Ok");
        assert!(!t.is_fixed());
        assert_eq!(t.placeholders(), 4);
        assert_eq!(t.literal(), "lines////");
    }

    #[test]
    fn a_fixed_template_needs_no_payload() {
        let t = Template::parse("plant/line1", &ALL).unwrap();
        let mut out = String::from("old");
        t.render(b"not json", &mut out).unwrap();
        assert_eq!(out, "plant/line1");
        assert!(t.is_fixed());
    }

    #[test]
    fn collects_every_problem_and_names_the_allowed_fields() {
        let errs = Template::parse("a/{nope}/{tag", &ALL).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].contains("unknown placeholder {nope}"));
        assert!(errs[1].contains("unclosed"));
        assert!(Template::parse("a}b", &ALL).is_err());
        let errs = Template::parse("{quality}", &[Field::Tag]).unwrap_err();
        assert_eq!(errs, ["unknown placeholder {quality}; use {tag}"]);
    }

    #[test]
    fn a_payload_without_the_fields_is_an_error() {
        let t = Template::parse("x/{tag}", &ALL).unwrap();
        let mut out = String::new();
        assert_eq!(t.render(b"{}", &mut out), Err(MissingFields));
    }
}
