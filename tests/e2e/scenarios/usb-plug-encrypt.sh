# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh
# usb-plug-encrypt: under `--watch-removable --external-policy encrypt` a
# real USB stick holding an organisation LUKS2 volume is plugged into L1
# while the Debian guest runs: securevm opens it with the organisation's
# media key and hot-plugs it; the guest sees a new disk with the stick's
# USB serial and writes a marker with O_DIRECT and an fsync. The stick is
# then pulled without eject: the guest loses the disk, securevm keeps
# running and the guest powers off normally. On the stick's image the
# marker is ciphertext only, and dm-crypt in L1 reads it back: the flush
# the guest saw complete reached the stick. Attach and pull are audited.
TIMEOUT=600
SERIAL=E2E-ENCRYPT-STICK
MARKER=SECUREVM-PLAINTEXT-MARKER-usb-plug-encrypt
# shellcheck source=tests/e2e/usb/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../usb/lib.sh"

prepare() {
    debian_root_copy "$WORK/debian-root.img"
    printf '%s' 'organisation medium passphrase' >"$WORK/medium.pass"
    printf '%s\n' "$MARKER" >"$WORK/marker"
    printf '%s\n' "$SERIAL" >"$WORK/serial"
    make_script_disk "$WORK/e2e" "$E2E_DIR/usb/encrypt-guest.sh" \
        "$(guest_script disk-by-serial.sh)" "$WORK/marker" "$WORK/serial"
}

run() {
    trap usb_cleanup EXIT
    usb_setup
    # The stick's image lives on L1's tmpfs: libcryptsetup needs direct
    # I/O, which the 9p share holding $WORK does not offer.
    local media stick dev seq
    media=$(mktemp -d)
    stick=$media/stick.img
    "$SECUREVM" disk create --size 32M --kdf-memory 64M --kdf-time 4 \
        --passphrase-file "$WORK/medium.pass" "$stick" >/dev/null ||
        fail "securevm disk create failed"
    audit_args
    api_start --kernel "$DEBIAN_KERNEL" --initrd "$DEBIAN_INITRD" \
        --cmdline "console=ttyS0 reboot=acpi panic=-1 root=/dev/vda rw $GUEST_QUIET e2e=1" \
        --cpus 2 --memory 1024 --disk "$WORK/debian-root.img" --disk "$WORK/e2e" \
        --watch-removable --external-policy encrypt \
        --external-passphrase-file "$WORK/medium.pass" "${AUDIT_ARGS[@]}"
    wait_serial "E2E-USB=waiting" 330

    local t0=$SECONDS
    usb_plug enc "$stick" "$SERIAL"
    dev=$(usb_wait_disk "$SERIAL")
    seq=$(usb_diskseq "$dev")
    usb_wait_fate "$SERIAL" ": attached" 90
    [[ $USB_LINE == "removable $dev serial '$SERIAL' diskseq $seq: attached as '$SERIAL' (encrypt)" ]] ||
        fail "status line of the stick: $USB_LINE"
    [[ $(usb_device "$SERIAL") == "device: external $SERIAL $dev (encrypt)" ]] || fail "no device line for the stick: $CTL_OUT"
    expect_vmm_said "securevm: removable medium $dev (serial '$SERIAL') attached as '$SERIAL' (encrypt)"
    wait_serial "E2E-USB-WRITTEN=" 120
    echo "plug to marker written: $((SECONDS - t0)) s; guest saw $(serial_value E2E-USB-SEEN)"
    [[ $(serial_value E2E-USB-WRITTEN) == ok ]] || fail "the guest could not write the stick: $(serial_value E2E-USB-WRITTEN)"

    t0=$SECONDS
    usb_unplug enc
    wait_serial "E2E-USB-GONE=yes" 60
    echo "pull to disk gone in the guest: $((SECONDS - t0)) s"
    usb_wait_unlisted "$SERIAL" 30
    api_wait_exit 120
    expect_exit 0
    expect_serial "SECUREVM-E2E: exit=0"
    audit_verify "$WORK/audit.jsonl"
    [[ $AUDIT_EXIT -eq 0 ]] || fail "the audit log does not verify: $AUDIT_OUT"
    usb_expect_audited encrypt "$SERIAL" "$dev"
    usb_expect_audited removed "$SERIAL" "$dev"

    ! grep -qaF "$MARKER" "$stick" || fail "the plaintext marker is in the stick's image"
    load_storage_modules
    cryptsetup open --type luks2 --readonly --key-file "$WORK/medium.pass" "$stick" e2e-usb ||
        fail "cryptsetup open refused the stick's image"
    local clear
    clear=$(dd if=/dev/mapper/e2e-usb bs=4096 count=1 2>/dev/null | head -n1)
    cryptsetup close e2e-usb
    [[ $clear == "$MARKER" ]] || fail "dm-crypt reads '$clear' from the stick, not the guest's marker"
}
