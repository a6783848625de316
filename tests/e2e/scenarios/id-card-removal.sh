# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh
# id-card-removal: the guest prints a counter every second; pulling the
# SoftHSM2 card pauses the vCPUs (the counter stops, the console says the
# session is locked); inserting it again with the PIN (a PIN file here)
# resumes the guest where it stopped, and it runs to its end.
TIMEOUT=420

# wait_for TEXT SECONDS [FILE]: until FILE (default the console log) holds TEXT.
wait_for() {
    local i
    for ((i = 0; i < $2 * 5; i++)); do
        tr -d '\r' <"${3:-$SERIAL_LOG}" | grep -F -- "$1" >/dev/null && return 0
        kill -0 "$VMM_PID" 2>/dev/null || fail "securevm ended before printing '$1'"
        sleep 0.2
    done
    fail "no '$1' within $2 s"
}

count() { serial_value E2E-COUNT; }

run() {
    # shellcheck source=tests/e2e/card/card.sh disable=SC1091
    source "$E2E_DIR/card/card.sh"
    card_setup removal-card EC:prime256v1
    # shellcheck disable=SC2016 # the guest's shell expands it
    local loop='i=0; while [ $i -lt 45 ]; do echo E2E-COUNT=$i; i=$((i+1)); sleep 1; done'
    "$SECUREVM" run --kernel "$GUEST_KERNEL" --initrd "$BUSYBOX_INITRAMFS" \
        --cmdline "console=ttyS0 reboot=acpi panic=-1 $GUEST_QUIET e2e.cmd=\"$loop\"" \
        --cpus 1 --memory 256 --pkcs11-module "$CARD_MODULE" --token-label removal-card \
        --pin-file "$CARD_DIR/pin" </dev/null >>"$SERIAL_LOG" 2>>"$WORK/securevm.err" &
    VMM_PID=$!
    wait_for "E2E-COUNT=3" 180

    card_remove
    # securevm's own messages go apart from the console, where they could
    # land in the middle of a counter line.
    wait_for "securevm: session locked: smart card removed" 20 "$WORK/securevm.err"
    sleep 2
    local stopped_at
    stopped_at=$(count)
    sleep 6
    [[ $(count) == "$stopped_at" ]] || fail "the guest kept counting while locked ($stopped_at -> $(count))"

    card_insert
    wait_for "securevm: session unlocked" 30 "$WORK/securevm.err"
    local i
    for ((i = 0; i < 100; i++)); do
        (($(count) > stopped_at)) && break
        sleep 0.2
    done
    (($(count) > stopped_at)) || fail "the guest did not continue after the unlock"

    local status=0
    timeout 120 tail --pid="$VMM_PID" -f /dev/null || fail "the guest did not finish after the unlock"
    wait "$VMM_PID" || status=$?
    [[ $status -eq 0 ]] || fail "securevm exited $status, expected 0"
    expect_serial "E2E-COUNT=44"
}
