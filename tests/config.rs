//! `streamgate validate` on every broken config in tests/configs/broken: exit code 78 and
//! exactly the error text in the matching `.expected` file; every shipped config validates.

use std::path::Path;
use std::process::Command;

fn validate(path: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_streamgate"))
        .args(["validate", "--config"])
        .arg(path)
        .output()
        .expect("run streamgate validate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn broken_configs_give_exact_errors() {
    let dir = Path::new("tests/configs/broken");
    let mut checked = 0;
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
    {
        let expected = std::fs::read_to_string(path.with_extension("expected"))
            .unwrap_or_else(|_| panic!("{} has no .expected file", path.display()));
        let (code, _, stderr) = validate(path);
        assert_eq!(code, 78, "{}: exit code", path.display());
        assert_eq!(stderr, expected, "{}: error text", path.display());
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} broken configs found");
}

#[test]
fn shipped_configs_are_valid() {
    let mut checked = 0;
    for entry in std::fs::read_dir("config").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (code, stdout, stderr) = validate(&path);
            assert_eq!(code, 0, "{}: {stderr}", path.display());
            assert!(stdout.contains("is valid"), "{stdout}");
            checked += 1;
        }
    }
    assert!(checked >= 1);
}
