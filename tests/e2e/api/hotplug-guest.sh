#!/bin/sh
# Runs inside the Debian guest (api-hotplug) while the host attaches and
# detaches a medium with serial stick.img through `securevm ctl`:
#   1. waits for the disk to appear (ACPI hot-plug), makes ext4 on it,
#      mounts it, writes the marker (file `marker` beside this script) and
#      syncs; prints E2E-HOTPLUG-WRITTEN=ok;
#   2. keeps it mounted and waits for it to disappear (the host detaches
#      it while mounted); prints E2E-HOTPLUG-GONE=yes and drops the dead
#      mount;
#   3. waits for it to appear again, mounts it read-only and prints the
#      marker it reads as E2E-HOTPLUG-READBACK=;
#   4. unmounts it and ejects it itself, as a user's "safely remove" does
#      (power off its ACPI hot-plug slot); prints E2E-HOTPLUG-GUEST-EJECT=
#      yes once the disk is gone.
here=$(dirname "$0")
# shellcheck source=tests/e2e/guest/disk-by-serial.sh
. "$here/disk-by-serial.sh"
marker=$(cat "$here/marker")

# wait_disk present|absent SECONDS: until stick.img is (not) there.
wait_disk() {
    i=0
    while [ $i -lt $(($2 * 2)) ]; do
        dev=$(dev_by_serial stick.img)
        if [ "$1" = present ] && [ -n "$dev" ] && [ -b "$dev" ]; then return 0; fi
        if [ "$1" = absent ] && [ -z "$dev" ]; then return 0; fi
        sleep 0.5
        i=$((i + 1))
    done
    return 1
}

disks=
for s in /sys/block/*; do disks="$disks${s##*/},"; done
echo "E2E-HOTPLUG=waiting disks=$disks"
wait_disk present 240 || { echo "E2E-HOTPLUG-SEEN=no"; exit 1; }
echo "E2E-HOTPLUG-SEEN=$dev ro=$(cat "/sys/block/${dev#/dev/}/ro") slot=$(basename "$(readlink -f "/sys/block/${dev#/dev/}/device/..")")"
mkdir -p /mnt/stick
mkfs.ext4 -q -F -L stick "$dev" >/dev/null 2>&1 || { echo "E2E-HOTPLUG-WRITTEN=mkfs-failed"; exit 1; }
mount -t ext4 "$dev" /mnt/stick || { echo "E2E-HOTPLUG-WRITTEN=mount-failed"; exit 1; }
printf '%s\n' "$marker" >/mnt/stick/marker.txt && sync &&
    echo "E2E-HOTPLUG-WRITTEN=ok" || echo "E2E-HOTPLUG-WRITTEN=failed"

# Still mounted: the host detaches now.
wait_disk absent 120 || { echo "E2E-HOTPLUG-GONE=no"; exit 1; }
echo "E2E-HOTPLUG-GONE=yes"
umount -l /mnt/stick 2>/dev/null
dmesg | grep -iE "pci 0000:00:|acpiphp|virtio_blk" | tail -n 8 | sed 's/^/E2E-DMESG: /'

wait_disk present 240 || { echo "E2E-HOTPLUG-AGAIN=no"; exit 1; }
echo "E2E-HOTPLUG-AGAIN=$dev"
mount -t ext4 -o ro "$dev" /mnt/stick &&
    echo "E2E-HOTPLUG-READBACK=$(cat /mnt/stick/marker.txt)" || echo "E2E-HOTPLUG-READBACK=mount-failed"
umount /mnt/stick

function=$(basename "$(readlink -f "/sys/block/${dev#/dev/}/device/..")")
slot=
for candidate in /sys/bus/pci/slots/*; do
    [ "$(cat "$candidate/address" 2>/dev/null)" = "${function%.*}" ] && slot=$candidate
done
[ -n "$slot" ] || { echo "E2E-HOTPLUG-GUEST-EJECT=no-slot-for-$function"; exit 1; }
echo 0 >"$slot/power" || { echo "E2E-HOTPLUG-GUEST-EJECT=power-off-failed"; exit 1; }
wait_disk absent 60 || { echo "E2E-HOTPLUG-GUEST-EJECT=still-there"; exit 1; }
echo "E2E-HOTPLUG-GUEST-EJECT=yes"
exit 0
