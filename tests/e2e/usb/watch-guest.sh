#!/bin/sh
# Runs inside the busybox guest of the usb-* scenarios while L1 plugs and
# pulls USB sticks that securevm hot-plugs as virtio-blk disks. It reports
# every disk that comes and goes, keyed by the disk's serial (the stick's
# USB serial, first 20 bytes):
#   E2E-USB-ADD-<serial>=vdX   E2E-USB-RO-<serial>=0|1   E2E-USB-GONE-<serial>=vdX
# and, when these files lie beside it:
#   read-first : E2E-USB-READ-<serial>=<the disk's first line>
#   try-write  : E2E-USB-WRITE-<serial>=written|refused (a raw O_DIRECT write)
# It stops when the ACPI power button is pressed (`securevm ctl shutdown`):
# the busybox image has no button driver, but the press still raises the
# GED interrupt (GSI 5), whose count in /proc/interrupts it watches. Then
# it prints E2E-USB-STOP=button and the init powers the guest off.
here=$(dirname "$0")
limit=600

# The GED's line for securevm's power-button GSI (5), e.g.
# ` 25:  0  IO-APIC  5-edge  ACPI:Ged`.
button() { grep -E ' 5-[a-z]+ +ACPI:Ged$' /proc/interrupts; }

# disks: one `vdX serial` line per virtio disk.
disks() {
    for s in /sys/block/vd*/serial; do
        # A disk pulled again at once can vanish between the glob and the read.
        serial=$(cat "$s" 2>/dev/null) || continue
        d=${s%/serial}
        echo "${d##*/} $serial"
    done
}

added() {
    dev=$1 serial=$2
    echo "E2E-USB-ADD-$serial=$dev"
    echo "E2E-USB-RO-$serial=$(cat "/sys/block/$dev/ro" 2>/dev/null || echo gone)"
    if [ -f "$here/read-first" ]; then
        echo "E2E-USB-READ-$serial=$(dd if="/dev/$dev" bs=4096 count=1 iflag=direct 2>/dev/null | head -n1)"
    fi
    if [ -f "$here/try-write" ]; then
        if dd if=/dev/zero of="/dev/$dev" bs=4096 count=1 oflag=direct conv=fsync 2>/dev/null; then
            echo "E2E-USB-WRITE-$serial=written"
        else
            echo "E2E-USB-WRITE-$serial=refused"
        fi
    fi
}

pressed_before=$(button)
[ -n "$pressed_before" ] || echo "E2E-USB-NOTE=no ACPI:Ged interrupt for GSI 5 in /proc/interrupts; stopping at the time limit only"
known=$(disks)
echo "E2E-USB-DISKS=$(echo "$known" | awk '{printf "%s,", $2}')"
echo "E2E-USB=watching"
i=0
while [ $i -lt $((limit * 4)) ]; do
    now=$(disks)
    # Gone first: a stick pulled and plugged again between two looks can
    # come back under another vdX.
    echo "$known" | while read -r dev serial; do
        [ -n "$dev" ] || continue
        echo "$now" | grep -qxF "$dev $serial" || echo "E2E-USB-GONE-$serial=$dev"
    done
    echo "$now" | while read -r dev serial; do
        [ -n "$dev" ] || continue
        echo "$known" | grep -qxF "$dev $serial" || added "$dev" "$serial"
    done
    known=$now
    if [ -n "$pressed_before" ] && [ "$(button)" != "$pressed_before" ]; then
        echo "E2E-USB-STOP=button"
        exit 0
    fi
    sleep 0.25
    i=$((i + 1))
done
echo "E2E-USB-STOP=timeout"
exit 1
