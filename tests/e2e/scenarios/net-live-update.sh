# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh
# net-live-update: the network rules are replaced while two transfers run
# (a policy push through the control socket): the transfer whose
# destination stays allowed runs to its end, the one the new rules deny is
# cut at once and reported, and the filter counts the cut.
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
    ctl push-policy "$WORK/policy-v2.toml" || fail "version 2 was refused: $CTL_OUT"
    sleep 5
    ctl status --json || fail "status failed: $CTL_OUT"
    [[ $CTL_OUT == *'"rules_generation": 2'* ]] || fail "the filter did not take the new rules: $CTL_OUT"
    [[ $CTL_OUT =~ \"cut\":\ [1-9] ]] || fail "the filter counted no cut flow: $CTL_OUT"

    api_wait_exit 240
    expect_exit 0
    wait_sinks 90
    local allowed_secs allowed denied_secs denied
    allowed=$(sink_field 5001 bytes)
    allowed_secs=$(sink_field 5001 secs)
    denied=$(sink_field 5002 bytes)
    denied_secs=$(sink_field 5002 secs)
    echo "allowed transfer: $allowed bytes in $allowed_secs s; denied: $denied bytes in $denied_secs s"
    awk -v s="$allowed_secs" 'BEGIN { exit !(s >= 30) }' ||
        fail "the allowed transfer stopped after ${allowed_secs}s ($allowed bytes); it should have run on"
    awk -v s="$denied_secs" 'BEGIN { exit !(s < 25) }' ||
        fail "the denied transfer ran for ${denied_secs}s ($denied bytes); it should have been cut at the push"
    ((denied > 0)) || fail "the denied transfer never ran before the push"
    ((denied * 2 < allowed)) || fail "the denied transfer moved $denied bytes, the allowed one $allowed"
    expect_vmm_said "-> 192.0.2.1:5002 (cut"
}
