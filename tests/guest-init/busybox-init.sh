#!/bin/sh
# securevm e2e busybox init: report, run the scenario hook, power off.
#
# What: the /init of the busybox initramfs that the e2e scenarios boot as
# the L2 guest (scripts/guest-assets target busybox-initramfs copies this
# file in verbatim; its hash is part of that target's cache key).
# Who runs it: the guest kernel, as PID 1, inside securevm. Never run it on
# a host: it mounts over /dev and powers the machine off.
# Protocol with tests/e2e: "SECUREVM-E2E: ..." lines on the console, the
# hook from `e2e.cmd=` on the kernel command line, /run.sh of the disk
# whose virtio serial is `e2e`, then "SECUREVM-E2E: exit=N".
export PATH=/bin
mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmp /tmp
echo "SECUREVM-E2E: busybox init"
# shellcheck disable=SC2013 # one module file name a line, none has a space
for m in $(cat /lib/modules/load-order); do
    insmod "/lib/modules/$m" || echo "SECUREVM-E2E: insmod $m failed"
done
echo "SECUREVM-E2E: nproc=$(nproc) memtotal_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
# Block devices appear asynchronously after virtio_blk loads.
sleep 0.2
rc=0
cmd=$(sed -n 's/.*e2e\.cmd="\([^"]*\)".*/\1/p' /proc/cmdline)
[ -n "$cmd" ] || cmd=$(sed -n 's/.*e2e\.cmd=\([^ ]*\).*/\1/p' /proc/cmdline)
if [ -n "$cmd" ]; then
    sh -c "$cmd" || rc=$?
fi
for s in /sys/block/*/serial; do
    # shellcheck disable=SC2015 # meant: skip the disk unless both tests hold
    [ -r "$s" ] && [ "$(cat "$s")" = e2e ] || continue
    dev=/dev/$(basename "$(dirname "$s")")
    if mount -t ext4 -o ro "$dev" /e2e && [ -f /e2e/run.sh ]; then
        sh /e2e/run.sh || rc=$?
    else
        echo "SECUREVM-E2E: disk $dev (serial e2e) has no run.sh"
        rc=1
    fi
done
echo "SECUREVM-E2E: exit=$rc"
sync
poweroff -f
