# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh
# net-stateful: replies of the guest's allowed connections come back, but
# the peer cannot open a connection to a port the guest listens on.
TIMEOUT=300
prepare() { net_prepare "$E2E_DIR/net/steps/stateful"; }
run() {
    net_up --tcp 192.0.2.1:8080 --connect "$NET_GUEST_IP:2222" --delay 12
    net_run 240
    net_down
    expect_exit 0
    [[ $(serial_value E2E-TCP-ALLOWED) == ok ]] || fail "the reply of an allowed connection did not come back"
    peer_saw "connect $NET_GUEST_IP:2222" || fail "the peer never tried to connect to the guest"
    ! peer_saw "connect $NET_GUEST_IP:2222 ok" || fail "an inbound connection to the guest was let in"
}
