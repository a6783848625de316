# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh
# id-smartcard: a LUKS2 disk gets a keyslot bound to a SoftHSM2 card
# (`securevm disk enroll-card`, systemd-cryptenroll's systemd-pkcs11 layout,
# which cryptsetup shows); the guest boots and reads the disk with the card
# and its PIN alone; then the policy binds the card's key to bob, who logs
# in with it (`--user bob --pkcs11-module`): his role applies and the card
# opens the disk; a wrong PIN is refused with the login's one message that
# does not say what was wrong, and the audit log keeps the exact reason.
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
    cryptsetup luksDump "$disk" | grep systemd-pkcs11 >/dev/null || fail "cryptsetup does not show a systemd-pkcs11 token"

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

    # The policy binds the card's public key to bob.
    id_prepare
    sed -i "/afbSoX1GAZ3UGg0kVDJ2JN5Ddfng8ZaMk7b/a [users.smartcard]\ntoken_label = \"e2e-card\"\npublic_key_sha256 = \"$(card_fingerprint e2e-card)\"" \
        "$WORK/policy.toml"
    rm -f "$WORK/policy.toml.minisig"
    minisign -S -s "$WORK/org.key" -m "$WORK/policy.toml" -t "securevm-policy version=1" >/dev/null
    local login
    audit_args
    login=(--policy "$WORK/policy.toml" --policy-key "$WORK/org.pub" --user bob "${AUDIT_ARGS[@]}")
    : >"$SERIAL_LOG.policy"
    SERIAL_LOG=$SERIAL_LOG.policy vmm_run 180 "${guest[@]}" "${login[@]}" --pin-file "$CARD_DIR/pin"
    SERIAL_LOG=$SERIAL_LOG.policy expect_exit 0
    grep -qF "$MARKER" "$SERIAL_LOG.policy" || fail "bob's card did not open the disk"
    grep '"event":"auth-success"' "$WORK/audit.jsonl" | grep '"method":"smartcard"' >/dev/null ||
        fail "the audit log does not show bob's smart-card login"
    grep '"event":"role-selected"' "$WORK/audit.jsonl" | grep '"role":"visitor"' >/dev/null ||
        fail "bob's role (visitor) was not selected"

    : >"$SERIAL_LOG.policy-wrong"
    SERIAL_LOG=$SERIAL_LOG.policy-wrong vmm_run 120 "${guest[@]}" "${login[@]}" --pin-file "$CARD_DIR/wrong-pin"
    SERIAL_LOG=$SERIAL_LOG.policy-wrong expect_exit 5
    grep -q "the user id or the credential is wrong" "$SERIAL_LOG.policy-wrong" ||
        fail "bob's wrong PIN was not refused with the login's message"
    grep '"event":"auth-failure"' "$WORK/audit.jsonl" | grep '"reason":"wrong-pin"' >/dev/null ||
        fail "the audit log does not give the wrong PIN as the reason"
    audit_verify "$WORK/audit.jsonl"
    [[ $AUDIT_EXIT -eq 0 ]] || fail "the audit log does not verify: $AUDIT_OUT"
}
