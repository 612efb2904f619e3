#!/usr/bin/env bash
# The long reliability campaign (`make chaos`): the seeded SIGKILL schedule with CHAOS_KILLS kills
# (default 60) while a producer sends, the broker paused for CHAOS_BROKER_PAUSE seconds (20), the
# catalog held locked, the warehouse's disk filling up, every failpoint of the stream's kill test,
# and FUZZ_CASES (1,000,000) mutated frames through the decoder. Starts the broker and registry
# if they are not running (and stops them again), then prints each part's figures (`chaos:` and
# `fuzz:` lines) and a last line "chaos: N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
export CHAOS_KILLS=${CHAOS_KILLS:-60} CHAOS_SEED=${CHAOS_SEED:-2026} CHAOS_BROKER_PAUSE=${CHAOS_BROKER_PAUSE:-20}
export FUZZ_CASES=${FUZZ_CASES:-1000000} FUZZ_GRAPH_CASES=${FUZZ_GRAPH_CASES:-20000}
started_kafka=0
bash scripts/kafka.sh running || started_kafka=1
bash scripts/kafka.sh up || exit 1
log=$(mktemp)
cleanup() {
  rm -f "$log"
  if [ "$started_kafka" = 1 ]; then bash scripts/kafka.sh down >/dev/null; fi
}
trap cleanup EXIT
export RATINGS_FLOW_TEST_BROKERS="127.0.0.1:${KAFKA_PORT:-9092}"
status=0
run() { cargo test -p ratings-tests "$@" -- --nocapture --test-threads 1 >>"$log" 2>&1 || status=1; }
run --test chaos
run --test fuzz
run --test whole_pipeline stream::a_sigkill_at_any_point
# Each figure line is the test's own output, printed after "test NAME ... " on the same line.
grep -oE '(chaos|fuzz): .*|^test [a-z_:]+ .*(ok|FAILED)$|panicked at.*' "$log"
awk '/^test result:/ {passed += $4; failed += $6} END {printf "chaos: %d passed, %d failed\n", passed, failed}' "$log"
exit "$status"
