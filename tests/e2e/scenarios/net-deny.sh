# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh
# net-deny: destinations no rule allows time out, nothing reaches the peer,
# and securevm reports each refusal; an allowed one still works.
TIMEOUT=300
prepare() { net_prepare "$E2E_DIR/net/steps/deny"; }
run() {
    net_up --tcp 192.0.2.1:8080 --tcp 192.0.2.1:9090 --udp 192.0.2.1:7001
    net_run 240
    net_down
    expect_exit 0
    [[ $(serial_value E2E-TCP-DENIED) == fail ]] || fail "TCP to 192.0.2.1:9090 was not refused"
    ! peer_saw "tcp 192.0.2.1:9090" || fail "a denied TCP connection reached the peer"
    ! peer_saw "E2E-UDP-DENIED" || fail "a denied datagram reached the peer"
    [[ $(serial_value E2E-TCP-ALLOWED) == ok ]] || fail "the allowed destination stopped working"
    expect_serial "192.0.2.1:9090"
    expect_serial "192.0.2.1:7001"
}
