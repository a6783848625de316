# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh
# audit-verify: the audit log of a VM session verifies with the machine
# key; copies with a record edited, removed, swapped or cut off, or checked
# with another key, are each reported and fail.
TIMEOUT=300

prepare() {
    id_prepare
    make_script_disk "$WORK/e2e" "$(guest_script id-check.sh)"
}

# tampered NAME EXPECTED: verify $WORK/NAME.jsonl, which must fail naming EXPECTED.
tampered() {
    audit_verify "$WORK/$1.jsonl"
    [[ $AUDIT_EXIT -eq 1 ]] || fail "$1 copy: audit verify exited $AUDIT_EXIT: $AUDIT_OUT"
    grep -qF -- "$2" <<<"$AUDIT_OUT" || fail "$1 copy: expected '$2' in: $AUDIT_OUT"
}

run() {
    id_run 240 alice "$WORK/alice.pass"
    expect_exit 0
    expect_serial "E2E-ID-RUN=ok"
    local log=$WORK/audit.jsonl records
    records=$(wc -l <"$log")
    audit_verify "$log"
    [[ $AUDIT_EXIT -eq 0 && $AUDIT_OUT == "audit: all $records records verify" ]] ||
        fail "the session's log does not verify: $AUDIT_OUT"
    for event in log-opened policy-accepted auth-success role-selected vm-start vm-stop; do
        [[ $(audit_count "$event") -eq 1 ]] || fail "no $event record"
    done
    sed '4s/"role":"office"/"role":"visitor"/' "$log" >"$WORK/edited.jsonl"
    tampered edited "line 4 (seq 4): record altered"
    sed '3d' "$log" >"$WORK/removed.jsonl"
    tampered removed "line 3 (seq 4): record(s) removed"
    awk 'NR == 3 { held = $0; next } NR == 4 { print; print held; next } { print }' "$log" >"$WORK/swapped.jsonl"
    tampered swapped "line 3 (seq 4): records reordered"
    head -c -20 "$log" >"$WORK/truncated.jsonl"
    tampered truncated "the log is truncated"
    cp "$log" "$WORK/other-key.jsonl"
    mv "$WORK/audit.key" "$WORK/machine.key"
    "$SECUREVM" audit init-key "$WORK/audit.key" >/dev/null
    tampered other-key "line 1 (seq 1): record altered"
    mv "$WORK/machine.key" "$WORK/audit.key"
}
