# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh
# external-encrypt: a blank USB-stick image attached under `encrypt` is
# formatted as LUKS2 with the organisation's passphrase; what the guest
# writes is ciphertext on the host (the marker appears nowhere in the
# image) and dm-crypt with the same passphrase reads the guest's data.
TIMEOUT=400
MARKER=SECUREVM-PLAINTEXT-MARKER-external-encrypt

prepare() {
    printf '%s' 'organisation medium passphrase' >"$WORK/medium.pass"
    printf '%s\n' "$MARKER" >"$WORK/write-marker"
    make_script_disk "$WORK/e2e" "$(guest_script external-check.sh)" \
        "$(guest_script disk-by-serial.sh)" "$WORK/write-marker"
}

run() {
    # The medium lives on L1's own tmpfs: libcryptsetup needs direct I/O,
    # which the 9p share holding $WORK does not offer.
    local stick
    stick=$(mktemp -d)/stick.img
    truncate -s 64M "$stick"
    vmm_run 300 --kernel "$GUEST_KERNEL" --initrd "$BUSYBOX_INITRAMFS" \
        --cmdline "console=ttyS0 reboot=acpi panic=-1 $GUEST_QUIET" --memory 256 \
        --disk "$WORK/e2e" --external "$stick" --external-policy encrypt \
        --external-passphrase-file "$WORK/medium.pass" --format-blank-external
    expect_exit 0
    [[ $(serial_value E2E-STICK) == present ]] || fail "the encrypted medium was not attached"
    [[ $(serial_value E2E-READBACK) == "$MARKER" ]] ||
        fail "guest read back '$(serial_value E2E-READBACK)' instead of its marker"
    cryptsetup isLuks --type luks2 "$stick" || fail "the medium is not a LUKS2 volume"
    ! grep -qaF "$MARKER" "$stick" || fail "the plaintext marker is in the medium image"
    load_storage_modules
    cryptsetup open --type luks2 --key-file "$WORK/medium.pass" --readonly \
        "$stick" e2e-stick || fail "cryptsetup open refused the medium securevm formatted"
    local clear
    clear=$(head -c 4096 /dev/mapper/e2e-stick | head -n1)
    cryptsetup close e2e-stick
    [[ $clear == "$MARKER" ]] || fail "dm-crypt reads '$clear', not the guest's marker"
}
