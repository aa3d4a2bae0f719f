#!/usr/bin/env bash
# cargo-deny for tests/deny/run (licenses, banned crates, sources, security advisories).
# Pinned: deny.toml is written for this version.
set -euo pipefail
if [ "$(cargo deny --version 2>/dev/null)" != "cargo-deny 0.20.2" ]; then
    cargo install cargo-deny --locked --version 0.20.2
fi
