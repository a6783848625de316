# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh
# readonly-disk: a disk given as PATH,readonly refuses raw and filesystem
# writes inside the guest, stays readable, and its image is unchanged.
TIMEOUT=300

prepare() {
    local content
    content=$(mktemp -d)
    echo hello-readonly >"$content/hello.txt"
    mkfs.ext4 -q -F -L ro -d "$content" "$WORK/ro.img" 32M >/dev/null
    rm -rf "$content"
    make_script_disk "$WORK/e2e" "$(guest_script readonly-check.sh)"
}

run() {
    local before after
    before=$(sha256sum <"$WORK/ro.img")
    vmm_run 260 --kernel "$GUEST_KERNEL" --initrd "$BUSYBOX_INITRAMFS" \
        --cmdline "console=ttyS0 reboot=acpi panic=-1 $GUEST_QUIET" --memory 256 \
        --disk "$WORK/ro.img,readonly" --disk "$WORK/e2e"
    after=$(sha256sum <"$WORK/ro.img")
    [[ $before == "$after" ]] || fail "ro.img changed on the host (sha256 $before -> $after)"
    expect_exit 0
    expect_serial "SECUREVM-E2E: busybox init"
    [[ $(serial_value E2E-RO-READ) == hello-readonly ]] || fail "guest could not read hello.txt from the read-only disk"
    [[ $(serial_value E2E-RO-RAW) == refused ]] || fail "raw write to the read-only disk: $(serial_value E2E-RO-RAW), expected refused"
    [[ $(serial_value E2E-RO-FS) == refused ]] || fail "file write on the read-only disk: $(serial_value E2E-RO-FS), expected refused"
    expect_serial "SECUREVM-E2E: exit=0"
}
