# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh
# disk-cryptsetup-interop: both directions between securevm and Linux
# dm-crypt/cryptsetup on the same LUKS2 images.
#   A. `cryptsetup luksFormat --type luks2`, ext4 and a file written through
#      dm-crypt; the guest under securevm (same passphrase) reads the file.
#   B. `securevm disk create --from` an ext4 image; the guest writes a file;
#      `cryptsetup luksDump` accepts the header and dm-crypt reads the file.
TIMEOUT=420
MARKER_A=written-by-dm-crypt-e2e
MARKER_B=written-by-the-guest-e2e

prepare() {
    mkdir -p "$WORK/a" "$WORK/b"
    printf '%s' 'interop passphrase' >"$WORK/disk.pass"
    touch "$WORK/mount-read"
    make_script_disk "$WORK/a/e2e" "$(guest_script external-check.sh)" \
        "$(guest_script disk-by-serial.sh)" "$WORK/mount-read"
    printf '%s\n' "$MARKER_B" >"$WORK/mount-write"
    make_script_disk "$WORK/b/e2e" "$(guest_script external-check.sh)" \
        "$(guest_script disk-by-serial.sh)" "$WORK/mount-write"
    # 4096-byte filesystem blocks: the volume has 4096-byte sectors (the
    # default), and a filesystem with smaller blocks cannot mount on it.
    mkfs.ext4 -q -F -b 4096 -L plain "$WORK/b/plain.img" 32M
    "$SECUREVM" disk create --from "$WORK/b/plain.img" --kdf-memory 64M --kdf-time 4 \
        --passphrase-file "$WORK/disk.pass" "$WORK/b/stick.img" 2>&1 | grep -v '^warning: these Argon2id costs are weak'
}

run() {
    load_storage_modules
    # The volumes live on L1's own tmpfs: libcryptsetup needs direct I/O,
    # which the 9p share holding $WORK does not offer.
    local local_dir
    local_dir=$(mktemp -d)
    mkdir -p "$local_dir/a" "$local_dir/b"
    cp "$WORK/b/stick.img" "$local_dir/b/stick.img"
    # A: cryptsetup writes, securevm reads.
    truncate -s 64M "$local_dir/a/stick.img"
    cryptsetup luksFormat --type luks2 --batch-mode --pbkdf argon2id --pbkdf-memory 65536 \
        --pbkdf-force-iterations 4 --key-file "$WORK/disk.pass" "$local_dir/a/stick.img" ||
        fail "cryptsetup luksFormat failed"
    cryptsetup open --key-file "$WORK/disk.pass" "$local_dir/a/stick.img" e2e-a || fail "cryptsetup open failed"
    mkfs.ext4 -q /dev/mapper/e2e-a
    mkdir -p "$local_dir/mnt"
    mount /dev/mapper/e2e-a "$local_dir/mnt"
    echo "$MARKER_A" >"$local_dir/mnt/marker.txt"
    umount "$local_dir/mnt"
    cryptsetup close e2e-a
    vmm_run 240 --kernel "$GUEST_KERNEL" --initrd "$BUSYBOX_INITRAMFS" \
        --cmdline "console=ttyS0 reboot=acpi panic=-1 $GUEST_QUIET" --memory 256 \
        --disk "$WORK/a/e2e" --disk "$local_dir/a/stick.img" --passphrase-file "$WORK/disk.pass"
    expect_exit 0
    [[ $(serial_value E2E-MOUNT-READ) == "$MARKER_A" ]] ||
        fail "the guest read '$(serial_value E2E-MOUNT-READ)' from the cryptsetup volume, expected $MARKER_A"

    # B: securevm writes, cryptsetup reads.
    vmm_run 240 --kernel "$GUEST_KERNEL" --initrd "$BUSYBOX_INITRAMFS" \
        --cmdline "console=ttyS0 reboot=acpi panic=-1 $GUEST_QUIET" --memory 256 \
        --disk "$WORK/b/e2e" --disk "$local_dir/b/stick.img" --passphrase-file "$WORK/disk.pass"
    expect_exit 0
    [[ $(serial_value E2E-MOUNT-WROTE) == "$MARKER_B" ]] || fail "the guest could not write to the securevm volume"
    ! grep -qaF "$MARKER_B" "$local_dir/b/stick.img" || fail "the guest's marker is in clear in the image"
    cryptsetup luksDump "$local_dir/b/stick.img" >"$WORK/b/luksDump.txt" || fail "cryptsetup luksDump refused securevm's header"
    cryptsetup open --readonly --key-file "$WORK/disk.pass" "$local_dir/b/stick.img" e2e-b ||
        fail "cryptsetup open refused securevm's volume"
    mount -o ro /dev/mapper/e2e-b "$local_dir/mnt" || { cryptsetup close e2e-b; fail "dm-crypt view does not mount"; }
    local seen
    seen=$(cat "$local_dir/mnt/from-guest.txt" 2>/dev/null)
    umount "$local_dir/mnt"
    cryptsetup close e2e-b
    [[ $seen == "$MARKER_B" ]] || fail "dm-crypt reads '$seen', expected $MARKER_B"
}
