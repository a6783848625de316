# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh
# usb-plug-readonly: under `--watch-removable --external-policy read-only`
# a real USB stick plugged into L1 while the busybox guest runs is attached
# read-only: the guest sees a new disk whose serial is the stick's USB
# serial cut to 20 bytes, reads it, a raw write fails; `ctl status` shows
# the stick attached (read-only) under that 20-byte id. A second securevm
# started meanwhile finds the stick busy (the first holds it O_EXCL). A
# stick without a serial number is attached as `usb-DISKSEQ`. Pulling the
# sticks takes the disks away, and the images are unchanged. Attach and
# pull are audited with the serial.
TIMEOUT=480
# 25 bytes: the guest sees the first 20.
SERIAL=E2E-READONLY-0123456789
GUEST_SERIAL=${SERIAL:0:20}
CONTENT=usb-readonly-medium-content
# shellcheck source=tests/e2e/usb/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../usb/lib.sh"

# usb_wait_nameless: the /dev/sdX of the USB stick that reports no serial.
usb_wait_nameless() {
    local i b
    for ((i = 0; i < 600; i++)); do
        for b in /sys/class/block/sd*; do
            [[ -e $b && ! -e $b/partition && -z $(usb_disk_serial "${b##*/}") ]] || continue
            [[ $(cat "$b/size") -gt 0 ]] || continue
            echo "/dev/${b##*/}"
            return 0
        done
        sleep 0.1
    done
    fail "the stick without a serial did not appear"
}

# second_securevm_finds_busy DEV: another securevm with --watch-removable,
# started while this one holds DEV, lists DEV as busy and attaches nothing.
second_securevm_finds_busy() {
    local sock i line=''
    sock=$(mktemp -d /tmp/securevm-api.XXXXXX)/second.sock
    "$SECUREVM" run --kernel "$GUEST_KERNEL" --initrd "$BUSYBOX_INITRAMFS" \
        --cmdline "console=ttyS0 reboot=acpi panic=-1 $GUEST_QUIET e2e.cmd=\"sleep 120\"" --memory 128 \
        --watch-removable --external-policy read-only --api-socket "$sock" \
        </dev/null >"$WORK/second.log" 2>&1 &
    SECOND_PID=$!
    for ((i = 0; i < 240; i++)); do
        line=$("$SECUREVM" ctl --api-socket "$sock" status 2>/dev/null | grep "^removable $1 " || true)
        [[ -z $line ]] || break
        sleep 0.25
    done
    kill "$SECOND_PID" 2>/dev/null || true
    wait "$SECOND_PID" 2>/dev/null || true
    SECOND_PID=
    echo "second securevm: $line"
    [[ $line == "removable $1 serial '$SERIAL' diskseq "*": busy ("*"in use"* ]] ||
        fail "a second securevm lists the attached stick as: ${line:-nothing}"
    ! grep -q "attached as" "$WORK/second.log" || fail "the second securevm attached something: $(grep 'attached as' "$WORK/second.log")"
}

prepare() {
    usb_prepare_watch read-first try-write
}

run() {
    SECOND_PID=
    trap '[[ -z $SECOND_PID ]] || kill "$SECOND_PID" 2>/dev/null; usb_cleanup' EXIT
    usb_setup
    local media stick before after dev seq
    media=$(mktemp -d)
    stick=$media/stick.img
    printf '%s\n' "$CONTENT" >"$stick"
    truncate -s 16M "$stick"
    head -c 1M /dev/urandom >"$media/nameless.img"
    before=$(cat "$stick" "$media/nameless.img" | sha256sum)
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

    second_securevm_finds_busy "$dev"

    local nameless_dev nameless_id
    usb_plug nameless "$media/nameless.img" ""
    nameless_dev=$(usb_wait_nameless)
    nameless_id=usb-$(usb_diskseq "$nameless_dev")
    local i
    for ((i = 0; i < 240; i++)); do
        ctl status || fail "ctl status failed: $CTL_OUT"
        grep -q "^removable $nameless_dev serial none diskseq .*: attached" <<<"$CTL_OUT" && break
        sleep 0.25
    done
    grep -qx "removable $nameless_dev serial none diskseq ${nameless_id#usb-}: attached as '$nameless_id' (read-only)" <<<"$CTL_OUT" ||
        fail "the stick without a serial: $(tr '\n' '|' <<<"$CTL_OUT")"
    wait_serial "E2E-USB-ADD-$nameless_id=" 120

    t0=$SECONDS
    usb_unplug ro
    usb_unplug nameless
    wait_serial "E2E-USB-GONE-$GUEST_SERIAL=" 60
    echo "pull to guest disk gone: $((SECONDS - t0)) s"
    wait_serial "E2E-USB-GONE-$nameless_id=" 60
    usb_wait_unlisted "$SERIAL" 30 "$GUEST_SERIAL"
    usb_stop
    after=$(cat "$stick" "$media/nameless.img" | sha256sum)
    [[ $before == "$after" ]] || fail "a read-only stick changed"
    usb_expect_audited read-only "$SERIAL" "$dev"
    usb_expect_audited removed "$SERIAL" "$dev"
}
