#!/usr/bin/env bash
# For tests/package.rs (builds the amd64 .deb with cross/deb, checks it with lintian, installs,
# upgrades and purges it): dpkg-deb, readelf/strip, lintian, adduser (the postinst's), setpriv
# (runs the daemon as the streamgate user), deb-systemd-helper (init-system-helpers).
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
need_apt dpkg binutils lintian adduser util-linux init-system-helpers gzip xz-utils
