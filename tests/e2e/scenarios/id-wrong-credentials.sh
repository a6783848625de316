# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh
# id-wrong-credentials: a wrong passphrase and an unknown user id both end
# with the same message and the login status (5) before any guest
# instruction runs (no serial output), and both are in the audit log.
TIMEOUT=300

prepare() {
    id_prepare
    printf 'not the passphrase\n' >"$WORK/wrong.pass"
    make_script_disk "$WORK/e2e" "$(guest_script id-check.sh)"
}

run() {
    id_run 120 alice "$WORK/wrong.pass"
    expect_exit 5
    id_run 120 mallory "$WORK/alice.pass"
    expect_exit 5
    local messages
    messages=$(grep "securevm: error: login refused" "$SERIAL_LOG" | sort -u)
    [[ $(grep -c "securevm: error: login refused" "$SERIAL_LOG") -eq 2 ]] ||
        fail "expected two login refusals, got: $messages"
    [[ $(wc -l <<<"$messages") -eq 1 ]] || fail "the refusals differ: $messages"
    ! grep -qi "alice\|mallory\|unknown user\|wrong passphrase" <<<"$messages" ||
        fail "the refusal says which part was wrong: $messages"
    ! grep -q "SECUREVM-E2E\|E2E-ID-RUN" "$SERIAL_LOG" || fail "the guest ran"
    [[ $(audit_count auth-failure) -eq 2 ]] || fail "expected 2 auth-failure records"
    [[ $(audit_count auth-lockout) -eq 2 ]] || fail "expected 2 auth-lockout records"
    [[ $(audit_count vm-start) -eq 0 ]] || fail "the audit log shows a VM start"
    grep -q '"claimed_user":"mallory"' "$WORK/audit.jsonl" || fail "the unknown user is not audited"
    ! grep -q "not the passphrase\|$ID_ALICE_PASSPHRASE" "$WORK/audit.jsonl" || fail "a passphrase is in the audit log"
    audit_verify "$WORK/audit.jsonl"
    [[ $AUDIT_EXIT -eq 0 ]] || fail "the audit log does not verify: $AUDIT_OUT"
}
