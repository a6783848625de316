#!/bin/sh
# securevm display benchmark init: load the virtio-gpu driver, flip frames.
#
# What: the /init of the bench-display initramfs (scripts/guest-assets
# target bench-display-initramfs copies this file in verbatim; its hash is
# part of that target's cache key). The guest kernel runs it as PID 1 under
# securevm or QEMU, started by scripts/bench-display. Never run it on a
# host: it mounts over /dev and powers the machine off.
# Protocol: `bench.seconds=N` (default 30) and `bench.mode=flip|dirty`
# (default flip) on the kernel command line are passed to drm-flip, whose
# "BENCH-DISPLAY: ..." lines go to the console; then
# "BENCH-DISPLAY: exit=N" and power-off. `bench.mode=idle` draws nothing:
# it prints "BENCH-DISPLAY: idle" and waits N seconds (the VMM's memory
# without a display is measured meanwhile).
export PATH=/bin
mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sys /sys
# shellcheck disable=SC2013 # one module file name a line, none has a space
for m in $(cat /lib/modules/load-order); do
    insmod "/lib/modules/$m" || echo "BENCH-DISPLAY: insmod $m failed"
done
seconds=$(sed -n 's/.*bench\.seconds=\([0-9]*\).*/\1/p' /proc/cmdline)
mode=$(sed -n 's/.*bench\.mode=\([a-z]*\).*/\1/p' /proc/cmdline)
rc=0
if [ "$mode" = idle ]; then
    echo "BENCH-DISPLAY: idle"
    sleep "${seconds:-30}"
else
    /bin/drm-flip "${seconds:-30}" "${mode:-flip}" || rc=$?
fi
echo "BENCH-DISPLAY: exit=$rc"
poweroff -f
