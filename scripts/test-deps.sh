#!/usr/bin/env bash
# Installs what the test suites need beyond cargo's own dependencies.
# Idempotent and quiet: safe to run before every test run (CI does).
#
#   aiosmtpd (PyPI): the real SMTP server the SMTP provider's tests talk to
#                    (processors/tests/support/smtp_server.py).
#   helm, kubernetes-validate, compose-go's validator: what
#                    scripts/deploy-check.sh runs, via scripts/tools.sh
#                    (cached outside the repository; helm's first build
#                    takes minutes).
#
# The tests run `python3` (override with TIDINGS_TEST_PYTHON); this installs
# into that interpreter.
set -euo pipefail

PYTHON=${TIDINGS_TEST_PYTHON:-python3}

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "test-deps: $PYTHON not found; the SMTP provider tests need Python 3 with aiosmtpd" >&2
    exit 1
fi

if ! "$PYTHON" -c 'import aiosmtpd' >/dev/null 2>&1; then
    # --user, except inside a virtualenv, where --user is refused.
    user_flag=--user
    if "$PYTHON" -c 'import sys; sys.exit(0 if sys.prefix != sys.base_prefix else 1)'; then
        user_flag=
    fi
    "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-warn-script-location $user_flag 'aiosmtpd>=1.4,<2'
    "$PYTHON" -c 'import aiosmtpd' || { echo "test-deps: aiosmtpd installed but not importable by $PYTHON" >&2; exit 1; }
fi

"$(dirname "$0")/tools.sh" all
