#!/bin/sh
# Runs inside the Debian guest (boot-debian): report CPUs and RAM, write a
# file to the disk with serial data.img, read it back after dropping caches.
echo "E2E-NPROC=$(nproc)"
echo "E2E-MEMTOTAL-KB=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
echo "E2E-SERIALS=$(for s in /sys/block/*/serial; do printf '%s,' "$(cat "$s")"; done)"
dev=
for s in /sys/block/*/serial; do
    [ "$(cat "$s")" = data.img ] && dev=/dev/$(basename "$(dirname "$s")")
done
[ -n "$dev" ] || { echo "E2E-DATA: no disk with serial data.img"; exit 1; }
mkdir -p /mnt/data
mount "$dev" /mnt/data || { echo "E2E-DATA: cannot mount $dev"; exit 1; }
dd if=/dev/urandom of=/mnt/data/e2e-data.bin bs=64k count=16 conv=fsync 2>/dev/null || { echo "E2E-DATA: write failed"; exit 1; }
echo "E2E-DATA-WROTE=$(sha256sum /mnt/data/e2e-data.bin | cut -d' ' -f1)"
umount /mnt/data
echo 3 >/proc/sys/vm/drop_caches
mount -o ro "$dev" /mnt/data || { echo "E2E-DATA: cannot remount $dev"; exit 1; }
echo "E2E-DATA-READ=$(sha256sum /mnt/data/e2e-data.bin | cut -d' ' -f1)"
umount /mnt/data
