//! The parsed TOML document into [`RawConfig`], table by table, every error collected with
//! its key path (see [`TableReader`]). A `[[streams.exports]]` or `[[sources]]` table is split
//! by its `kind`: the keys every kind has are read apart from the kind's own, so an error in
//! either keeps its exact path (`sources[0].tags[3].min`, `streams[0].exports[1].tls`).

use toml::{Table, Value};

use super::raw::{
    COMMON_EXPORT_KEYS, COMMON_SOURCE_KEYS, RawConfig, RawExport, RawSource, RawStream, RawTop,
    TagFile,
};
use crate::config::table::TableReader;
use crate::exporters::RawExportKind;
use crate::readers::RawSourceKind;

/// Reads every section of `doc`; what could not be read is left out and its errors are in
/// `reader` (then `reader.incomplete` may be set: the result must not be validated further).
pub(super) fn read(doc: Table, reader: &mut TableReader) -> RawConfig {
    let top: RawTop = reader.read(Value::Table(doc), "").unwrap_or_default();
    let gateway = top
        .gateway
        .and_then(|t| reader.read(Value::Table(t), "gateway"))
        .unwrap_or_default();
    let metrics = top
        .metrics
        .and_then(|t| reader.read(Value::Table(t), "metrics"));
    let streams = top
        .streams
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .filter_map(|(i, t)| stream(t, &format!("streams[{i}]"), reader))
        .collect();
    let mut tag_files = Vec::new();
    let sources = top
        .sources
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .filter_map(|(i, t)| source(t, &format!("sources[{i}]"), reader, &mut tag_files))
        .collect();
    RawConfig {
        gateway,
        streams,
        sources,
        metrics,
        tag_files,
    }
}

fn stream(mut table: Table, path: &str, reader: &mut TableReader) -> Option<RawStream> {
    let exports = table.remove("exports");
    let mut stream: Option<RawStream> = reader.read(Value::Table(table), path);
    let exports_path = format!("{path}.exports");
    let tables: Vec<Table> = match exports {
        Some(v) => reader.read(v, &exports_path).unwrap_or_default(),
        None => Vec::new(),
    };
    for (j, t) in tables.into_iter().enumerate() {
        let export = export(t, &format!("{exports_path}[{j}]"), reader);
        if let (Some(s), Some(e)) = (stream.as_mut(), export) {
            s.exports.push(e);
        }
    }
    stream
}

/// The `kind` of a table, or an error (recorded) when it is missing or not a string.
fn kind(
    table: &mut Table,
    path: &str,
    reader: &mut TableReader,
    what: &str,
    known: &[&str],
) -> Option<String> {
    match table.remove("kind") {
        Some(Value::String(k)) => Some(k),
        Some(other) => {
            reader.push(
                format!("{path}.kind"),
                format!(
                    "invalid type: {}, expected a string in quotes",
                    other.type_str()
                ),
                true,
            );
            None
        }
        None => {
            reader.push(
                format!("{path}.kind"),
                format!(
                    "missing: say which kind {what} this is, one of {}",
                    quoted(known)
                ),
                true,
            );
            None
        }
    }
}

/// Splits `table` into the keys every kind has (`common`) and the kind's own.
fn split(table: Table, common: &[&str]) -> (Table, Table) {
    table
        .into_iter()
        .partition(|(k, _)| common.contains(&k.as_str()))
}

/// serde lists only the kind's own keys in an "unknown field" error of the table itself:
/// add the common ones (and `kind`), which are just as valid there.
fn with_common_keys(reader: &mut TableReader, from: usize, path: &str, common: &[&str]) {
    let listed: Vec<String> = std::iter::once("kind")
        .chain(common.iter().copied())
        .map(|k| format!("`{k}`"))
        .collect();
    let listed = listed.join(", ");
    for e in &mut reader.errors[from..] {
        let own_key = e
            .path
            .strip_prefix(path)
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|k| !k.contains(['.', '[']));
        if !own_key || !e.message.starts_with("unknown field") {
            continue;
        }
        e.message = match e.message.split_once("expected one of ") {
            Some((head, rest)) => format!("{head}expected one of {listed}, {rest}"),
            None => match e.message.split_once("expected ") {
                Some((head, rest)) => format!("{head}expected one of {listed}, {rest}"),
                None => match e.message.split_once("there are no fields") {
                    Some((head, _)) => format!("{head}expected one of {listed}"),
                    None => continue,
                },
            },
        };
    }
}

/// Appends the rows of the source's `tags_file` to its `tags` (after those of the config).
fn tags_file(
    file: Value,
    own: &mut Table,
    path: &str,
    reader: &mut TableReader,
    tag_files: &mut Vec<TagFile>,
) {
    let key = format!("{path}.tags_file");
    let Value::String(file) = file else {
        reader.push(
            key,
            format!(
                "invalid type: {}, expected a string in quotes (the path of a CSV file)",
                file.type_str()
            ),
            false,
        );
        return;
    };
    let rows = match crate::config::csv::read(&file) {
        Ok(rows) => rows,
        Err(message) => {
            reader.push(key, message, false);
            reader.quiet.push(format!("{path}.tags"));
            return;
        }
    };
    let tags = own
        .entry("tags")
        .or_insert_with(|| Value::Array(Vec::new()));
    let Value::Array(tags) = tags else {
        // `tags` is not an array: reading the kind's keys says so.
        return;
    };
    tag_files.push(TagFile {
        source: path.to_string(),
        file,
        first: tags.len(),
        rows: rows.iter().map(|(row, _)| *row).collect(),
    });
    tags.extend(rows.into_iter().map(|(_, t)| Value::Table(t)));
}

/// `what`: "an export" or "a source".
fn unknown_kind(reader: &mut TableReader, path: &str, kind: &str, what: &str, known: &[&str]) {
    reader.push(
        format!("{path}.kind"),
        format!(
            "\"{kind}\" is not {what} kind of this build; expected one of {}",
            quoted(known)
        ),
        true,
    );
}

fn quoted(kinds: &[&str]) -> String {
    let kinds: Vec<String> = kinds.iter().map(|k| format!("\"{k}\"")).collect();
    kinds.join(", ")
}

fn export(mut table: Table, path: &str, reader: &mut TableReader) -> Option<RawExport> {
    let kind = kind(
        &mut table,
        path,
        reader,
        "of export",
        &RawExportKind::kinds(),
    );
    let (common, own) = split(table, COMMON_EXPORT_KEYS);
    let common = reader.read(Value::Table(common), path);
    let kind = kind?;
    let from = reader.errors.len();
    let read = RawExportKind::read(&kind, Value::Table(own), path, reader);
    with_common_keys(reader, from, path, COMMON_EXPORT_KEYS);
    let Some(read) = read else {
        unknown_kind(reader, path, &kind, "an export", &RawExportKind::kinds());
        return None;
    };
    Some(RawExport {
        common: common?,
        kind: read?,
    })
}

fn source(
    mut table: Table,
    path: &str,
    reader: &mut TableReader,
    tag_files: &mut Vec<TagFile>,
) -> Option<RawSource> {
    let kind = kind(
        &mut table,
        path,
        reader,
        "of source",
        &RawSourceKind::kinds(),
    );
    let (common, mut own) = split(table, COMMON_SOURCE_KEYS);
    if let Some(file) = own.remove("tags_file") {
        tags_file(file, &mut own, path, reader, tag_files);
    }
    let common = reader.read(Value::Table(common), path);
    let kind = kind?;
    let from = reader.errors.len();
    let read = RawSourceKind::read(&kind, Value::Table(own), path, reader);
    with_common_keys(reader, from, path, COMMON_SOURCE_KEYS);
    let Some(read) = read else {
        unknown_kind(reader, path, &kind, "a source", &RawSourceKind::kinds());
        return None;
    };
    Some(RawSource {
        common: common?,
        kind: read?,
    })
}
