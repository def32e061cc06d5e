#!/usr/bin/env bash
# Runs the Kafka end-to-end tests (crates/riffle/tests/kafka.rs, against a
# tansu broker per test) N times in a row and stops at the first failure.
# It guards against librdkafka aborting the process on a rebalance or a
# consumer teardown (issue 5573 in librdkafka 2.12.1; see
# docs/adr/0003-kafka-exactly-once-and-ownership.md), which showed up only
# now and then: one run proves little, fifty say more.
#   Usage: bash scripts/kafka-loop.sh [N]   (default 50)
# It installs the test tools like scripts/test.sh does, builds the test
# binary once, and prints one line per run plus a summary.
set -euo pipefail
cd "$(dirname "$0")/.."

runs="${1:-50}"
case "$runs" in
  '' | *[!0-9]*) echo "error: N must be a whole number, got '$runs'" >&2; exit 2 ;;
esac

eval "$(bash scripts/kafka-tools.sh)"

# Built with --workspace, as scripts/test.sh builds it: `-p riffle` would
# resolve features for one package only and compile every dependency a
# second time (twice the time and the disk on a fresh CI machine). Cargo's
# own errors stay on stderr so a failed build says why.
binary=$(cargo test --workspace --test kafka --locked --no-run --message-format=json \
  | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") \
            and msg["target"]["name"] == "kafka":
        print(msg["executable"])
')
if [ -z "$binary" ]; then
  echo "error: could not build the kafka test binary (run: cargo test --workspace --test kafka --no-run)" >&2
  exit 1
fi

log=$(mktemp -t riffle-kafka-loop.XXXXXX)
trap 'rm -f "$log"' EXIT
started=$(date +%s)
for i in $(seq 1 "$runs"); do
  t0=$(date +%s)
  set +e
  (cd crates/riffle && "$binary" --test-threads=2) >"$log" 2>&1
  status=$?
  set -e
  echo "run $i/$runs: exit $status in $(( $(date +%s) - t0 )) s"
  # The test runner's own closing line, as cargo test prints it.
  grep -E '^test result:' "$log" | tail -n1 || echo "run $i printed no test result line"
  if [ "$status" -ne 0 ]; then
    if [ "$status" -eq 134 ] || grep -q 'Assertion' "$log"; then
      echo "run $i aborted (SIGABRT):" >&2
    else
      echo "run $i failed:" >&2
    fi
    tail -n 80 "$log" >&2
    exit 1
  fi
done
echo "kafka loop: $runs of $runs runs passed, no abort, in $(( $(date +%s) - started )) s"
