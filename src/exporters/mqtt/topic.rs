//! Topic templates (`lines/{sourceId}/{equipmentId}/{tag}`) and topic checks: MQTT's rules
//! (no wildcards, no NUL, at most 65,535 bytes) and, for AWS IoT Core, its own limits.

use crate::exporters::template::{Field, MissingFields, Template};

/// AWS IoT Core: a topic name is at most 256 bytes of UTF-8.
pub const AWS_IOT_MAX_TOPIC_BYTES: usize = 256;
/// AWS IoT Core: at most 7 forward slashes (8 levels) in a topic name.
pub const AWS_IOT_MAX_TOPIC_SLASHES: usize = 7;
/// MQTT 3.1.1: a topic name is a UTF-8 string of at most 65,535 bytes.
pub const MQTT_MAX_TOPIC_BYTES: usize = 65_535;

/// A topic template: the exports' one [`Template`] engine, with MQTT's rules for topic names
/// checked on its fixed text at validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate(Template);

impl TopicTemplate {
    /// Parses `text`; every problem is returned (unknown placeholder, wildcard, ...).
    pub fn parse(text: &str) -> Result<TopicTemplate, Vec<String>> {
        let fields: Vec<Field> = Field::ALL.iter().map(|(_, f)| *f).collect();
        let (template, mut problems) = Template::parse_partial(text, &fields);
        if text.is_empty() {
            problems.push("must not be empty".to_string());
        }
        let literal = template.literal();
        if literal.contains(['+', '#']) {
            problems.push("must not contain the wildcards '+' or '#'".to_string());
        }
        if literal.contains('\0') {
            problems.push("must not contain NUL".to_string());
        }
        if problems.is_empty() {
            Ok(TopicTemplate(template))
        } else {
            Err(problems)
        }
    }

    /// A template without placeholders (no checks: the caller knows `text` is valid).
    pub fn fixed(text: &str) -> TopicTemplate {
        TopicTemplate(Template::fixed(text))
    }

    /// The fixed text of the template, placeholders removed (for limit checks at validation).
    pub fn literal(&self) -> String {
        self.0.literal()
    }

    /// True when the topic is the same for every sample (no placeholders).
    pub fn is_fixed(&self) -> bool {
        self.0.is_fixed()
    }

    /// Renders the topic of one payload into `out` (cleared first).
    pub fn render(&self, payload: &[u8], out: &mut String) -> Result<(), MissingFields> {
        self.0.render(payload, out)
    }
}

/// Why a rendered topic name cannot be published to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic \"{0}\" contains an MQTT wildcard ('+' or '#')")]
    Wildcard(String),
    #[error("topic contains NUL")]
    Nul,
    #[error("topic is {0} bytes, above MQTT's limit of {MQTT_MAX_TOPIC_BYTES}")]
    TooLong(usize),
    #[error("topic \"{0}\" is {1} bytes, above AWS IoT Core's limit of {AWS_IOT_MAX_TOPIC_BYTES}")]
    AwsIotTooLong(String, usize),
    #[error(
        "topic \"{0}\" has {1} slashes, above AWS IoT Core's limit of {AWS_IOT_MAX_TOPIC_SLASHES}"
    )]
    AwsIotSlashes(String, usize),
    #[error("topic \"{0}\" starts with '$', reserved by AWS IoT Core")]
    AwsIotReserved(String),
}

/// Checks a rendered topic name against MQTT's rules and, with `aws_iot`, AWS IoT Core's.
pub fn check_topic(topic: &str, aws_iot: bool) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.contains(['+', '#']) {
        return Err(TopicError::Wildcard(topic.to_string()));
    }
    if topic.contains('\0') {
        return Err(TopicError::Nul);
    }
    if topic.len() > MQTT_MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong(topic.len()));
    }
    if aws_iot {
        if topic.len() > AWS_IOT_MAX_TOPIC_BYTES {
            return Err(TopicError::AwsIotTooLong(topic.to_string(), topic.len()));
        }
        let slashes = topic.matches('/').count();
        if slashes > AWS_IOT_MAX_TOPIC_SLASHES {
            return Err(TopicError::AwsIotSlashes(topic.to_string(), slashes));
        }
        if topic.starts_with('$') {
            return Err(TopicError::AwsIotReserved(topic.to_string()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
