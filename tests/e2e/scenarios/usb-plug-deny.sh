# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh
# usb-plug-deny: under `--watch-removable --external-policy deny` no USB
# stick is attached, neither one present when securevm starts nor one
# plugged while the guest runs: both are reported, counted and audited as
# denied with their serial, the guest never sees a new disk and the
# sticks' images are unchanged.
TIMEOUT=360
EARLY=E2E-DENY-EARLY
LATE=E2E-DENY-LATE
# shellcheck source=tests/e2e/usb/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../usb/lib.sh"

prepare() {
    make_script_disk "$WORK/e2e" "$E2E_DIR/usb/watch-guest.sh"
}

run() {
    trap usb_cleanup EXIT
    usb_setup
    local media before early_dev late_dev
    media=$(mktemp -d)
    head -c 4M /dev/urandom >"$media/early.img"
    head -c 4M /dev/urandom >"$media/late.img"
    before=$(cat "$media"/*.img | sha256sum)
    usb_plug early "$media/early.img" "$EARLY"
    early_dev=$(usb_wait_disk "$EARLY")
    usb_busybox_start --external-policy deny

    usb_wait_fate "$EARLY" ": denied (" 30
    [[ $USB_LINE == "removable $early_dev serial '$EARLY' diskseq $(usb_diskseq "$early_dev"): denied ("* ]] ||
        fail "status line of the stick present at start: $USB_LINE"
    usb_plug late "$media/late.img" "$LATE"
    late_dev=$(usb_wait_disk "$LATE")
    usb_wait_fate "$LATE" ": denied (" 60
    [[ $USB_LINE == "removable $late_dev serial '$LATE' diskseq $(usb_diskseq "$late_dev"): denied ("* ]] ||
        fail "status line of the stick plugged later: $USB_LINE"
    grep -q '^media: 0 attached, 2 denied' <<<"$CTL_OUT" || fail "media counters: $CTL_OUT"
    ! grep -q '^device: external ' <<<"$CTL_OUT" || fail "a denied stick has a device line: $CTL_OUT"
    expect_vmm_said "external medium $early_dev"
    expect_vmm_said "external medium $late_dev"
    # Give a wrongly attached disk the time to show up in the guest.
    sleep 5
    usb_unplug late
    usb_wait_unlisted "$LATE" 30
    usb_stop
    ! tr -d '\r' <"$SERIAL_LOG" | grep -q 'E2E-USB-ADD-' || fail "the guest saw a new disk: $(grep 'E2E-USB-ADD-' "$SERIAL_LOG")"
    [[ $(cat "$media"/*.img | sha256sum) == "$before" ]] || fail "a denied stick changed"
    usb_expect_audited deny "$EARLY" "$early_dev"
    usb_expect_audited deny "$LATE" "$late_dev"
    [[ $(usb_audited encrypt "$EARLY") -eq 0 && $(usb_audited read-only "$LATE") -eq 0 ]] ||
        fail "a denied stick is audited as attached"
}
