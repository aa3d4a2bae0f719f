#!/usr/bin/env bash
# systemd-analyze and man, for tests/systemd.rs (verify + offline security score of the unit file).
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
command -v systemd-analyze >/dev/null 2>&1 || need_apt systemd
# man: verify checks that the unit's Documentation=man:streamgate(1) page is found.
command -v man >/dev/null 2>&1 || need_apt man-db
