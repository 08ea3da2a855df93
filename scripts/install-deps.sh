#!/usr/bin/env bash
# Everything the tests need beyond Rust and Node: idempotent, non-interactive, run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

for script in scripts/install-bench-peers.sh scripts/install-browser-deps.sh; do
  if [ -x "$script" ]; then
    "$script"
  fi
done
