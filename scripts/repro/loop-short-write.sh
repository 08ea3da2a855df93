#!/bin/sh
# The loop driver reports a write whose backing-file write came back short as a success
# (issue 15; docs/PERSISTENCE.md, "A failing fdatasync"). Needs root, cc, losetup.
#   scripts/repro/loop-short-write.sh        the device's default request size: exit 1, data lost
#   scripts/repro/loop-short-write.sh 4      max_sectors_kb 4 (one page per request): exit 0
set -e
W=$(mktemp -d /tmp/loop-short-write.XXXX)
trap 'rm -rf "$W"' EXIT
cc -O1 -Wall -o "$W/loop-short-write" "$(dirname "$0")/loop-short-write.c"
mkdir "$W/back"
mount -t tmpfs -o size=1m tmpfs "$W/back"
truncate -s 64M "$W/back/disk.img"
DEV=$(losetup --find --show "$W/back/disk.img")
Q=/sys/block/${DEV#/dev/}/queue
echo "${1:-$(cat "$Q/max_hw_sectors_kb")}" > "$Q/max_sectors_kb"
echo "kernel $(uname -r), $DEV max_sectors_kb=$(cat "$Q/max_sectors_kb")"
set +e
"$W/loop-short-write" "$DEV" "$W/back/disk.img" "$W/back/filler"
RC=$?
losetup -d "$DEV"
umount "$W/back"
exit $RC
