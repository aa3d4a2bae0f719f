//! Reads TOML tables into the `Raw*` structs, collecting every error with its exact key path.
//!
//! serde stops at the first error of a table. [`TableReader::read`] reads one table; when a key
//! has the wrong type (or is unknown), the error is recorded at that key's path, the key taken
//! out, and the table read again, so one run reports every such key. The path comes from
//! `serde_path_to_error`, so a table must be read without `#[serde(flatten)]` or internally
//! tagged enums (which buffer their content and lose the path): the caller splits a table by
//! its `kind` first (see `app::config::sections`).

use serde::de::DeserializeOwned;
use toml::Value;

use super::ConfigError;

/// More errors than this in one table: the rest of it is not looked at.
const MAX_ERRORS_PER_TABLE: usize = 50;

/// Collects the errors of the tables it reads.
#[derive(Debug, Default)]
pub struct TableReader {
    pub errors: Vec<ConfigError>,
    /// Keys taken out after an error: validation errors about them (a required value now
    /// missing) would repeat the same mistake, so they are dropped.
    pub removed: Vec<String>,
    /// Keys whose validation errors would only follow from an error already reported (no
    /// tags because the tags file could not be read): dropped, this key only.
    pub quiet: Vec<String>,
    /// A table could not be read at all (a required key missing or wrongly typed): the raw
    /// config is incomplete and must not be validated further.
    pub incomplete: bool,
}

/// One step of a path inside a table.
enum Step {
    Key(String),
    Index(usize),
}

fn join(base: &str, steps: &[Step]) -> String {
    let mut out = base.to_string();
    for s in steps {
        match s {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// The key named in serde's "unknown field `x`" / "missing field `x`" messages.
fn named_field<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    message.strip_prefix(prefix)?.split('`').next()
}

/// Keys renamed so that one idea has one name in every reader and export (README, *One name
/// per idea*): the old name is refused, naming the new one.
const RENAMED: &[(&str, &str)] = &[
    ("timeout", "request_timeout"),
    ("poll_interval", "interval"),
    ("initial_backoff", "reconnect_min"),
    ("max_backoff", "reconnect_max"),
    ("reconnect_initial", "reconnect_min"),
    ("exception_retry", "failed_tag_retry"),
];

/// serde's wording, made readable for people who write TOML.
pub fn plain(message: &str) -> String {
    let message = message.trim().replace('\n', " ");
    if let Some(old) = named_field(&message, "unknown field `")
        && let Some((_, new)) = RENAMED
            .iter()
            .find(|(o, n)| *o == old && message.contains(&format!("`{n}`")))
    {
        return format!(
            "unknown field `{old}`; did you mean `{new}`? (`{old}` was renamed: one name for one idea in every reader and export)"
        );
    }
    if let Some(number) = message
        .split_once("integer `")
        .and_then(|(_, rest)| rest.split_once("` as i128"))
        .map(|(n, _)| n)
    {
        return format!(
            "the integer {number} is out of range: TOML integers are 64-bit (-9223372036854775808 to 9223372036854775807)"
        );
    }
    if message.contains("did not match any variant of untagged enum RawAddress") {
        return "expected an integer (the 0-based protocol address, with `area`) or a string (Modicon notation such as \"40001\")".into();
    }
    message
        .replace("expected i64", "expected an integer")
        .replace("expected u64", "expected an integer")
        .replace("expected f64", "expected a number")
        .replace("expected a string", "expected a string in quotes")
        .replace("invalid type: map,", "invalid type: table,")
        .replace("invalid type: sequence,", "invalid type: array,")
        .replace("expected a map", "expected a table")
        .replace("expected a sequence", "expected an array")
}

impl TableReader {
    /// Reads `value` (the table at `path`) as a `T`, recording every error. `None`: the table
    /// could not be read (recorded, and the reader marked incomplete).
    pub fn read<T: DeserializeOwned>(&mut self, mut value: Value, path: &str) -> Option<T> {
        for _ in 0..MAX_ERRORS_PER_TABLE {
            let error = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
                Ok(t) => return Some(t),
                Err(e) => e,
            };
            let mut steps: Vec<Step> = error
                .path()
                .iter()
                .filter_map(|s| match s {
                    serde_path_to_error::Segment::Map { key } => Some(Step::Key(key.clone())),
                    serde_path_to_error::Segment::Seq { index } => Some(Step::Index(*index)),
                    _ => None,
                })
                .collect();
            let message = error.into_inner().message().to_string();
            if let Some(field) = named_field(&message, "missing field `") {
                steps.push(Step::Key(field.to_string()));
                let key = join(path, &steps);
                if !self.removed.contains(&key) {
                    self.errors.push(ConfigError {
                        path: key,
                        message: plain(&message),
                        line: None,
                    });
                }
                self.incomplete = true;
                return None;
            }
            // serde_path_to_error names the unknown key itself; older versions did not.
            if let Some(field) = named_field(&message, "unknown field `")
                && !matches!(steps.last(), Some(Step::Key(k)) if k == field)
            {
                steps.push(Step::Key(field.to_string()));
            }
            let key = join(path, &steps);
            self.errors.push(ConfigError {
                path: key.clone(),
                message: plain(&message),
                line: None,
            });
            if !remove(&mut value, &steps) {
                self.incomplete = true;
                return None;
            }
            self.removed.push(key);
        }
        self.incomplete = true;
        None
    }

    /// Records an error found outside serde (a missing or wrongly typed `kind`).
    pub fn push(&mut self, path: String, message: impl Into<String>, incomplete: bool) {
        self.errors.push(ConfigError {
            path,
            message: message.into(),
            line: None,
        });
        self.incomplete |= incomplete;
    }
}

/// Takes the key at `steps` out of `value`; false when it cannot (the table itself, or an
/// array element, whose removal would shift the paths of the ones after it).
fn remove(value: &mut Value, steps: &[Step]) -> bool {
    let Some((last, parents)) = steps.split_last() else {
        return false;
    };
    let mut at = value;
    for s in parents {
        let next = match (s, at) {
            (Step::Key(k), Value::Table(t)) => t.get_mut(k),
            (Step::Index(i), Value::Array(a)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(v) => at = v,
            None => return false,
        }
    }
    match (last, at) {
        (Step::Key(k), Value::Table(t)) => t.remove(k).is_some(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        min: Option<f64>,
        max: Option<f64>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        size: Option<i64>,
        #[serde(default)]
        tags: Vec<Inner>,
    }

    fn value(text: &str) -> Value {
        Value::Table(toml::from_str(text).unwrap())
    }

    #[test]
    fn every_wrongly_typed_key_is_reported_at_its_path() {
        let mut r = TableReader::default();
        let v = value(
            "name = \"a\"\nsize = \"big\"\ntypo = 1\n[[tags]]\nmin = \"0\"\n[[tags]]\nmax = true\n",
        );
        let outer: Outer = r
            .read(v, "sources[2]")
            .expect("read after taking the bad keys out");
        assert_eq!(outer.tags.len(), 2);
        let got: Vec<(String, String)> = r
            .errors
            .iter()
            .map(|e| (e.path.clone(), e.message.clone()))
            .collect();
        let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths.len(), 4, "{got:?}");
        for p in [
            "sources[2].size",
            "sources[2].typo",
            "sources[2].tags[0].min",
            "sources[2].tags[1].max",
        ] {
            assert!(paths.contains(&p), "{p} in {got:?}");
        }
        assert!(
            got.iter()
                .any(|(p, m)| p == "sources[2].size" && m.contains("expected an integer")),
            "{got:?}"
        );
        assert!(!r.incomplete);
        assert_eq!(r.removed.len(), 4);
    }

    #[test]
    fn a_wrongly_typed_required_key_is_reported_once_and_the_table_is_incomplete() {
        let mut r = TableReader::default();
        let out: Option<Outer> = r.read(value("name = 5\nsize = \"x\""), "streams[0]");
        assert!(out.is_none());
        assert!(r.incomplete);
        let paths: Vec<&str> = r.errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths.len(), 2, "{:?}", r.errors);
        assert!(paths.contains(&"streams[0].name") && paths.contains(&"streams[0].size"));
        assert!(
            !r.errors
                .iter()
                .any(|e| e.message.starts_with("missing field"))
        );
    }

    #[test]
    fn renamed_keys_name_their_new_name_where_it_applies() {
        assert_eq!(
            plain("unknown field `timeout`, expected one of `host`, `request_timeout`"),
            "unknown field `timeout`; did you mean `request_timeout`? (`timeout` was renamed: one name for one idea in every reader and export)"
        );
        // Where the new name is not a key either, the plain message stays.
        assert_eq!(
            plain("unknown field `timeout`, expected one of `path`"),
            "unknown field `timeout`, expected one of `path`"
        );
    }

    #[test]
    fn a_missing_required_key_is_named_at_its_path() {
        let mut r = TableReader::default();
        let out: Option<Outer> = r.read(value("size = 1"), "streams[1]");
        assert!(out.is_none());
        assert_eq!(r.errors.len(), 1);
        assert_eq!(r.errors[0].path, "streams[1].name");
        assert_eq!(r.errors[0].message, "missing field `name`");
    }
}
