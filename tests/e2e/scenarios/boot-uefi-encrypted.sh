# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh, L1_QEMU by scripts/e2e
# boot-uefi-encrypted: the installed Debian disk of boot-uefi as one LUKS2
# volume (ESP, GPT and all, from sector 0), made by `securevm disk create
# --from` with 512-byte sectors (the image's GPT has 512-byte sectors; the
# guest sees the volume's sector size as its logical block size) and opened
# by alice's login through her own keyslot: it boots through the firmware
# to multi-user, and neither the marker the guest writes to its root nor a
# run of bytes of the installed GRUB binary is in the volume in clear.
# Budget: boot-uefi's, plus the decryption of every block read.
TIMEOUT=660
# The L1 runs on the patched QEMU: stock 7.2 and 10.0 abort on the CR8
# writes of the firmware's interrupt handlers (scripts/lib/l1-qemu.sh).
L1_QEMU=patched
MARKER=SECUREVM-PLAINTEXT-MARKER-uefi-encrypted-root

prepare() {
    id_prepare
    cp --sparse=always "${DEBIAN_UEFI_IMAGE:?run scripts/guest-assets debian-uefi}" "$WORK/plain.img"
    # 64 bytes from the middle of the installed GRUB, and proof that the
    # plaintext image holds them (so that their absence below means
    # something).
    grub_bytes "${DEBIAN_UEFI_BOOTX64:?}" "$WORK/grub-bytes"
    file_contains "$WORK/plain.img" "$WORK/grub-bytes" || fail "the plaintext image lacks the GRUB bytes it should hold"
    printf 'the admin passphrase\n' >"$WORK/admin.pass"
    "$SECUREVM" disk create --from "$WORK/plain.img" --sector-size 512 --passphrase-file "$WORK/admin.pass" \
        --kdf-memory 64M --kdf-time 4 "$WORK/uefi-root.img" 2>&1 | grep -v '^warning: these Argon2id costs are weak'
    rm -f "$WORK/plain.img"
    "$SECUREVM" disk enroll --user alice --policy "$WORK/policy.toml" --policy-key "$WORK/org.pub" \
        --passphrase-file "$WORK/admin.pass" --user-passphrase-file "$WORK/alice.pass" \
        --kdf-memory 64M --kdf-time 4 "$WORK/uefi-root.img" 2>/dev/null >"$WORK/enroll.out"
    grep -q "enrolled user alice in keyslot 1 of" "$WORK/enroll.out" || fail "alice was not enrolled: $(cat "$WORK/enroll.out")"
    printf '%s\n' "$MARKER" >"$WORK/marker"
    make_script_disk "$WORK/e2e" "$(guest_script uefi-check.sh)" "$(guest_script root-marker.sh)" "$WORK/marker"
}

run() {
    # $WORK is the runner's local copy (libcryptsetup reads headers with
    # direct I/O, which the 9p share holding the results does not offer).
    local root=$WORK/uefi-root.img
    audit_args
    vmm_run 600 --firmware "${FIRMWARE:?run scripts/guest-assets firmware}" --cpus 2 --memory 1024 \
        --disk "$root" --disk "$WORK/e2e" --policy "$WORK/policy.toml" --policy-key "$WORK/org.pub" \
        --user alice --passphrase-file "$WORK/alice.pass" "${AUDIT_ARGS[@]}"
    expect_exit 0
    grep '"event":"disk-opened"' "$WORK/audit.jsonl" | grep '"user":"alice"' | grep '"user_slot":true' >/dev/null ||
        fail "the root volume was not opened through alice's own keyslot"
    expect_uefi_debian_booted
    [[ $(serial_value E2E-ROOT-MARKER) == "$MARKER" ]] || fail "the guest could not write its marker"
    expect_serial "SECUREVM-E2E: exit=0"
    cryptsetup isLuks --type luks2 "$root" || fail "the root image is not LUKS2"
    ! grep -qaF "$MARKER" "$root" || fail "the plaintext marker is in the root image"
    ! file_contains "$root" "$WORK/grub-bytes" || fail "bytes of the installed GRUB binary are in the root image in clear"
}
