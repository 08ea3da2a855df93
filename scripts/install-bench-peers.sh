#!/usr/bin/env bash
# Installs what `sokdo-bench compare` needs beside sokdo itself, on a fresh machine; safe to
# re-run. The Node peers get their locked dependencies (npm ci), the tokio peer is built in the
# workspace, Chromium is installed only with --chromium (for screenshots of the HTML report).
#
#   scripts/install-bench-peers.sh             # Node peers + cargo build of the tokio peer
#   scripts/install-bench-peers.sh --chromium  # … and Debian's chromium
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

for peer in socketio ws; do
  dir="$root/bench/peers/$peer"
  echo "== npm ci in bench/peers/$peer"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
done

echo "== cargo build --release -p sokdo-peer-tokio -p sokdo-bench"
(cd "$root" && cargo build --release -p sokdo-peer-tokio -p sokdo-bench)

if [[ "${1:-}" == "--chromium" ]]; then
  if ! command -v chromium >/dev/null; then
    echo "== apt-get install chromium"
    apt-get update && apt-get install -y chromium
  fi
fi
echo "bench peers installed"
