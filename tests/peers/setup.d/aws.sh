#!/usr/bin/env bash
# moto's server: a local Kinesis / Firehose / S3 API for tests/aws.rs and examples/bench_aws.rs.
# moto[server] brings flask, flask-cors and werkzeug, which `moto_server` needs.
set -euo pipefail
cd "$(dirname "$0")"
source ../lib.sh
command -v python3 >/dev/null || need_apt python3 python3-pip
if ! python3 -c "import moto, flask, flask_cors" >/dev/null 2>&1; then
    python3 -m pip install --quiet --disable-pip-version-check 'moto[server]==5.2.1' \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages 'moto[server]==5.2.1'
fi
# pyenv puts console scripts on PATH through shims, made by `pyenv rehash`.
command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
command -v moto_server >/dev/null || { echo "moto_server is not on PATH after installing moto[server]" >&2; exit 1; }
