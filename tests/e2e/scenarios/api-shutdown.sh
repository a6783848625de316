# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh
# api-shutdown: `securevm ctl shutdown` presses the ACPI power button; the
# stock Debian guest sees the key on its "Power Button" input device and
# shuts down in order (units stopped, then ACPI S5); ctl reports the clean
# power-off, securevm exits 0 within the bound and removes its socket.
TIMEOUT=420
BOUND_SECS=120
# shellcheck source=tests/e2e/api/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../api/lib.sh"

prepare() {
    debian_root_copy "$WORK/debian-root.img"
    make_script_disk "$WORK/e2e" "$E2E_DIR/api/power-key.sh"
}

run() {
    trap api_cleanup EXIT
    api_start --kernel "$DEBIAN_KERNEL" --initrd "$DEBIAN_INITRD" \
        --cmdline "console=ttyS0 reboot=acpi panic=-1 root=/dev/vda rw $GUEST_QUIET e2e=1" \
        --cpus 2 --memory 1024 --disk "$WORK/debian-root.img" --disk "$WORK/e2e"
    wait_serial "E2E-POWER-BUTTON=ready" 330
    ctl status || fail "status failed: $CTL_OUT"
    [[ $CTL_OUT == *"state: running"* ]] || fail "status before shutdown: $CTL_OUT"
    local t0=$SECONDS
    ctl shutdown --timeout "$BOUND_SECS" || fail "ctl shutdown: $CTL_OUT"
    [[ $CTL_OUT == "the guest powered off after "* ]] || fail "ctl shutdown said: $CTL_OUT"
    api_wait_exit 20
    echo "power button to securevm exit: $((SECONDS - t0)) s ($CTL_OUT)"
    ((SECONDS - t0 <= BOUND_SECS + 20)) || fail "securevm took $((SECONDS - t0)) s to stop"
    expect_exit 0
    expect_serial "E2E-POWER-KEY=pressed"
    expect_serial "SECUREVM-E2E: clean-stop"
    [[ ! -e $API_SOCKET ]] || fail "securevm left its socket $API_SOCKET behind"
}
