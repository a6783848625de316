# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh
# usb-plug-readonly: under `--watch-removable --external-policy read-only`
# a real USB stick plugged into L1 while the busybox guest runs is attached
# read-only: the guest sees a new disk whose serial is the stick's USB
# serial cut to 20 bytes, reads it, a raw write fails; `ctl status` shows
# the stick attached (read-only) under that 20-byte id; pulling it takes the disk away, and the
# stick's image is unchanged. Attach and pull are audited with the serial.
TIMEOUT=420
# 25 bytes: the guest sees the first 20.
SERIAL=E2E-READONLY-0123456789
GUEST_SERIAL=${SERIAL:0:20}
CONTENT=usb-readonly-medium-content
# shellcheck source=tests/e2e/usb/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../usb/lib.sh"

prepare() {
    usb_prepare_watch read-first try-write
}

run() {
    trap usb_cleanup EXIT
    usb_setup
    local media stick before after dev seq
    media=$(mktemp -d)
    stick=$media/stick.img
    printf '%s\n' "$CONTENT" >"$stick"
    truncate -s 16M "$stick"
    before=$(sha256sum <"$stick")
    usb_busybox_start --external-policy read-only

    local t0=$SECONDS
    usb_plug ro "$stick" "$SERIAL"
    dev=$(usb_wait_disk "$SERIAL")
    seq=$(usb_diskseq "$dev")
    usb_wait_fate "$SERIAL" ": attached" 60
    [[ $USB_LINE == "removable $dev serial '$SERIAL' diskseq $seq: attached as '$GUEST_SERIAL' (read-only)" ]] ||
        fail "status line of the stick: $USB_LINE"
    wait_serial "E2E-USB-ADD-$GUEST_SERIAL=" 120
    echo "plug to guest disk: $((SECONDS - t0)) s"
    [[ $(serial_value "E2E-USB-RO-$GUEST_SERIAL") == 1 ]] || fail "the guest does not see the stick read-only"
    [[ $(serial_value "E2E-USB-READ-$GUEST_SERIAL") == "$CONTENT" ]] ||
        fail "the guest read '$(serial_value "E2E-USB-READ-$GUEST_SERIAL")' from the stick"
    [[ $(serial_value "E2E-USB-WRITE-$GUEST_SERIAL") == refused ]] || fail "a raw write to the read-only stick was not refused"
    expect_vmm_said "securevm: removable medium $dev (serial '$SERIAL') attached as '$GUEST_SERIAL' (read-only)"
    ctl status || fail "ctl status failed: $CTL_OUT"
    [[ $(usb_device "$GUEST_SERIAL") == "device: external $GUEST_SERIAL $dev (read-only)" ]] ||
        fail "no device line for the stick: $CTL_OUT"
    ctl status --json || fail "ctl status --json failed: $CTL_OUT"
    python3 - "$CTL_OUT" "$dev" "$SERIAL" "$seq" "$GUEST_SERIAL" <<'PY' || fail "status --json removable entry: $CTL_OUT"
import json, sys
status, dev, serial, seq, medium_id = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
entries = [e for e in status["removable"] if e.get("serial") == serial]
assert len(entries) == 1, entries
e = entries[0]
assert (e["device"], e["diskseq"], e["fate"], e["id"], e["mode"]) == (dev, seq, "attached", medium_id, "read-only"), e
PY

    t0=$SECONDS
    usb_unplug ro
    wait_serial "E2E-USB-GONE-$GUEST_SERIAL=" 60
    echo "pull to guest disk gone: $((SECONDS - t0)) s"
    usb_wait_unlisted "$SERIAL" 30 "$GUEST_SERIAL"
    usb_stop
    after=$(sha256sum <"$stick")
    [[ $before == "$after" ]] || fail "the read-only stick changed"
    usb_expect_audited read-only "$SERIAL" "$dev"
    usb_expect_audited removed "$SERIAL" "$dev"
}
