# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh
# net-spoof: a guest sending with another source IP or another MAC reaches
# no peer (a legitimate datagram first shows the path works).
TIMEOUT=300
prepare() { net_prepare "$E2E_DIR/net/steps/spoof"; }
run() {
    net_up --udp 192.0.2.1:7000
    net_run 240
    net_down
    expect_exit 0
    peer_saw "E2E-LEGIT" || fail "the legitimate datagram did not arrive (path broken)"
    ! peer_saw "E2E-SPOOF-IP" || fail "a datagram from a spoofed source IP reached the peer"
    ! peer_saw "E2E-SPOOF-MAC" || fail "a datagram from a spoofed MAC reached the peer"
}
