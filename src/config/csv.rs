//! `tags_file`: a source's tags from a CSV file, the way PLC engineers export tag lists.
//!
//! The first row names the columns (the tag keys of the source's kind: `name`, `address`,
//! `type`, `node` ...); every other row is one tag. Cells are separated by `,` (or by `;` when
//! the header has `;` and no `,`, as spreadsheets write in many locales), may be quoted
//! (`"a,b"`, `""` for a quote inside) and empty (the key is not set). A cell is read as a
//! TOML value would be written unquoted: an integer, a number, `true`/`false`, otherwise text;
//! the keys that name things are always text (see [`TEXT_KEYS`]), and `address` is text unless
//! the row names an `area` (then a 0-based number, as in the config file).

use toml::{Table, Value};

/// Columns always read as text, whatever they look like (a tag named `101`).
pub const TEXT_KEYS: &[&str] = &[
    "name",
    "node",
    "stream",
    "unit",
    "type",
    "byte_order",
    "area",
    "mode",
    "index",
];

/// Columns for people, not for the gateway (a tag list's comments): ignored.
pub const IGNORED: &[&str] = &["comment", "description"];

/// The largest tags file read (as for the config file itself).
pub const MAX_TAGS_FILE_BYTES: u64 = 8 << 20;

/// A problem at a place in the file (1-based row as a spreadsheet counts them, the header
/// being row 1; the column's name when there is one).
#[derive(Debug, Clone, PartialEq)]
pub struct CsvError {
    pub row: usize,
    pub column: Option<String>,
    pub message: String,
}

/// Reads the tags file at `path` (at most [`MAX_TAGS_FILE_BYTES`]).
/// Only regular files (not a device or a pipe, which could block or never end); never while
/// fuzzing the config parser (which would open whatever path it generates).
pub fn read(path: &str) -> Result<Vec<(usize, Table)>, String> {
    if cfg!(feature = "fuzzing") {
        return Err(format!("{path}: tags files are not read in fuzzing builds"));
    }
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{path} is not a regular file"));
    }
    let too_big = || {
        format!(
            "{path} is larger than {} MiB, the most a tags file may be",
            MAX_TAGS_FILE_BYTES >> 20
        )
    };
    if meta.len() > MAX_TAGS_FILE_BYTES {
        return Err(too_big());
    }
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(file, MAX_TAGS_FILE_BYTES + 1),
        &mut text,
    )
    .map_err(|e| format!("cannot read {path}: {e}"))?;
    if text.len() as u64 > MAX_TAGS_FILE_BYTES {
        return Err(too_big());
    }
    tags(&text).map_err(|e| at(path, e.row, e.column.as_deref(), &e.message))
}

/// "FILE row R, column `C`: MESSAGE".
pub fn at(file: &str, row: usize, column: Option<&str>, message: &str) -> String {
    match column {
        Some(c) => format!("{file} row {row}, column `{c}`: {message}"),
        None => format!("{file} row {row}: {message}"),
    }
}

/// The tags of a CSV text, each with its row number.
pub fn tags(text: &str) -> Result<Vec<(usize, Table)>, CsvError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let header_line = text.lines().next().unwrap_or_default();
    let sep = if header_line.contains(';') && !header_line.contains(',') {
        ';'
    } else {
        ','
    };
    let rows = records(text, sep)?;
    let mut rows = rows.into_iter();
    let Some((_, header)) = rows.next() else {
        return Err(CsvError {
            row: 1,
            column: None,
            message: "the file is empty: its first row must name the columns (name, address, ...)"
                .into(),
        });
    };
    let header: Vec<String> = header.iter().map(|h| h.trim().to_string()).collect();
    for (i, h) in header.iter().enumerate() {
        if h.is_empty() {
            return Err(CsvError {
                row: 1,
                column: None,
                message: format!("column {} has no name in the header row", i + 1),
            });
        }
        if header[..i].contains(h) {
            return Err(CsvError {
                row: 1,
                column: Some(h.clone()),
                message: "this column appears twice in the header row".into(),
            });
        }
    }
    let mut out = Vec::new();
    for (row, cells) in rows {
        if cells.iter().all(|c| c.trim().is_empty()) {
            continue;
        }
        if cells.len() > header.len() {
            return Err(CsvError {
                row,
                column: None,
                message: format!(
                    "{} cells, but the header names {} columns",
                    cells.len(),
                    header.len()
                ),
            });
        }
        let has_area = header
            .iter()
            .zip(&cells)
            .any(|(h, c)| h == "area" && !c.trim().is_empty());
        let mut table = Table::new();
        for (h, cell) in header.iter().zip(&cells) {
            let cell = cell.trim();
            if cell.is_empty() || IGNORED.contains(&h.as_str()) {
                continue;
            }
            let text = TEXT_KEYS.contains(&h.as_str()) || (h == "address" && !has_area);
            table.insert(
                h.clone(),
                if text {
                    Value::String(cell.into())
                } else {
                    typed(cell)
                },
            );
        }
        out.push((row, table));
    }
    Ok(out)
}

/// A cell as TOML would read it unquoted; text when it is no TOML scalar.
fn typed(cell: &str) -> Value {
    if let Ok(i) = cell.parse::<i64>() {
        return Value::Integer(i);
    }
    if let Ok(f) = cell.parse::<f64>()
        && f.is_finite()
    {
        return Value::Float(f);
    }
    match cell {
        "true" => Value::Boolean(true),
        "false" => Value::Boolean(false),
        _ => Value::String(cell.into()),
    }
}

/// The records of a CSV text with their starting row (1-based): quoted cells may hold the
/// separator, quotes (doubled) and line breaks.
fn records(text: &str, sep: char) -> Result<Vec<(usize, Vec<String>)>, CsvError> {
    let mut out = Vec::new();
    let mut row = 1;
    let mut start_row = 1;
    let mut cells: Vec<String> = Vec::new();
    let mut cell = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    let mut at_start = true;
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    cell.push('"');
                }
                '"' => quoted = false,
                '\n' => {
                    row += 1;
                    cell.push('\n');
                }
                c => cell.push(c),
            }
            continue;
        }
        match c {
            '"' if cell.trim().is_empty() => {
                cell.clear();
                quoted = true;
            }
            c if c == sep => cells.push(std::mem::take(&mut cell)),
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                cells.push(std::mem::take(&mut cell));
                out.push((start_row, std::mem::take(&mut cells)));
                row += 1;
                start_row = row;
                at_start = true;
                continue;
            }
            c => cell.push(c),
        }
        at_start = false;
    }
    if quoted {
        return Err(CsvError {
            row: start_row,
            column: None,
            message: "a quoted cell is not closed (a `\"` is missing)".into(),
        });
    }
    if !at_start || !cell.is_empty() || !cells.is_empty() {
        cells.push(cell);
        out.push((start_row, cells));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_typed_tags() {
        let text = "name,address,type,scale,deadband\r\nenergy,40001,u32,0.1,\r\n101,\"DB1,REAL8\",f32,2,0.5\r\n\r\nflag,00002,,,\n";
        let tags = tags(text).unwrap();
        assert_eq!(tags.len(), 3, "{tags:?}");
        let (row, t) = &tags[0];
        assert_eq!(*row, 2);
        assert_eq!(t["name"], Value::String("energy".into()));
        assert_eq!(
            t["address"],
            Value::String("40001".into()),
            "Modicon stays text"
        );
        assert_eq!(t["scale"], Value::Float(0.1));
        assert!(!t.contains_key("deadband"), "empty cell: key not set");
        let (row, t) = &tags[1];
        assert_eq!(*row, 3);
        assert_eq!(t["name"], Value::String("101".into()), "names are text");
        assert_eq!(t["address"], Value::String("DB1,REAL8".into()));
        assert_eq!(t["scale"], Value::Integer(2));
        assert_eq!(
            tags[2].0, 5,
            "the blank row 4 is skipped, rows keep their numbers"
        );
    }

    #[test]
    fn semicolons_quotes_and_an_area_make_the_address_a_number() {
        let text = "name;area;address;comment\n\"say \"\"hi\"\"\";holding_register;7;\"two\nlines\"\nb;;40002;x\n";
        let tags = tags(text).unwrap();
        assert_eq!(tags[0].1["name"], Value::String("say \"hi\"".into()));
        assert_eq!(tags[0].1["address"], Value::Integer(7));
        assert!(
            !tags[0].1.contains_key("comment"),
            "comments are for people"
        );
        assert_eq!(tags[1].0, 4, "the row after a two-line cell");
        assert_eq!(tags[1].1["address"], Value::String("40002".into()));
    }

    #[test]
    fn broken_files_say_where() {
        assert_eq!(tags("").unwrap_err().row, 1);
        let e = tags("name,name\na,b\n").unwrap_err();
        assert_eq!((e.row, e.column.as_deref()), (1, Some("name")));
        let e = tags("name,address\na,1,2\n").unwrap_err();
        assert_eq!(e.row, 2);
        assert!(e.message.contains("3 cells"), "{e:?}");
        let e = tags("name\n\"open\n").unwrap_err();
        assert_eq!(e.row, 2);
    }
}
