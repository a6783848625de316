# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh
# disk-encrypted-boot: the Debian root filesystem, encrypted with
# `securevm disk create --from`, boots to multi-user with the disk
# passphrase; a marker the guest writes to its root filesystem is nowhere
# in the image in clear.
TIMEOUT=420
MARKER=SECUREVM-PLAINTEXT-MARKER-encrypted-root

prepare() {
    printf '%s' 'root disk passphrase' >"$WORK/root.pass"
    debian_root_copy "$WORK/root.img"
    "$SECUREVM" disk create --from "$WORK/root.img" --kdf-memory 64M --kdf-time 4 \
        --passphrase-file "$WORK/root.pass" "$WORK/root.luks" 2>&1 | grep -v '^warning: these Argon2id costs are weak'
    rm -f "$WORK/root.img"
    printf '%s\n' "$MARKER" >"$WORK/marker"
    make_script_disk "$WORK/e2e" "$(guest_script root-marker.sh)" "$WORK/marker"
}

run() {
    # $WORK is the runner's local copy (libcryptsetup reads headers with
    # direct I/O, which the 9p share holding the results does not offer).
    local root=$WORK/root.luks
    vmm_run 360 --kernel "$DEBIAN_KERNEL" --initrd "$DEBIAN_INITRD" \
        --cmdline "console=ttyS0 reboot=acpi panic=-1 root=/dev/vda rw $GUEST_QUIET e2e=1" \
        --cpus 2 --memory 1024 --disk "$root" --disk "$WORK/e2e" \
        --passphrase-file "$WORK/root.pass"
    expect_serial "SECUREVM-E2E: debian multi-user=active"
    [[ $(serial_value E2E-ROOT-MARKER) == "$MARKER" ]] || fail "the guest could not write its marker"
    expect_exit 0
    cryptsetup isLuks --type luks2 "$root" || fail "the root image is not LUKS2"
    ! grep -qaF "$MARKER" "$root" || fail "the plaintext marker is in the root image"
}
