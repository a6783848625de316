#!/bin/sh
# Runs inside the busybox guest (readonly-disk): every way of writing to the
# disk with serial ro.img must fail; reading it must work.
dev=
for s in /sys/block/*/serial; do
    [ "$(cat "$s")" = ro.img ] && dev=/dev/$(basename "$(dirname "$s")")
done
[ -n "$dev" ] || { echo "E2E-RO: no disk with serial ro.img"; exit 1; }
echo "E2E-RO-SYSFS-RO=$(cat "/sys/block/${dev#/dev/}/ro")"
if dd if=/dev/zero of="$dev" bs=4096 count=1 oflag=direct conv=fsync 2>/tmp/err; then
    echo "E2E-RO-RAW=written"
else
    echo "E2E-RO-RAW=refused"
    echo "E2E-RO-RAW-ERROR: $(cat /tmp/err)"
fi
mkdir -p /mnt/ro
if mount -t ext4 -o rw "$dev" /mnt/ro 2>/tmp/err; then
    echo "E2E-RO-MOUNT: rw mount accepted ($(grep " /mnt/ro " /proc/mounts))"
    if dd if=/dev/zero of=/mnt/ro/new-file bs=4096 count=4 conv=fsync 2>/tmp/err; then
        echo "E2E-RO-FS=written"
    else
        echo "E2E-RO-FS=refused"
        echo "E2E-RO-FS-ERROR: $(cat /tmp/err)"
    fi
    umount /mnt/ro
else
    echo "E2E-RO-FS=refused"
    echo "E2E-RO-FS-ERROR: mount -o rw: $(cat /tmp/err)"
fi
mount -t ext4 -o ro "$dev" /mnt/ro && echo "E2E-RO-READ=$(cat /mnt/ro/hello.txt)"
umount /mnt/ro 2>/dev/null
true
