#!/usr/bin/env bash
# Kafka export tests (tests/kafka.rs): Tansu, an Apache Kafka compatible broker written in Rust
# (Apache Kafka's own jars are not reachable from here), built once from crates.io with its
# libSQL storage (topics survive a broker restart) and cached outside the repository;
# kafka-python as the independent consumer; socat terminates TLS in front of Tansu (its 0.6.0
# command line refuses --cert together with --key).
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
TANSU_VERSION=0.6.0
root="${STREAMGATE_PEERS:-$HOME/.cache/streamgate-peers}/tansu-$TANSU_VERSION"
if ! "$root/bin/tansu" --version >/dev/null 2>&1; then
    echo "building tansu $TANSU_VERSION (once; several minutes on 2 cores) into $root"
    cargo install --quiet --locked --version "$TANSU_VERSION" --features libsql --root "$root" tansu
fi
need_apt socat openssl
need_pip kafka "kafka-python==3.0.12"
# kafka-python decodes zstd and lz4 record batches with these (the tests read them back).
need_pip zstandard "zstandard==0.25.0"
need_pip lz4 "lz4==4.4.5"
