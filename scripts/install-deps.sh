#!/usr/bin/env bash
# What the test command needs beyond Rust and Node: Chromium, a Hangul font and
# playwright-core for the browser test; kosoku (Autobahn cases) and SecantusDB (a MongoDB-wire
# server) in the project's venv; cargo-fuzz for scripts/fuzz. Idempotent, non-interactive,
# run as root.
# (The bench's comparison peers are installed separately: scripts/install-bench-peers.sh.)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-browser-deps.sh
scripts/install-python-deps.sh
scripts/install-fuzz.sh
