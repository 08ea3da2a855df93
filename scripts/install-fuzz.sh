#!/usr/bin/env bash
# cargo-fuzz, pinned, for scripts/fuzz (docs/SECURITY.md "Fuzzing"). Idempotent: skips the
# install when that version is already there (a few minutes the first time).
set -euo pipefail
version=0.13.2
if [ "$(cargo fuzz --version 2>/dev/null || true)" != "cargo-fuzz $version" ]; then
  cargo install --locked "cargo-fuzz@$version"
fi
