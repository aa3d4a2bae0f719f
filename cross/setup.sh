#!/usr/bin/env bash
# Installs what cross/build and cross/prove need on a fresh Debian 12 machine. Idempotent:
# every step checks first and skips what is already there. Needs root for apt (as tests/peers).
#
# Pinned: ziglang (the linker and C compiler for every target: it supplies glibc 2.28 stubs
# for the gnu targets and musl for the static one, so Debian's cross gcc, which links
# against glibc 2.36, is never used for the final link) and cargo-zigbuild.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=../tests/peers/lib.sh
source tests/peers/lib.sh

ZIGLANG_VERSION=0.15.2
CARGO_ZIGBUILD_VERSION=0.24.1
TARGETS=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf aarch64-unknown-linux-musl)

# qemu-user-static runs the ARM binaries (binfmt need not be mounted: cross/prove calls qemu
# itself); binutils-multiarch gives readelf for foreign ELF files (plain readelf reads them
# too, kept for objdump); the libc6-dev cross packages are the runtime sysroots qemu's -L needs.
need_apt qemu-user-static binutils libc6-dev-arm64-cross libc6-dev-armhf-cross python3-pip file

for t in "${TARGETS[@]}"; do
    rustup target list --installed | grep -qx "$t" || rustup target add "$t"
done

if ! python3 -m ziglang version 2>/dev/null | grep -qx "$ZIGLANG_VERSION"; then
    python3 -m pip install --quiet --disable-pip-version-check "ziglang==$ZIGLANG_VERSION" \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages \
            "ziglang==$ZIGLANG_VERSION"
fi

if ! cargo-zigbuild --version 2>/dev/null | grep -qx "cargo-zigbuild $CARGO_ZIGBUILD_VERSION"; then
    cargo install --locked --version "$CARGO_ZIGBUILD_VERSION" cargo-zigbuild
fi

echo "cross/setup.sh: zig $(python3 -m ziglang version), $(cargo-zigbuild --version), targets: ${TARGETS[*]}"
