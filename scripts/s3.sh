#!/usr/bin/env bash
# Starts or stops the project's S3-protocol server on loopback: s3s-fs (the s3s project's file
# system backed S3 server) in tools/s3-server, installed into .tools/ by `cargo install`, keeping
# its objects as files under .s3/data/. Used by `make s3-up` / `make s3-down` and `make test`.
#
#   scripts/s3.sh up [BUCKET]   install the server if missing or changed, start it (idempotent), wait until it
#                               answers, create BUCKET (default warehouse)
#   scripts/s3.sh down          stop what `up` started (the objects stay in .s3/data/)
#   scripts/s3.sh running       exit 0 when the server runs
#   scripts/s3.sh env           print the settings a client needs, as shell exports
#
# Port S3_PORT (9000). The server's key pair: S3_ACCESS_KEY / S3_SECRET_KEY (defaults below are
# for this loopback server only; a deployment's keys come from its own environment).
set -euo pipefail
cd "$(dirname "$0")/.."
S3_PORT=${S3_PORT:-9000}
S3_ACCESS_KEY=${S3_ACCESS_KEY:-ratings-flow-local}
S3_SECRET_KEY=${S3_SECRET_KEY:-ratings-flow-local-secret}
# Pinned (tools/s3-server/Cargo.toml and its Cargo.lock): s3s-fs 0.14.1 is the newest release
# that builds with this machine's Rust (1.95); later ones need 1.96. Chosen over moto's server
# because it checks request signatures against its key pair (moto accepts any key unless its IAM
# emulation is set up) and keeps objects as plain files. tools/s3-server is its library behind an
# accept loop that sets TCP_NODELAY, as production stores do (why: tools/s3-server/src/main.rs).
# Its limit: it names a side file of every object after the base64 of bucket and key, so a bucket
# name plus key must stay under ~165 bytes (the file system's 255-byte names); the tests use short
# prefixes.
STATE=.s3
BIN=.tools/bin/s3-server
STAMP=.tools/s3-server.sha256
mkdir -p "$STATE/data"

alive() { [ -f "$STATE/server.pid" ] && kill -0 "$(cat "$STATE/server.pid")" 2>/dev/null; }
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$S3_PORT") 2>/dev/null; }

install() {
  local want
  want=$(cat tools/s3-server/Cargo.toml tools/s3-server/Cargo.lock tools/s3-server/src/*.rs | sha256sum | cut -d' ' -f1)
  if [ -x "$BIN" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ]; then return 0; fi
  echo "installing the S3 server (s3s-fs 0.14.1) into .tools/ (once; takes a few minutes)..."
  cargo install --quiet --locked --root .tools --path tools/s3-server
  echo "$want" >"$STAMP"
}

up() {
  local bucket=${1:-warehouse}
  install
  if ! alive; then
    if answers; then
      echo "127.0.0.1:$S3_PORT is taken by a process this checkout did not start; stop it, or set S3_PORT" >&2
      exit 1
    fi
    "$BIN" --host 127.0.0.1 --port "$S3_PORT" --access-key "$S3_ACCESS_KEY" --secret-key "$S3_SECRET_KEY" \
      "$STATE/data" >"$STATE/server.log" 2>&1 &
    echo $! >"$STATE/server.pid"
  fi
  for _ in $(seq 1 100); do
    if answers; then break; fi
    sleep 0.1
  done
  if ! alive || ! answers; then
    echo "the S3 server did not come up; see $STATE/server.log" >&2
    exit 1
  fi
  # s3s-fs keeps a bucket as a folder of its root.
  mkdir -p "$STATE/data/$bucket"
  echo "S3 server on http://127.0.0.1:$S3_PORT (bucket $bucket, objects in $STATE/data/)"
}

down() {
  if alive; then
    kill "$(cat "$STATE/server.pid")" 2>/dev/null || true
    for _ in $(seq 1 50); do alive || break; sleep 0.1; done
  fi
  rm -f "$STATE/server.pid"
}

case "${1:-}" in
  up) shift; up "$@" ;;
  down) down ;;
  running) alive ;;
  env)
    echo "export RATINGS_FLOW_TEST_S3=http://127.0.0.1:$S3_PORT"
    echo "export AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY"
    echo "export AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY"
    ;;
  *) echo "usage: $0 up [BUCKET] | down | running | env" >&2; exit 2 ;;
esac
