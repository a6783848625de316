# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh
# api-push-policy: `securevm ctl push-policy` applies a newer signed policy
# to the running guest (its transfer to the newly denied sink stops), then
# refuses a rolled-back, a tampered and an unsigned policy; the version in
# `status` and in the state file stays at the pushed one; the audit log
# records the push and the refusals that reached securevm.
TIMEOUT=420
# shellcheck source=tests/e2e/api/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../api/lib.sh"

prepare() { api_prepare_transfers; }

run() {
    trap api_cleanup EXIT
    net_up --sink 192.0.2.1:5001 --sink 192.0.2.1:5002
    api_start_transfers
    wait_serial "E2E-STREAMS=started" 180
    sleep 8
    ctl status --json || fail "status failed: $CTL_OUT"
    [[ $CTL_OUT == *'"policy_version": 1'* ]] || fail "status before the push: $CTL_OUT"

    ctl push-policy "$WORK/policy-v2.toml" || fail "version 2 was refused: $CTL_OUT"
    [[ $CTL_OUT == "policy version 2 applied (was 1); role netuser"* ]] || fail "push said: $CTL_OUT"

    ! ctl push-policy "$WORK/policy-v1.toml" || fail "the rolled-back version 1 was accepted"
    [[ $CTL_OUT == *"not newer than version 2"* ]] || fail "rollback refused with: $CTL_OUT"
    ! ctl push-policy "$WORK/tampered-v3.toml" || fail "a tampered policy was accepted"
    [[ $CTL_OUT == *"signature"* ]] || fail "tampered policy refused with: $CTL_OUT"
    ! ctl push-policy "$WORK/unsigned-v3.toml" || fail "an unsigned policy was accepted"
    [[ $CTL_OUT == *"no signature"* ]] || fail "unsigned policy refused with: $CTL_OUT"

    ctl status || fail "status failed: $CTL_OUT"
    [[ $CTL_OUT == *"policy version: 2"* ]] || fail "status after the refusals: $CTL_OUT"
    grep -qx 'version=2' "$WORK/policy.state" || fail "the state file does not record version 2: $(cat "$WORK/policy.state")"

    api_wait_exit 240
    expect_exit 0
    wait_sinks 90
    local allowed denied
    allowed=$(sink_field 5001 bytes)
    denied=$(sink_field 5002 bytes)
    ((denied * 2 < allowed)) ||
        fail "the transfer to the denied sink did not stop: $denied bytes (allowed sink: $allowed)"
    expect_vmm_said "-> 192.0.2.1:5002 (cut"

    "$SECUREVM" audit verify --audit-key "$WORK/audit.key" "$WORK/audit.jsonl" >/dev/null ||
        fail "the audit log does not verify"
    [[ $(grep -c '"event":"policy-pushed"' "$WORK/audit.jsonl") -eq 1 ]] ||
        fail "the applied push is not audited once"
    # The unsigned policy never reaches securevm: ctl finds no signature
    # file to send with it.
    [[ $(grep -c '"event":"policy-push-refused"' "$WORK/audit.jsonl") -eq 2 ]] ||
        fail "the rolled-back and the tampered push are not both audited"
}
