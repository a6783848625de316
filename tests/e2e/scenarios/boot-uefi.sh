# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh, L1_QEMU by scripts/e2e
# boot-uefi: the installed Debian disk of `scripts/guest-assets debian-uefi`
# boots with no --kernel: the CloudHv UEFI firmware -> the disk's GRUB
# (\EFI\BOOT\BOOTX64.EFI) -> the disk's own kernel and initramfs ->
# multi-user -> power-off. The guest runs the kernel installed in the image
# and sees /sys/firmware/efi; its root and ESP come from /etc/fstab by UUID.
# Budget: QEMU q35 + OVMF boots this OS to the marker in ~133 s in L1
# (docs/testing-harness.md); boot-debian's spread there is 105-332 s.
TIMEOUT=600
# The L1 runs on the patched QEMU: stock 7.2 and 10.0 abort on the CR8
# writes of the firmware's interrupt handlers (scripts/lib/l1-qemu.sh).
L1_QEMU=patched

prepare() {
    cp --sparse=always "${DEBIAN_UEFI_IMAGE:?run scripts/guest-assets debian-uefi}" "$WORK/debian-uefi.img"
    make_script_disk "$WORK/e2e" "$(guest_script uefi-check.sh)"
}

run() {
    vmm_run 540 --firmware "${FIRMWARE:?run scripts/guest-assets firmware}" --cpus 2 --memory 1024 \
        --disk "$WORK/debian-uefi.img" --disk "$WORK/e2e"
    expect_exit 0
    expect_uefi_debian_booted
    expect_serial "SECUREVM-E2E: exit=0"
}
