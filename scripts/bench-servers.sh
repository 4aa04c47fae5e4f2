#!/usr/bin/env bash
# tidings on the test servers (scripts/servers.sh up), with the servers' own
# CPU beside the process's (issue 11; docs/benchmarks.md):
#
#   scripts/bench-servers.sh bench TAG [tidings bench options]
#   scripts/bench-servers.sh idle TAG
#
# `bench` runs `tidings bench --channel android --notifications 15000
# --users 5000 --batch 100 --callers 4 --no-baseline` (options given are
# added, e.g. `--rate 700`) and prints Cassandra's and Kafka's CPU per
# notification over the send phase: from the bench's "measuring" line to
# its end, read from /proc/<pid>/stat. `idle` starts `tidings dev` on the
# servers, lets it settle for 20 s, then prints the CPU the process, Kafka
# and Cassandra use over the next 30 s with nothing sent.
#
# TAG names the run's keyspace (bench_TAG / idle_TAG), topic prefix and
# consumer groups, so runs never see each other's data; use a new one per
# run. TIDINGS is the binary (default target/release/tidings), so two
# builds can be compared run by run: TIDINGS=/tmp/before scripts/...
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODE=${1:-}
TAG=${2:-}
if [ -z "$TAG" ] || { [ "$MODE" != bench ] && [ "$MODE" != idle ]; }; then
  echo "usage: $0 bench|idle TAG [tidings bench options]" >&2
  exit 2
fi
shift 2
TIDINGS=${TIDINGS:-$ROOT/target/release/tidings}
LOGS=${TMPDIR:-/tmp}/tidings-bench-servers
mkdir -p "$LOGS"

CASSANDRA=$(cat "$ROOT/.servers/cassandra/cassandra.pid" 2>/dev/null || true)
KAFKA=$(pgrep -f 'kafka\.Kafka' | head -1 || true)
if [ -z "$CASSANDRA" ] || [ -z "$KAFKA" ] || [ ! -d "/proc/$CASSANDRA" ]; then
  echo "the test servers are not running: scripts/servers.sh up" >&2
  exit 1
fi
# user + system CPU of a process, in clock ticks
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

eval "$("$ROOT/scripts/servers.sh" env)"
export TIDINGS_STORE__URL=scylla://$TIDINGS_TEST_CQL/${MODE}_$TAG
export TIDINGS_KAFKA__TOPIC_PREFIX=$MODE$TAG TIDINGS_KAFKA__GROUP_PREFIX=$MODE$TAG
export TIDINGS_TRACKING__LINK_SECRET=bench-secret TIDINGS_FEED__USER_TOKEN_SECRET=bench-secret
export TIDINGS_KAFKA__BOOTSTRAP_SERVERS=$TIDINGS_TEST_KAFKA

if [ "$MODE" = idle ]; then
  export TIDINGS_GATEWAY__GRPC_ADDR=127.0.0.1:0 TIDINGS_GATEWAY__HTTP_ADDR=127.0.0.1:0
  "$TIDINGS" init > "$LOGS/$TAG-init.log" 2>&1
  "$TIDINGS" dev > "$LOGS/$TAG-dev.log" 2>&1 &
  pid=$!
  trap 'kill $pid 2>/dev/null || true' EXIT
  sleep 20
  p0=$(ticks $pid) k0=$(ticks "$KAFKA") c0=$(ticks "$CASSANDRA")
  sleep 30
  p1=$(ticks $pid) k1=$(ticks "$KAFKA") c1=$(ticks "$CASSANDRA")
  per_second() { echo $((($2 - $1) * 1000 / HZ / 30)); }
  echo "idle ($TAG), ms of CPU per second over 30 s: tidings $(per_second "$p0" "$p1"), kafka $(per_second "$k0" "$k1"), cassandra $(per_second "$c0" "$c1")"
  exit 0
fi

N=15000
"$TIDINGS" migrate > "$LOGS/$TAG-migrate.log" 2>&1
log=$LOGS/$TAG-bench.log
"$TIDINGS" bench --channel android --notifications $N --users 5000 --batch 100 \
  --callers 4 --no-baseline "$@" > "$log" 2>&1 &
pid=$!
c0="" k0=""
while kill -0 $pid 2>/dev/null; do
  if [ -z "$c0" ] && grep -q measuring "$log"; then
    c0=$(ticks "$CASSANDRA") k0=$(ticks "$KAFKA")
  fi
  sleep 0.1
done
c1=$(ticks "$CASSANDRA") k1=$(ticks "$KAFKA")
wait $pid || { echo "bench failed: $log" >&2; tail -5 "$log" >&2; exit 1; }
grep -E '^  (throughput|accept->provider|cpu  |statements|stage outputs)' "$log"
echo "  servers         cassandra $(((c1 - c0) * 1000000 / HZ / N)) us, kafka $(((k1 - k0) * 1000000 / HZ / N)) us of CPU per notification over the send phase"
