# shellcheck shell=bash
# Real USB sticks for the usb-* scenarios, sourced by them on top of
# tests/e2e/lib.sh. In L1 the kernel's gadget support plays both sides of
# the cable: dummy_hcd is a virtual host controller wired to a virtual
# device controller (UDC), and a configfs gadget with a mass_storage
# function backed by an image file is the stick. The host side enumerates
# it like any stick (usb-storage, sd_mod: /dev/sdX whose USB ancestor in
# sysfs carries the gadget's serial number), and unbinding the gadget from
# its UDC is a pull without eject. L1 cannot load modules on demand (its
# module helper runs outside the chroot), so usb_setup loads them all.

USB_GADGETS=/sys/kernel/config/usb_gadget
# Gadget names the scenarios create start with this; usb_teardown removes
# exactly those.
USB_PREFIX=e2e-usb-

# usb_setup: the modules and configfs; dummy_hcd with two UDCs, so that a
# scenario can hold two sticks plugged at once.
usb_setup() {
    local m
    for m in configfs libcomposite usb_f_mass_storage usb_storage sd_mod; do
        modprobe "$m" || fail "modprobe $m failed (the L1 kernel lacks it?)"
    done
    if [[ ! -d /sys/module/dummy_hcd ]]; then
        modprobe dummy_hcd num=2 || fail "modprobe dummy_hcd num=2 failed"
    fi
    [[ -d $USB_GADGETS ]] || mount -t configfs none /sys/kernel/config ||
        fail "cannot mount configfs on /sys/kernel/config"
    [[ -d $USB_GADGETS ]] || fail "configfs has no usb_gadget directory after loading libcomposite"
    usb_no_real_sticks
    local i
    for ((i = 0; i < 50; i++)); do
        [[ -n $(usb_free_udc) ]] && return 0
        sleep 0.1
    done
    fail "dummy_hcd registered no USB device controller (/sys/class/udc is empty)"
}

# usb_no_real_sticks: fails if a disk on a real USB or MMC bus is present.
# securevm --watch-removable would judge it too (it matters where the
# scenarios run directly on a PC, SECUREVM_DIRECT=1): the scenarios
# count, list and attach sticks and must see only their own.
usb_no_real_sticks() {
    local b path
    for b in /sys/class/block/*; do
        path=$(readlink -f "$b")
        [[ $path == */usb[0-9]* || $path == */mmc_host/* ]] || continue
        [[ $path != */dummy_hcd.* ]] || continue
        fail "/dev/${b##*/} is a real USB or MMC disk; the usb-* scenarios would judge it too: unplug it first"
    done
}

# usb_free_udc: the first dummy UDC no gadget is bound to (empty if none).
usb_free_udc() {
    local udc used g
    used=$(cat "$USB_GADGETS"/*/UDC 2>/dev/null || true)
    for udc in /sys/class/udc/dummy_udc.*; do
        [[ -e $udc ]] || continue
        g=${udc##*/}
        grep -qxF "$g" <<<"$used" || {
            echo "$g"
            return 0
        }
    done
}

# usb_plug NAME IMAGE SERIAL: make the gadget NAME (a stick with serial
# number SERIAL whose medium is IMAGE) and plug it into a free UDC. SERIAL
# may be empty: the stick then reports no serial string at all.
usb_plug() {
    local name=$USB_PREFIX$1 image=$2 serial=$3 g
    g=$USB_GADGETS/$name
    [[ ! -e $g ]] || fail "usb_plug: gadget $1 exists already (usb_replug plugs it again)"
    mkdir "$g"
    # The Linux Foundation's multifunction composite gadget IDs: a made-up
    # stick, not a real product.
    echo 0x1d6b >"$g/idVendor"
    echo 0x0104 >"$g/idProduct"
    mkdir "$g/strings/0x409"
    echo securevm-e2e >"$g/strings/0x409/manufacturer"
    echo "e2e stick $1" >"$g/strings/0x409/product"
    [[ -z $serial ]] || printf '%s\n' "$serial" >"$g/strings/0x409/serialnumber"
    mkdir "$g/configs/c.1"
    mkdir "$g/functions/mass_storage.0"
    # A stick's medium is removable, as most real ones declare.
    echo 1 >"$g/functions/mass_storage.0/lun.0/removable"
    echo "$image" >"$g/functions/mass_storage.0/lun.0/file"
    ln -s "$g/functions/mass_storage.0" "$g/configs/c.1/"
    usb_replug "$1"
}

# usb_replug NAME: plug the gadget NAME (made by usb_plug) in again.
usb_replug() {
    local g=$USB_GADGETS/$USB_PREFIX$1 udc
    udc=$(usb_free_udc)
    [[ -n $udc ]] || fail "usb_plug $1: every dummy UDC is in use"
    echo "$udc" >"$g/UDC" || fail "usb_plug $1: cannot bind the gadget to $udc"
}

# usb_unplug NAME: pull the stick out (unbind its gadget from the UDC): the
# host sees the device vanish without any eject.
usb_unplug() {
    echo "" >"$USB_GADGETS/$USB_PREFIX$1/UDC" || fail "usb_unplug $1 failed"
}

# usb_remove NAME: unplug if plugged, and delete the gadget NAME.
usb_remove() {
    local g=$USB_GADGETS/$USB_PREFIX$1
    [[ -e $g ]] || return 0
    [[ -z $(cat "$g/UDC" 2>/dev/null) ]] || echo "" >"$g/UDC" 2>/dev/null || true
    rm -f "$g"/configs/c.1/mass_storage.0
    rmdir "$g"/configs/c.1/strings/0x409 2>/dev/null || true
    rmdir "$g"/configs/c.1 "$g"/functions/mass_storage.0 "$g"/strings/0x409 "$g" 2>/dev/null || true
}

# usb_teardown: remove every gadget the scenarios made (trap it on EXIT).
usb_teardown() {
    local g
    for g in "$USB_GADGETS/$USB_PREFIX"*; do
        [[ -e $g ]] || continue
        usb_remove "${g##*/"$USB_PREFIX"}"
    done
}

# usb_disk_serial DISK: the serial number of the USB device DISK (sdX)
# hangs off, from sysfs (walking up to the USB device, which has idVendor);
# empty when it is not on USB or has no serial.
usb_disk_serial() {
    local dir
    dir=$(readlink -f "/sys/class/block/$1/device") || return 0
    while [[ $dir == /sys/devices/* ]]; do
        if [[ -e $dir/idVendor ]]; then
            cat "$dir/serial" 2>/dev/null || true
            return 0
        fi
        dir=${dir%/*}
    done
}

# usb_disk_of SERIAL: the /dev/sdX (whole disk, medium present) whose USB
# device has SERIAL; empty if none.
usb_disk_of() {
    local b name
    for b in /sys/class/block/sd*; do
        [[ -e $b ]] || continue
        name=${b##*/}
        [[ ! -e $b/partition ]] || continue
        [[ $(usb_disk_serial "$name") == "$1" ]] || continue
        [[ $(cat "$b/size" 2>/dev/null) -gt 0 && -b /dev/$name ]] || continue
        echo "/dev/$name"
        return 0
    done
}

# usb_wait_disk SERIAL [SECONDS]: prints the /dev/sdX of the stick with
# SERIAL once the host enumerated it (default limit 60 s).
usb_wait_disk() {
    local i dev
    for ((i = 0; i < ${2:-60} * 10; i++)); do
        dev=$(usb_disk_of "$1")
        [[ -z $dev ]] || {
            echo "$dev"
            return 0
        }
        sleep 0.1
    done
    fail "no /dev/sdX with USB serial '$1' appeared within ${2:-60}s"
}

# usb_wait_gone DEV [SECONDS]: until the block device DEV (/dev/sdX) is
# gone from sysfs (default limit 30 s).
usb_wait_gone() {
    local i
    for ((i = 0; i < ${2:-30} * 10; i++)); do
        [[ -e /sys/class/block/${1#/dev/} ]] || return 0
        sleep 0.1
    done
    fail "$1 still exists ${2:-30}s after the stick was pulled"
}

# The scenarios drive securevm through its control socket.
# shellcheck source=tests/e2e/api/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../api/lib.sh"

# usb_prepare_watch FLAG...: the busybox guest's script disk running
# watch-guest.sh, with the flag files FLAG... (read-first, try-write).
usb_prepare_watch() {
    local flag
    for flag in "$@"; do touch "$WORK/$flag"; done
    make_script_disk "$WORK/e2e" "$E2E_DIR/usb/watch-guest.sh" "${@/#/$WORK/}"
}

# usb_busybox_start ARG...: the busybox guest (watch-guest.sh) under
# `securevm run --watch-removable ARG...` with the control socket and an
# audit log; returns once the guest watches its disks.
usb_busybox_start() {
    audit_args
    api_start --kernel "$GUEST_KERNEL" --initrd "$BUSYBOX_INITRAMFS" \
        --cmdline "console=ttyS0 reboot=acpi panic=-1 $GUEST_QUIET" --memory 256 \
        --disk "$WORK/e2e" --watch-removable "${AUDIT_ARGS[@]}" "$@"
    wait_serial "E2E-USB=watching" 240
}

# usb_stop: the power button ends watch-guest.sh, the guest powers off and
# securevm exits 0; its audit log verifies.
usb_stop() {
    ctl shutdown --timeout 60 || fail "ctl shutdown: $CTL_OUT"
    api_wait_exit 30
    expect_exit 0
    expect_serial "E2E-USB-STOP=button"
    audit_verify "$WORK/audit.jsonl"
    [[ $AUDIT_EXIT -eq 0 ]] || fail "the audit log does not verify: $AUDIT_OUT"
}

# usb_cleanup: trap it on EXIT; stops securevm, removes the sticks.
usb_cleanup() {
    api_cleanup
    usb_teardown
}

# usb_diskseq DEV: the kernel's disk sequence number of /dev/sdX.
usb_diskseq() { cat "/sys/class/block/${1#/dev/}/diskseq"; }

# usb_removable SERIAL: the `removable ...` line for the stick with SERIAL
# in the last `ctl status` output (CTL_OUT); empty if none.
usb_removable() {
    grep -F "serial '$1' diskseq " <<<"$CTL_OUT" | grep '^removable ' || true
}

# usb_wait_fate SERIAL TEXT SECONDS: until `ctl status` shows TEXT in the
# removable line of the stick with SERIAL; that line in USB_LINE.
usb_wait_fate() {
    local i
    for ((i = 0; i < $3 * 4; i++)); do
        ctl status || fail "ctl status failed: $CTL_OUT"
        USB_LINE=$(usb_removable "$1")
        [[ $USB_LINE != *"$2"* ]] || return 0
        sleep 0.25
    done
    fail "ctl status did not show '$2' for serial '$1' within ${3}s; last: ${USB_LINE:-no removable line} (status: $(tr '\n' '|' <<<"$CTL_OUT"))"
}

# usb_device ID: the `device: external ID ...` line in the last `ctl
# status` output (CTL_OUT); empty if none.
usb_device() { grep -F "device: external $1 " <<<"$CTL_OUT" || true; }

# usb_wait_unlisted SERIAL SECONDS [ID]: until `ctl status` lists neither
# a removable line for the stick with SERIAL nor a device line for the
# medium ID (default SERIAL: the id is the serial's first 20 bytes).
usb_wait_unlisted() {
    local i id=${3:-$1}
    for ((i = 0; i < $2 * 4; i++)); do
        ctl status || fail "ctl status failed: $CTL_OUT"
        [[ -z $(usb_removable "$1") && -z $(usb_device "$id") ]] && return 0
        sleep 0.25
    done
    fail "ctl status still lists '$1' ${2}s after the pull: $(tr '\n' '|' <<<"$CTL_OUT")"
}

# usb_audited DECISION SERIAL: how many external-medium records with that
# decision name the stick with SERIAL.
usb_audited() {
    grep '"event":"external-medium"' "$WORK/audit.jsonl" | grep -F "\"decision\":\"$1\"" |
        grep -cF "\"serial\":\"$2\"" || true
}

# usb_expect_audited DECISION SERIAL DEV: at least one such record, whose
# path is DEV.
usb_expect_audited() {
    grep '"event":"external-medium"' "$WORK/audit.jsonl" | grep -F "\"decision\":\"$1\"" |
        grep -F "\"serial\":\"$2\"" | grep -qF "\"path\":\"$3\"" ||
        fail "no external-medium audit record with decision $1, serial $2 and path $3: $(grep external-medium "$WORK/audit.jsonl" | tr '\n' ' ')"
}

# usb_fds: how many file descriptors securevm holds.
usb_fds() { find "/proc/$VMM_PID/fd" -mindepth 1 -maxdepth 1 | wc -l; }
