#!/bin/sh
# Runs inside the Debian guest (usb-plug-encrypt) while L1 plugs a USB
# stick that securevm attaches under `encrypt`, then pulls it without eject:
#   1. waits for the disk whose serial is in the file `serial` beside this
#      script (ACPI hot-plug); writes the marker (file `marker`) raw at its
#      start with O_DIRECT and an fsync (a FLUSH the guest sees complete),
#      reads it back; prints E2E-USB-WRITTEN=ok;
#   2. waits for the disk to vanish (the pull); prints E2E-USB-GONE=yes.
here=$(dirname "$0")
# shellcheck source=tests/e2e/guest/disk-by-serial.sh
. "$here/disk-by-serial.sh"
serial=$(cat "$here/serial")
marker=$(cat "$here/marker")

# wait_disk present|absent SECONDS
wait_disk() {
    i=0
    while [ $i -lt $(($2 * 4)) ]; do
        dev=$(dev_by_serial "$serial")
        if [ "$1" = present ] && [ -n "$dev" ] && [ -b "$dev" ]; then return 0; fi
        if [ "$1" = absent ] && [ -z "$dev" ]; then return 0; fi
        sleep 0.25
        i=$((i + 1))
    done
    return 1
}

echo "E2E-USB=waiting"
wait_disk present 240 || { echo "E2E-USB-SEEN=no"; exit 1; }
name=${dev#/dev/}
echo "E2E-USB-SEEN=$dev ro=$(cat "/sys/block/$name/ro") sectors=$(cat "/sys/block/$name/size")"
if printf '%s\n' "$marker" | dd of="$dev" bs=4096 conv=sync,fsync oflag=direct 2>/dev/null &&
    [ "$(dd if="$dev" bs=4096 count=1 iflag=direct 2>/dev/null | head -n1)" = "$marker" ]; then
    echo "E2E-USB-WRITTEN=ok"
else
    echo "E2E-USB-WRITTEN=failed"
fi

# The host pulls the stick now.
wait_disk absent 120 || { echo "E2E-USB-GONE=no"; exit 1; }
echo "E2E-USB-GONE=yes"
dmesg | grep -iE "acpiphp|virtio_blk|I/O error" | tail -n 6 | sed 's/^/E2E-DMESG: /'
exit 0
