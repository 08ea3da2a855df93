#!/usr/bin/env bash
# Sample reports for `sokdo-tune fit`: server pinned to CPU 0 in a 2 GiB cgroup, bench on CPU 1,
# default --durability sync, one process. Run from /work/main after a release build.
set -euo pipefail
cd "$(dirname "$0")/../../.."
B=target/release/sokdo-bench
OUT=${OUT:-tuning/models/reports}
mkdir -p "$OUT"
C="--targets sokdo --server-cpus 0 --bench-cpus 1 --memory-limit-mib 2048"
export SOKDO_DETECT_STALLS=false
run() { local name=$1; shift; echo "== $name: $*"; $B compare $C "$@" --json "$OUT/$name.json" > "$OUT/$name.txt" 2>&1 || { echo "FAILED $name"; tail -20 "$OUT/$name.txt"; }; }
run idle-5000-r10   --scenarios idle   --idle-args "--users 5000 --room-size 10 --hold-s 5 --workers 1"
run idle-15000-r50  --scenarios idle   --idle-args "--users 15000 --room-size 50 --hold-s 5 --workers 2"
run fanout-5000-r50-500  --scenarios fanout --fanout-args "--users 5000 --rooms 100 --publishers 5000 --rate 500 --duration-s 20 --drain-s 5 --workers 2"
run fanout-10000-r50-1000 --scenarios fanout --fanout-args "--users 10000 --rooms 200 --publishers 10000 --rate 1000 --duration-s 20 --drain-s 5 --workers 2"
run fanout-3000-r10-3000 --scenarios fanout --fanout-args "--users 3000 --rooms 300 --publishers 3000 --rate 3000 --duration-s 20 --drain-s 5 --workers 2"
run ramp-r50-to-10000 --scenarios ramp --ramp-args "--start-users 1000 --step-users 1000 --step-s 3 --target-users 10000 --message-interval-s 10 --workers 2"
