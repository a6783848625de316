#!/bin/sh
# Shared by guest scripts: dev_by_serial SERIAL prints /dev/vdX of the disk
# whose virtio serial is SERIAL (empty when there is none).
dev_by_serial() {
    for s in /sys/block/*/serial; do
        [ "$(cat "$s")" = "$1" ] && echo "/dev/$(basename "$(dirname "$s")")" && return 0
    done
    return 0
}
