#!/usr/bin/env bash
# Installs every test peer: runs each tests/peers/setup.d/*.sh (one per peer family).
# Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")"
for f in setup.d/*.sh; do
    [ -e "$f" ] || continue
    echo "test peers: $(basename "$f" .sh)"
    bash "$f"
done
