#!/usr/bin/env bash
# Modbus test peers: pymodbus (server, with pyserial for RTU) and socat (pseudo-terminal pairs).
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
need_apt socat
python3 -c "import pymodbus, serial, sys; sys.exit(pymodbus.__version__ != '3.16.1')" 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check "pymodbus[serial]==3.16.1"
