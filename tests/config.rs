//! `streamgate validate` on every broken config in tests/configs/broken: exit code 78 and
//! exactly the error text in the matching `.expected` file; every shipped config validates.

use std::path::Path;
use std::process::Command;

fn validate(path: &Path) -> (i32, String, String) {
    validate_with(path, &[])
}

fn validate_with(path: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_streamgate"))
        .args(["validate", "--config"])
        .arg(path)
        .args(args)
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
    assert!(checked >= 16, "only {checked} broken configs found");
}

#[test]
fn shipped_configs_are_valid() {
    let mut checked = 0;
    for entry in std::fs::read_dir("config").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            // They name certificate files of a gateway (/etc/streamgate/...).
            let (code, stdout, stderr) = validate_with(&path, &["--no-file-checks"]);
            assert_eq!(code, 0, "{}: {stderr}", path.display());
            assert!(stdout.contains("is valid"), "{stdout}");
            assert!(
                !stderr.contains("warning: streams"),
                "{}: a shipped config has no stream warnings: {stderr}",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 1);
}

/// Valid, but likely mistakes: a stream fed by a source with no enabled export (it fills up)
/// and a stream no source feeds. `validate` passes (exit 0) and says so, with the lines.
#[test]
fn likely_mistakes_are_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    std::fs::write(
        &path,
        r#"[gateway]
data_dir = "/tmp/streamgate-test"
equipment_id = "eq-1"

[[streams]]
name = "line"
max_size = "64MiB"

[[streams.exports]]
kind = "stdout"
disabled = true

[[streams]]
name = "spare"

[[streams.exports]]
kind = "stdout"

[[sources]]
kind = "simulator"
id = "sim"
stream = "line"

[[sources.tags]]
name = "t"
"#,
    )
    .unwrap();
    let (code, stdout, stderr) = validate(&path);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("is valid"), "{stdout}");
    assert_eq!(
        stderr,
        "warning: streams[0]: stream \"line\" has sources but no enabled export: its samples stay queued until it holds max_size (64 MiB), then new samples are dropped (strategy_on_full = \"reject_new\") (line 5)\n\
         warning: streams[1]: no source sends to stream \"spare\"; set `stream = \"spare\"` on a source or a tag, or remove the stream (line 13)\n"
    );
}

/// A file far bigger than any config is refused before it is read (bounded memory on a small
/// gateway), with a message that says why.
#[test]
fn a_huge_file_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.toml");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(50 << 20).unwrap(); // 50 MiB (sparse: nothing to write)
    let (code, _, stderr) = validate(&path);
    assert_eq!(code, 78, "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "{} has 1 error(s):\n  the file is larger than 8 MiB, the most a configuration may be; is it the right file?\n",
            path.display()
        )
    );
}

/// CLI values are checked as strictly as the file's: an unknown log format or a word that is
/// no log level (which would silence the daemon) is refused with the choices.
#[test]
fn cli_values_are_validated() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_streamgate"))
            .args(args)
            .args(["validate", "--config", "config/example.toml"])
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--log-format", "xml"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("invalid value 'xml'") && err.contains("[possible values: human, json]"),
        "{err}"
    );
    let (code, err) = run(&["--log-level", "chatty"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(
            "\"chatty\" is not a log level; use one of trace, debug, info, warn, error, off"
        ),
        "{err}"
    );
    let (code, err) = run(&[
        "--log-level",
        "info,streamgate=debug",
        "--log-format",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
}

/// `validate` says what each source will do; an OPC UA source without `sampling_interval`
/// says its tags are sampled at the publishing interval (the default is not silent).
#[test]
fn validate_shows_the_effective_intervals() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    std::fs::write(
        &path,
        r#"[gateway]
data_dir = "/tmp/streamgate-test"
equipment_id = "eq-1"

[[streams]]
name = "line"

[[streams.exports]]
kind = "stdout"

[[sources]]
kind = "opcua"
id = "mixer"
endpoint = "opc.tcp://192.0.2.20:4840"
publishing_interval = "2s"

[[sources.tags]]
name = "speed"
node = "ns=2;s=Speed"

[[sources.tags]]
name = "level"
node = "ns=2;s=Level"
mode = "poll"
"#,
    )
    .unwrap();
    let (code, stdout, stderr) = validate(&path);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(
            "  source mixer (opcua): 2 tag(s): 1 subscribed, sampled every 2.0s (sampling_interval not set: the publishing_interval), published every 2.0s; 1 polled every 1.0s\n"
        ),
        "{stdout}"
    );
}

/// `tags_file`: the tags of a Modbus, an S7 and an OPC UA source from CSV files (comma and
/// semicolon separated, quoted cells, a comment column), after the tags of the config itself.
#[test]
fn tags_come_from_csv_files() {
    let path = Path::new("tests/configs/tags/gateway.toml");
    let (code, stdout, stderr) = validate(path);
    assert_eq!(code, 0, "{stderr}");
    for line in [
        "  source meter (modbus_tcp): 4 tag(s), polled every 1.0s\n",
        "  source plc (s7): 3 tag(s), polled every 1.0s\n",
        "  source mixer (opcua): 3 tag(s): 2 subscribed, sampled every 1.0s (sampling_interval not set: the publishing_interval), published every 1.0s; 1 polled every 1.0s\n",
    ] {
        assert!(stdout.contains(line), "{line} in {stdout}");
    }
    // What the rows say reaches the tags.
    let cfg = streamgate::app::config::load_checked(path, false).unwrap();
    let text = format!("{:?}", cfg.sources);
    for needle in [
        // The config's own tag first, then the file's rows in order.
        "name: \"inline\"",
        "name: \"energy\", stream: None, area: HoldingRegister, address: 0, data_type: U32",
        "name: \"run\", stream: None, area: Coil, address: 0",
        "address_text: \"DB1,REAL2\"",
        "name: \"cell\"",
        "index: Some([1, 0])",
    ] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
    assert!(text.find("\"inline\"") < text.find("\"energy\""));
}
