# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh
# boot-busybox: the stock Debian cloud kernel with the busybox initramfs
# boots, runs the command-line hook, powers off; securevm exits 0. Without
# a control socket nothing can be hot-plugged, so the guest sees no slots.
TIMEOUT=240

run() {
    vmm_run 200 --kernel "$GUEST_KERNEL" --initrd "$BUSYBOX_INITRAMFS" \
        --cmdline "console=ttyS0 reboot=acpi panic=-1 $GUEST_QUIET e2e.cmd=\"echo E2E-HELLO=\$((6*7)); echo E2E-SLOTS=\$(ls /sys/bus/pci/slots | wc -l)\"" \
        --cpus 1 --memory 256
    expect_exit 0
    expect_serial "SECUREVM-E2E: busybox init"
    [[ $(serial_value E2E-HELLO) == 42 ]] || fail "the e2e.cmd hook did not print E2E-HELLO=42"
    [[ $(serial_value E2E-SLOTS) == 0 ]] ||
        fail "the guest sees $(serial_value E2E-SLOTS) PCI hot-plug slots without a control socket (want 0)"
    expect_serial "SECUREVM-E2E: exit=0"
}
