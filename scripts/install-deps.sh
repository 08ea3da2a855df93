#!/usr/bin/env bash
# What the test command needs beyond Rust and Node: Chromium, a Hangul font and
# playwright-core for the browser test; kosoku (Autobahn cases) and SecantusDB (a MongoDB-wire
# server) in the project's venv; the storage fault tests' tools (losetup from mount, mkfs.ext4
# from e2fsprogs, dmsetup for kernels with device-mapper); HAProxy for the cluster tests'
# load balancer (engine/tests/cluster); perf for `sokdo-bench profile` (docs/PROFILING.md;
# Debian's linux-perf). scripts/fuzz installs cargo-fuzz itself.
# Idempotent, non-interactive, run as root.
# (The bench's comparison peers are installed separately: scripts/install-bench-peers.sh.)
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
apt_packages=()
command -v losetup >/dev/null || apt_packages+=(mount)
command -v mkfs.ext4 >/dev/null || apt_packages+=(e2fsprogs)
command -v dmsetup >/dev/null || apt_packages+=(dmsetup)
command -v haproxy >/dev/null || apt_packages+=(haproxy)
command -v perf >/dev/null || apt_packages+=(linux-perf)
if [ "${#apt_packages[@]}" -gt 0 ]; then
  apt-get update
  apt-get install -y "${apt_packages[@]}" </dev/null
fi
scripts/install-browser-deps.sh
scripts/install-python-deps.sh
