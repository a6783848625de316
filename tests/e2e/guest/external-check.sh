#!/bin/sh
# Runs inside the busybox guest for the external-* and disk-* scenarios.
# Which checks run is chosen by the files beside it on the e2e disk:
#   write-marker   : write the marker (file content) raw at the start of the
#                    disk with serial stick.img, read it back
#   read-marker    : print the first line of the disk with serial stick.img
#   mount-read     : mount the disk with serial stick.img (ext4) and print
#                    /marker.txt
#   mount-write    : mount the disk with serial stick.img (ext4, rw) and
#                    write the marker to /from-guest.txt
#   try-write      : try a raw write to stick.img (must fail when read-only)
# Every disk the guest sees is listed as E2E-DISKS=.
here=$(dirname "$0")
. "$here/disk-by-serial.sh"
disks=
for s in /sys/block/*/serial; do disks="$disks$(cat "$s"),"; done
echo "E2E-DISKS=$disks"
dev=$(dev_by_serial stick.img)
[ -n "$dev" ] || { echo "E2E-STICK=absent"; exit 0; }
echo "E2E-STICK=present"
echo "E2E-STICK-RO=$(cat "/sys/block/${dev#/dev/}/ro")"
if [ -f "$here/write-marker" ]; then
    marker=$(cat "$here/write-marker")
    printf '%s\n' "$marker" | dd of="$dev" bs=4096 conv=sync,fsync 2>/dev/null &&
        echo "E2E-WROTE=ok" || echo "E2E-WROTE=failed"
    echo 3 >/proc/sys/vm/drop_caches
    echo "E2E-READBACK=$(dd if="$dev" bs=4096 count=1 iflag=direct 2>/dev/null | head -n1)"
fi
if [ -f "$here/read-marker" ]; then
    echo "E2E-READ=$(dd if="$dev" bs=4096 count=1 2>/dev/null | head -n1)"
fi
if [ -f "$here/mount-read" ]; then
    mkdir -p /mnt/stick
    mount -t ext4 -o ro "$dev" /mnt/stick && echo "E2E-MOUNT-READ=$(cat /mnt/stick/marker.txt)"
    umount /mnt/stick 2>/dev/null
fi
if [ -f "$here/mount-write" ]; then
    mkdir -p /mnt/stick
    if mount -t ext4 "$dev" /mnt/stick; then
        cat "$here/mount-write" >/mnt/stick/from-guest.txt && sync
        echo "E2E-MOUNT-WROTE=$(cat /mnt/stick/from-guest.txt)"
        umount /mnt/stick
    else
        echo "E2E-MOUNT-WROTE=mount-failed"
    fi
fi
if [ -f "$here/try-write" ]; then
    if dd if=/dev/zero of="$dev" bs=4096 count=1 oflag=direct conv=fsync 2>/dev/null; then
        echo "E2E-TRY-WRITE=written"
    else
        echo "E2E-TRY-WRITE=refused"
    fi
fi
true
