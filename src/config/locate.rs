//! Finds where a key path (`streams[1].exports[0].batch_size`) stands in the TOML text, so
//! every error can name its line, and finds the key path of a parser error from its byte span.

use toml::de::{DeTable, DeValue};

/// One step of a key path.
#[derive(Debug, PartialEq)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

fn steps(path: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Step::Key(key));
        }
        while let Some(end) = rest.find(']') {
            if let Ok(i) = rest[1..end].parse() {
                out.push(Step::Index(i));
            }
            rest = &rest[end + 1..];
        }
    }
    out
}

/// 1-based line of a byte offset.
pub fn line_at(source: &str, offset: usize) -> usize {
    source[..offset.min(source.len())].matches('\n').count() + 1
}

/// Sets the line of every error that has a path and no line yet (the document parsed once).
pub fn add_lines(source: &str, errors: &mut [super::ConfigError]) {
    if errors.iter().all(|e| e.line.is_some() || e.path.is_empty()) {
        return;
    }
    let Ok(doc) = DeTable::parse(source) else {
        return;
    };
    let root = DeValue::Table(doc.get_ref().clone());
    for e in errors
        .iter_mut()
        .filter(|e| e.line.is_none() && !e.path.is_empty())
    {
        e.line = line_in(source, &root, &e.path);
    }
}

/// The line of the deepest part of `path` that exists in the document.
fn line_in(source: &str, root: &DeValue, path: &str) -> Option<usize> {
    let mut span = None;
    let mut value = root;
    for step in steps(path) {
        let next = match (&step, value) {
            (Step::Key(k), DeValue::Table(t)) => t
                .iter()
                .find(|(key, _)| key.get_ref() == k)
                .map(|(key, v)| (key.span(), v)),
            (Step::Index(i), DeValue::Array(a)) => a.get(*i).map(|v| (v.span(), v)),
            _ => None,
        };
        match next {
            Some((s, v)) => {
                span = Some(s);
                value = v.get_ref();
            }
            None => break,
        }
    }
    span.map(|s| line_at(source, s.start))
}

/// Every (path, key span, value span) in the document, depth first.
fn walk(
    value: &DeValue,
    path: &str,
    out: &mut Vec<(String, std::ops::Range<usize>, std::ops::Range<usize>)>,
) {
    match value {
        DeValue::Table(t) => {
            for (key, v) in t.iter() {
                let sep = if path.is_empty() { "" } else { "." };
                let p = format!("{path}{sep}{}", key.get_ref());
                out.push((p.clone(), key.span(), v.span()));
                walk(v.get_ref(), &p, out);
            }
        }
        DeValue::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                let p = format!("{path}[{i}]");
                out.push((p.clone(), v.span(), v.span()));
                walk(v.get_ref(), &p, out);
            }
        }
        _ => {}
    }
}

/// The key path of the smallest key or value whose span contains `target` (array-of-tables
/// entries span only their `[[header]]`, so every node is searched, not just one branch).
pub fn path_at(source: &str, target: std::ops::Range<usize>) -> Option<String> {
    let doc = DeTable::parse(source).ok()?;
    let mut nodes = Vec::new();
    walk(&DeValue::Table(doc.get_ref().clone()), "", &mut nodes);
    let contains = |s: &std::ops::Range<usize>| s.start <= target.start && target.end <= s.end;
    nodes
        .into_iter()
        .filter_map(|(p, k, v)| {
            let best = [k, v]
                .into_iter()
                .filter(|s| contains(s))
                .map(|s| s.end - s.start)
                .min()?;
            Some((best, std::cmp::Reverse(p.len()), p))
        })
        .min()
        .map(|(_, _, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "[gateway]\ndata_dir = \"x\"\n\n[[streams]]\nname = \"a\"\n\n[[streams]]\nname = \"b\"\n[[streams.exports]]\nkind = \"file\"\nbatch_size = 900\n";

    /// The line [`add_lines`] gives an error at `path`.
    fn line_of(source: &str, path: &str) -> Option<usize> {
        let mut errors = [super::super::ConfigError {
            path: path.into(),
            message: String::new(),
            line: None,
        }];
        add_lines(source, &mut errors);
        errors[0].line
    }

    #[test]
    fn finds_lines_of_paths() {
        assert_eq!(line_of(DOC, "gateway.data_dir"), Some(2));
        assert_eq!(line_of(DOC, "streams[1].name"), Some(8));
        assert_eq!(line_of(DOC, "streams[1].exports[0].batch_size"), Some(11));
        // A missing key falls back to the deepest part that exists.
        assert_eq!(line_of(DOC, "streams[1].exports[0].path"), Some(9));
    }

    #[test]
    fn finds_paths_inside_arrays_of_tables() {
        let doc = "[[streams]]\nname = \"a\"\n\n[[streams.exports]]\nkind = \"file\"\n";
        let at = doc.find("[[streams.exports]]").unwrap();
        assert_eq!(
            path_at(doc, at..at + 19).as_deref(),
            Some("streams[0].exports[0]")
        );
    }

    #[test]
    fn finds_paths_of_spans() {
        let at = DOC.find("900").unwrap();
        assert_eq!(
            path_at(DOC, at..at + 3).as_deref(),
            Some("streams[1].exports[0].batch_size")
        );
    }
}
