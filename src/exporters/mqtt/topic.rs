//! Topic templates (`lines/{sourceId}/{equipmentId}/{tag}`) and topic checks: MQTT's rules
//! (no wildcards, no NUL, at most 65,535 bytes) and, for AWS IoT Core, its own limits.

use std::borrow::Cow;

use serde::Deserialize;

/// AWS IoT Core: a topic name is at most 256 bytes of UTF-8.
pub const AWS_IOT_MAX_TOPIC_BYTES: usize = 256;
/// AWS IoT Core: at most 7 forward slashes (8 levels) in a topic name.
pub const AWS_IOT_MAX_TOPIC_SLASHES: usize = 7;
/// MQTT 3.1.1: a topic name is a UTF-8 string of at most 65,535 bytes.
pub const MQTT_MAX_TOPIC_BYTES: usize = 65_535;

/// A payload field a template can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    SourceId,
    EquipmentId,
    Tag,
    Quality,
}

impl Field {
    const ALL: [(&'static str, Field); 4] = [
        ("sourceId", Field::SourceId),
        ("equipmentId", Field::EquipmentId),
        ("tag", Field::Tag),
        ("quality", Field::Quality),
    ];
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(Field),
}

/// A parsed topic template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    parts: Vec<Part>,
}

/// The payload fields a template may use; everything else in the JSON is skipped.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Fields<'a> {
    #[serde(borrow)]
    equipment_id: Cow<'a, str>,
    #[serde(borrow)]
    tag: Cow<'a, str>,
    #[serde(borrow)]
    quality: Cow<'a, str>,
    #[serde(borrow)]
    meta: MetaFields<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetaFields<'a> {
    #[serde(borrow)]
    source_id: Cow<'a, str>,
}

impl TopicTemplate {
    /// Parses `text`; every problem is returned (unknown placeholder, wildcard, ...).
    pub fn parse(text: &str) -> Result<TopicTemplate, Vec<String>> {
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
            match Field::ALL.iter().find(|(n, _)| *n == name) {
                Some((_, f)) => parts.push(Part::Field(*f)),
                None => {
                    let known: Vec<String> =
                        Field::ALL.iter().map(|(n, _)| format!("{{{n}}}")).collect();
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
        if text.is_empty() {
            problems.push("must not be empty".to_string());
        }
        let literal: String = parts
            .iter()
            .filter_map(|p| match p {
                Part::Text(t) => Some(t.as_str()),
                Part::Field(_) => None,
            })
            .collect();
        if literal.contains(['+', '#']) {
            problems.push("must not contain the wildcards '+' or '#'".to_string());
        }
        if literal.contains('\0') {
            problems.push("must not contain NUL".to_string());
        }
        if problems.is_empty() {
            Ok(TopicTemplate { parts })
        } else {
            Err(problems)
        }
    }

    /// A template without placeholders (no checks: the caller knows `text` is valid).
    pub fn fixed(text: &str) -> TopicTemplate {
        TopicTemplate {
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

    /// True when the topic is the same for every sample (no placeholders).
    pub fn is_fixed(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// Renders the topic of one payload into `out` (cleared first).
    pub fn render(&self, payload: &[u8], out: &mut String) -> Result<(), String> {
        out.clear();
        if self.is_fixed() {
            for p in &self.parts {
                if let Part::Text(t) = p {
                    out.push_str(t);
                }
            }
            return Ok(());
        }
        let fields: Fields = serde_json::from_slice(payload)
            .map_err(|e| format!("payload has no field the topic template needs: {e}"))?;
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Field(Field::SourceId) => out.push_str(&fields.meta.source_id),
                Part::Field(Field::EquipmentId) => out.push_str(&fields.equipment_id),
                Part::Field(Field::Tag) => out.push_str(&fields.tag),
                Part::Field(Field::Quality) => out.push_str(&fields.quality),
            }
        }
        Ok(())
    }
}

/// Checks a rendered topic name against MQTT's rules and, with `aws_iot`, AWS IoT Core's.
pub fn check_topic(topic: &str, aws_iot: bool) -> Result<(), String> {
    if topic.is_empty() {
        return Err("topic is empty".to_string());
    }
    if topic.contains(['+', '#']) {
        return Err(format!(
            "topic \"{topic}\" contains an MQTT wildcard ('+' or '#')"
        ));
    }
    if topic.contains('\0') {
        return Err("topic contains NUL".to_string());
    }
    if topic.len() > MQTT_MAX_TOPIC_BYTES {
        return Err(format!(
            "topic is {} bytes, above MQTT's limit of {MQTT_MAX_TOPIC_BYTES}",
            topic.len()
        ));
    }
    if aws_iot {
        if topic.len() > AWS_IOT_MAX_TOPIC_BYTES {
            return Err(format!(
                "topic \"{topic}\" is {} bytes, above AWS IoT Core's limit of {AWS_IOT_MAX_TOPIC_BYTES}",
                topic.len()
            ));
        }
        let slashes = topic.matches('/').count();
        if slashes > AWS_IOT_MAX_TOPIC_SLASHES {
            return Err(format!(
                "topic \"{topic}\" has {slashes} slashes, above AWS IoT Core's limit of {AWS_IOT_MAX_TOPIC_SLASHES}"
            ));
        }
        if topic.starts_with('$') {
            return Err(format!(
                "topic \"{topic}\" starts with '$', reserved by AWS IoT Core"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = br#"{"version":1,"timestamp":1,"equipmentId":"eq-1","tag":"water_temperature","value":1.5,"quality":"Ok","meta":{"sequenceNumber":7,"flags":[],"createdAt":2,"sourceId":"filler"}}"#;

    #[test]
    fn renders_fields() {
        let t = TopicTemplate::parse("lines/{sourceId}/{equipmentId}/{tag}/{quality}").unwrap();
        let mut out = String::new();
        t.render(SAMPLE, &mut out).unwrap();
        assert_eq!(out, "lines/filler/eq-1/water_temperature/Ok");
        assert!(!t.is_fixed());
        assert_eq!(t.literal(), "lines////");
    }

    #[test]
    fn fixed_topic_needs_no_decoding() {
        let t = TopicTemplate::parse("plant/line1").unwrap();
        let mut out = String::from("old");
        t.render(b"not json", &mut out).unwrap();
        assert_eq!(out, "plant/line1");
        assert!(t.is_fixed());
    }

    #[test]
    fn collects_every_template_problem() {
        let errs = TopicTemplate::parse("a/{nope}/+/{tag").unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs[0].contains("unknown placeholder {nope}"));
        assert!(errs.iter().any(|e| e.contains("unclosed")));
        assert!(errs.iter().any(|e| e.contains("wildcards")));
        assert!(TopicTemplate::parse("").is_err());
        assert!(TopicTemplate::parse("a}b").is_err());
    }

    #[test]
    fn undecodable_payload_is_an_error() {
        let t = TopicTemplate::parse("x/{tag}").unwrap();
        let mut out = String::new();
        assert!(t.render(b"{}", &mut out).is_err());
    }

    #[test]
    fn topic_checks() {
        assert!(check_topic("a/b", false).is_ok());
        assert!(check_topic("a/+", false).is_err());
        assert!(check_topic("a/#", false).is_err());
        assert!(check_topic("", false).is_err());
        assert!(check_topic("a/b/c/d/e/f/g/h", true).is_ok());
        assert!(check_topic("a/b/c/d/e/f/g/h/i", true).is_err());
        assert!(check_topic("a/b/c/d/e/f/g/h/i", false).is_ok());
        let long = "x".repeat(257);
        assert!(check_topic(&long, true).is_err());
        assert!(check_topic(&long, false).is_ok());
        assert!(check_topic("$aws/things", true).is_err());
    }
}
