#!/usr/bin/env bash
# Peer of the S7 reader tests: python-snap7's pure-Python S7 server (snap7.server.Server).
# 3.x is pure Python (no libsnap7.so); pinned because the tests rely on its server internals
# (request counting wraps Server._handle_read_area).
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
python3 -m pip --version >/dev/null 2>&1 || need_apt python3 python3-pip
python3 -c 'import snap7, sys; sys.exit(0 if snap7.__version__ == "3.3.0" else 1)' >/dev/null 2>&1 \
    || python3 -m pip install --quiet --disable-pip-version-check "python-snap7==3.3.0"
