# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh
# desktop-clipboard: the clipboard crosses between the guest (spice-vdagent
# on the virtio-console port com.redhat.spice.0) and the VNC client (cut
# text) only as the role says. One boot: bob's role has clipboard = "none",
# so text copied in the guest never reaches the VNC client, text the client
# sends never reaches the guest, and securevm audits the refusals. Then
# `ctl push-policy` gives his role "both" (policy version 2) while the guest
# runs: both directions arrive and nothing more is refused.
TIMEOUT=1500
# The desktop guests crash or freeze the nested L1 in many more attempts
# than the console guests (docs/testing.md); a crash costs a minute or two.
RETRIES=5
# How long the guest waits for the client's text under "none" (all of it),
# and at most for each text under "both".
NONE_WAIT_SECS=40
BOTH_WAIT_SECS=150
# shellcheck source=tests/e2e/desktop/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../desktop/lib.sh"

prepare() {
    desktop_prepare
    # Version 2: bob's role lets the clipboard cross both ways.
    sed -e 's/^version = 1$/version = 2/' \
        -e '/^\[roles.desk-none.display\]$/,$ s/^clipboard = "none"$/clipboard = "both"/' \
        "$WORK/policy.toml" >"$WORK/policy-v2.toml"
    if ! grep -q '^version = 2$' "$WORK/policy-v2.toml" ||
        [[ $(grep -c '^clipboard = "both"$' "$WORK/policy-v2.toml") != 2 ]]; then
        fail "tests/e2e/desktop/policy.toml no longer has the lines this scenario changes for version 2"
    fi
    minisign -S -s "$WORK/org.key" -m "$WORK/policy-v2.toml" -t "securevm-policy version=2" >/dev/null
}

# send_until MARKER TEXT: VNC cut text TEXT every 10 s (a fresh connection
# each time) until the guest printed MARKER, at most 15 times.
send_until() {
    local i
    for ((i = 0; i < 15; i++)); do
        grep -q -- "$1" "$SERIAL_LOG" && return 0
        # The guest may print the marker (and stop waiting) meanwhile.
        vnc cut-text "$2" || grep -q -- "$1" "$SERIAL_LOG" ||
            fail "sending cut text through VNC failed"
        sleep 10
    done
}

# listen_cut_text TAG TEXT: a VNC client in the background that logs every
# cut text it receives into $WORK/TAG-cut-text.log.
listen_cut_text() {
    vnc wait-cut-text 900 --expect "$2" --log "$WORK/$1-cut-text.log" >"$WORK/$1-cut-text.out" 2>&1 &
    CUT_TEXT_PID=$!
}

stop_listening() {
    kill "$CUT_TEXT_PID" 2>/dev/null || true
    wait "$CUT_TEXT_PID" 2>/dev/null || true
    CUT_TEXT_PID=
}

# received TAG TEXT SECONDS: whether the client logged TEXT, looking again
# for up to SECONDS.
received() {
    local i
    for ((i = 0; ; i++)); do
        grep -qxF -- "$2" "$WORK/$1-cut-text.log" 2>/dev/null && return 0
        ((i < $3 * 10)) || return 1
        sleep 0.1
    done
}

run() {
    trap desktop_cleanup EXIT
    local name refused_none refused_both
    for name in guest-text-1 host-text-1 guest-text-2 host-text-2; do
        printf 'e2e-%s-%s\n' "$name" "$RANDOM$RANDOM" >"$WORK/$name"
    done
    echo "$NONE_WAIT_SECS" >"$WORK/wait-secs-1"
    echo "$BOTH_WAIT_SECS" >"$WORK/wait-secs-2"
    make_script_disk "$WORK/e2e" "$DESKTOP_DIR/clipboard-run.sh" "$WORK"/guest-text-[12] \
        "$WORK"/host-text-[12] "$WORK"/wait-secs-[12]
    desktop_start bob --disk "$WORK/e2e"
    sleep 2
    securevm_login "$ID_BOB_PASSPHRASE"
    vnc_screenshot greeter-before
    wait_greeter greeter
    # The client listens before the guest can copy anything.
    listen_cut_text none "$(cat "$WORK/guest-text-1")"
    greeter_login
    wait_serial "SECUREVM-E2E: graphical session on seat0 for ${DEBIAN_DESKTOP_USER:?}" 300

    # Round 1, under "none".
    wait_serial "E2E-CLIP-SET-1=done" 120
    send_until "E2E-CLIP-FROM-HOST-1=" "$(cat "$WORK/host-text-1")"
    wait_serial "E2E-CLIP-FROM-HOST-1=" $((NONE_WAIT_SECS + 30))
    stop_listening
    [[ $(serial_value E2E-VDAGENT) == running ]] || fail "spice-vdagent's session agent did not run in alice's session"
    ! received none "$(cat "$WORK/guest-text-1")" 0 ||
        fail "under clipboard = \"none\" the guest's copied text reached the VNC client"
    [[ $(serial_value E2E-CLIP-FROM-HOST-1) == no ]] ||
        fail "under clipboard = \"none\" the client's text reached the guest's clipboard"
    refused_none=$(audit_count "$CLIPBOARD_REFUSED_EVENT")
    ((refused_none >= 2)) ||
        fail "under \"none\" $refused_none $CLIPBOARD_REFUSED_EVENT audit records, expected one per direction at least"

    # Round 2, under "both" from the pushed version 2 on.
    ctl push-policy "$WORK/policy-v2.toml" || fail "pushing version 2 (clipboard \"both\") failed: $CTL_OUT"
    [[ $(audit_count policy-pushed) == 1 ]] || fail "the push of version 2 was not audited"
    listen_cut_text both "$(cat "$WORK/guest-text-2")"
    send_until "E2E-CLIP-FROM-HOST-2=" "$(cat "$WORK/host-text-2")"
    wait_serial "E2E-CLIP-FROM-HOST-2=" $((BOTH_WAIT_SECS + 30))
    [[ $(serial_value E2E-CLIP-FROM-HOST-2) == yes ]] ||
        fail "under clipboard = \"both\" the client's text never reached the guest's clipboard"
    wait_serial "E2E-CLIP-SET-2=done" 60
    received both "$(cat "$WORK/guest-text-2")" 60 ||
        fail "under clipboard = \"both\" the guest's copied text never reached the VNC client"
    stop_listening
    # Everything is checked: the power button ends the guest at once (a
    # guest left running longer is only more exposure to the nested
    # platform's crashes). A guest that does not power off in time is
    # stopped (exit 1); either way the stop is audited.
    ctl shutdown --timeout 90 || echo "ctl shutdown: $CTL_OUT" >&2
    api_wait_exit 120
    [[ $VMM_EXIT -eq 0 || $VMM_EXIT -eq 1 ]] ||
        fail "securevm exited $VMM_EXIT ($(vmm_exit_meaning "$VMM_EXIT")) after the power button"
    [[ $(audit_count vm-stop) == 1 ]] || fail "the stop was not audited"
    refused_both=$(audit_count "$CLIPBOARD_REFUSED_EVENT")
    [[ $refused_both == "$refused_none" ]] ||
        fail "under \"both\" $((refused_both - refused_none)) more $CLIPBOARD_REFUSED_EVENT audit records"
    audit_verify "$WORK/audit.jsonl"
    [[ $AUDIT_EXIT -eq 0 ]] || fail "the audit log does not verify: $AUDIT_OUT"
}
