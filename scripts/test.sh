#!/usr/bin/env bash
# Runs the whole test suite against a broker and registry this script starts (and stops again if
# it started them), and ends with one aggregate line over every test binary:
# "tests: N passed, N failed", and checks that the benchmarks still build. Exits non-zero if
# any test failed or a benchmark does not build.
set -uo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
started_kafka=0
started_s3=0
bash scripts/kafka.sh running || started_kafka=1
bash scripts/kafka.sh up || exit 1
bash scripts/s3.sh running || started_s3=1
bash scripts/s3.sh up || exit 1
cleanup() {
  rm -f "$log"
  if [ "$started_kafka" = 1 ]; then bash scripts/kafka.sh down >/dev/null; fi
  if [ "$started_s3" = 1 ]; then bash scripts/s3.sh down >/dev/null; fi
}
trap cleanup EXIT
export RATINGS_FLOW_TEST_BROKERS="127.0.0.1:${KAFKA_PORT:-9092}"
eval "$(bash scripts/s3.sh env)"
# A whole-suite run rebuilds every crate once: incremental state would only add gigabytes of disk
# (set CARGO_INCREMENTAL=1 to keep it between edits).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cargo test --workspace --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# The criterion benchmarks are not run here (make bench), but they must still build. The dev
# profile reuses the test build's dependencies: the bench profile would rebuild the whole workspace
# optimised, minutes of CI for a check that only needs the code to compile and link.
if ! cargo build --workspace --benches --profile dev; then
  echo "the benchmarks do not build"
  status=1
fi
awk '/^test result:/ {passed += $4; failed += $6} END {printf "tests: %d passed, %d failed\n", passed, failed}' "$log"
exit "$status"
