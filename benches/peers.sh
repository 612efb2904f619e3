#!/usr/bin/env bash
# `make bench-peers`: the same raw rows through DuckDB 1.5.5 (the ratings rules as SQL) and through
# `runtime --mode replay` (the shipped graph: both plugins, every check), in one run.
# Usage: bash benches/peers.sh [events] [workers]    (defaults: 10000000 events over 10 days, 2 workers)
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-10000000}
workers=${2:-2}
bash scripts/python-env.sh
python=$PWD/.venv/bin/python
source benches/temp_lake.sh
catalog=(--database "$work/catalog.db" --warehouse "$work/warehouse" --catalog ratings_flow)
"$bin" --graph "$work/graph.toml" init > /dev/null
echo "generating $events events over 10 days..."
"$bin" --graph "$work/graph.toml" generate --events "$events" --days 10 --start 2025-05-01 > /dev/null
"$python" benches/peers.py export "${catalog[@]}" --table raw.movie_ratings_raw --out "$work/export" > "$work/export.json"
echo "raw table exported: $(cat "$work/export.json")"
sync
# Each side starts from the same memory state: the page cache emptied (where this user may: a
# full cache makes the kernel reclaim while the engine allocates, which doubled its system time
# here) and the raw files read back into it, so both read warm input.
same_start() {
  sync
  { echo 3 > /proc/sys/vm/drop_caches; } 2> /dev/null || true
  cat "$work"/export/* > /dev/null
}
timed() { # label, command...: runs the command under /usr/bin/time, prints "label: wall s, max RSS"
  local label=$1; shift
  same_start
  /usr/bin/env time -f "%e %M" -o "$work/$label.time" "$@" > "$work/$label.out" 2> "$work/$label.err" \
    || { cat "$work/$label.err" >&2; exit 1; }
  read -r wall rss < "$work/$label.time"
  printf '%-8s %7.2f s  %6.0f MiB max RSS  %s events/s\n' "$label" "$wall" "$((rss / 1024))" \
    "$(awk -v n="$events" -v s="$wall" 'BEGIN { printf "%.0f", n / s }')"
}
echo "--- $events events, $workers workers / threads, $(nproc) cores"
timed duckdb "$python" benches/peers.py duckdb --files "$work/export" --out "$work/duckdb" \
  --blocklist graphs/blocklists/users.txt --threads "$workers"
timed engine "$bin" --graph "$work/graph.toml" --mode replay --from 2025-05-01 -w "$workers" --no-progress
awk '{ print $1 }' "$work/duckdb.time" > "$work/duckdb.wall"
awk '{ print $1 }' "$work/engine.time" > "$work/engine.wall"
echo "ratio    engine / duckdb = $(awk -v a="$(cat "$work/engine.wall")" -v b="$(cat "$work/duckdb.wall")" 'BEGIN { printf "%.2f", a / b }')"
grep -E '^(replay|  upserted|  rejected)' "$work/engine.out" | sed 's/^/engine   /'
"$python" benches/peers.py compare "${catalog[@]}" --curated curated.movie_ratings \
  --rejected curated.movie_ratings_rejected --out "$work/duckdb" > "$work/compare.json"
"$python" - "$work/compare.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
engine, duck = c["engine_rejected"], c["duckdb_rejected"]
late_updates = engine.get("late_update", 0)
print(f"rows     curated: engine {c['engine_curated']:,}, duckdb {c['duckdb_curated']:,}; "
      f"events on one side only {c['events_on_one_side_only']:,}; winners differing {c['winners_differing']:,} "
      f"(late updates the SQL does not state: {late_updates:,})")
print(f"rows     rejected: engine {sum(engine.values()):,} {engine}")
print(f"rows     rejected: duckdb {sum(duck.values()):,} {duck}")
same = (c["engine_curated"] == c["duckdb_curated"] and c["events_on_one_side_only"] == 0
        and c["winners_differing"] <= late_updates
        and {k: v for k, v in engine.items() if k != "late_update"} == duck)
print("rows     " + ("agree (accounting for the late-update rule)" if same else "DISAGREE"))
sys.exit(0 if same else 1)
PY
