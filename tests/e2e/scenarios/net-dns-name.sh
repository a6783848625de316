# shellcheck shell=bash disable=SC2034 # TIMEOUT is read by tests/e2e/runner.sh
# net-dns-name: a host-name rule works for the address the allowed resolver
# answered; the same server before the lookup, and an address no answer
# named, are refused.
TIMEOUT=300
prepare() { net_prepare "$E2E_DIR/net/steps/dns-name"; }
run() {
    net_up --tcp 192.0.2.2:8080 --tcp 192.0.2.3:8080 --dns 192.0.2.53 --name allowed.example.org=192.0.2.2
    net_run 240
    net_down
    expect_exit 0
    [[ $(serial_value E2E-DNS-allowed.example.org) == 192.0.2.2 ]] || fail "the lookup through the allowed resolver failed"
    [[ $(serial_value E2E-TCP-BEFORE-LOOKUP) == fail ]] || fail "192.0.2.2 was reachable before the resolver named it"
    [[ $(serial_value E2E-TCP-NAMED) == ok ]] || fail "the named server was not reachable after the lookup"
    [[ $(serial_value E2E-TCP-UNNAMED) == fail ]] || fail "an address no answer named was reachable"
}
