#!/usr/bin/env bash
# systemd-analyze, for tests/systemd.rs (verify + offline security score of the unit file).
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
command -v systemd-analyze >/dev/null 2>&1 || need_apt systemd
