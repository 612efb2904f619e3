#!/usr/bin/env bash
# Whole-process timing of `runtime --mode replay` on 10M generated events over 10 days (release).
# Usage: bash benches/replay_10m.sh [events] [workers]
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-10000000}
workers=${2:-2}
source benches/temp_lake.sh
[ -x "$bin" ] || cargo build --release -p runtime
"$bin" --graph "$work/graph.toml" init > /dev/null
echo "generating $events events..."
"$bin" --graph "$work/graph.toml" generate --events "$events" --days 10 --start 2025-05-01
echo "replaying with $workers workers..."
/usr/bin/env time -f "wall %e s, max RSS %M KiB" "$bin" --graph "$work/graph.toml" --mode replay --from 2025-05-01 -w "$workers" --no-progress
