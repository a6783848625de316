# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh
# net-allow: with the role's rules in force, the guest reaches the allowed
# TCP and UDP destinations on its peer.
TIMEOUT=300
prepare() { net_prepare "$E2E_DIR/net/steps/allow"; }
run() {
    net_up --tcp 192.0.2.1:8080 --udp 192.0.2.1:7000
    net_run 240
    net_down
    expect_exit 0
    [[ $(serial_value E2E-TCP-ALLOWED) == ok ]] || fail "allowed TCP 192.0.2.1:8080 did not work"
    peer_saw "udp 192.0.2.1:7000 from $NET_GUEST_IP" || fail "the allowed datagram never reached the peer"
    peer_saw "E2E-UDP-ALLOWED" || fail "the allowed datagram's payload never reached the peer"
}
