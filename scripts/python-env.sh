#!/usr/bin/env bash
# Creates .venv with the pinned independent readers (PyIceberg, DuckDB + its iceberg extension).
# Idempotent: reinstalls only when requirements changed.
set -euo pipefail
cd "$(dirname "$0")/.."
req=tests/python/requirements.txt
stamp=.venv/.requirements.sha256
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if ! python3 -m venv --help >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq python3-venv
fi
# --clear: a venv left half-made by an interrupted run (no pip in it) is made again from scratch.
python3 -m venv --clear .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -r "$req"
echo "$want" > "$stamp"
