#!/usr/bin/env bash
# Runs Riffle's whole test suite: formatting, lints, unit, property,
# crash, corruption and end-to-end tests (the e2e tests drive the real
# `riffle` binary on 127.0.0.1). This is the README's test command and what
# CI runs. It installs what the tests need; today that is only the Rust
# toolchain the machine already has and the openssl CLI (installed below
# if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found; install the Rust toolchain (rustup) first" >&2
  exit 1
fi

# The TLS end-to-end test makes its certificates with the openssl CLI.
if ! command -v openssl >/dev/null 2>&1; then
  echo "==> installing openssl (TLS tests)"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq openssl; else sudo apt-get update -qq && sudo apt-get install -y -qq openssl; fi
fi

# Services later issues need (Redis, PostgreSQL, a Kafka-protocol broker)
# will be installed and started here, on loopback only.

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo test"
cargo test --workspace --locked
