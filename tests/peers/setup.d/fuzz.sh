#!/usr/bin/env bash
# cargo-fuzz for tests/fuzz/run (libFuzzer targets, built with the stable toolchain and
# RUSTC_BOOTSTRAP=1). Pinned: its command line and flags are what tests/fuzz/run relies on.
# libFuzzer itself is compiled from source by the libfuzzer-sys crate (needs a C++ compiler).
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
command -v c++ >/dev/null 2>&1 || need_apt g++
if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz 0.13.2" ]; then
    cargo install cargo-fuzz --locked --version 0.13.2
fi
