# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh
# usb-serial-allowlist: a signed policy whose role lists one USB serial in
# allowed_media_serials (tests/e2e/usb/policy.toml), logged in as its user:
# of two real USB sticks plugged at once while the busybox guest runs,
# only the listed one is attached (read-only, the role's mode) and seen by
# the guest; the other is denied as not on the allow-list. Both audited.
TIMEOUT=420
LISTED=E2E-ALLOWED-STICK
OTHER=E2E-OTHER-STICK
# shellcheck source=tests/e2e/usb/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../usb/lib.sh"

prepare() {
    cp "$E2E_DIR/usb/policy.toml" "$WORK/policy.toml"
    rm -f "$WORK/org.key" "$WORK/org.pub"
    minisign -G -W -p "$WORK/org.pub" -s "$WORK/org.key" >/dev/null
    minisign -S -s "$WORK/org.key" -m "$WORK/policy.toml" -t "securevm-policy version=1" >/dev/null
    printf '%s\n' "$ID_ALICE_PASSPHRASE" >"$WORK/alice.pass"
    usb_prepare_watch read-first
}

run() {
    trap usb_cleanup EXIT
    usb_setup
    local media listed_dev other_dev
    media=$(mktemp -d)
    printf 'listed-stick\n' >"$media/listed.img"
    printf 'other-stick\n' >"$media/other.img"
    truncate -s 8M "$media/listed.img" "$media/other.img"
    usb_busybox_start --policy "$WORK/policy.toml" --policy-key "$WORK/org.pub" \
        --user alice --passphrase-file "$WORK/alice.pass"

    usb_plug other "$media/other.img" "$OTHER"
    usb_plug listed "$media/listed.img" "$LISTED"
    other_dev=$(usb_wait_disk "$OTHER")
    listed_dev=$(usb_wait_disk "$LISTED")
    usb_wait_fate "$LISTED" ": attached" 60
    [[ $USB_LINE == "removable $listed_dev serial '$LISTED' diskseq $(usb_diskseq "$listed_dev"): attached as '$LISTED' (read-only)" ]] ||
        fail "status line of the listed stick: $USB_LINE"
    usb_wait_fate "$OTHER" ": denied (" 60
    [[ $USB_LINE == "removable $other_dev serial '$OTHER' diskseq $(usb_diskseq "$other_dev"): denied ("*"allow-list"* ]] ||
        fail "status line of the unlisted stick: $USB_LINE"
    wait_serial "E2E-USB-ADD-$LISTED=" 120
    [[ $(serial_value "E2E-USB-READ-$LISTED") == listed-stick ]] ||
        fail "the guest read '$(serial_value "E2E-USB-READ-$LISTED")' from the listed stick"
    [[ $(serial_value "E2E-USB-RO-$LISTED") == 1 ]] || fail "the listed stick is not read-only in the guest"
    expect_vmm_said "external medium $other_dev"
    expect_vmm_said "not on the role's allow-list"
    usb_stop
    ! tr -d '\r' <"$SERIAL_LOG" | grep -q "E2E-USB-ADD-$OTHER=" || fail "the guest saw the unlisted stick"
    usb_expect_audited read-only "$LISTED" "$listed_dev"
    usb_expect_audited deny "$OTHER" "$other_dev"
    grep '"event":"external-medium"' "$WORK/audit.jsonl" | grep -F "\"serial\":\"$OTHER\"" | grep -qF '"user":"alice"' ||
        fail "the refusal is not audited for alice: $(grep external-medium "$WORK/audit.jsonl" | tr '\n' ' ')"
}
