# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh
# id-smartcard: a LUKS2 disk gets a keyslot bound to a SoftHSM2 card
# (`securevm disk enroll-card`, systemd-cryptenroll's systemd-pkcs11 layout,
# which cryptsetup shows); the guest boots and reads the disk with the card
# and its PIN alone; a wrong PIN is refused with the one message that does
# not say what was wrong.
TIMEOUT=420
MARKER=E2E-CARD-MARKER=opened-by-card

prepare() {
    printf '%s' 'disk passphrase' >"$WORK/disk.pass"
    printf '%s\n' "$MARKER" >"$WORK/plain.img"
    truncate -s 4M "$WORK/plain.img"
    "$SECUREVM" disk create --from "$WORK/plain.img" --kdf-memory 64M --kdf-time 4 \
        --passphrase-file "$WORK/disk.pass" "$WORK/card.luks" 2>&1 | grep -v '^warning: these Argon2id costs are weak' || true
    rm -f "$WORK/plain.img"
}

run() {
    # shellcheck source=tests/e2e/card/card.sh disable=SC1091
    source "$E2E_DIR/card/card.sh"
    card_setup e2e-card rsa:2048
    # libcryptsetup needs direct I/O, which the 9p share does not offer.
    local disk
    disk=$CARD_DIR/card.luks
    cp "$WORK/card.luks" "$disk"
    "$SECUREVM" disk enroll-card --pkcs11-module "$CARD_MODULE" --token-label e2e-card \
        --pin-file "$CARD_DIR/pin" --passphrase-file "$WORK/disk.pass" "$disk" >>"$WORK/run.log" 2>&1 ||
        fail "securevm disk enroll-card failed"
    cryptsetup luksDump "$disk" | grep -q systemd-pkcs11 || fail "cryptsetup does not show a systemd-pkcs11 token"

    local guest=(--kernel "$GUEST_KERNEL" --initrd "$BUSYBOX_INITRAMFS"
        --cmdline "console=ttyS0 reboot=acpi panic=-1 $GUEST_QUIET e2e.cmd=\"head -n1 /dev/vda\""
        --cpus 1 --memory 256 --disk "$disk" --pkcs11-module "$CARD_MODULE" --token-label e2e-card)
    vmm_run 180 "${guest[@]}" --pin-file "$CARD_DIR/pin"
    expect_exit 0
    expect_serial "$MARKER"

    printf '000000\n' >"$CARD_DIR/wrong-pin"
    : >"$SERIAL_LOG.wrong"
    SERIAL_LOG=$SERIAL_LOG.wrong vmm_run 120 "${guest[@]}" --pin-file "$CARD_DIR/wrong-pin"
    expect_exit 1
    grep -q "the user, smart card or PIN was not accepted" "$SERIAL_LOG.wrong" ||
        fail "a wrong PIN was not refused with the generic message"
    ! grep -qF "$MARKER" "$SERIAL_LOG.wrong" || fail "the disk opened with a wrong PIN"
}
