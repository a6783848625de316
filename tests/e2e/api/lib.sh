# shellcheck shell=bash
# Helpers of the control-API scenarios (api-*, net-live-update), sourced
# by them on top of tests/e2e/lib.sh: securevm runs in the background with
# --api-socket while the scenario drives it with `securevm ctl`.

API_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# api_sign VERSION: $WORK/policy-vVERSION.toml and its minisign signature,
# signed with $WORK/org.key (made by api_prepare_policies).
api_sign() {
    cp "$API_DIR/policy-v$1.toml" "$WORK/policy-v$1.toml"
    minisign -S -s "$WORK/org.key" -m "$WORK/policy-v$1.toml" \
        -t "securevm-policy version=$1" >/dev/null
}

# api_prepare_policies: a fresh key; versions 1 and 2 signed; version 3 as
# a tampered copy (signed, then changed) and as an unsigned copy; a policy
# state file with nothing installed yet.
api_prepare_policies() {
    rm -f "$WORK/org.key" "$WORK/org.pub"
    minisign -G -W -p "$WORK/org.pub" -s "$WORK/org.key" >/dev/null
    api_sign 1
    api_sign 2
    api_sign 3
    mv "$WORK/policy-v3.toml" "$WORK/tampered-v3.toml"
    mv "$WORK/policy-v3.toml.minisig" "$WORK/tampered-v3.toml.minisig"
    sed -i 's|remote = \["192.0.2.1"\]|remote = ["0.0.0.0/0"]|' "$WORK/tampered-v3.toml"
    cp "$API_DIR/policy-v3.toml" "$WORK/unsigned-v3.toml"
    printf '# securevm policy state: written by guest-policy, do not edit\nformat=1\ninstalled=none\n' \
        >"$WORK/policy.state"
}

# api_prepare_transfers: policies plus the busybox guest's script disk
# running transfer-steps.
api_prepare_transfers() {
    api_prepare_policies
    printf '%s/24\n' "$NET_GUEST_IP" >"$WORK/guest-ip"
    cp "$API_DIR/transfer-steps" "$WORK/steps"
    make_script_disk "$WORK/e2e" "$(guest_script net-check.sh)" "$WORK/guest-ip" "$WORK/steps"
}

# api_cleanup: stops a securevm still running and takes the network down
# (trap it on EXIT, so a failing scenario leaves nothing behind).
api_cleanup() {
    if [[ -n ${VMM_PID:-} ]] && kill -0 "$VMM_PID" 2>/dev/null; then
        kill "$VMM_PID" 2>/dev/null || true
        wait "$VMM_PID" 2>/dev/null || true
    fi
    [[ -z ${PEER_PID:-} ]] || net_down
}

# api_start ARG...: `securevm run ARG... --api-socket $API_SOCKET` in the
# background, the guest console appended to $SERIAL_LOG and securevm's own
# messages to $VMM_ERR (apart, so that its reports cannot split a marker
# the guest prints at the same moment). The socket is
# in a private temporary directory: $WORK may be a 9p share, where sockets
# cannot be created, and its path is longer than a socket address allows.
api_start() {
    API_SOCKET=$(mktemp -d /tmp/securevm-api.XXXXXX)/vm.sock
    {
        printf '### %s run' "$SECUREVM"
        printf ' %q' "$@" --api-socket "$API_SOCKET"
        echo
    } >>"$SERIAL_LOG"
    VMM_ERR=$WORK/securevm.err
    VMM_T0=$(date +%s%3N)
    "$SECUREVM" run "$@" --api-socket "$API_SOCKET" </dev/null >>"$SERIAL_LOG" 2>>"$VMM_ERR" &
    VMM_PID=$!
}

# api_start_transfers: the busybox guest on the TAP under policy v1,
# logged in as its user tester (role netuser).
api_start_transfers() {
    printf '%s\n' "$NET_TESTER_PASSPHRASE" >"$WORK/tester.pass"
    audit_args
    api_start --kernel "$GUEST_KERNEL" --initrd "$BUSYBOX_INITRAMFS" \
        --cmdline "console=ttyS0 reboot=acpi panic=-1 $GUEST_QUIET" --memory 256 \
        --disk "$WORK/e2e" --net "tap=$NET_TAP,ip=$NET_GUEST_IP" \
        --policy "$WORK/policy-v1.toml" --policy-key "$WORK/org.pub" \
        --policy-state "$WORK/policy.state" \
        --user tester --passphrase-file "$WORK/tester.pass" "${AUDIT_ARGS[@]}"
}

# api_wait_exit SECONDS: waits for securevm; sets VMM_EXIT and VMM_SECS
# (since api_start). Kills it and fails after SECONDS.
api_wait_exit() {
    local i
    for ((i = 0; i < $1 * 10; i++)); do
        if ! kill -0 "$VMM_PID" 2>/dev/null; then
            set +e
            wait "$VMM_PID"
            VMM_EXIT=$?
            set -e
            VMM_SECS=$(awk -v ms=$(($(date +%s%3N) - VMM_T0)) 'BEGIN { printf "%.1f", ms / 1000 }')
            echo "### exit status $VMM_EXIT after ${VMM_SECS}s; securevm's messages are in $VMM_ERR" >>"$SERIAL_LOG"
            # scripts/e2e gives a scenario whose guest crashed another run.
            [[ $VMM_EXIT -ne 4 ]] || touch "$WORK/guest-crashed"
            return 0
        fi
        sleep 0.1
    done
    hang_diagnostics "$VMM_PID" >"$WORK/hang-diagnostics.txt" 2>&1 || true
    touch "$WORK/guest-hung"
    kill "$VMM_PID" 2>/dev/null || true
    fail "securevm still running after ${1}s (killed; see hang-diagnostics.txt)"
}

# wait_serial TEXT SECONDS: until the console shows TEXT; fails after SECONDS.
wait_serial() {
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        tr -d '\r' <"$SERIAL_LOG" | grep -F -- "$1" >/dev/null && return 0
        kill -0 "$VMM_PID" 2>/dev/null || {
            api_wait_exit 10
            fail "securevm exited $VMM_EXIT ($(vmm_exit_meaning "$VMM_EXIT")) before the guest printed '$1': $(grep -v -e '^[a-z0-9 ]*=0x' -e '^(' "$VMM_ERR" | tail -n1)"
        }
        sleep 0.1
    done
    hang_diagnostics "$VMM_PID" >"$WORK/hang-diagnostics.txt" 2>&1 || true
    touch "$WORK/guest-hung"
    fail "the guest did not print '$1' within ${2}s (see hang-diagnostics.txt)"
}

# ctl ARG...: `securevm ctl` on the scenario's socket; output (both
# streams) in CTL_OUT and appended to $WORK/ctl.log; returns its status.
ctl() {
    local status=0
    CTL_OUT=$("$SECUREVM" ctl --api-socket "$API_SOCKET" "$@" 2>&1) || status=$?
    printf '$ securevm ctl %s\n%s\n(status %d)\n' "$*" "$CTL_OUT" "$status" >>"$WORK/ctl.log"
    return "$status"
}

# expect_vmm_said TEXT: securevm printed a line containing TEXT on stderr.
expect_vmm_said() {
    grep -qF -- "$1" "$VMM_ERR" || fail "securevm never printed '$1' (see $VMM_ERR)"
}

# sink_field PORT KEY: KEY=value of the peer's log line for the sink at PORT.
sink_field() {
    sed -n "s/^sink 192\\.0\\.2\\.1:$1 .*\\b$2=\\([0-9.]*\\).*/\\1/p" "$PEER_LOG" | tail -n1
}

# wait_sinks SECONDS: until the peer logged both transfers (a cut flow is
# logged when its 30 s read timeout expires).
wait_sinks() {
    local i
    for ((i = 0; i < $1 * 10; i++)); do
        [[ -n $(sink_field 5001 bytes) && -n $(sink_field 5002 bytes) ]] && return 0
        sleep 0.1
    done
    fail "the peer did not log both transfers within ${1}s: $(grep sink "$PEER_LOG" | tr '\n' ' ')"
}
