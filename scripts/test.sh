#!/usr/bin/env bash
# The project's test command (README, .ci/run). Installs what the tests need, builds every
# binary the tests start (the server, the bench, the peers), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

# No module of any crate may import another that imports it back (prints each graph).
scripts/module-graph

cargo build --workspace --bins --locked
# The server with the test-only `/autobahn` echo endpoint, for the Autobahn conformance test
# (docs/CONFORMANCE.md): a binary of its own beside `sokdo`, so neither build replaces the
# other. `--workspace` resolves the dependencies' features as above: only the engine rebuilds.
cargo build --workspace --bin sokdo-autobahn --features sokdo-engine/autobahn --locked
cargo nextest run --workspace --locked --no-fail-fast
# Every fuzz target (fuzz/, docs/SECURITY.md "Fuzzing") for a short run on its corpus: a
# crash, hang or out-of-memory input fails the test command with the reproducer's path.
scripts/fuzz 15

if [ -f tests/browser/chat.test.mjs ]; then
  SOKDO_BIN="$PWD/target/debug/sokdo" node --test tests/browser/
fi
