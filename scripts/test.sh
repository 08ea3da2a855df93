#!/usr/bin/env bash
# The project's test command (README, .ci/run). Installs what the tests need, builds every
# binary the tests start (the server, the bench, the peers), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

# No module of any crate may import another that imports it back (prints each graph).
scripts/module-graph

cargo build --workspace --bins --locked
cargo nextest run --workspace --locked --no-fail-fast

if [ -f tests/browser/chat.test.mjs ]; then
  SOKDO_BIN="$PWD/target/debug/sokdo" node --test tests/browser/
fi
