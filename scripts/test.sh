#!/usr/bin/env bash
# Runs the whole test suite and ends with one aggregate line over every test binary:
# "tests: N passed, N failed". Exits with cargo's status.
set -uo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
awk '/^test result:/ {passed += $4; failed += $6} END {printf "tests: %d passed, %d failed\n", passed, failed}' "$log"
exit "$status"
