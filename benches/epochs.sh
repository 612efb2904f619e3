#!/usr/bin/env bash
# Epoch time against state: the goal is the last of three 4M-event replay epochs within 1.3x of the
# first. EVENTS (default 12M) generated events over DAYS (12) days, replayed with the shipped graph
# in epochs of EPOCH_EVENTS (4M), RUNS times (3), each run into a fresh lakehouse. Prints each
# run's epoch seconds, wall time, max RSS and last ÷ first, then the median of the ratios.
#
# Before each replay the page cache is emptied (when run as root, so the raw input is read from
# disk) and the script waits SETTLE seconds (default 8). Why the wait: on a VM whose memory balloon
# reports free pages to the host, memory the guest freed a moment ago is still backed, while memory
# free for a few seconds is not, and its first touch costs up to ~10 µs per 4 KiB page
# (benches/README.md, "The VM's fresh pages"). Replayed right after the page cache is emptied, the
# first epoch writes its files into pages just freed and the later ones into pages handed back, and
# the ratio measured the VM more than the engine (same build: 1.36 at once, 1.15 after the wait).
#
# Usage: [RUNS=3] [SETTLE=8] [EVENTS=12000000] [DAYS=12] [EPOCH_EVENTS=4000000] bash benches/epochs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
events=${EVENTS:-12000000}
days=${DAYS:-12}
epoch_events=${EPOCH_EVENTS:-4000000}
runs=${RUNS:-3}
settle=${SETTLE:-8}
source benches/temp_lake.sh
[ -x "$bin" ] || cargo build --release -p runtime
ratios=()
for run in $(seq 1 "$runs"); do
    rm -rf "$work/catalog.db" "$work/warehouse"
    sed -i "s/^replay_epoch_events = .*/replay_epoch_events = $epoch_events/" "$work/graph.toml"
    "$bin" --graph "$work/graph.toml" init > /dev/null
    "$bin" --graph "$work/graph.toml" generate --events "$events" --days "$days" --start 2025-05-01 > /dev/null 2>&1
    sync
    echo 3 > /proc/sys/vm/drop_caches 2> /dev/null || true
    sleep "$settle"
    RUST_LOG=info /usr/bin/env time -f "wall %e s, max RSS %M KiB" "$bin" --graph "$work/graph.toml" --mode replay \
        --from 2025-05-01 -w 2 --no-progress > /dev/null 2> "$work/log"
    seconds=$(grep "epoch replayed" "$work/log" | sed -E 's/.*seconds="([0-9.]+)".*/\1/' | tr '\n' ' ')
    ratio=$(echo "$seconds" | awk '{ if (NF < 2) print "n/a"; else printf "%.2f", $NF / $1 }')
    ratios+=("$ratio")
    echo "run $run of $runs: epochs ${seconds}s; $(tail -1 "$work/log"); last / first = $ratio"
done
median=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{ r[NR] = $1 } END { print r[int((NR + 1) / 2)] }')
echo "epoch growth, median of $runs runs: last / first = $median ($events events over $days days, epochs of $epoch_events)"
