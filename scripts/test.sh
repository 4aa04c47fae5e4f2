#!/usr/bin/env bash
# Runs every test of tidings: installs and starts real Kafka and Cassandra
# (reused when already running), installs the test tools, then builds and
# runs the whole workspace's tests. On failure it prints the servers' logs.
#
#   scripts/test.sh                 # everything
#   scripts/test.sh -p tidings-store  # extra arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> starting test servers (scripts/servers.sh up)"
scripts/servers.sh up
eval "$(scripts/servers.sh env)"

if [[ -x scripts/test-deps.sh ]]; then
    echo "==> installing test tools (scripts/test-deps.sh)"
    scripts/test-deps.sh
fi

echo "==> cargo test --workspace --no-fail-fast $*"
if ! cargo test --workspace --locked --no-fail-fast "$@"; then
    echo "==> tests failed; server logs follow" >&2
    scripts/servers.sh logs >&2 || true
    exit 1
fi
