//! `config::parse` on arbitrary text: never panics, and every error says where it is (a key
//! path or a line) and what is wrong.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(errors) = streamgate::app::config::parse(text) {
        assert!(!errors.is_empty(), "an Err carries at least one error");
        for e in &errors {
            assert!(
                !e.path.is_empty() || e.line.is_some(),
                "error without key path or line: {e}"
            );
            assert!(!e.message.trim().is_empty(), "error without message: {e:?}");
            if let Some(line) = e.line {
                let lines = text.split('\n').count();
                assert!(
                    line >= 1 && line <= lines.max(1),
                    "line {line} outside the text ({lines} lines): {e}"
                );
            }
        }
    }
});
