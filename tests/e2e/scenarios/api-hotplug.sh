# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh
# api-hotplug: a USB-stick image attached under `encrypt` with
# `securevm ctl attach-external` shows up in the running Debian guest
# (ACPI PCI hot-plug); the guest makes ext4 on it and writes a marker,
# which is ciphertext on the host. `ctl detach-external` while the guest
# still has it mounted: the guest gets the eject request and lets go, the
# marker survives (dm-crypt in L1 reads it, and the guest reads it again
# after a second attach). Then the guest ejects the medium itself (as a
# user's "safely remove" does) and securevm takes it out without a ctl
# call. A plain medium is refused under `encrypt` (403, counted as
# denied) and a boot disk cannot be detached.
TIMEOUT=600
MARKER=SECUREVM-PLAINTEXT-MARKER-api-hotplug
# shellcheck source=tests/e2e/api/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../api/lib.sh"

prepare() {
    debian_root_copy "$WORK/debian-root.img"
    printf '%s' 'organisation medium passphrase' >"$WORK/medium.pass"
    printf '%s\n' "$MARKER" >"$WORK/marker"
    make_script_disk "$WORK/e2e" "$E2E_DIR/api/hotplug-guest.sh" \
        "$(guest_script disk-by-serial.sh)" "$WORK/marker"
}

run() {
    trap api_cleanup EXIT
    # The media live on L1's own tmpfs: libcryptsetup needs direct I/O,
    # which the 9p share holding $WORK does not offer.
    local media stick plain
    media=$(mktemp -d)
    stick=$media/stick.img
    plain=$media/plain.img
    "$SECUREVM" disk create --size 32M --kdf-memory 64M --kdf-time 4 \
        --passphrase-file "$WORK/medium.pass" "$stick" >/dev/null ||
        fail "securevm disk create failed"
    head -c 1M /dev/urandom >"$plain"

    api_start --kernel "$DEBIAN_KERNEL" --initrd "$DEBIAN_INITRD" \
        --cmdline "console=ttyS0 reboot=acpi panic=-1 root=/dev/vda rw $GUEST_QUIET e2e=1" \
        --cpus 2 --memory 1024 --disk "$WORK/debian-root.img" --disk "$WORK/e2e" \
        --external-policy encrypt --external-passphrase-file "$WORK/medium.pass"
    wait_serial "E2E-HOTPLUG=waiting" 330

    ! ctl attach-external "$plain" || fail "a plain medium was attached under encrypt"
    [[ $CTL_OUT == *"not an encrypted (LUKS) volume"* ]] || fail "plain medium refused with: $CTL_OUT"
    ! ctl detach-external e2e || fail "the boot disk e2e was detached"
    [[ $CTL_OUT == *"when the VM started"* ]] || fail "boot disk detach refused with: $CTL_OUT"

    local t0=$SECONDS
    ctl attach-external "$stick" || fail "attach refused: $CTL_OUT"
    [[ $CTL_OUT == "attached as stick.img" ]] || fail "attach said: $CTL_OUT"
    wait_serial "E2E-HOTPLUG-WRITTEN=" 120
    echo "attach to marker written: $((SECONDS - t0)) s; guest saw $(serial_value E2E-HOTPLUG-SEEN)"
    [[ $(serial_value E2E-HOTPLUG-WRITTEN) == ok ]] ||
        fail "the guest could not use the medium: $(serial_value E2E-HOTPLUG-WRITTEN)"
    ctl status || fail "status failed: $CTL_OUT"
    [[ $CTL_OUT == *"external stick.img $stick (encrypt)"* ]] || fail "status does not list the medium: $CTL_OUT"

    t0=$SECONDS
    ctl detach-external stick.img || fail "detach while mounted failed: $CTL_OUT"
    [[ $CTL_OUT == "detached stick.img" ]] || fail "detach said: $CTL_OUT"
    echo "detach (guest ejected the mounted disk): $((SECONDS - t0)) s"
    wait_serial "E2E-HOTPLUG-GONE=yes" 60
    ctl status --json || fail "status failed: $CTL_OUT"
    [[ $CTL_OUT != *'"stick.img"'* ]] || fail "status still lists the detached medium: $CTL_OUT"
    [[ $CTL_OUT == *'"attached": 1'* && $CTL_OUT == *'"denied": 1'* ]] ||
        fail "media counters after attach and refusal: $CTL_OUT"

    # Detached and flushed: ciphertext on the host, the marker inside.
    ! grep -qaF "$MARKER" "$stick" || fail "the plaintext marker is in the medium image"
    # Not --readonly: the guest lost the disk while mounted, so ext4's
    # journal is replayed on mount, as the guest will on the next attach.
    load_storage_modules
    cryptsetup open --type luks2 --key-file "$WORK/medium.pass" \
        "$stick" e2e-hotplug || fail "cryptsetup open refused the medium"
    mkdir -p "$media/mnt"
    local clear=
    if mount -t ext4 -o ro /dev/mapper/e2e-hotplug "$media/mnt"; then
        clear=$(cat "$media/mnt/marker.txt")
        umount "$media/mnt"
    fi
    cryptsetup close e2e-hotplug
    [[ $clear == "$MARKER" ]] || fail "after the detach dm-crypt reads '$clear', not the guest's marker"

    ctl attach-external "$stick" || fail "second attach refused: $CTL_OUT"
    wait_serial "E2E-HOTPLUG-READBACK=" 120
    [[ $(serial_value E2E-HOTPLUG-READBACK) == "$MARKER" ]] ||
        fail "after re-attaching the guest read '$(serial_value E2E-HOTPLUG-READBACK)'"

    wait_serial "E2E-HOTPLUG-GUEST-EJECT=" 90
    [[ $(serial_value E2E-HOTPLUG-GUEST-EJECT) == yes ]] ||
        fail "the guest could not eject the medium: $(serial_value E2E-HOTPLUG-GUEST-EJECT)"
    local listed=yes i
    for ((i = 0; i < 20; i++)); do
        ctl status --json || fail "status failed: $CTL_OUT"
        [[ $CTL_OUT == *'"stick.img"'* ]] || {
            listed=no
            break
        }
        sleep 0.5
    done
    [[ $listed == no ]] || fail "status still lists the medium the guest ejected: $CTL_OUT"
    api_wait_exit 120
    expect_exit 0
    expect_serial "SECUREVM-E2E: exit=0"
}
