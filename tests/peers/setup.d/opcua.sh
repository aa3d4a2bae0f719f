#!/usr/bin/env bash
# OPC UA peer: the asyncua Python server (pure Python; its crypto comes from the
# `cryptography` wheel). Pinned so the test's certificate and timestamp behaviour is stable.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
ASYNCUA=2.1.0
if ! python3 -c "import asyncua, sys; sys.exit(asyncua.__version__ != '$ASYNCUA')" >/dev/null 2>&1; then
    python3 -m pip install --quiet --disable-pip-version-check "asyncua==$ASYNCUA"
fi
