#!/usr/bin/env bash
# The third-party Python tools the tests run as black boxes, pinned, in a venv of the
# project's own (.venv at the repository root; nothing is installed system-wide):
#   - kosoku: the Autobahn WebSocket conformance cases (RFC 6455), run against the server;
#   - SecantusDB: a MongoDB-wire server on MongoDB's WiredTiger engine (GPL: run as a separate
#     service by the tests, never vendored or linked), for the MongoDB sink's tests.
# Idempotent and non-interactive. Tests find the tools at .venv/bin (or $SOKDO_PY_VENV/bin).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${SOKDO_PY_VENV:-$PWD/.venv}"
want="kosoku==0.1.0 SecantusDB==0.7.0b3"
stamp="$venv/.sokdo-installed"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
python3 -m venv "$venv"
# shellcheck disable=SC2086 # $want is a list of requirement specifiers
"$venv/bin/pip" install --quiet --disable-pip-version-check $want
"$venv/bin/kosoku" --help > /dev/null
"$venv/bin/secantusd-py" --help > /dev/null
echo "$want" > "$stamp"
