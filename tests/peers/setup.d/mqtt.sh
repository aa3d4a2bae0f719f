#!/usr/bin/env bash
# MQTT export tests: a real mosquitto broker (started by tests/mqtt.rs on 127.0.0.1 with its own
# config: plain, TLS with generated certificates, password file), mosquitto_sub as a real
# subscriber, and openssl to generate the test certificates.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
need_apt mosquitto mosquitto-clients openssl
