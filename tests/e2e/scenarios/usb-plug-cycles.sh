# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh
# usb-plug-cycles: one real USB stick plugged and pulled (without eject)
# E2E_USB_CYCLES times (default 10; 50 by hand) under `--watch-removable
# --external-policy read-only` while the busybox guest runs, each time
# attached before it is pulled; then another stick pulled QUICK_PULLS
# times as soon as its node appears (mid-judgement: the node may be gone
# before securevm opens it, or the disk before the guest has it).
# Afterwards `ctl status` lists no stale stick or device, securevm holds
# no more file descriptors than before the first plug, and a new stick is
# still attached and seen by the guest (no hot-plug slot leaked).
CYCLES=${E2E_USB_CYCLES:-10}
TIMEOUT=$((300 + CYCLES * 30))
SERIAL=E2E-CYCLES-STICK
QUICK=E2E-CYCLES-QUICK
QUICK_PULLS=5
NEW=E2E-CYCLES-NEW
# shellcheck source=tests/e2e/usb/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../usb/lib.sh"

prepare() {
    make_script_disk "$WORK/e2e" "$E2E_DIR/usb/watch-guest.sh"
}

run() {
    trap usb_cleanup EXIT
    usb_setup
    local media dev i fds_before fds_after t0 seqs=()
    media=$(mktemp -d)
    truncate -s 8M "$media/stick.img" "$media/quick.img" "$media/new.img"
    usb_busybox_start --external-policy read-only
    fds_before=$(usb_fds)

    t0=$SECONDS
    usb_plug cycle "$media/stick.img" "$SERIAL"
    for ((i = 1; i <= CYCLES; i++)); do
        ((i == 1)) || usb_replug cycle
        dev=$(usb_wait_disk "$SERIAL")
        seqs+=("$(usb_diskseq "$dev")")
        usb_wait_fate "$SERIAL" "diskseq ${seqs[-1]}: attached as '$SERIAL' (read-only)" 60
        usb_unplug cycle
        usb_wait_gone "$dev"
        usb_wait_unlisted "$SERIAL" 60
    done
    echo "$CYCLES cycles in $((SECONDS - t0)) s (disk sequence numbers ${seqs[*]})"
    [[ $(printf '%s\n' "${seqs[@]}" | sort -u | wc -l) -eq $CYCLES ]] ||
        fail "the kernel reused a disk sequence number: ${seqs[*]}"
    t0=$SECONDS
    usb_plug quick "$media/quick.img" "$QUICK"
    for ((i = 1; i <= QUICK_PULLS; i++)); do
        ((i == 1)) || usb_replug quick
        dev=$(usb_wait_disk "$QUICK")
        usb_unplug quick
        usb_wait_gone "$dev"
    done
    usb_wait_unlisted "$QUICK" 60
    echo "$QUICK_PULLS quick pulls in $((SECONDS - t0)) s: $(grep -c "$QUICK" "$VMM_ERR" || true) securevm messages about them"
    ctl status || fail "ctl status failed: $CTL_OUT"
    ! grep -qE '^(removable |device: external )' <<<"$CTL_OUT" || fail "stale entries after the cycles: $CTL_OUT"
    fds_after=$(usb_fds)
    echo "securevm file descriptors: $fds_before before, $fds_after after"
    ((fds_after <= fds_before)) ||
        fail "securevm holds $fds_after file descriptors after $CYCLES cycles, $fds_before before: $(find "/proc/$VMM_PID/fd" -mindepth 1 -printf "%f->%l|")"

    usb_plug new "$media/new.img" "$NEW"
    dev=$(usb_wait_disk "$NEW")
    usb_wait_fate "$NEW" ": attached as '$NEW' (read-only)" 60
    wait_serial "E2E-USB-ADD-$NEW=" 120
    usb_stop
    [[ $(usb_audited read-only "$SERIAL") -eq $CYCLES ]] ||
        fail "$(usb_audited read-only "$SERIAL") read-only records for $CYCLES attaches"
    [[ $(usb_audited removed "$SERIAL") -eq $CYCLES ]] ||
        fail "$(usb_audited removed "$SERIAL") removed records for $CYCLES pulls"
    usb_expect_audited read-only "$NEW" "$dev"
}
