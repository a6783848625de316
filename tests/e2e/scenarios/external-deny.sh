# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh
# external-deny: a medium under `deny` is not attached, the refusal is
# reported, the guest sees no such disk and the medium is unchanged.
TIMEOUT=300

prepare() {
    head -c 1M /dev/urandom >"$WORK/stick.img"
    make_script_disk "$WORK/e2e" "$(guest_script external-check.sh)" \
        "$(guest_script disk-by-serial.sh)"
}

run() {
    local before after
    before=$(sha256sum <"$WORK/stick.img")
    vmm_run 240 --kernel "$GUEST_KERNEL" --initrd "$BUSYBOX_INITRAMFS" \
        --cmdline "console=ttyS0 reboot=acpi panic=-1 $GUEST_QUIET" --memory 256 \
        --disk "$WORK/e2e" --external "$WORK/stick.img" --external-policy deny
    after=$(sha256sum <"$WORK/stick.img")
    expect_exit 0
    expect_serial "external medium $WORK/stick.img not attached: the policy denies external media"
    [[ $(serial_value E2E-STICK) == absent ]] || fail "the guest sees the denied medium"
    [[ $(serial_value E2E-DISKS) == e2e, ]] || fail "guest disks: $(serial_value E2E-DISKS), expected only e2e"
    [[ $before == "$after" ]] || fail "the medium changed on the host"
}
