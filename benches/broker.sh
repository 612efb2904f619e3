# Sourced by the bench scripts that read Kafka (from the repository root): makes the scratch
# folder $work, starts the project's broker unless one is running, and on exit removes $work and
# stops the broker if it started it.
work=$(mktemp -d)
started_kafka=0
bash scripts/kafka.sh running || started_kafka=1
bash scripts/kafka.sh up >/dev/null
cleanup() { rm -rf "$work"; if [ "$started_kafka" = 1 ]; then bash scripts/kafka.sh down >/dev/null; fi; }
trap cleanup EXIT
