# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh
# external-readonly: a medium attached under `read-only` is readable in the
# guest, reports read-only, refuses writes, and is unchanged on the host.
TIMEOUT=300

prepare() {
    local content
    content=$(mktemp -d)
    echo readonly-medium-content >"$content/marker.txt"
    mkfs.ext4 -q -F -L stick -d "$content" "$WORK/stick.img" 32M
    rm -rf "$content"
    touch "$WORK/mount-read" "$WORK/try-write"
    make_script_disk "$WORK/e2e" "$(guest_script external-check.sh)" \
        "$(guest_script disk-by-serial.sh)" "$WORK/mount-read" "$WORK/try-write"
}

run() {
    local before after
    before=$(sha256sum <"$WORK/stick.img")
    vmm_run 240 --kernel "$GUEST_KERNEL" --initrd "$BUSYBOX_INITRAMFS" \
        --cmdline "console=ttyS0 reboot=acpi panic=-1 $GUEST_QUIET" --memory 256 \
        --disk "$WORK/e2e" --external "$WORK/stick.img" --external-policy read-only
    after=$(sha256sum <"$WORK/stick.img")
    expect_exit 0
    [[ $(serial_value E2E-STICK) == present ]] || fail "the medium was not attached"
    [[ $(serial_value E2E-STICK-RO) == 1 ]] || fail "the guest does not see the medium as read-only"
    [[ $(serial_value E2E-MOUNT-READ) == readonly-medium-content ]] || fail "the guest could not read the medium"
    [[ $(serial_value E2E-TRY-WRITE) == refused ]] || fail "a raw write to the medium was not refused"
    [[ $before == "$after" ]] || fail "the medium changed on the host"
}
